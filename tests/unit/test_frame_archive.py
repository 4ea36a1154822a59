"""The frame archive's key scheme, its sink under the fault model, and the replay's frame selection (no servers)."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from visionstream.core.analyzers import Analyzer, OutputContext
from visionstream.core.faults import RetryPolicy
from visionstream.core.pipeline import AnalyzedImage, ImageOutcome
from visionstream.core.records import SourceRef, check_object_key
from visionstream.core.sinks import INSERT_ANALYZER_RESULTS
from visionstream.faces.analyzer import face_outputs
from visionstream.faces.records import FACES
from visionstream.faces.visits import UPSERT_VISITS
from visionstream.frames.archive import (
    FrameArchiveSink,
    archive_key,
    camera_segment,
    claim_check_key,
)
from visionstream.frames.input import frame_input
from visionstream.frames.records import MAX_CAMERA_ID, Frame, frame_of
from visionstream.frames.replay import FrameSelection
from visionstream.frames.sinks import (
    INSERT_FRAME_FACES,
    INSERT_FRAMES,
    frame_columns,
    frame_face_columns,
)
from visionstream.settings import Settings
from visionstream.worker.assemble import declared_outputs

DAY = dt.datetime(2026, 3, 4, 23, 59, 59, tzinfo=dt.timezone.utc).timestamp()


def frame(camera: str = "door", seq: int = 7, jpeg: bytes | None = b"\xff\xd8jpeg", s3_key: str | None = None) -> Frame:
    return Frame(camera, seq, DAY, 64, 48, jpeg, s3_key)


@pytest.mark.parametrize("camera", ["door", "a/b", "..", ".", "cam 1", "100%", "ü" * MAX_CAMERA_ID,
                                    "\U0001f600" * MAX_CAMERA_ID, "x" * MAX_CAMERA_ID])
def test_any_camera_id_is_one_valid_key_segment(camera):
    segment = camera_segment(camera)
    assert "/" not in segment and segment not in (".", "..") and len(segment.encode()) <= 255
    key = archive_key(frame(camera))
    assert key == f"frames/{segment}/2026-03-04/7.jpg"  # the capture date in UTC
    check_object_key(key, "archive key")  # what a claim-check header must satisfy, so a replay can carry it


def test_segments_tell_cameras_apart_and_claim_checks_are_reused():
    cameras = ["a/b", "a%2Fb", "a b", "a+b", "ü" * MAX_CAMERA_ID, "ü" * (MAX_CAMERA_ID - 1) + "v", ".", "%2E"]
    assert len({camera_segment(c) for c in cameras}) == len(cameras)
    assert camera_segment("door-1_a.b~") == "door-1_a.b~"  # readable ids stay readable
    claimed = frame("a/b", 9, None, claim_check_key("a/b", 9))
    assert archive_key(claimed) == "frames/a%2Fb/9.jpg"  # three segments: never an archive key (four)


class FakeS3:
    """put_object answers with the scripted errors first, then stores."""

    def __init__(self, errors=()):
        self.errors = list(errors)
        self.objects: dict[str, bytes] = {}

    async def put_object(self, Bucket, Key, Body, ContentType, IfNoneMatch=None):  # noqa: N803 (boto3's names)
        if self.errors:
            raise self.errors.pop(0)
        if IfNoneMatch == "*" and Key in self.objects:  # what S3 and SeaweedFS answer (test_trust measures it)
            raise ClientError({"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}},
                              "PutObject")
        self.objects[Key] = Body

    async def head_bucket(self, Bucket):  # noqa: N803
        if self.errors:
            raise self.errors[0]


def outcome(*frames: Frame, skipped: Frame | None = None) -> ImageOutcome:
    """The frames input's results: processed frames with no face found, and a skipped one."""
    results = [AnalyzedImage(f.frame_key, SourceRef("vs-frames", 0, i), {FACES: []}, f, (f.width, f.height))
               for i, f in enumerate(frames)]
    if skipped is not None:
        results.append(AnalyzedImage(skipped.frame_key, SourceRef("vs-frames", 0, 99), {}, skipped,
                                     skip_reason="lag"))
    return ImageOutcome(results=results, computed_at=DAY + 1)


def run_sink(client: FakeS3, batch: ImageOutcome, sleeps: list[float]) -> None:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    sink = FrameArchiveSink(client, Settings(), RetryPolicy(3, initial=0.5, maximum=2.0, sleep=sleep))
    asyncio.run(sink.write(batch))


def test_sink_archives_processed_inline_frames_only():
    client, sleeps = FakeS3(), []
    batch = outcome(frame("door", 1), frame("door", 2, None, "frames/door/2.jpg"), skipped=frame("door", 3))
    run_sink(client, batch, sleeps)
    assert client.objects == {"frames/door/2026-03-04/1.jpg": b"\xff\xd8jpeg"}
    assert len(batch.results) == 3 and not batch.failed and not sleeps
    columns = frame_columns(batch.results, batch.computed_at, "host", archive=True)
    assert columns[-1] == ["frames/door/2026-03-04/1.jpg", "frames/door/2.jpg", None]  # archive_key
    assert frame_columns(batch.results, batch.computed_at, "host")[-1] == [None, None, None]  # archive off
    faces = frame_face_columns(batch.results, batch.computed_at, "mtcnn@v-side960", "host", "openvino")
    assert faces[1] == [1, 2] and faces[2] == ["mtcnn@v-side960"] * 2  # processed frames only, under the version
    assert faces[-1] == ["openvino"] * 2  # what ran MTCNN's nets, in its own column (migration 0016)


def test_sink_waits_out_an_s3_outage_without_an_attempt_limit():
    client, sleeps = FakeS3([EndpointConnectionError(endpoint_url="http://s3")] * 8), []
    batch = outcome(frame("door", 1))
    run_sink(client, batch, sleeps)  # 8 failures > 3 attempts: an outage is not the frame's fault
    assert list(client.objects) == ["frames/door/2026-03-04/1.jpg"] and not batch.failed
    assert len(sleeps) >= 8


def test_a_frame_s3_refuses_is_dead_lettered_and_the_rest_archived():
    refused = ClientError({"Error": {"Code": "InvalidRequest"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                          "PutObject")
    client, sleeps = FakeS3([refused]), []
    batch = outcome(frame("door", 1), frame("door", 2))
    run_sink(client, batch, sleeps)
    assert [(f.image_key, f.stage) for f in batch.failed] == [("door/1", "archive")]
    assert [frame_of(r).seq for r in batch.results] == [2] and list(client.objects) == ["frames/door/2026-03-04/2.jpg"]


def test_an_archived_frame_is_never_replaced_and_a_412_is_no_failure():
    client, sleeps = FakeS3(), []
    run_sink(client, outcome(frame("door", 1)), sleeps)
    again = outcome(frame("door", 1), frame("door", 1, b"\xff\xd8forged"))  # redelivered, then forged
    run_sink(client, again, sleeps)
    assert client.objects == {"frames/door/2026-03-04/1.jpg": b"\xff\xd8jpeg"}
    assert len(again.results) == 2 and not again.failed and not sleeps


def test_frame_selection_binds_every_value():
    since = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    query, args = FrameSelection("x'; DROP TABLE frame_results; --", since=since, only_missing="mtcnn@v",
                                 limit=5).query()
    assert "DROP" not in query and args == ["x'; DROP TABLE frame_results; --", since, "mtcnn@v", 5]
    assert "archive_key IS NOT NULL" in query and query.endswith("ORDER BY f.captured_at, f.seq LIMIT $4")


def frame_tables(settings: Settings, *analyzers: Analyzer) -> list[str]:
    """The INSERTs of a frames worker's PostgreSQL transaction, as the composition root declares them."""
    topics = SimpleNamespace(processed_frames_topic="processed", identified_faces_topic="identified",
                             predictions_topic="predictions")
    context = OutputContext("frames", {a.name: a for a in analyzers}, settings, topics, lambda name: name,
                            RetryPolicy(3))
    return [t.insert for t in declared_outputs(frame_input(settings), analyzers, context).tables]


def test_frame_faces_are_stored_when_the_detector_runs_and_the_archive_sink_only_when_on():
    detector = Analyzer(FACES, "detect", "mtcnn@v-side960", None, None, list, SimpleNamespace(backend="torch"),
                        outputs=face_outputs)  # the model: a FaceDetector's backend is all the rows read of it
    plugin = Analyzer("plugin", "plugin", "p@1", None, None, list)
    untracked = Settings(face_tracking=False)
    assert frame_tables(untracked, detector) == [INSERT_FRAMES, INSERT_FRAME_FACES]
    assert frame_tables(untracked, plugin) == [INSERT_FRAMES, INSERT_ANALYZER_RESULTS]
    policy = RetryPolicy(3)
    database = SimpleNamespace(pool=None, health=None)  # the worker's PostgresSink: nothing connects at build
    off = Settings(face_tracking=False)
    assert frame_input(off).stores(off, FakeS3(), policy, database) == []  # off: nothing built
    on = Settings(frame_archive=True, face_tracking=False)
    [(name, sink)] = frame_input(on).stores(on, FakeS3(), policy, database)
    assert name == "archive" and isinstance(sink, FrameArchiveSink)
    # Visits (faces/visits.py), on by default: the tracker after the archive, the visits table after the rows.
    both = Settings(frame_archive=True)
    assert [name for name, _ in frame_input(both).stores(both, FakeS3(), policy, database)] == ["archive", "tracking"]
    assert frame_tables(both, detector) == [INSERT_FRAMES, INSERT_FRAME_FACES, UPSERT_VISITS]
    no_faces = Settings(frame_analyzers="classify")
    assert frame_input(no_faces).stores(no_faces, FakeS3(), policy, database) == []
