"""Embed only what is new, on real media and models (MTCNN at 960 px, dlib): an arcade person enrolled from one
frame's crop is named on every face of their track (at most face_recheck_unknown_frames late) while most faces
are not embedded again, and no other face takes their name; with distinct visitors on, a stranger's track is
embedded K times per re-check."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visionstream.faces.dlib_embedder import DlibEmbedder
from visionstream.faces.detector import FaceDetector
from visionstream.faces.enroll import photo_embeddings
from visionstream.faces.identifier import DEFAULT_THRESHOLDS, FaceIdentifier
from visionstream.faces.identities import IdentityMatcher
from visionstream.faces.reuse import EmbeddingReuse
from visionstream.faces.tracking import FaceTracker
from visionstream.settings import load_settings

from ..media import ARCADE_VIDEO, media_file

START, FRAMES, BATCH = 40, 48, 8  # frames 40-87: the enrolled person walks across the scene


@pytest.fixture(scope="module")
def clip():
    settings = load_settings(device="cpu", face_detect_max_side=960)
    detector = FaceDetector.from_settings(settings)
    capture = cv2.VideoCapture(str(media_file(*ARCADE_VIDEO)))
    images = []
    while len(images) < START + FRAMES:
        ok, bgr = capture.read()
        assert ok, "the arcade clip is shorter than the test needs"
        images.append(bgr)
    capture.release()
    jpegs = [cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for bgr in images[START:]]
    frames = [detector.prepare(jpeg) for jpeg in jpegs]
    faces = [list(found) for found in detector.detect(frames)]
    return settings, detector, images[START], frames, faces


def _enrol_nearest(detector, embedder, image, first_faces, tmp_path) -> IdentityMatcher:
    target = max(first_faces, key=lambda f: f.box[2] - f.box[0])
    x1, y1, x2, y2 = target.box
    margin = 0.5 * (x2 - x1)
    crop = image[int(max(0, y1 - margin)):int(y2 + margin), int(max(0, x1 - margin)):int(x2 + margin)]
    photo = tmp_path / "crop.jpg"
    photo.write_bytes(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    return IdentityMatcher(["walker"], photo_embeddings(detector, embedder, [photo]), DEFAULT_THRESHOLDS["dlib"],
                           embedder.model_id)


def _identify(reuse, identifier, frames, faces):
    out = []
    for start in range(0, len(frames), BATCH):
        rows = range(start, min(start + BATCH, len(frames)))
        out += reuse.identify(identifier, [frames[i] for i in rows], [faces[i] for i in rows],
                              [("arcade", START + i, (START + i) / 25) for i in rows])
    return out


def test_an_identified_track_keeps_its_name_without_embedding_every_face(clip, tmp_path):
    settings, detector, image, frames, faces = clip
    embedder = DlibEmbedder()
    matcher = _enrol_nearest(detector, embedder, image, faces[0], tmp_path)
    identifier = FaceIdentifier(embedder, matcher)
    every = identifier(frames, faces)  # before: every face embedded and matched
    reuse = EmbeddingReuse.from_settings(settings)
    assert reuse is not None
    after = _identify(reuse, identifier, frames, faces)

    # The walker's track, by the tracker's rule (no embedding): ground truth for whose face each one is.
    tracker = FaceTracker.from_settings(settings)
    tracks = [tracker.assign("arcade", START + i, (START + i) / 25, [f.box for f in found])
              for i, found in enumerate(faces)]
    named_every = {(i, j) for i, r in enumerate(every) for j, m in enumerate(r.matches) if m is not None}
    named_after = {(i, j) for i, r in enumerate(after) for j, m in enumerate(r.matches) if m is not None}
    walker = {tracks[i][j] for i, j in named_every}
    assert len(walker) == 1, walker  # every face embedded: the walker's faces are one track
    track = {(i, j) for i, visits in enumerate(tracks) for j, v in enumerate(visits) if v in walker}
    assert len(named_every) >= 0.8 * len(track) >= 30
    # Only faces of the walker's track are named, and as the walker.
    assert named_after <= track
    for i, j in named_after:
        assert after[i].matches[j].person == "walker" and after[i].matches[j].embedder == embedder.model_id
    # A face the full embedding names may carry "nobody" from its track's last check (the walker turned away
    # then), never for face_recheck_unknown_frames frames or more after that check.
    last_embedded: dict[str, int] = {}
    for i, visits in enumerate(tracks):
        for j, visit in enumerate(visits):
            if not after[i].reused[j]:
                last_embedded[visit] = i
            elif (i, j) in named_every - named_after:
                assert i - last_embedded[visit] < settings.face_recheck_unknown_frames, (i, j)
    reused = sum(sum(r.reused) for r in after)
    faces_total = sum(map(len, faces))
    # The walker is embedded again at each re-check: every 10 frames, and whenever their box has moved off the
    # box of the last check (IoU below 0.5), which a person walking across the frame does every few frames
    # (measured: 11 of their 48 faces); strangers (nobody else enrolled) every face_recheck_unknown_frames.
    walker_embedded = sum(1 for i, j in track if not after[i].reused[j])
    assert walker_embedded <= len(track) / 3, walker_embedded
    assert faces_total - reused <= 0.4 * faces_total, (faces_total - reused, faces_total)
    print(f"walker: {len(track)} faces, {walker_embedded} embedded, {len(named_every - named_after)} named late; "
          f"all: {faces_total - reused} of {faces_total} embedded")


def test_distinct_visitors_embed_each_stranger_track_k_times_per_recheck(clip):
    settings, _, _, frames, faces = clip
    settings = settings.model_copy(update={"face_distinct_visitors": True})
    embedder = DlibEmbedder()
    identifier = FaceIdentifier(embedder, IdentityMatcher([], np.zeros((0, 128)), 0.92, embedder.model_id))
    reuse = EmbeddingReuse.from_settings(settings)
    after = _identify(reuse, identifier, frames, faces)
    tracker = FaceTracker.from_settings(settings)
    tracks = [tracker.assign("arcade", START + i, (START + i) / 25, [f.box for f in found])
              for i, found in enumerate(faces)]
    embedded: dict[str, int] = {}
    for i, visits in enumerate(tracks):
        for j, visit in enumerate(visits):
            embedded[visit] = embedded.get(visit, 0) + (not after[i].reused[j])
            assert after[i].matches[j] is None
    faces_total = sum(map(len, faces))
    # K faces, then one per re-check window (or after a big change of box), never more than that per track.
    per_track = settings.face_visitor_faces + FRAMES // settings.face_reembed_frames + 8
    assert all(n <= per_track for n in embedded.values()), embedded
    assert sum(embedded.values()) <= 0.6 * faces_total, (sum(embedded.values()), faces_total)
