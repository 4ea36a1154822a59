"""The dashboard's server: tails the pipeline's topics, polls PostgreSQL, pushes both to browsers.

Kafka is read outside any consumer group: every dashboard assigns itself all partitions and starts at
their end, so several dashboards each see every camera, a restarted one shows the newest frames at once,
and nothing is ever committed. Frames go to each browser at ``dashboard_fps`` (only the newest frame
of each camera, so a slow browser skips frames instead of queueing them), the panels every
``dashboard_refresh_seconds``. Nothing from the settings is sent to the page but the display rate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import asyncpg
from aiohttp import WSMsgType, web
from aiokafka import AIOKafkaConsumer, TopicPartition

from visionstream.core.db import connect
from visionstream.core.records import MalformedMessage
from visionstream.core.retry import Backoff
from visionstream.dashboard.state import DashboardState
from visionstream.frames.records import Frame, parse_frame
from visionstream.settings import Settings

log = logging.getLogger(__name__)

REQUESTED_KEPT = 100_000  # image keys remembered with their request time, for the images' latency
FETCH_MAX_RECORDS = 500

# Totals over everything PostgreSQL holds; each query reads an index or a small table.
TOTALS = {
    "images": "SELECT count(*) FROM prediction_results WHERE rank = 1",
    "top_categories": """SELECT category, count(*) AS images FROM prediction_results WHERE rank = 1
                         GROUP BY category ORDER BY images DESC, category LIMIT 10""",
    "dead_letters": "SELECT stage, count(*) AS messages FROM processing_errors GROUP BY stage ORDER BY stage",
    "frames": """SELECT status, count(*) AS frames, coalesce(sum(face_count), 0) AS faces FROM frame_results
                 GROUP BY status""",
    # Workers are known by the results they write (the local broker does not report group assignments).
    "workers": """
        SELECT hostname, topic, array_agg(DISTINCT "partition" ORDER BY "partition") AS partitions,
               extract(epoch FROM max(time)) AS last_result
        FROM prediction_results WHERE time > now() - make_interval(secs => $1) AND rank = 1 GROUP BY 1, 2
        UNION ALL
        SELECT hostname, topic, array_agg(DISTINCT "partition" ORDER BY "partition"),
               extract(epoch FROM max(processed_at))
        FROM frame_results WHERE captured_at > now() - make_interval(secs => $1) GROUP BY 1, 2
        ORDER BY 1, 2""",
}
WORKERS_SEEN_SECONDS = 60.0


def frame_message(frame: Frame, result: dict[str, Any] | None) -> bytes:
    """A binary WebSocket message: 4-byte big-endian header length, the JSON header (the frame and the result
    to draw on it), then the JPEG."""
    header = json.dumps({"camera": frame.camera_id, "seq": frame.seq, "captured_at": frame.captured_at,
                         "width": frame.width, "height": frame.height, "result": result}).encode()
    return struct.pack(">I", len(header)) + header + frame.jpeg  # type: ignore[operator]


class Dashboard:
    def __init__(self, settings: Settings, state: DashboardState | None = None) -> None:
        self.settings = settings
        self.state = state or DashboardState()
        self._requested: OrderedDict[str, float] = OrderedDict()
        self._clients: set[web.WebSocketResponse] = set()

    # Kafka ---------------------------------------------------------------------------------------------

    async def _tail(self, topics: list[str], handle: Callable[[Any], None]) -> None:
        """Every record of ``topics`` from their end on, to ``handle``; restarts after broker failures."""
        # _tail_once never returns; any failure (broker down, topic missing) starts it again.
        await Backoff(maximum=10.0).run(f"dashboard tail of {', '.join(topics)}",
                                        lambda: self._tail_once(topics, handle), (Exception,))

    async def _tail_once(self, topics: list[str], handle: Callable[[Any], None]) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
            client_id=f"{self.settings.app_id}-dashboard",
        )
        await consumer.start()
        try:
            await consumer.topics()  # fills the metadata cache
            partitions = [TopicPartition(topic, p) for topic in topics
                          for p in sorted(consumer.partitions_for_topic(topic) or ())]
            missing = set(topics) - {tp.topic for tp in partitions}
            if missing:
                raise RuntimeError(f"topics {', '.join(sorted(missing))} do not exist yet (visionstream topics)")
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=FETCH_MAX_RECORDS)
                for records in batches.values():
                    for record in records:
                        try:
                            handle(record)
                        except (MalformedMessage, ValueError, KeyError, TypeError) as exc:
                            log.debug("skipping a record of %s: %s", record.topic, exc)
        finally:
            await consumer.stop()

    def _on_frame(self, record: Any) -> None:
        frame = parse_frame(record.key, record.value, record.headers)
        if frame.jpeg is not None:  # claim-checked frames (JPEG in S3) are not shown
            self.state.on_frame(frame)

    def _on_result(self, record: Any) -> None:
        settings = self.settings
        if record.topic == settings.images_topic:
            if record.key:
                self._requested[record.key.decode("utf-8", "replace")] = record.timestamp / 1000.0
                if len(self._requested) > REQUESTED_KEPT:
                    self._requested.popitem(last=False)
            return
        value = json.loads(record.value)
        if record.topic == settings.processed_frames_topic:
            self.state.on_processed_frame(value)
        elif record.topic == settings.predictions_topic:
            self.state.on_prediction(value, self._requested.pop(value["image_key"], None))
        elif record.topic == settings.identified_faces_topic:
            self.state.on_identified(value)

    # PostgreSQL ----------------------------------------------------------------------------------------

    async def _poll_totals(self) -> None:
        conn: asyncpg.Connection | None = None
        while True:
            try:
                conn = conn if conn is not None and not conn.is_closed() else await connect(self.settings)
                self.state.totals = await self._totals(conn)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("dashboard: PostgreSQL totals failed (%s: %s); retrying", type(exc).__name__, exc)
                self.state.totals = {**self.state.totals, "error": "PostgreSQL unavailable"}
                if conn is not None:
                    conn.terminate()
                conn = None
            await asyncio.sleep(self.settings.dashboard_refresh_seconds)

    @staticmethod
    async def _totals(conn: asyncpg.Connection) -> dict[str, Any]:
        frames = {r["status"]: (r["frames"], r["faces"]) for r in await conn.fetch(TOTALS["frames"])}
        processed, faces = frames.get("processed", (0, 0))
        skipped = frames.get("skipped", (0, 0))[0]
        return {
            "images": await conn.fetchval(TOTALS["images"]),
            "top_categories": [dict(r) for r in await conn.fetch(TOTALS["top_categories"])],
            "dead_letters": {r["stage"]: r["messages"] for r in await conn.fetch(TOTALS["dead_letters"])},
            "frames": {"processed": processed, "skipped": skipped, "faces": faces,
                       "drop_rate": skipped / (processed + skipped) if processed + skipped else None},
            "workers": [{"hostname": r["hostname"], "topic": r["topic"], "partitions": list(r["partitions"]),
                         "last_result": float(r["last_result"])}
                        for r in await conn.fetch(TOTALS["workers"], WORKERS_SEEN_SECONDS)],
            "at": time.time(),
        }

    # Browsers ------------------------------------------------------------------------------------------

    async def _broadcast_panels(self) -> None:
        while True:
            message = json.dumps(self.state.panels())
            for ws in list(self._clients):
                if not ws.closed:
                    # Bounded: a browser that stopped reading does not hold up the others for long.
                    try:
                        await asyncio.wait_for(ws.send_str(message), 5.0)
                    except (ConnectionError, asyncio.TimeoutError, RuntimeError):
                        await ws.close()
            await asyncio.sleep(self.settings.dashboard_refresh_seconds)

    async def _feed(self, ws: web.WebSocketResponse) -> None:
        """Each camera's frame due now (see CameraView) with its result, at the display rate, each sent once."""
        interval = 1.0 / self.settings.dashboard_fps
        sent: dict[str, tuple[int, int | None]] = {}
        next_tick = time.monotonic()
        while not ws.closed:
            for camera, view in list(self.state.cameras.items()):
                if (shown := view.shown()) is None:
                    continue
                frame, result = shown
                if sent.get(camera) != (key := (frame.seq, result and result["seq"])):
                    sent[camera] = key
                    await ws.send_bytes(frame_message(frame, result))
            next_tick = max(next_tick + interval, time.monotonic())
            await asyncio.sleep(next_tick - time.monotonic())

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10.0)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "hello", "fps": self.settings.dashboard_fps}))
        await ws.send_str(json.dumps(self.state.panels()))
        self._clients.add(ws)
        feed = asyncio.ensure_future(self._feed(ws))
        try:
            async for message in ws:  # the page sends nothing; this waits for it to go away
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(ws)
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
        return ws

    # Serving -------------------------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        static = resources.files("visionstream.dashboard") / "static"

        async def page(request: web.Request) -> web.Response:
            name = request.match_info.get("name", "index.html")
            kinds = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
            kind = next((k for suffix, k in kinds.items() if name.endswith(suffix)), None)
            if kind is None or not (static / name).is_file():
                raise web.HTTPNotFound()
            return web.Response(body=(static / name).read_bytes(), content_type=kind,
                                headers={"Cache-Control": "no-cache"})

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get(r"/static/{name:[a-z0-9_.-]+}", page)
        app.router.add_get("/ws", self.websocket)
        return app

    def background(self) -> list[Awaitable[None]]:
        s = self.settings
        return [
            self._tail([s.frames_topic], self._on_frame),
            self._tail([s.processed_frames_topic, s.identified_faces_topic, s.predictions_topic, s.images_topic],
                       self._on_result),
            self._poll_totals(),
            self._broadcast_panels(),
        ]


async def serve(settings: Settings) -> None:
    dashboard = Dashboard(settings)
    runner = web.AppRunner(dashboard.web_app())
    await runner.setup()
    site = web.TCPSite(runner, settings.dashboard_host, settings.dashboard_port)
    await site.start()
    print(f"dashboard: http://{settings.dashboard_host}:{settings.dashboard_port}/", flush=True)
    try:
        await asyncio.gather(*dashboard.background())
    finally:
        await runner.cleanup()
