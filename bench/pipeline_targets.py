"""Issue 26's in-process figures for `make bench` (bench/run_all.py imports this; each also runs alone):

    .venv/bin/python bench/pipeline_targets.py backends   # classifier as a worker builds it vs ORT / OpenVINO
    .venv/bin/python bench/pipeline_targets.py camera     # arcade frames/s: detection + identification vs alone
    .venv/bin/python bench/pipeline_targets.py facepeer   # the peer face detectors installable here (face_peers.py)

backends  bs 32 on 200 sample photos: the production Classifier (VISIONSTREAM_INFERENCE_BACKEND=auto, measured
          afresh in a temporary cache: its start-up time is reported), the same with backend=torch (the path
          before issue 26), ONNX Runtime fp32, OpenVINO fp32 and bf16; images/s interleaved (best of 5 rounds),
          top-1 agreement with fp32 torch.
camera    the shared arcade clip (1080p, 105 frames) as JPEGs, as a camera sends them: decode + resize to
          VISIONSTREAM_FACE_DETECT_MAX_SIDE, MTCNN in batches of VISIONSTREAM_FACE_BATCH_SIZE frames, then the
          identify step of a worker with one person of the clip enrolled (faces/reuse.py's embed only what is
          new), dlib's network run by OpenVINO (the default) and by dlib itself (before issue 26), batch by
          batch interleaved with detection alone (order rotating, 3 rounds): the frames/s one worker's decode +
          model threads sustain, not a Kafka run; the identify step's ms/frame; how many faces both runtimes gave
          the same person (or nobody).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def section_backends(weights: Path, real: bool, batch: int = 32) -> dict[str, Any]:
    from visionstream.classification.backends import AGREEMENT_IMAGES
    from visionstream.classification.model import Classifier, cpu_has_fast
    from visionstream.core.backends import agreement_images, images_per_second
    from visionstream.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="vs-backends-") as cache:
        settings = load_settings(model_weights=str(weights), device="cpu", allow_random_weights=not real,
                                 batch_size=batch, model_cache_dir=cache)
        started = time.monotonic()
        production = Classifier.from_settings(settings)  # auto: measured now, as on a machine's first start
        startup_s = time.monotonic() - started
        candidates: dict[str, Classifier] = {
            f"production Classifier (auto: {production.backend} {production.precision})": production,
            "production Classifier with backend=torch (before issue 26)": Classifier.from_settings(
                settings.model_copy(update={"inference_backend": "torch"})),
            "ONNX Runtime fp32": Classifier(weights_path=weights, device="cpu", backend="onnxruntime",
                                            cache_dir=cache, allow_random_weights=not real),
            "OpenVINO fp32": Classifier(weights_path=weights, device="cpu", backend="openvino", cache_dir=cache,
                                        allow_random_weights=not real),
        }
        if cpu_has_fast("bf16"):
            candidates["OpenVINO bf16"] = Classifier(weights_path=weights, device="cpu", backend="openvino",
                                                     precision="bf16", cache_dir=cache,
                                                     allow_random_weights=not real)
        reference = Classifier(weights_path=weights, device="cpu", precision="fp32", allow_random_weights=not real)
        images, _ = agreement_images(reference.preprocessor(1 << 30), AGREEMENT_IMAGES)

        def top1(classifier: Callable[[np.ndarray], list]) -> np.ndarray:
            return np.array([row[0][0] for i in range(0, len(images), batch)
                             for row in classifier(images[i:i + batch])])

        truth = top1(reference)
        agreement = {name: float(np.mean(top1(c) == truth)) for name, c in candidates.items()}
        pixels = images[:batch]
        speeds = images_per_second({name: (lambda c=c: c(pixels)) for name, c in candidates.items()}, batch,
                                   rounds=5, seconds=1.0)
    rows = [{"path": name, "img/s": round(speeds[name], 1), "agreement": agreement[name], "images": len(images)}
            for name in candidates]
    for row in rows:
        log(f"  {row['path']:60s} {row['img/s']:7.1f} img/s  top-1 agreement {row['agreement']:.1%}")
    production_row = rows[0]
    peers = [r for r in rows if r["path"].startswith(("ONNX", "OpenVINO")) and r["agreement"] >= 0.995]
    best_peer = max(peers, key=lambda r: r["img/s"], default=None)
    return {"rows": rows, "production": production_row, "best_peer": best_peer, "startup_s": round(startup_s, 1),
            "chosen": f"{production.backend} {production.precision}",
            "ratio": production_row["img/s"] / best_peer["img/s"] if best_peer else None}


def arcade_jpegs() -> list[bytes]:
    """The arcade clip's frames as JPEGs (quality 85), as bench/faces_counted.py reads them."""
    from faces_counted import arcade_candidates

    return arcade_candidates(lambda jpeg: None)[1]


def section_camera(rounds: int = 3) -> dict[str, Any]:
    from visionstream.faces.detector import FaceDetector
    from visionstream.faces.dlib_embedder import DlibEmbedder
    from visionstream.faces.identifier import FaceIdentifier, match_threshold
    from visionstream.faces.identities import IdentityMatcher
    from visionstream.faces.reuse import EmbeddingReuse
    from visionstream.settings import load_settings

    settings = load_settings(device="cpu")
    detector = FaceDetector.from_settings(settings)
    embedders = {"openvino": DlibEmbedder(runtime="openvino"), "dlib": DlibEmbedder(runtime="dlib")}
    jpegs = arcade_jpegs()
    first = next(i for i, jpeg in enumerate(jpegs) if detector.detect([detector.prepare(jpeg)])[0])
    frame = detector.prepare(jpegs[first])
    enrolled = embedders["dlib"].embed_faces(frame, detector.detect([frame])[0][:1])  # one person of the clip
    identifiers = {runtime: FaceIdentifier(embedder, IdentityMatcher(["visitor"], enrolled,
                                                                      match_threshold(settings), embedder.model_id))
                   for runtime, embedder in embedders.items()}
    names = ["detection", *(f"detection + identification ({runtime})" for runtime in identifiers)]
    seconds = dict.fromkeys(names, 0.0)
    identifying = dict.fromkeys(identifiers, 0.0)  # of which in the identify step
    embedded = dict.fromkeys(identifiers, 0)
    people: dict[str, list[str | None]] = {runtime: [] for runtime in identifiers}  # each face's match, pass 1
    faces_seen = 0
    batch = settings.face_batch_size
    for round_index in range(rounds):
        reuses = {runtime: EmbeddingReuse.from_settings(settings) for runtime in identifiers}
        for start in range(0, len(jpegs), batch):
            chunk = jpegs[start:start + batch]
            where = [("arcade", start + i, (start + i) / 25) for i in range(len(chunk))]
            turn = start // batch % len(names)
            for name in names[turn:] + names[:turn]:  # interleaved, each batch through each path, order rotating
                began = time.perf_counter()
                frames = [detector.prepare(jpeg) for jpeg in chunk]
                accepted = [list(faces) for faces in detector.detect(frames)]
                runtime = name.partition("(")[2].rstrip(")")
                if runtime:
                    detected = time.perf_counter()
                    results = reuses[runtime].identify(identifiers[runtime], frames, accepted, where)
                    identifying[runtime] += time.perf_counter() - detected
                seconds[name] += time.perf_counter() - began
                if runtime and round_index == 0:
                    embedded[runtime] += sum(not r for result in results for r in result.reused)
                    people[runtime] += [m.person if m else None for result in results for m in result.matches]
            if round_index == 0:
                faces_seen += sum(map(len, accepted))
    frames_total = rounds * len(jpegs)
    fps = {name: frames_total / spent for name, spent in seconds.items()}
    agreement = float(np.mean([a == b for a, b in zip(people["openvino"], people["dlib"], strict=True)]))
    log(f"  camera (arcade 1080p, {len(jpegs)} frames x {rounds}, side {settings.face_detect_max_side}, batches "
        f"of {batch}, MTCNN on {detector.backend}, one person enrolled, embed only what is new): {faces_seen} faces")
    for name in names:
        runtime = name.partition("(")[2].rstrip(")")
        extra = (f", ratio {fps[name] / fps['detection']:.2f}; identify step {identifying[runtime] * 1e3 / frames_total:.1f} "
                 f"ms/frame, {embedded[runtime]} faces embedded" if runtime else
                 f" ({seconds[name] * 1e3 / frames_total:.1f} ms/frame)")
        log(f"    {name:45s} {fps[name]:5.2f} fr/s{extra}")
    log(f"    faces given the same person (or nobody) by both runtimes: {agreement:.1%}")
    # Keys as bench/run_all.py reads them: the production path is "detection + identification".
    production, before = names[1], names[2]
    return {"fps": {"detection": round(fps["detection"], 2), "detection + identification": round(fps[production], 2),
                    "detection + identification, dlib's own run (before)": round(fps[before], 2)},
            "identification": f"embed only what is new, dlib's network on {embedders['openvino'].runtime}",
            "faces": faces_seen, "embedded": embedded["openvino"], "embedded_dlib": embedded["dlib"],
            "frames": len(jpegs), "rounds": rounds, "agreement": agreement, "detector_backend": detector.backend,
            "identify_ms_per_frame": {runtime: round(spent * 1e3 / frames_total, 1) for runtime, spent in identifying.items()},
            "ratio": fps[production] / fps["detection"], "ratio_dlib": fps[before] / fps["detection"]}


def main() -> None:
    import bench_model

    which = sys.argv[1:] or ["backends", "camera", "facepeer"]
    weights = bench_model.DEFAULT_WEIGHTS
    if "backends" in which:
        result = section_backends(weights, weights.is_file())
        ratio = result["ratio"]
        log(f"classifier model path / best of ORT and OpenVINO: {ratio:.2f} (auto chose {result['chosen']}, start-up "
            f"{result['startup_s']} s)" if ratio else "no ORT/OpenVINO path agreed")
    if "camera" in which:
        section_camera()
    if "facepeer" in which:
        from face_peers import section_facepeer

        section_facepeer()


if __name__ == "__main__":
    main()
