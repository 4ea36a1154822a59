"""Face detection, identity matching, the frame pipeline's skip/error paths, and enrolment without weights."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from visionstream.cli.main import main
from visionstream.core.analyzers import Analyzer
from visionstream.faces.records import FACES
from visionstream.core.imaging import ImageDecodeError
from visionstream.core.pipeline import AnalysisPipeline, InboundMessage
from visionstream.core.records import MalformedMessage, SourceRef
from visionstream.core.s3 import ObjectUnavailable
from visionstream.dev.samples import sample_images
from visionstream.faces.detector import DetectedFace, FaceDetector, PreparedFrame
from visionstream.faces.identities import IdentityMatcher, mean_embedding, normalise
from visionstream.frames.archive import claim_check_key
from visionstream.frames.input import SKIP_LAG, FrameInput, LagPolicy
from visionstream.frames.records import frame_headers, parse_frame
from visionstream.frames.sinks import frame_latency
from visionstream.settings import load_settings

from ..media import arcade_jpegs, portraits


@pytest.fixture(scope="module")
def detector():
    return FaceDetector.from_settings(load_settings(device="cpu", face_detect_max_side=960))


def _arcade_jpegs(count: int) -> list[bytes]:
    return arcade_jpegs(count, 20)  # spread over the clip


def test_each_portrait_has_exactly_one_face(detector):
    photos = portraits()
    assert photos, "no portraits under faces/"
    for photo in photos:
        prepared = detector.prepare(photo.read_bytes())
        assert max(prepared.pixels.shape[:2]) == 960
        (faces,) = detector.detect([prepared])
        assert len(faces) == 1, photo
        height, width = cv2.imread(str(photo)).shape[:2]
        x1, y1, x2, y2 = faces[0].box
        # Mapped back to the original pixels, not the 960-px detection image.
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (photo, faces[0].box, width, height)
        assert x2 - x1 > 150
        assert faces[0].probability > 0.95
        assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in faces[0].landmarks)


def test_arcade_frames_are_detected_in_one_batch_with_3_to_8_faces(detector):
    prepared = [detector.prepare(jpeg) for jpeg in _arcade_jpegs(3)]
    assert {p.pixels.shape for p in prepared} == {(540, 960, 3)}
    assert all(p.scale == 2.0 for p in prepared)
    faces = detector.detect(prepared)
    assert len(faces) == 3
    for frame_faces in faces:
        assert 3 <= len(frame_faces) <= 8
        for face in frame_faces:
            assert 0 <= face.box[0] < face.box[2] <= 1920 and 0 <= face.box[1] < face.box[3] <= 1080


# scikit-image's photos without a person in them; "camera" (a cameraman) and "astronaut" have one face each.
NON_FACE_PHOTOS = {"chelsea", "coffee", "rocket", "motorcycle", "coins", "immunohistochemistry"}


def test_the_default_floor_finds_no_face_on_the_non_face_sample_views(detector):
    """The demo's 240 sample views: MTCNN's false candidates (up to 0.957 here) stay below the 0.97 floor,
    while the views of a photo with a person keep their face (BENCHMARKS.md "Faces you can count on")."""
    found = {}
    for label, name, data in sample_images(240):
        (faces,) = detector.detect([detector.prepare(data)])
        found[name] = (label, faces)
    non_face = [faces for label, faces in found.values() if label in NON_FACE_PHOTOS]
    assert len(non_face) == 180
    assert sum(len(faces) for faces in non_face) == 0
    # The floor did the work: MTCNN proposed false faces, flagged below it and kept for the jsonb.
    below = [face for faces in non_face for face in faces.below_floor]
    assert len(below) >= 10 and max(face.probability for face in below) < detector.floor.min_probability
    # A view of a person is a random crop, which may leave the face out (7 of 60 do): the floor drops none of
    # the faces MTCNN finds there.
    people = [faces for label, faces in found.values() if label not in NON_FACE_PHOTOS]
    assert len(people) == 60 and all(len(faces) <= 1 and not faces.below_floor for faces in people)
    assert sum(len(faces) for faces in people) >= 50


def _resized(jpeg: bytes, width: int, height: int) -> bytes:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", cv2.resize(bgr, (width, height)))[1].tobytes()


def test_frames_of_different_sizes_keep_their_order(detector):
    # Three different frames: two 640x360 ones (one MTCNN batch) around a 1080p one (its own batch, scaled).
    first, second, third = _arcade_jpegs(3)
    frames = [detector.prepare(_resized(first, 640, 360)), detector.prepare(second),
              detector.prepare(_resized(third, 640, 360))]
    alone = [detector.detect([frame])[0] for frame in frames]
    assert [len(faces) >= 3 for faces in alone] == [True] * 3, [len(faces) for faces in alone]
    assert all(face.box[2] <= 640 and face.box[3] <= 360 for faces in alone[::2] for face in faces)
    assert any(face.box[2] > 640 for face in alone[1])  # the 1080p frame is mapped back to its own pixels
    assert _boxes(alone[0]) != _boxes(alone[2])  # the two small frames differ: a swap would show
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        batched = detector.detect([frames[i] for i in order])
        for position, index in enumerate(order):
            assert _boxes(batched[position]) == pytest.approx(_boxes(alone[index]), abs=1.0), (order, position)


def _boxes(faces: list[DetectedFace]) -> list[float]:
    return [c for face in sorted(faces, key=lambda face: face.box) for c in face.box]


@pytest.mark.parametrize("data", [b"", b"not a jpeg at all", b"\xff\xd8\xff\xe0" + b"\x00" * 100])
def test_corrupt_jpeg_raises_decode_error(detector, data):
    with pytest.raises(ImageDecodeError):
        detector.prepare(data)


# --- matching -----------------------------------------------------------------------------------------

def _people(rng, count=3, dim=512):
    return normalise(rng.normal(size=(count, dim)))


def test_matcher_finds_the_enrolled_person_above_the_threshold():
    rng = np.random.default_rng(7)
    people = _people(rng)
    matcher = IdentityMatcher(["ann", "bob", "cy"], people, threshold=0.7)
    probes = people[[2, 0]] + 0.02 * rng.normal(size=(2, 512))  # the same faces, seen again
    matches = matcher.match(probes)
    assert [m.person for m in matches] == ["cy", "ann"]
    assert all(0.9 < m.similarity <= 1.0 for m in matches)


def test_matcher_rejects_strangers_and_handles_empty_inputs():
    rng = np.random.default_rng(8)
    matcher = IdentityMatcher(["ann", "bob"], _people(rng, 2), threshold=0.7)
    assert matcher.match(_people(rng, 4)) == [None] * 4  # random 512-d vectors are near orthogonal
    assert matcher.match(np.zeros((0, 512))) == []
    assert IdentityMatcher([], np.zeros((0, 512)), 0.5).match(_people(rng, 2)) == [None, None]


def test_threshold_is_inclusive_and_scale_does_not_matter():
    reference = np.array([[1.0, 0.0]])
    probe = np.array([[3.0, 4.0]])  # cosine 0.6, length 5
    assert IdentityMatcher(["ann"], reference, threshold=0.6).match(probe)[0].person == "ann"
    assert IdentityMatcher(["ann"], reference, threshold=0.61).match(probe) == [None]


def test_mean_embedding_is_unit_length_and_names_must_be_unique():
    rng = np.random.default_rng(9)
    mean = mean_embedding(rng.normal(size=(3, 512)) * 10)
    assert mean.shape == (512,) and abs(np.linalg.norm(mean) - 1) < 1e-5
    with pytest.raises(ValueError):
        IdentityMatcher(["ann", "ann"], _people(rng, 2), 0.5)


# --- the frame pipeline with stand-in model and store -----------------------------------------------

class _Store:
    def __init__(self, objects):
        self.objects = objects

    async def get_many(self, requests):
        return [self.objects.get(key, ObjectUnavailable(key, "NoSuchKey")) for key, _ in requests]


def _prepare(jpeg: bytes) -> tuple[tuple[int, int], list[PreparedFrame]]:
    if jpeg.startswith(b"bad"):
        raise ImageDecodeError("broken")
    return (4, 4), [PreparedFrame(np.zeros((4, 4, 3), np.uint8), 1.0, 4, 4)]


def _detect(frames):
    return [[DetectedFace((0, 0, 1, 1), 0.99, ((0.5, 0.5),) * 5)] for _ in frames]


DETECTOR = Analyzer(FACES, "detect", "stand-in@1", None, lambda image: image, _detect)


def _message(offset, camera, seq, captured_at, value=b"jpeg", s3_key=None):
    headers = frame_headers(seq, captured_at, 4, 4, s3_key)
    return InboundMessage(SourceRef("frames", 0, offset), camera.encode(), value, headers)


def _run(lag: LagPolicy, messages, objects=None, now=1000.0):
    with ThreadPoolExecutor(1) as executor:
        pipeline = AnalysisPipeline(FrameInput(lag), _Store(objects or {}), [DETECTOR], _prepare, executor,
                                    executor, clock=lambda: now)
        return asyncio.run(pipeline.run(messages))


def test_live_mode_skips_frames_older_than_their_cameras_max_lag():
    messages = [
        _message(0, "door", 1, 997.5),  # 2.5 s old: over the 2 s default
        _message(1, "door", 2, 999.0),
        _message(2, "hall", 1, 999.0),  # 1 s old: over hall's own 0.5 s
        _message(3, "hall", 2, 999.8),
    ]
    outcome = _run(LagPolicy(2.0, {"hall": 0.5}), messages)
    status = {(r.source.camera_id, r.source.seq): r.skip_reason for r in outcome.results}
    assert status == {("door", 1): SKIP_LAG, ("door", 2): None, ("hall", 1): SKIP_LAG, ("hall", 2): None}
    processed = [r for r in outcome.results if r.skip_reason is None]
    assert all(len(r.outputs[FACES]) == 1 for r in processed)
    assert not any(r.outputs for r in outcome.results if r.skip_reason is not None)  # no model ran on a skip
    assert frame_latency(outcome, processed[0]) == pytest.approx(1.0)


def test_archive_mode_keeps_every_frame_and_claim_checks_are_fetched():
    messages = [_message(0, "door", 1, 10.0), _message(1, "door", 2, 11.0, b"", s3_key="frames/door/2.jpg")]
    outcome = _run(LagPolicy(None), messages, {"frames/door/2.jpg": b"jpeg"})
    assert [(r.source.seq, r.skip_reason, len(r.outputs[FACES])) for r in outcome.results] == [
        (1, None, 1), (2, None, 1)]
    assert not outcome.failed


def test_bad_messages_fail_with_their_stage_and_the_rest_of_the_batch_goes_on():
    messages = [
        InboundMessage(SourceRef("frames", 0, 0), b"door", b"jpeg", ()),  # no headers
        _message(1, "door", 2, 999.0, b"bad jpeg"),
        _message(2, "door", 3, 999.0, b"", s3_key=claim_check_key("door", 3)),  # its own key, not stored
        _message(3, "door", 4, 999.0),
    ]
    outcome = _run(LagPolicy(None), messages)
    assert [(f.image_key, f.stage) for f in outcome.failed] == [
        ("door", "parse"), ("door/3", "fetch"), ("door/2", "decode")]
    assert [r.source.seq for r in outcome.results] == [4]


def test_frame_headers_round_trip_and_validation():
    headers = frame_headers(42, 1234.5, 1920, 1080, "frames/c/42.jpg")
    frame = parse_frame(b"cam", b"", headers)
    assert (frame.camera_id, frame.seq, frame.captured_at, frame.width, frame.height, frame.s3_key, frame.jpeg) == (
        "cam", 42, 1234.5, 1920, 1080, "frames/c/42.jpg", None)
    assert parse_frame(b"cam", b"x", dict(frame_headers(1, 2.0, 3, 4))).jpeg == b"x"
    bad = [
        (None, b"x", frame_headers(1, 2.0, 3, 4), "camera id"),
        (b"cam", b"", frame_headers(1, 2.0, 3, 4), "neither"),
        (b"cam", b"x", [("vs-v", b"2")], "unknown frame version 2"),
        (b"cam", b"x", [h for h in frame_headers(1, 2.0, 3, 4) if h[0] != "vs-seq"], "vs-seq missing"),
        (b"cam", b"x", [*frame_headers(1, 2.0, 3, 4)[:1], ("vs-seq", b"x"), *frame_headers(1, 2.0, 3, 4)[2:]],
         "not a valid int"),
    ]
    for key, value, headers, message in bad:
        with pytest.raises(MalformedMessage, match=message):
            parse_frame(key, value, headers)


# --- enrolment -----------------------------------------------------------------------------------------

def test_enroll_without_weights_exits_with_a_clear_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.delenv("VISIONSTREAM_FACE_EMBEDDING_WEIGHTS", raising=False)
    monkeypatch.setenv("VISIONSTREAM_FACE_EMBEDDER", "inception_resnet_v1")
    assert main(["enroll", "someone", str(tmp_path / "photo.jpg")]) == 2
    out = capsys.readouterr().out
    assert "no face-embedding weights" in out and "VISIONSTREAM_FACE_EMBEDDING_WEIGHTS" in out
    assert "identification is disabled" in out
