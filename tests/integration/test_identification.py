"""Real face identification with dlib's embedder: portraits, augmented copies, people of the arcade clip,
enrolment rejections, and finding people after the fact in stored embeddings (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from visionstream.cli.main import main
from visionstream.core.analyzers import Analyzer
from visionstream.faces.records import FACES, IDENTIFY
from visionstream.core.db import connect, create_pool, migrate
from visionstream.core.faults import RetryPolicy, ServiceHealth
from visionstream.core.pipeline import AnalysisPipeline, InboundMessage, Prepare
from visionstream.core.records import SourceRef
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.faces.detector import FaceDetector
from visionstream.faces.dlib_embedder import DlibEmbedder
from visionstream.faces.enroll import EnrolmentError, photo_embeddings
from visionstream.faces.history import EmbeddingSink
from visionstream.faces.identifier import DEFAULT_THRESHOLDS, FaceIdentifier
from visionstream.faces.identities import IdentityMatcher, mean_embedding
from visionstream.frames.input import FrameInput, LagPolicy
from visionstream.frames.records import frame_headers
from visionstream.images.producer import produce_keys
from visionstream.settings import load_settings

from ..media import ARCADE_VIDEO, media_file, portraits
from .stacks import read_records, seed_stack

THRESHOLD = DEFAULT_THRESHOLDS["dlib"]
ARCADE_START, ARCADE_STEP = 40, 3  # frames 40, 43, ... 103: the enrolled person walks across the scene


@pytest.fixture(scope="module")
def detector():
    return FaceDetector.from_settings(load_settings(device="cpu", face_detect_max_side=960))


@pytest.fixture(scope="module")
def embedder():
    return DlibEmbedder()


@pytest.fixture(scope="module")
def enrolled(detector, embedder):
    photos = portraits()
    names = [photo.parent.name for photo in photos]
    return IdentityMatcher(names, photo_embeddings(detector, embedder, photos), THRESHOLD, embedder.model_id)


@pytest.fixture(scope="module")
def arcade():
    capture = cv2.VideoCapture(str(media_file(*ARCADE_VIDEO)))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(bgr)
    capture.release()
    return frames


def _jpeg(bgr: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _embed_all(detector, embedder, jpegs):
    frames = [detector.prepare(jpeg) for jpeg in jpegs]
    faces = detector.detect(frames)
    return faces, [embedder.embed_faces(frame, found) for frame, found in zip(frames, faces, strict=True)]


AUGMENTS = {
    "mirrored": lambda im: cv2.flip(im, 1),
    "rotated": lambda im: cv2.warpAffine(im, cv2.getRotationMatrix2D((im.shape[1] / 2, im.shape[0] / 2), 12, 1.0),
                                         im.shape[1::-1], borderMode=cv2.BORDER_REFLECT),
    "quarter size": lambda im: cv2.resize(im, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA),
    "darker, recompressed": lambda im: cv2.imdecode(
        cv2.imencode(".jpg", cv2.convertScaleAbs(im, alpha=0.6, beta=-10), [cv2.IMWRITE_JPEG_QUALITY, 30])[1], 1),
}


def test_embedder_carries_its_version_and_unit_vectors(embedder, enrolled):
    assert embedder.model_id.startswith("dlib_resnet_v1@file-")
    assert enrolled.embedder == embedder.model_id and len(enrolled) == 2


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmented_copies_of_each_portrait_are_identified(detector, embedder, enrolled, augment):
    for photo in portraits():
        (faces,), (vectors,) = _embed_all(detector, embedder, [_jpeg(AUGMENTS[augment](cv2.imread(str(photo))))])
        assert len(faces) == 1
        (match,) = enrolled.match(vectors)
        assert match is not None and match.person == photo.parent.name, (photo, augment, match)
        assert match.embedder == embedder.model_id


def test_portraits_are_not_confused_with_each_other_or_with_arcade_people(detector, embedder, enrolled, arcade):
    photos = portraits()
    references = photo_embeddings(detector, embedder, photos)
    for index, photo in enumerate(photos):  # each portrait against a matcher holding only the others
        others = [i for i in range(len(photos)) if i != index]
        matcher = IdentityMatcher([photos[i].parent.name for i in others], references[others], THRESHOLD)
        assert matcher.match(references[[index]]) == [None], photo
    faces, vectors = _embed_all(detector, embedder, [_jpeg(bgr) for bgr in arcade[::15]])
    assert sum(map(len, faces)) >= 30
    assert [m for v in vectors for m in enrolled.match(v) if m is not None] == []


def _centres(faces):
    return np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in faces])


def nearest_person_box(detector, bgr: np.ndarray) -> list[float]:
    """The box of the frame's largest (nearest) face."""
    faces = detector.detect([detector.prepare(_jpeg(bgr))])[0]
    return max(faces, key=lambda f: f.box[2] - f.box[0]).box


def face_crop(bgr: np.ndarray, box: list[float]) -> np.ndarray:
    """A face with half its width around it: an enrolment photo taken from a frame."""
    x1, y1, x2, y2 = box
    margin = 0.5 * (x2 - x1)
    return bgr[int(max(0, y1 - margin)):int(y2 + margin), int(max(0, x1 - margin)):int(x2 + margin)]


def test_arcade_person_enrolled_from_one_frames_crop_is_found_in_later_frames(detector, embedder, arcade, tmp_path):
    x1, y1, x2, y2 = box = nearest_person_box(detector, arcade[ARCADE_START])
    photo = tmp_path / "crop.jpg"
    photo.write_bytes(_jpeg(face_crop(arcade[ARCADE_START], box)))
    matcher = IdentityMatcher(["walker"], photo_embeddings(detector, embedder, [photo]), THRESHOLD)

    faces, vectors = _embed_all(detector, embedder, [_jpeg(b) for b in arcade[ARCADE_START + ARCADE_STEP::ARCADE_STEP]])
    # Ground truth by position: the person's face is the one nearest where it was a step before.
    position, width = np.array([(x1 + x2) / 2, (y1 + y2) / 2]), x2 - x1
    same = found = others = false_matches = 0
    for frame_faces, frame_vectors in zip(faces, vectors, strict=True):
        if not frame_faces:
            continue
        distance = np.linalg.norm(_centres(frame_faces) - position, axis=1)
        nearest = int(distance.argmin()) if distance.min() < width else None
        for index, match in enumerate(matcher.match(frame_vectors)):
            if index == nearest:
                same += 1
                found += match is not None
            else:
                others += 1
                false_matches += match is not None
        if nearest is not None:
            position = _centres(frame_faces)[nearest]
    print(f"enrolled arcade person identified in {found}/{same} later frames; "
          f"{false_matches}/{others} other faces matched")
    assert same >= 15 and found / same >= 0.9
    assert others >= 50 and false_matches / others <= 0.01


def test_photos_with_no_face_or_two_faces_are_rejected(detector, embedder, tmp_path, capsys):
    from skimage import data

    empty = tmp_path / "coffee.jpg"
    empty.write_bytes(_jpeg(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)))
    pair = tmp_path / "pair.jpg"
    a, b = (cv2.resize(cv2.imread(str(p)), (600, 800)) for p in portraits()[:2])
    pair.write_bytes(_jpeg(np.hstack([a, b])))
    with pytest.raises(EnrolmentError, match="no face found"):
        photo_embeddings(detector, embedder, [empty])
    with pytest.raises(EnrolmentError, match="2 faces found"):
        photo_embeddings(detector, embedder, [pair])
    assert main(["enroll", "nobody", str(portraits()[0]), str(pair)]) == 2
    assert "exactly one face" in capsys.readouterr().out


# --- after the fact, on the real PostgreSQL -------------------------------------------------------------

class _Store:
    async def get_many(self, requests):
        assert not requests, "frames carry their JPEG inline"
        return []


def _store_history(settings, detector, embedder, jpegs, camera):
    """Frames through the real frame pipeline with identification on and nobody enrolled, embeddings stored."""
    async def run():
        await migrate(settings)
        pool = await create_pool(settings)
        try:
            with ThreadPoolExecutor(1) as executor:
                identifier = FaceIdentifier(embedder, IdentityMatcher([], np.zeros((0, 128)), THRESHOLD))
                faces = Analyzer(FACES, "detect", detector.model_id, detector.decode_size, detector.prepare_decoded,
                                 detector.detect, detector)
                identify = Analyzer(IDENTIFY, "identify", embedder.model_id, None, None,
                                    lambda pairs: identifier([p for p, _ in pairs], [f for _, f in pairs]),
                                    after=FACES)
                analyzers = [faces, identify]
                pipeline = AnalysisPipeline(FrameInput(LagPolicy(None)), _Store(), analyzers,
                                            Prepare(analyzers, 10**8), executor, executor)
                messages = [InboundMessage(SourceRef("frames", 0, i), camera.encode(), jpeg,
                                           frame_headers(i, 1_700_000_000.0 + i, 1920, 1080))
                            for i, jpeg in enumerate(jpegs)]
                outcome = await pipeline.run(messages)
                assert not outcome.failed
                health = ServiceHealth("PostgreSQL", lambda: pool.fetchval("SELECT 1"))
                await EmbeddingSink(pool, embedder.model_id, RetryPolicy(2), health, "history").write(outcome)
                return outcome
        finally:
            await pool.close()

    return asyncio.run(run())


def test_backfill_finds_past_sightings_without_a_model_and_purge_forgets(
        stack, detector, embedder, monkeypatch, capsys):
    settings = stack.settings()
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    photos = portraits()
    # History: both portraits and a mirrored copy of the first; enrolling the first finds two of them.
    history = [photos[0].read_bytes(), _jpeg(cv2.flip(cv2.imread(str(photos[0])), 1)), photos[1].read_bytes()]
    outcome = _store_history(settings, detector, embedder, history, camera)
    assert sum(len(r.outputs[FACES]) for r in outcome.results) == 3

    for variable, value in stack.env().items():
        monkeypatch.setenv(variable, value)
    calls = {"embed": 0, "detect": 0}
    real_embed, real_detect = DlibEmbedder.embed_faces, FaceDetector.detect

    def counted_embed(self, frame, faces):
        calls["embed"] += 1
        return real_embed(self, frame, faces)

    def counted_detect(self, frames):
        calls["detect"] += 1
        return real_detect(self, frames)

    monkeypatch.setattr(DlibEmbedder, "embed_faces", counted_embed)
    monkeypatch.setattr(FaceDetector, "detect", counted_detect)
    name = f"{photos[0].parent.name}-{camera}"
    assert main(["enroll", "--backfill", name, str(photos[0])]) == 0
    out = capsys.readouterr().out
    # The models ran once, for the enrolment photo; the history was matched without them.
    assert calls == {"embed": 1, "detect": 1}, calls

    async def check():
        conn = await connect(settings)
        try:
            sightings = await conn.fetch("SELECT source, camera_id, captured_at, similarity FROM face_sightings "
                                         "WHERE person = $1 ORDER BY source", name)
            assert [(r["source"], r["camera_id"]) for r in sightings] == [(f"{camera}/0", camera), (f"{camera}/1", camera)]
            assert all(r["similarity"] >= THRESHOLD for r in sightings)
            stored = await conn.fetchval("SELECT count(*) FROM face_embeddings WHERE camera_id = $1", camera)
            assert stored == 3
        finally:
            await conn.close()

    asyncio.run(check())
    assert "2 past sighting(s)" in out and f"camera={camera}" in out

    assert main(["people", "list"]) == 0
    assert f"{name}\t{embedder.model_id}\t1 photo(s)" in capsys.readouterr().out
    # Their visits (faces/visits.py) follow the name and go with the person; a stranger's stay.
    visit = "INSERT INTO visits VALUES ($1, $2, 1, 2, now(), now(), 2, 0.99, $3)"
    asyncio.run(_execute(settings, [(visit, f"{camera}/1/0", camera, name), (visit, f"{camera}/1/1", camera, None)]))
    assert main(["people", "rename", name, f"{name}-2"]) == 0
    assert asyncio.run(_visitors(settings, camera)) == [f"{name}-2", None]
    assert main(["people", "remove", f"{name}-2"]) == 0
    assert asyncio.run(_visitors(settings, camera)) == [None]
    assert main(["people", "remove", f"{name}-2"]) == 1
    assert main(["people", "purge"]) == 0  # within the retention period: nothing goes
    assert "deleted 0 stored" in capsys.readouterr().out

    async def remaining():
        conn = await connect(settings)
        try:
            return await conn.fetchval("SELECT count(*) FROM face_embeddings")
        finally:
            await conn.close()

    stored = asyncio.run(remaining())  # this test's 3, and any other module's on the session stack
    assert stored >= 3
    assert main(["people", "purge", "--all"]) == 0
    assert f"deleted {stored} stored" in capsys.readouterr().out
    assert asyncio.run(remaining()) == 0


async def _execute(settings, statements):
    conn = await connect(settings)
    try:
        for statement, *args in statements:
            await conn.execute(statement, *args)
    finally:
        await conn.close()


async def _visitors(settings, camera):
    conn = await connect(settings)
    try:
        return [r["person"] for r in await conn.fetch(
            "SELECT person FROM visits WHERE camera_id = $1 ORDER BY visit_id", camera)]
    finally:
        await conn.close()


def test_mean_of_several_photos_still_identifies(detector, embedder):
    photo = portraits()[0]
    image = cv2.imread(str(photo))
    _, vectors = _embed_all(detector, embedder, [_jpeg(image), _jpeg(cv2.flip(image, 1))])
    reference = mean_embedding(np.concatenate(vectors))
    assert float(reference @ vectors[0][0]) > 0.98


# --- identification on S3 images, through a real worker ---------------------------------------------------

def test_s3_image_of_an_enrolled_person_names_them(stack, monkeypatch, tmp_path):
    """Enrol a shared portrait, put another photo of that person (mirrored, rotated, rescaled) and the other
    portrait in S3, produce their keys: the worker's image_faces rows name the person on the first only, and
    the identified-faces topic carries the match keyed by person."""
    name = f"s3id{uuid.uuid4().hex[:8]}"
    overrides = dict(
        app_id=name, images_topic=f"{name}-images", image_faces_topic=f"{name}-image-faces",
        identified_faces_topic=f"{name}-identified", dead_letter_topic=f"{name}-dead", topic_partitions=1,
        image_analyzers="faces", frame_analyzers="", hostname=f"host-{name}", web_port=free_port(), device="cpu",
    )
    settings = stack.settings(**overrides)
    enrolled, other = portraits()[:2]
    person = f"{enrolled.parent.name}-{name}"
    for variable, value in stack.env().items():
        monkeypatch.setenv(variable, value)
    assert main(["enroll", person, str(enrolled)]) == 0

    image = cv2.flip(cv2.imread(str(enrolled)), 1)
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D((image.shape[1] / 2, image.shape[0] / 2), 8, 1.0),
                             image.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    photos = {f"{name}/same-person.jpg": _jpeg(cv2.resize(rotated, None, fx=0.6, fy=0.6)),
              f"{name}/other-person.jpg": other.read_bytes()}

    asyncio.run(seed_stack(settings, photos))
    worker = WorkerProcess(stack.env(**overrides), tmp_path / "worker.log", settings.web_port)
    try:
        worker.wait_ready()

        async def scenario():
            async def keys():
                for key in photos:
                    yield key, settings.s3_bucket

            assert await produce_keys(settings, keys()) == len(photos)
            conn = await connect(settings)
            try:
                deadline = time.monotonic() + 120
                while len(rows := await conn.fetch("SELECT image_key, face_count, faces FROM image_faces "
                                                   "WHERE hostname = $1", settings.hostname)) < len(photos):
                    assert time.monotonic() < deadline, f"timed out with {len(rows)} image_faces rows"
                    await asyncio.sleep(0.5)
                return {row["image_key"]: row for row in rows}
            finally:
                await conn.close()

        rows = asyncio.run(scenario())
        log = worker.log_text()
    finally:
        worker.stop()
    same, different = rows[f"{name}/same-person.jpg"], rows[f"{name}/other-person.jpg"]
    assert same["face_count"] == 1 and different["face_count"] == 1
    (face,) = json.loads(same["faces"])
    assert face["person"] == person and face["similarity"] >= THRESHOLD, face
    assert face["embedder"].startswith("dlib_resnet_v1@")
    assert json.loads(different["faces"])[0]["person"] != person
    assert "S3 images: faces (mtcnn@" in log and "; no other model loaded" in log
    assert re.search(r"faces: identifying \d+ enrolled people with dlib_resnet_v1@", log), log
    identified = [(key.decode(), json.loads(value)) for key, value in
                  asyncio.run(read_records(settings, settings.identified_faces_topic))]
    assert [(key, record["image_key"]) for key, record in identified if key == person] == [
        (person, f"{name}/same-person.jpg")]
    assert identified[0][1]["camera_id"] is None
