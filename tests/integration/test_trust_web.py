"""Issue 23's web attacks against a real worker and dashboard on the local stack, each shown failing while the
legitimate use goes on: a foreign page's WebSocket and a DNS-rebinding Host are refused while the page itself
gets frames; malformed records of every kind on every topic the dashboard reads are counted and skipped; a
camera URL's credentials never reach the camera id, PostgreSQL, the metrics or a log; the worker's /stats pages
want their token on a non-loopback bind, answer only a same-origin request for an allowed Host, list a bounded
number of cameras, and Faust's own table and router pages are off."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator

import aiohttp
import cv2
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from visionstream.core.db import connect
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import LoggedProcess, WorkerProcess
from visionstream.frames.producer import EncodedFrame, encode_jpeg, produce_frames
from visionstream.frames.records import frame_headers
from visionstream.topics import ensure_topics

from .test_dashboard import _until as until

STATS_TOKEN = "stats-token-for-the-test"
CAMERA_USER, CAMERA_PASSWORD = "camadmin", "hunter2-camera-password"
MAX_CAMERAS = 3  # the worker's metrics_max_cameras: /stats/frames names this many cameras at most
MAX_CLIENTS = 3


def jpeg(shade: int) -> bytes:
    return encode_jpeg(np.full((48, 64, 3), shade, np.uint8), None, 80)[0]


async def frames_of(cameras: list[str], count: int, seq0: int) -> AsyncIterator[EncodedFrame]:
    for seq in range(seq0, seq0 + count):
        for camera in cameras:
            yield EncodedFrame(camera, seq, time.time(), 64, 48, jpeg(seq % 250))


def run(coroutine):
    return asyncio.run(coroutine)


def get(port: int, path: str, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def system(stack, tmp_path_factory):
    """A worker bound to 0.0.0.0 with a /stats token and a loopback dashboard, on topics of their own."""
    name = f"trust{uuid.uuid4().hex[:6]}"
    folder = tmp_path_factory.mktemp(name)
    topics = {f"{kind}_topic": f"{name}-{kind}" for kind in (
        "images", "predictions", "image_faces", "dead_letter", "replay", "frame_replay", "frames",
        "processed_frames", "identified_faces")}
    overrides = dict(
        app_id=name, hostname=f"host-{name}", topic_partitions=1, top_k=1, allow_random_weights=True,
        compile_model=False, device="cpu", image_analyzers="classify,faces", frame_analyzers="classify",
        frame_mode="archive", metrics_max_cameras=MAX_CAMERAS, web_host="0.0.0.0", web_port=free_port(),
        web_stats_token=STATS_TOKEN, dashboard_port=free_port(), dashboard_refresh_seconds=0.3,
        dashboard_max_clients=MAX_CLIENTS, **topics,
    )
    settings = stack.settings(**overrides)
    env = stack.env(**overrides)
    run(ensure_topics(settings))
    processes: list[LoggedProcess] = []
    try:
        worker = WorkerProcess(env, folder / "worker.log", settings.web_port)
        processes.append(worker)
        dashboard = LoggedProcess("dashboard", [sys.executable, "-m", "visionstream.cli.main", "dashboard"], env,
                                  folder / "dashboard.log", ready_line="dashboard: http://")
        processes.append(dashboard)
        worker.wait_ready()
        dashboard.wait_ready()
        yield settings, env, folder, {"worker": worker, "dashboard": dashboard}
    finally:
        for process in reversed(processes):
            process.stop()


class Page:
    """A dashboard WebSocket as the page opens it: same origin, reading frames and panels."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict] = []
        self.panels: dict | None = None

    async def read_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self):
            message = await self.ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
            if message.type == aiohttp.WSMsgType.BINARY:
                (length,) = struct.unpack(">I", message.data[:4])
                self.frames.append(json.loads(message.data[4:4 + length]))
            elif message.type == aiohttp.WSMsgType.TEXT and (body := json.loads(message.data))["type"] == "panels":
                self.panels = body
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise AssertionError(f"the dashboard closed the page's WebSocket: {message}")


async def keep_producing(settings, cameras: list[str], stop: asyncio.Event, seq0: int) -> None:
    """Frames for ``cameras`` every 0.2 s until ``stop`` (the dashboard tails from the end: it sees new ones)."""
    seq = seq0
    while not stop.is_set():
        await produce_frames(settings, frames_of(cameras, 1, seq))
        seq += 1
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass


def test_foreign_origin_and_rebinding_host_are_refused_while_the_page_gets_frames(system):
    settings, _, _, _ = system
    port = settings.dashboard_port
    base = f"http://127.0.0.1:{port}"

    async def scenario():
        stop = asyncio.Event()
        producing = asyncio.ensure_future(keep_producing(settings, ["door"], stop, 1))
        try:
            async with aiohttp.ClientSession() as session:
                # The page: same origin. It gets the door camera's frames.
                async with session.ws_connect(f"{base}/ws", origin=base) as ws:
                    page = Page(ws)
                    await page.read_until(lambda p: any(f["camera"] == "door" for f in p.frames), 60)
                    # A foreign page's WebSocket (no same-origin policy for WebSockets) is refused at the handshake.
                    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null"):
                        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                            await session.ws_connect(f"{base}/ws", origin=origin)
                        assert refused.value.status == 403
                    # DNS rebinding: evil.example resolved to 127.0.0.1 sends its own name as Host.
                    rebound = {"Host": f"evil.example:{port}"}
                    async with session.get(f"{base}/", headers=rebound) as response:
                        assert response.status == 403
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await session.ws_connect(f"{base}/ws", headers=rebound, origin=f"http://evil.example:{port}")
                    assert refused.value.status == 403
                    async with session.get(f"{base}/") as response:  # the page itself loads, with its headers
                        assert response.status == 200
                        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
                    # Client cap: this page and MAX_CLIENTS - 1 more; the next is refused.
                    others = [await session.ws_connect(f"{base}/ws", origin=base) for _ in range(MAX_CLIENTS - 1)]
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await session.ws_connect(f"{base}/ws", origin=base)
                    assert refused.value.status == 503
                    for other in others:
                        await other.close()
                    # The page sends nothing; a large message closes that connection (1009), not the server.
                    async with session.ws_connect(f"{base}/ws", origin=base) as chatty:
                        await chatty.send_str("x" * 64 * 1024)
                        message = await chatty.receive(timeout=10)
                        while message.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                            message = await chatty.receive(timeout=10)
                        assert chatty.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                    seen = len(page.frames)
                    await page.read_until(lambda p: len(p.frames) > seen, 30)  # the page still gets frames
        finally:
            stop.set()
            await producing

    run(scenario())


# Malformed records: every topic the dashboard reads, every kind of wrong.
def bad_records(settings) -> dict[str, list[tuple[bytes | None, bytes | None, list]]]:
    good = frame_headers(1, time.time(), 64, 48)
    processed = {"camera_id": "door", "seq": 5, "captured_at": time.time(), "processed_at": time.time(),
                 "latency": 0.1, "status": "processed", "skip_reason": None, "width": 64, "height": 48,
                 "face_count": 0, "faces": [], "hostname": "h"}

    def js(value) -> bytes:
        return json.dumps(value).encode()

    typed = [js({**processed, field: value}) for field, value in (
        ("seq", "5"), ("latency", "slow"), ("width", None), ("camera_id", 7), ("faces", "none"),
        ("faces", [{"box": [1, 2], "probability": 1}]), ("captured_at", [1]), ("status", {"s": 1}))]
    return {
        settings.frames_topic: [
            (None, jpeg(1), good), (b"x" * 300, jpeg(1), good), (b"\xff\xfe", jpeg(1), good),
            (b"door", jpeg(1), [("vs-v", b"1")]), (b"door", jpeg(1), [*good[:1], ("vs-seq", b"-1"), *good[2:]]),
            (b"door", None, good), (b"door", jpeg(1), [*good[:3], ("vs-width", b"99999999")])],
        settings.processed_frames_topic: [
            (b"door", None, []), (b"door", b"not json", []), (b"door", b"[1, 2]", []), (b"door", b"1e999", []),
            (b"door", b"[" * 100_000, []), (b"door", b'{"status": "processed"}', []),
            *((b"door", value, []) for value in typed)],
        settings.identified_faces_topic: [
            (b"ann", b"{", []), (b"ann", js({"person": None, "similarity": 0.9}), []),
            (b"ann", js({"person": "ann", "similarity": "0.9"}), []), (b"ann", js(["ann"]), [])],
        settings.predictions_topic: [
            (b"k", js({"image_key": None, "time": 1.0}), []), (b"k", js({"image_key": "k"}), []),
            (b"k", b"9" * 5000, []), (b"k", js({"image_key": "k", "time": "now"}), [])],
        settings.images_topic: [(None, js({"image_key": "k"}), []), (b"k" * 2000, b"{}", [])],
    }


def test_the_dashboard_counts_malformed_records_on_every_topic_and_goes_on(system):
    settings, _, _, running = system
    base = f"http://127.0.0.1:{settings.dashboard_port}"
    sent = bad_records(settings)

    async def scenario():
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{base}/ws", origin=base) as ws:
            page = Page(ws)
            producer = AIOKafkaProducer(**kafka_client_kwargs(settings), max_request_size=2_000_000)
            await producer.start()
            try:
                for topic, records in sent.items():
                    for key, value, headers in records:
                        await producer.send_and_wait(topic, value, key=key, headers=headers)
            finally:
                await producer.stop()
            expected = {topic: len(records) for topic, records in sent.items()}
            await page.read_until(lambda p: p.panels and p.panels["bad_records"] == expected, 60)
            # Alive and still showing good records: a frame, and a processed-frame result drawn with it.
            stop = asyncio.Event()
            producing = asyncio.ensure_future(keep_producing(settings, ["after-bad"], stop, 1000))
            try:
                await page.read_until(lambda p: any(f["camera"] == "after-bad" for f in p.frames), 60)
            finally:
                stop.set()
                await producing
            # A browser logs in with ?token=: the request line (and its query) must reach no log.
            async with session.get(f"{base}/?token=canary-token-in-a-query") as response:
                await response.read()
            return page.panels

    panels = run(scenario())
    assert set(panels["bad_records"]) == {settings.frames_topic, settings.processed_frames_topic,
                                          settings.identified_faces_topic, settings.predictions_topic,
                                          settings.images_topic}
    dashboard = running["dashboard"]
    assert dashboard.process.poll() is None
    log = dashboard.log_text()
    assert "skipped a bad record of" in log and "Traceback" not in log
    assert "canary-token-in-a-query" not in log


class CameraServer:
    """An MJPEG clip over HTTP that only answers with the camera's user and password (basic auth), as an IP
    camera does; in a thread of its own."""

    def __init__(self, path) -> None:
        self.port = free_port()
        self.authorized = 0
        self._path = path
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        from aiohttp import web

        expected = "Basic " + base64.b64encode(f"{CAMERA_USER}:{CAMERA_PASSWORD}".encode()).decode()

        async def clip(request):
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="camera"'})
            self.authorized += 1
            return web.FileResponse(self._path)

        async def serve():
            app = web.Application()
            app.router.add_get("/live/clip.avi", clip)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_camera_credentials_stay_out_of_ids_rows_metrics_and_logs(system, tmp_path):
    settings, env, folder, running = system
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(20):
        writer.write(np.full((120, 160, 3), i * 10, np.uint8))
    writer.release()
    server = CameraServer(clip)
    try:
        url = f"http://{CAMERA_USER}:{CAMERA_PASSWORD}@127.0.0.1:{server.port}/live/clip.avi?channel=1"
        producer = LoggedProcess("producer", [sys.executable, "-m", "visionstream.cli.main", "produce", "video", url,
                                              "--limit", "8"], env, folder / "producer.log", ready_line="")
        assert producer.process.wait(120) == 0, producer.log_text()
    finally:
        server.stop()
    assert server.authorized >= 1  # the credentials were used, to the camera
    camera = f"127.0.0.1-{server.port}-live-clip.avi"
    assert f"{camera}: 8" in producer.log_text()

    async def camera_ids():
        conn = await connect(settings)
        try:
            return await conn.fetch("SELECT camera_id, count(*) AS frames FROM frame_results "
                                    "WHERE camera_id LIKE $1 GROUP BY 1", f"%{server.port}%")
        finally:
            await conn.close()

    rows = until("the camera's frames in PostgreSQL", 120,
                 lambda: (r := run(camera_ids())) and sum(x["frames"] for x in r) == 8 and r)
    assert [row["camera_id"] for row in rows] == [camera]
    # The metrics are recorded after the rows are written.
    metrics = until("the camera in the metrics", 30, lambda: (m := get(settings.web_port, "/metrics")[1])
                    and camera.encode() in m and m)
    texts = {"metrics": metrics.decode()} | {name: process.log_text() for name, process in running.items()}
    texts["producer"] = producer.log_text()
    for name, text in texts.items():
        for secret in (CAMERA_PASSWORD, f"{CAMERA_USER}:", "channel=1"):
            assert secret not in text, f"{secret!r} in the {name} output"


def test_worker_stats_need_the_token_and_an_allowed_same_origin_request(system):
    settings, _, _, _ = system
    port = settings.web_port
    bearer = {"Authorization": f"Bearer {STATS_TOKEN}"}
    # Probes and Prometheus need nothing.
    for path in ("/healthz", "/metrics"):
        assert get(port, path)[0] == 200, path
    assert get(port, "/readyz")[0] in (200, 503)
    # Faust's own pages that answer by default (faust.web.base DEFAULT_BLUEPRINTS) are off: table keys
    # (each person's count) and every worker's URL.
    for path in ("/table/", "/table/identified-per-person/", "/table/frame-outcomes/door/processed/", "/router/",
                 "/router/frame-outcomes/", "/graph/", "/assignment/", "/performance/"):
        assert get(port, path, **bearer)[0] == 404, path
    for path in ("/stats/frames", "/stats/categories", "/stats/image-faces", "/stats/consumer", "/stats/people"):
        assert get(port, path)[0] == 403, path
        assert get(port, path, Authorization="Bearer wrong")[0] == 403, path
        assert get(port, path, **bearer, Origin="http://evil.example")[0] == 403, path
        assert get(port, path, **bearer, Host=f"evil.example:{port}")[0] == 403, path
    status, body = get(port, "/stats/frames", **bearer)
    assert status == 200 and "cameras" in json.loads(body)
    status, body = get(port, "/stats/people?token=" + STATS_TOKEN)
    assert status == 200 and json.loads(body)["people_counted"] == 0


def test_worker_stats_name_a_bounded_number_of_cameras_and_no_forged_one(system):
    settings, _, _, _ = system
    bearer = {"Authorization": f"Bearer {STATS_TOKEN}"}

    def stats() -> dict:
        return json.loads(get(settings.web_port, "/stats/frames", **bearer)[1])

    def unnamed_frames(body: dict) -> int:  # frames of the flood cameras or counted as "other"
        return sum(sum(c["frames"].values()) for name, c in body["cameras"].items()
                   if name.startswith(("flood-", "other:")))

    before = unnamed_frames(stats())
    # Result records are written by workers, but a forged one must not become a table key: Faust checks no
    # str field, so camera id 7 and status {"s": 1} were counted as camera "7" and outcome "{'s': 1}".
    forged = {"camera_id": 7, "seq": 1, "captured_at": time.time(), "processed_at": time.time(), "latency": 0.1,
              "status": "processed", "skip_reason": None, "width": 64, "height": 48, "face_count": 0,
              "faces": [], "hostname": "h"}

    async def send_forged():
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
        await producer.start()
        try:
            for record in (forged, {**forged, "camera_id": "forged", "status": {"s": 1}}):
                await producer.send_and_wait(settings.processed_frames_topic, json.dumps(record).encode(),
                                             key=b"forged")
        finally:
            await producer.stop()

    run(send_forged())
    cameras = [f"flood-{i}" for i in range(MAX_CAMERAS + 3)]
    run(produce_frames(settings, frames_of(cameras, 2, 1)))
    body = until("every flood frame counted", 120,
                 lambda: (b := stats()) and unnamed_frames(b) == before + 2 * len(cameras) and b)
    named = [name for name in body["cameras"] if not name.startswith("other:")]
    assert len(named) <= MAX_CAMERAS and "other:0" in body["cameras"], sorted(body["cameras"])
    assert "7" not in body["cameras"] and "forged" not in body["cameras"], sorted(body["cameras"])
