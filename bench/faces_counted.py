"""Faces you can count on: precision/recall of the detection floor, and visits on the arcade clip.

Runs MTCNN (as a worker does: detection at 960 px) on the demo's 240 sample views, the portraits (and their
mirrors) and the 105 frames of the shared arcade clip, then prints
1. faces kept and false faces at each probability floor and minimum face size;
2. the tracker's visit count on the arcade clip at each floor and tracker setting, against the faces-per-frame
   sum and the true count.

Ground truth (established by looking at the frames, crops of every detection below 0.995 and each track):
the sample views of chelsea, coffee, rocket, motorcycle, coins and immunohistochemistry show no person, so
every face there is false; astronaut and camera show one person (a random crop may cut the face out); each
portrait has one face. On the arcade clip 4 of MTCNN's 532 candidates are not faces (a jacket in three frames,
a reflection at the right edge: FALSE_ARCADE), and 9 people show their face: the 9 tracks at the default
setting, one of them (an older man) hidden behind another for 23 frames.

    .venv/bin/python bench/faces_counted.py   # about 1 minute on 2 CPU cores, 3 with the visitors
    .venv/bin/python bench/faces_counted.py --visitors   # the distinct-visitor table only
    .venv/bin/python bench/faces_counted.py --embedding  # embed only what is new: before/after, same run
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any

import cv2
import numpy as np

from visionstream.dev.samples import sample_images
from visionstream.faces.detector import FaceDetector, FaceFloor
from visionstream.faces.tracking import FaceTracker, TrackerLimits
from visionstream.settings import load_settings

sys.path.insert(0, ".")
from tests.media import ARCADE_VIDEO, media_file, portraits  # noqa: E402

NON_FACE_PHOTOS = {"chelsea", "coffee", "rocket", "motorcycle", "coins", "immunohistochemistry"}
FALSE_ARCADE = {95: (1260, 870), 85: (1259, 871), 57: (1258, 865), 23: (1756, 694)}  # frame: box corner
TRUE_VISITORS = 9
FACES_PER_VISIT = (1, 3, 5, 10)  # faces of a visit whose mean embedding is clustered
UNKNOWN_RECHECKS = (1, 5, 10, 20, 40)  # VISIONSTREAM_FACE_RECHECK_UNKNOWN_FRAMES measured with one person enrolled


def is_false_arcade(frame: int, box: tuple[float, ...]) -> bool:
    corner = FALSE_ARCADE.get(frame)
    return corner is not None and abs(box[0] - corner[0]) < 10 and abs(box[1] - corner[1]) < 10


def arcade_candidates(candidates: Any) -> tuple[list[list], list[bytes]]:
    """Every candidate face of each arcade frame, and the frames as JPEGs (quality 85)."""
    capture = cv2.VideoCapture(str(media_file(*ARCADE_VIDEO)))
    arcade, jpegs = [], []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
        arcade.append(candidates(jpegs[-1]))
    return arcade, jpegs


def main() -> None:
    detector = FaceDetector.from_settings(load_settings(device="cpu"))
    detector.floor = FaceFloor()  # every candidate: the floors are applied below

    def candidates(jpeg: bytes) -> list:
        return list(detector.detect([detector.prepare(jpeg)])[0])

    arcade, jpegs = arcade_candidates(candidates)
    if "--visitors" in sys.argv:  # only the distinct-visitor table
        distinct_visitors(detector, jpegs, arcade)
        return
    if "--embedding" in sys.argv:
        embedding_saving(detector, jpegs, arcade)
        return
    non_face, people, portrait_faces = [], [], []
    for label, _, data in sample_images(240):
        (non_face if label in NON_FACE_PHOTOS else people).extend(candidates(data))
    for photo in portraits():
        image = cv2.imread(str(photo))
        for pixels in (image, cv2.flip(image, 1)):
            portrait_faces.extend(candidates(cv2.imencode(".jpg", pixels)[1].tobytes()))
    real_arcade = sum(1 for i, faces in enumerate(arcade) for f in faces if not is_false_arcade(i, f.box))
    real_total = real_arcade + len(people) + len(portrait_faces)

    print(f"| floor | min side (px) | false faces on the 180 non-face views | arcade real faces kept (of "
          f"{real_arcade}) | arcade false kept | astronaut/camera faces (of {len(people)}) | portraits "
          f"(of {len(portrait_faces)}) | precision | recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for probability in (0.0, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99):
        for size in (0, 24, 32):
            floor = FaceFloor(probability, size)
            false_views = sum(map(floor.accepts, non_face))
            kept = [(i, f) for i, faces in enumerate(arcade) for f in faces if floor.accepts(f)]
            arcade_false = sum(is_false_arcade(i, f.box) for i, f in kept)
            true = (len(kept) - arcade_false + sum(map(floor.accepts, people))
                    + sum(map(floor.accepts, portrait_faces)))
            false = false_views + arcade_false
            print(f"| {probability} | {size} | {false_views} | {len(kept) - arcade_false} | {arcade_false} | "
                  f"{sum(map(floor.accepts, people))} | {sum(map(floor.accepts, portrait_faces))} | "
                  f"{true / max(true + false, 1):.3f} | {true / real_total:.3f} |")

    print(f"\nArcade clip, 105 frames at 25 fps, {TRUE_VISITORS} people showing their face:")
    print("| floor | min IoU | max gap (frames) | faces (sum per frame) | visits |")
    print("|---|---|---|---|---|")
    for probability in (0.0, 0.9, 0.97):
        for iou in (0.2, 0.3, 0.5):
            for gap in (0, 2, 8, 25):
                floor = FaceFloor(probability)
                tracker = FaceTracker(TrackerLimits(min_iou=iou, max_gap_frames=gap, max_gap_seconds=gap / 25 + 0.1))
                visits: collections.Counter[str] = collections.Counter()
                for seq, faces in enumerate(arcade):
                    accepted = [f.box for f in faces if floor.accepts(f)]
                    visits.update(tracker.assign("arcade", seq, seq / 25, accepted))
                print(f"| {probability} | {iou} | {gap} | {sum(visits.values())} | {len(visits)} |")
    # Without the centre-distance rule (IoU alone) at the default floor and gap.
    tracker = FaceTracker(TrackerLimits(min_iou=0.5, max_centre_shift=0.0))
    alone = {v for seq, faces in enumerate(arcade)
             for v in tracker.assign("arcade", seq, seq / 25, [f.box for f in faces if FaceFloor(0.97).accepts(f)])}
    print(f"IoU 0.5 alone (no centre rule), floor 0.97, gap 25: {len(alone)} visits")
    distinct_visitors(detector, jpegs, arcade)


def distinct_visitors(detector: FaceDetector, jpegs: list[bytes], arcade: list[list]) -> None:
    """Distinct visitors: each visit clustered once by the mean dlib embedding of its first K faces, at each
    threshold, for the clip alone, the clip twice (the same people back 10 minutes later) and the clip plus its
    mirror on a second camera; 9 is right for each (a visit shorter than K faces: the mean of all of them)."""
    from visionstream.faces.dlib_embedder import DlibEmbedder
    from visionstream.faces.identities import normalise
    from visionstream.faces.visitors import PendingVisits, VisitorClusterer, VisitorMemory

    embedder = DlibEmbedder()
    floor = FaceFloor(0.97)
    most = max(FACES_PER_VISIT)

    def first_faces(mirror: bool) -> dict[str, list[tuple[int, np.ndarray]]]:
        """Each visit's first ``most`` faces: (seq, embedding)."""
        tracker, out = FaceTracker(), {}
        for seq, (jpeg, faces) in enumerate(zip(jpegs, arcade, strict=True)):
            accepted = [f for f in faces if floor.accepts(f)]
            if mirror:
                image = cv2.flip(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), 1)
                jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
                accepted = [f for f in detector.detect([detector.prepare(jpeg)])[0] if floor.accepts(f)]
            visits = tracker.assign("c", seq, seq / 25, [f.box for f in accepted])
            wanted = [(v, f) for v, f in zip(visits, accepted, strict=True) if len(out.get(v, ())) < most]
            if wanted:
                vectors = normalise(embedder.embed_faces(detector.prepare(jpeg), [f for _, f in wanted]))
                for (v, _), vector in zip(wanted, vectors, strict=True):
                    out.setdefault(v, []).append((seq, vector))
        return out

    plain, mirrored = first_faces(False), first_faces(True)
    faces = sum(sum(map(floor.accepts, f)) for f in arcade)
    print(f"\nDistinct visitors ({len(plain)} visits, {len(mirrored)} on the mirror; {faces} faces in "
          f"{len(arcade)} frames, at most {sum(len(v) for v in plain.values())} of them embedded):")
    print("| faces per visit (K) | threshold | clip | clip twice, 10 min apart | clip + mirror, 2 cameras |")
    print("|---|---|---|---|---|")
    for k in FACES_PER_VISIT:
        for threshold in (0.9, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97):
            counts = []
            for runs in ((("a", 0.0, plain),), (("a", 0.0, plain), ("a", 600.0, plain)),
                         (("a", 0.0, plain), ("b", 0.0, mirrored))):
                memory = VisitorMemory(VisitorClusterer(threshold, 3600), 86400)
                visitors = set()
                for camera, start, visits in runs:
                    pending = PendingVisits(k, 1000)
                    for visit, collected in visits.items():  # a visit shorter than K: all its faces
                        for seq, vector in collected[:k]:
                            mean = pending.add(camera, visit, vector)
                        mean = pending.take(visit) if mean is None else mean
                        visitors.add(memory.visitor(f"{camera}{start}/{visit}", mean, start + collected[0][0] / 25))
                counts.append(len(visitors))
            print(f"| {k} | {threshold} | " + " | ".join(map(str, counts)) + " |")


def embedding_saving(detector: FaceDetector, jpegs: list[bytes], arcade: list[list]) -> None:
    """The identify step on the clip's accepted faces in batches of face_batch_size frames, as a worker runs it:
    before (every face embedded, one dlib call per frame, as until issue 26 point 3), every face in one dlib
    call per batch, and after (faces/reuse.py), for three deployments (the first with each of UNKNOWN_RECHECKS);
    interleaved batch by batch. Who each face is after is compared with who it is when every face is embedded,
    and each track's first frame named by the identify step with its first frame named by its own embedding."""
    from visionstream.faces.dlib_embedder import DlibEmbedder
    from visionstream.faces.identifier import FaceIdentifier
    from visionstream.faces.identities import IdentityMatcher, mean_embedding
    from visionstream.faces.reuse import EmbeddingReuse

    settings = load_settings(device="cpu")
    floor = FaceFloor(settings.face_min_probability)
    embedder = DlibEmbedder()
    frames = [detector.prepare(jpeg) for jpeg in jpegs]
    accepted = [[f for f in faces if floor.accepts(f)] for faces in arcade]
    # Enrolled: the clip's longest visit, from its first 3 faces; and a portrait of someone not in the clip.
    tracker = FaceTracker.from_settings(settings)
    visits = [tracker.assign("a", seq, seq / 25, [f.box for f in found]) for seq, found in enumerate(accepted)]
    longest = collections.Counter(v for vs in visits for v in vs).most_common(1)[0][0]
    first = [(seq, vs.index(longest)) for seq, vs in enumerate(visits) if longest in vs][:3]
    visitor = mean_embedding(np.concatenate([embedder.embed_faces(frames[s], [accepted[s][j]]) for s, j in first]))
    photo = detector.prepare(portraits()[0].read_bytes())
    absent = mean_embedding(embedder.embed_faces(photo, detector.detect([photo])[0][:1]))
    threshold = 0.92
    one_enrolled = (["visitor", "absent"], np.stack([visitor, absent]))
    deployments = {  # name: (enrolled names and embeddings, K of distinct visitors or None, unknown re-check)
        **{f"a visitor of the clip enrolled, nobody re-checked every {n}": (one_enrolled, None, n)
           for n in UNKNOWN_RECHECKS},
        "distinct visitors on, nobody enrolled": (([], np.zeros((0, 128))), settings.face_visitor_faces,
                                                  settings.face_recheck_unknown_frames),
        "nobody of the clip enrolled": ((["absent"], absent[None]), None, settings.face_recheck_unknown_frames),
    }
    reuse = {name: EmbeddingReuse(FaceTracker.from_settings(settings), settings.face_reembed_frames,
                                  settings.face_reembed_min_iou, k, n) for name, (_, k, n) in deployments.items()}
    matchers = {name: IdentityMatcher(*enrolled, threshold, embedder.model_id)
                for name, (enrolled, _, _) in deployments.items()}
    # A track's first frame its own embedding names someone, and the first frame the identify step does.
    named_first: dict[tuple[str, str], dict[str, int]] = collections.defaultdict(dict)
    seconds = collections.Counter()
    embedded = collections.Counter()
    agree = collections.Counter()
    batch = settings.face_batch_size
    for start in range(0, len(frames), batch):
        rows = range(start, min(start + batch, len(frames)))
        began = time.perf_counter()
        every = [embedder.embed_faces(frames[i], accepted[i]) for i in rows]  # before: one call per frame
        seconds["per frame"] += time.perf_counter() - began
        began = time.perf_counter()
        embedder.embed_batch([frames[i] for i in rows], [accepted[i] for i in rows])
        seconds["one call"] += time.perf_counter() - began
        for name, matcher in matchers.items():
            truth = [[m.person if m else None for m in matcher.match(v)] for v in every]
            began = time.perf_counter()
            out = reuse[name].identify(FaceIdentifier(embedder, matcher), [frames[i] for i in rows],
                                       [accepted[i] for i in rows], [("a", i, i / 25) for i in rows])
            seconds[name] += time.perf_counter() - began
            embedded[name] += sum(not r for result in out for r in result.reused)
            for i, result, want in zip(rows, out, truth, strict=True):
                for visit, m, t in zip(visits[i], result.matches, want, strict=True):
                    got = m.person if m else None
                    agree[name, "same" if got == t else "carried" if t is None else "lost" if got is None
                          else "wrong"] += 1
                    for key, who in (("every", t), ("step", got)):
                        if who is not None:
                            named_first[name, key].setdefault(visit, i)
    faces, n = sum(map(len, accepted)), len(frames)
    print(f"\nEmbed only what is new: arcade clip, {n} frames, {faces} accepted faces, batches of {batch} frames, "
          f"dlib, re-check every {settings.face_reembed_frames} frames or below IoU {settings.face_reembed_min_iou}")
    print("| identify step | faces embedded per frame | ms per embedded face | identify ms per frame | "
          "same person as embedding every face | named from its track where its own embedding names nobody | "
          "named nobody where its own embedding names someone | named someone else | tracks named late: "
          "frames late (each) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, key, count in (("before: every face, one dlib call per frame", "per frame", faces),
                              ("every face, one dlib call per batch", "one call", faces)):
        print(f"| {label} | {count / n:.2f} | {1000 * seconds[key] / count:.1f} | {1000 * seconds[key] / n:.0f} | "
              "- | - | - | - | - |")
    for name in deployments:
        every, step = named_first[name, "every"], named_first[name, "step"]
        late = sorted(step.get(visit, n) - first for visit, first in every.items() if step.get(visit, n) > first)
        print(f"| after, {name} | {embedded[name] / n:.2f} | {1000 * seconds[name] / max(embedded[name], 1):.1f} | "
              f"{1000 * seconds[name] / n:.0f} | {agree[name, 'same']} of {faces} | {agree[name, 'carried']} | "
              f"{agree[name, 'lost']} | {agree[name, 'wrong']} | {len(late)} of {len(every)}: {late or '-'} |")


if __name__ == "__main__":
    main()
