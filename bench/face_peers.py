"""Faces vs the peer detectors installable here (issue 26), in one run on the shared arcade clip (1080p, 105 frames):

    .venv/bin/python bench/face_peers.py            # also `bench/pipeline_targets.py facepeer`, `make bench`

Detectors, each with the model its wheel ships (nothing downloaded at run time):

- MTCNN as the production FaceDetector builds it (facenet-pytorch, its nets on the backend
  VISIONSTREAM_INFERENCE_BACKEND picks, VISIONSTREAM_FACE_DETECT_MAX_SIDE, batches of VISIONSTREAM_FACE_BATCH_SIZE,
  accepted faces only: VISIONSTREAM_FACE_MIN_PROBABILITY's floor);
- dlib's HOG frontal face detector (dlib-bin), upsampled once: its 80 px window finds none of the clip's faces at
  960 px without it (the faces there are 30-50 px);
- MediaPipe BlazeFace full-range and short-range (on the whole frame, as the solution is meant to be used, and on
  overlapping square tiles: 360 px for full-range, 192 px for short-range, so the clip's small faces fill
  enough of the model's 192 / 128 px input) and OpenCV's Haar cascade, in a venv of their own
  (.visionstream/bench/facepeer-venv from bench/face_peers_requirements.txt, created on first use; see
  bench/face_peers_worker.py for why), driven through a pipe; the best tiled variant is also reported with
  its boxes below score floors dropped (same run, no extra detection).

dlib's MMOD CNN (face_recognition_models) is left out: 4.6 s a frame at 960 px without upsampling on this
machine, where its 80 px window finds none of the clip's faces; upsampled once it would cost ~4x that.

Every detector gets the same frames: the production detector's own decode + resize (the JPEG's DCT scale, then
area resize to max side), done once beforehand. Frames/s exclude that decode for all; its cost per frame is
reported beside them. Detectors run interleaved batch by batch (VISIONSTREAM_FACE_BATCH_SIZE frames; the order
rotates each batch) for `rounds` passes; boxes come from the first. Frames/s are wall time on a shared machine;
core-ms/frame (CPU time of all the detector's threads: torch uses 2 here, BlazeFace and HOG 1) say what each
costs the machine.

Recall has no hand-labelled truth here, so it is measured against the other detectors: a face is *confirmed*
when detectors of at least two families other than the one measured found it (boxes matched at IoU >= 0.3:
detectors draw the box around different parts of the head; the two BlazeFace models are one family), so no
detector votes for itself. *Unconfirmed* counts a detector's boxes that no detector of another family found:
false faces, or faces only it sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

PEER_VENV = ROOT / ".visionstream" / "bench" / "facepeer-venv"
PEER_REQUIREMENTS = ROOT / "bench" / "face_peers_requirements.txt"
WORKER_NAMES = {"BlazeFace full-range": "blazeface-full", "BlazeFace short-range": "blazeface-short",
                "BlazeFace full-range, 360 px tiles": "blazeface-full-tiles360",
                "BlazeFace short-range, 192 px tiles": "blazeface-short-tiles192", "OpenCV Haar": "haar"}
FAMILY = {"MTCNN (production)": "mtcnn", "dlib HOG": "dlib-hog", "OpenCV Haar": "haar"} | {
    name: "blazeface" for name in WORKER_NAMES if name.startswith("BlazeFace")}
MATCH_IOU = 0.3

Box = Sequence[float]  # x1, y1, x2, y2 in detection pixels, then the detector's score where it has one
Timed = tuple[float, float, list[list[Box]]]  # wall seconds, CPU seconds (all threads), boxes per frame
# Score floors applied to the best BlazeFace variant's boxes from the same run (no extra detection): its 0.5
# default lets through signs, doors and coats (by eye, 44 of its 90 unconfirmed boxes at 06:27).
FLOORED = "BlazeFace short-range, 192 px tiles"
SCORE_FLOORS = (0.6, 0.7)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def peer_python() -> Path:
    """The peer venv's interpreter, creating the venv from the pinned list when it is missing."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / "requirements.txt"
    if not (python.is_file() and stamp.is_file() and stamp.read_text() == PEER_REQUIREMENTS.read_text()):
        log(f"creating the face peers' venv {PEER_VENV} (pip install --no-deps -r {PEER_REQUIREMENTS.name})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(PEER_REQUIREMENTS)],
                       check=True)
        stamp.write_text(PEER_REQUIREMENTS.read_text())
    return python


class PeerProcess:
    """bench/face_peers_worker.py in the peer venv; times are its own, pipe excluded."""

    def __init__(self, frames_file: Path) -> None:
        self._process = subprocess.Popen([str(peer_python()), str(ROOT / "bench" / "face_peers_worker.py"),
                                          str(frames_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        self.ready = json.loads(self._read())["ready"]

    def _read(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the face peer worker exited ({self._process.wait()})")
        return line

    def detect(self, detector: str, start: int, stop: int) -> Timed:
        self._process.stdin.write(json.dumps({"detector": detector, "start": start, "stop": stop}) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._read())
        return answer["seconds"], answer["cpu_seconds"], answer["boxes"]

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=30)


def iou(a: Box, b: Box) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def clusters(found: dict[str, list[Box]]) -> list[dict[str, list[Box]]]:
    """One frame's boxes grouped into faces: each box joins the face it overlaps most (IoU >= MATCH_IOU with one
    of its boxes) that has no box of the same detector yet, else starts a face."""
    faces: list[dict[str, list[Box]]] = []
    for name, boxes in found.items():
        for box in boxes:
            best = max((f for f in faces if name not in f), default=None,
                       key=lambda f: max(iou(box, b) for bs in f.values() for b in bs))
            if best is not None and max(iou(box, b) for bs in best.values() for b in bs) >= MATCH_IOU:
                best[name] = [box]
            else:
                faces.append({name: [box]})
    return faces


def agreement(found: dict[str, list[list[Box]]]) -> dict[str, dict[str, int]]:
    """Per detector: faces confirmed by >= 2 other families, how many of them it found, its boxes, and those no
    other family found."""
    result = {}
    for name in found:
        others = [n for n in found if FAMILY[n] != FAMILY[name]]
        confirmed = hit = unconfirmed = 0
        for frame, boxes in enumerate(found[name]):
            faces = clusters({n: found[n][frame] for n in others})
            for face in faces:
                if len({FAMILY[n] for n in face}) >= 2:
                    confirmed += 1
                    hit += any(iou(box, b) >= MATCH_IOU for box in boxes for bs in face.values() for b in bs)
            unconfirmed += sum(not any(iou(box, b) >= MATCH_IOU for f in faces for bs in f.values() for b in bs)
                               for box in boxes)
        result[name] = {"confirmed": confirmed, "found": hit, "boxes": sum(map(len, found[name])),
                        "unconfirmed": unconfirmed}
    return result


def consensus_faces(found: dict[str, list[list[Box]]]) -> int:
    """Faces that at least two families found, all detectors voting (the size of the shared reference)."""
    frames = len(next(iter(found.values())))
    return sum(len({FAMILY[n] for n in face}) >= 2 for frame in range(frames)
               for face in clusters({n: boxes[frame] for n, boxes in found.items()}))


def section_facepeer(rounds: int = 2, frames: int | None = None, boxes_file: Path | None = None) -> dict[str, Any]:
    import dlib
    import torch

    from pipeline_targets import arcade_jpegs
    from visionstream.faces.detector import FaceDetector
    from visionstream.settings import load_settings

    load_start = os.getloadavg()
    settings = load_settings(device="cpu")
    mtcnn = FaceDetector.from_settings(settings)
    batch = settings.face_batch_size
    jpegs = arcade_jpegs()[:frames]
    began = time.perf_counter()
    prepared = [mtcnn.prepare(jpeg) for jpeg in jpegs]
    decode_ms = (time.perf_counter() - began) / len(jpegs) * 1000
    hog = dlib.get_frontal_face_detector()

    def timed(detect: Callable[[Sequence[Any]], list[list[Box]]]) -> Callable[[int, int], Timed]:
        def run(start: int, stop: int) -> Timed:
            began, cpu_began = time.perf_counter(), time.process_time()
            boxes = detect(prepared[start:stop])
            return time.perf_counter() - began, time.process_time() - cpu_began, boxes

        return run

    def mtcnn_boxes(frames: Sequence[Any]) -> list[list[Box]]:
        return [[[*(v / frame.scale for v in face.box), face.probability] for face in faces]
                for frame, faces in zip(frames, mtcnn.detect(frames))]

    def hog_boxes(frames: Sequence[Any]) -> list[list[Box]]:
        return [[[r.left(), r.top(), r.right(), r.bottom()] for r in hog(frame.pixels, 1)] for frame in frames]

    with tempfile.TemporaryDirectory(prefix="vs-facepeer-") as tmp:
        frames_file = Path(tmp) / "frames.npy"
        np.save(frames_file, np.stack([frame.pixels for frame in prepared]))
        try:
            peer = PeerProcess(frames_file)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:  # no PyPI, no venv: say so
            log(f"  face peers not run: {exc}")
            return {"skipped": f"the peers' venv could not be made or started: {exc}"}
        try:
            detectors: dict[str, Callable[[int, int], Timed]] = {
                "MTCNN (production)": timed(mtcnn_boxes), "dlib HOG": timed(hog_boxes)}
            detectors |= {name: (lambda start, stop, w=w: peer.detect(w, start, stop))
                          for name, w in WORKER_NAMES.items()}
            mtcnn.detect(prepared[:batch])  # warm-up: torch's first batch allocates
            seconds = {name: [0.0, 0.0] for name in detectors}
            found: dict[str, list[list[Box]]] = {name: [] for name in detectors}
            names = list(detectors)
            for round_index in range(rounds):
                for batch_index, start in enumerate(range(0, len(prepared), batch)):
                    stop = min(start + batch, len(prepared))
                    shift = batch_index % len(names)
                    for name in names[shift:] + names[:shift]:
                        wall, cpu, boxes = detectors[name](start, stop)
                        seconds[name][0] += wall
                        seconds[name][1] += cpu
                        if round_index == 0:
                            found[name] += boxes
        finally:
            peer.close()
    for floor in SCORE_FLOORS:
        name = f"{FLOORED}, score >= {floor}"
        found[name] = [[box for box in boxes if box[4] >= floor] for boxes in found[FLOORED]]
        seconds[name] = seconds[FLOORED]
        FAMILY[name] = FAMILY[FLOORED]
    if boxes_file:
        boxes_file.write_text(json.dumps(found))
    scores = agreement(found)
    passes = rounds * len(prepared)
    rows = [{"detector": name, "fr/s": round(passes / seconds[name][0], 2),
             "ms/frame": round(seconds[name][0] / passes * 1000, 1),
             "core-ms/frame": round(seconds[name][1] / passes * 1000, 1), **scores[name]} for name in found]
    result = {"rows": rows, "frames": len(prepared), "rounds": rounds, "side": settings.face_detect_max_side,
              "decode_ms": round(decode_ms, 1), "consensus": consensus_faces(found), "match_iou": MATCH_IOU,
              "torch_threads": torch.get_num_threads(), "load": [load_start, os.getloadavg()],
              "mtcnn_backend": mtcnn.backend}
    for line in markdown(result):
        log(f"  {line}")
    return result


def recall(row: dict[str, Any]) -> float:
    return row["found"] / max(row["confirmed"], 1)


def markdown(result: dict[str, Any]) -> list[str]:
    if "skipped" in result:
        return [f"- not run: {result['skipped']}"]
    (load_start, load_end) = result["load"]
    lines = [f"Arcade clip, {result['frames']} frames of 1080p detected at {result['side']} px (the production "
             f"decode + resize, {result['decode_ms']} ms/frame, done once for all and excluded), "
             f"{result['rounds']} interleaved rounds, load {load_start[0]:.2f} at the start and {load_end[0]:.2f} at "
             f"the end; MTCNN's nets on {result['mtcnn_backend']} (VISIONSTREAM_INFERENCE_BACKEND's choice), torch "
             f"{result['torch_threads']} threads. Confirmed faces: found by >= 2 detector families other than the "
             f"one measured (boxes matched at IoU >= {result['match_iou']}); "
             f"{result['consensus']} faces were found by >= 2 families of all. Unconfirmed: a detector's boxes no "
             f"other family found (false faces, or faces only it sees).", "",
             "| detector | frames/s | ms/frame | core-ms/frame | confirmed faces found | boxes | unconfirmed |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['detector']} | {r['fr/s']} | {r['ms/frame']} | {r['core-ms/frame']} | {r['found']}/"
                     f"{r['confirmed']} = {recall(r):.1%} | {r['boxes']} | {r['unconfirmed']} |")
    return lines


def target_cells(result: dict[str, Any]) -> tuple[str, str]:
    """The targets table's measured and from cells: MTCNN against the fastest peer within 5 points of its
    recall, and the fastest of all."""
    if "skipped" in result:
        return "not run", result["skipped"]
    production, *peers = result["rows"]

    def summary(r: dict[str, Any]) -> str:
        backend = f" on {result['mtcnn_backend']}" if r is production else ""
        return (f"{r['detector']}{backend} {r['fr/s']} fr/s, recall {recall(r):.1%}, {r['unconfirmed']} "
                f"unconfirmed of {r['boxes']}")

    close = [r for r in peers if recall(r) >= recall(production) - 0.05]
    fastest_close = max(close, key=lambda r: r["fr/s"], default=None)
    fastest = max(peers, key=lambda r: r["fr/s"])
    return (f"{summary(production)}; fastest peer within 5 points: "
            f"{summary(fastest_close) if fastest_close else 'none'}", f"fastest of all: {summary(fastest)}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=None, help="the clip's first N frames only (a quick look)")
    parser.add_argument("--boxes", type=Path, help="write every detector's boxes (detection pixels) here as JSON")
    args = parser.parse_args()
    section_facepeer(args.rounds, frames=args.frames, boxes_file=args.boxes)
