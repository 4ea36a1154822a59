"""The web surfaces' pure logic: who may ask (web_access.py), what the dashboard keeps of what it reads (every
record type-checked, every buffer bounded, idle cameras dropped), its supervised tasks, camera ids without
credentials, and reports a spreadsheet or matplotlib cannot be attacked through."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
from pathlib import Path

import pytest

from visionstream.cli.report import QUERIES, Table, draw_plots, format_csv
from visionstream.dashboard import state as dashboard_state
from visionstream.dashboard.server import dashboard_access, supervised
from visionstream.dashboard.state import BadRecord, CameraView, DashboardState
from visionstream.frames.producer import default_camera_id, video_sources, without_credentials
from visionstream.frames.records import Frame
from visionstream.settings import load_settings
from visionstream.web_access import WebAccess, host_of, is_loopback, stats_access

LOCAL = WebAccess.for_bind("127.0.0.1", [], None)


# Host, Origin, token --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "origin", "refused"), [
    ("127.0.0.1:6080", None, None),  # curl, scripts
    ("localhost:6080", "http://localhost:6080", None),  # the page itself
    ("[::1]:6080", "http://[::1]:6080", None),
    ("127.0.0.1:6080", "http://evil.example", "cross-origin request"),  # a foreign page's WebSocket
    ("127.0.0.1:6080", "http://127.0.0.1:9999", "cross-origin request"),  # another local server's page
    ("127.0.0.1:6080", "null", "cross-origin request"),  # sandboxed frames, file:// pages
    ("evil.example:6080", "http://evil.example:6080", "Host not allowed"),  # DNS rebinding
    ("127.0.0.1.evil.example", None, "Host not allowed"),
    (None, None, "Host not allowed"),
    ("127.0.0.1:notaport", None, "Host not allowed"),
])
def test_loopback_access_refuses_foreign_hosts_and_origins(host, origin, refused):
    refusal = LOCAL.refusal(host, origin, None)
    assert (refusal is None) if refused is None else refusal.startswith(refused)


def test_token_access_and_extra_hosts():
    access = WebAccess.for_bind("0.0.0.0", ["Dash.Example.org", " "], "s3cret")
    assert access.hosts == {"127.0.0.1", "localhost", "::1", "dash.example.org"}  # not the wildcard itself
    assert access.refusal("dash.example.org", None, "s3cret") is None
    assert access.refusal("dash.example.org", None, "wrong") == "missing or wrong token"
    assert access.refusal("dash.example.org", None, None) == "missing or wrong token"
    assert access.refusal("other.example.org", None, "s3cret").startswith("Host not allowed")
    assert host_of("[::1]:80") == "::1" and host_of("A.B:1") == "a.b" and host_of(":1") is None
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


def test_dashboard_on_a_non_loopback_bind_needs_a_token():
    with pytest.raises(SystemExit, match="VISIONSTREAM_DASHBOARD_TOKEN"):
        dashboard_access(load_settings(dashboard_host="0.0.0.0"))
    access = dashboard_access(load_settings(dashboard_host="0.0.0.0", dashboard_token="t",
                                            dashboard_allowed_hosts="dash.example.org"))
    assert access.token == "t" and "dash.example.org" in access.hosts
    assert dashboard_access(load_settings()).token is None


def test_worker_stats_pages_are_off_on_a_non_loopback_bind_without_a_token():
    assert stats_access(load_settings(web_host="0.0.0.0")) is None
    assert stats_access(load_settings(web_host="0.0.0.0", web_stats_token="t")).token == "t"
    local = stats_access(load_settings())
    assert local is not None and local.token is None


# What the dashboard reads ---------------------------------------------------------------------------------

def processed(**fields):
    record = {"camera_id": "c", "seq": 1, "captured_at": 1.0, "processed_at": 2.0, "latency": 0.5,
              "status": "processed", "skip_reason": None, "width": 4, "height": 4, "face_count": 1,
              "faces": [{"box": [0, 0, 1, 1], "probability": 0.9, "landmarks": [], "person": None}],
              "hostname": "h"}
    return {**record, **fields}


@pytest.mark.parametrize("record", [
    None, [], "text", 3,
    processed(camera_id=None), processed(camera_id=7), processed(camera_id="x" * 201),
    processed(seq="1"), processed(seq=True), processed(seq=-1), processed(seq=2**63),
    processed(latency="fast"), processed(latency=float("nan")), processed(captured_at=float("inf")),
    processed(width=0), processed(height=None), processed(face_count="2"),
    processed(faces=None), processed(faces=["face"]), processed(faces=[{"box": [1, 2], "probability": 1}]),
    processed(faces=[{"box": [1, 2, 3, "4"], "probability": 1}]), processed(faces=[{"box": [1, 2, 3, 4]}]),
    processed(faces=[{"box": [1, 2, 3, 4], "probability": 1, "person": ["x"]}]),
    processed(status=None), {"status": "skipped"},
])
def test_a_malformed_processed_frame_is_a_bad_record_and_changes_nothing(record):
    state = DashboardState(clock=lambda: 100.0)
    with pytest.raises(BadRecord):
        state.on_processed_frame(record)
    assert state.cameras == {} and state.panels()["frames_per_second"] == 0
    json.dumps(state.panels())  # the panels still serialise


@pytest.mark.parametrize(("handler", "record"), [
    ("on_prediction", {"image_key": 5, "time": 1.0}),
    ("on_prediction", {"image_key": "k" * 1025, "time": 1.0}),
    ("on_prediction", {"image_key": "k", "time": "now"}),
    ("on_prediction", ["k", 1.0]),
    ("on_identified", {"person": None, "similarity": 0.9}),
    ("on_identified", {"person": "ann", "similarity": "high"}),
    ("on_identified", {"person": "ann", "similarity": 0.9, "camera_id": {"a": 1}}),
    ("on_identified", {"person": "a" * 201, "similarity": 0.9}),
])
def test_malformed_predictions_and_identifications_are_bad_records(handler, record):
    state = DashboardState()
    arguments = (record, lambda key: None) if handler == "on_prediction" else (record,)
    with pytest.raises(BadRecord):
        getattr(state, handler)(*arguments)
    assert not state.identified and state.panels()["images_per_second"] == 0


def test_good_records_keep_only_what_the_page_shows():
    state = DashboardState(clock=lambda: 100.0)
    faces = [{"box": [i, i, i + 1, i + 1], "probability": 0.5, "landmarks": [[0, 0]], "person": "ann",
              "extra": "x" * 1000} for i in range(dashboard_state.FACES_KEPT + 10)]
    state.on_processed_frame(processed(faces=faces, face_count=len(faces)))
    (result,) = state.cameras["c"].results
    assert len(result["faces"]) == dashboard_state.FACES_KEPT
    assert set(result["faces"][0]) == {"box", "probability", "person"}
    state.on_identified({"person": "ann", "similarity": 0.95, "camera_id": "c", "captured_at": 1.0, "box": [],
                         "hostname": "h"})
    state.on_prediction({"image_key": "k", "time": 12.0}, {"k": 10.0}.get)
    panels = state.panels()
    assert panels["identified"] == [{"person": "ann", "similarity": 0.95, "camera_id": "c", "captured_at": 1.0}]
    assert panels["latency"]["images"]["p50"] == 2.0 and panels["cameras"] == ["c"]


def test_camera_frames_are_bounded_by_count_and_bytes_when_capture_time_stands_still():
    view = CameraView()
    for seq in range(dashboard_state.FRAMES_KEPT * 3):  # the same capture time: the time bound keeps all
        view.add_frame(Frame("c", seq, 100.0, 4, 4, b"j"))
    assert len(view.frames) == dashboard_state.FRAMES_KEPT and view.frames[-1].seq == seq
    big = b"x" * (dashboard_state.FRAME_BYTES_KEPT // 4 + 1)
    for seq in range(10_000, 10_010):
        view.add_frame(Frame("c", seq, 100.0, 4, 4, big))
    assert view.frame_bytes == sum(len(f.jpeg) for f in view.frames) <= dashboard_state.FRAME_BYTES_KEPT
    assert len(view.frames) == 3
    view.add_frame(Frame("c", 20_000, 100.0, 4, 4, b"y" * (dashboard_state.FRAME_BYTES_KEPT + 1)))
    assert [f.seq for f in view.frames] == [20_000]  # the newest frame is always shown


def test_cameras_are_capped_and_idle_ones_dropped():
    now = [1000.0]
    state = DashboardState(clock=lambda: now[0])
    for camera in range(dashboard_state.MAX_CAMERAS + 5):
        state.on_frame(Frame(f"cam{camera}", 1, 1.0, 4, 4, b"j"))
        state.on_processed_frame(processed(camera_id=f"cam{camera}"))
    assert len(state.cameras) == dashboard_state.MAX_CAMERAS and state.cameras_refused == 10
    assert set(state.faces_by_camera) <= set(state.cameras)
    now[0] += dashboard_state.CAMERA_IDLE_SECONDS / 2
    state.on_frame(Frame("cam0", 2, 2.0, 4, 4, b"j"))  # still live
    now[0] += dashboard_state.CAMERA_IDLE_SECONDS / 2 + 1
    state.on_frame(Frame("new", 1, 1.0, 4, 4, b"j"))  # room: the idle cameras go
    assert sorted(state.cameras) == ["cam0", "new"] and set(state.faces_by_camera) <= {"cam0"}
    now[0] += dashboard_state.CAMERA_IDLE_SECONDS + 1
    assert state.panels()["cameras"] == [] and state.faces_by_camera == {}


def test_a_supervised_task_that_fails_is_logged_and_started_again(caplog):
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise KeyError("a bug")
        raise asyncio.CancelledError  # the process stopping ends supervision

    with caplog.at_level(logging.WARNING), pytest.raises(asyncio.CancelledError):
        asyncio.run(asyncio.wait_for(supervised("test task", flaky), 10))
    assert len(runs) == 3
    assert sum("dashboard: test task failed (KeyError" in r.getMessage() for r in caplog.records) == 2


# Camera ids, reports --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "camera_id", "shown"), [
    ("rtsp://admin:hunter2@cam1.example:554/Streaming/101?token=abc#x", "cam1.example-554-Streaming-101",
     "rtsp://cam1.example:554/Streaming/101"),
    ("rtsp://cam1.example/live", "cam1.example-live", "rtsp://cam1.example/live"),  # unchanged
    ("http://user@[fd00::1]:8080/mjpg", "fd00-1-8080-mjpg", "http://[fd00::1]:8080/mjpg"),
    ("3", "device3", "3"),
    ("/videos/door.mp4", "door", "/videos/door.mp4"),
])
def test_camera_ids_and_shown_urls_carry_no_credentials(uri, camera_id, shown):
    assert default_camera_id(uri) == camera_id
    assert without_credentials(uri) == shown
    for secret in ("admin", "hunter2", "token", "abc", "user@"):
        assert secret not in camera_id and secret not in shown


def test_a_url_without_a_host_needs_a_camera_id():
    with pytest.raises(ValueError, match="--camera-id"):
        video_sources(["rtsp://user:pw@"], None)
    assert video_sources(["rtsp://user:pw@"], ["door"])[0].camera_id == "door"


def test_csv_cells_that_spreadsheets_would_run_are_quoted():
    table = Table("t", "T", ["camera_id", "shift", "note"],
                  [("=HYPERLINK(\"http://evil\")", -0.5, "+1"), ("@SUM(A1)", 2, "-x"), ("\tcmd", 0, "plain")])
    rows = list(csv.reader(io.StringIO(format_csv([table]))))
    assert rows[1] == ["'=HYPERLINK(\"http://evil\")", "-0.5", "'+1"]  # numbers stay numbers
    assert rows[2] == ["'@SUM(A1)", "2", "'-x"] and rows[3] == ["'\tcmd", "0", "plain"]


def test_plots_draw_camera_ids_that_look_like_math_text(tmp_path: Path):
    def table(name, columns, rows):
        return Table(name, name, columns, rows)

    tables = {
        **{name: table(name, [], []) for name in QUERIES},  # every chart's table, empty but these two
        "faces": table("faces", ["bucket", "camera_id", "frames", "faces", "faces_per_frame"],
                       [("2026-01-01T00:00:00", "$\\frac{a}{$", 1, 2, 2.0)]),
        "coverage": table("coverage", ["camera_id", "outcome", "frames", "share"],
                          [("$x^$", "processed", 3, 1.0), ("$\\bad", "skipped:lag", 1, 0.25)]),
    }
    written = draw_plots(tmp_path, tables, {})
    assert sorted(p.name for p in written) == ["coverage_per_camera.png", "faces_per_camera.png"]
    assert all(p.stat().st_size > 1000 for p in written)


# Result records the live tables key by ----------------------------------------------------------------------

@pytest.mark.parametrize(("record_type", "good", "bad"), [
    ("ProcessedFrame", {"camera_id": "door", "seq": 1, "captured_at": 1.0, "processed_at": 2.0, "latency": 1.0,
                        "status": "skipped", "skip_reason": "lag", "width": 4, "height": 4, "face_count": None,
                        "faces": [], "hostname": "h"},
     [{"camera_id": 7}, {"camera_id": "x" * 201}, {"status": {"s": 1}}, {"skip_reason": 5}, {"camera_id": ""}]),
    ("IdentifiedFace", {"person": "ann", "similarity": 0.9, "box": [0, 0, 1, 1], "hostname": "h"},
     [{"person": ["ann"]}, {"person": None}, {"person": "a" * 1025}]),
    ("Prediction", {"image_key": "k", "model": "m@1", "category": "cat", "confidence": 0.5, "top_k": [],
                    "hostname": "h", "time": 1.0},
     [{"category": 3}, {"model": None}, {"image_key": "k" * 1025}]),
    ("ImageFaces", {"image_key": "k", "model": "mtcnn@1", "face_count": 0, "faces": [], "hostname": "h",
                    "time": 1.0},
     [{"model": {"m": 1}}]),
])
def test_result_records_with_wrong_text_fields_do_not_decode(record_type, good, bad):
    from visionstream.core import records as core_records
    from visionstream.faces import records as face_records
    from visionstream.frames import records as frame_records

    cls = next(getattr(m, record_type) for m in (core_records, face_records, frame_records) if hasattr(m, record_type))
    assert cls.loads(json.dumps(good).encode(), serializer="json")  # a worker's record decodes
    for fields in bad:  # a forged one raises, which DeadLetteringTopic turns into a dead letter
        with pytest.raises(ValueError, match="is not a string of 1-"):
            cls.loads(json.dumps({**good, **fields}).encode(), serializer="json")
