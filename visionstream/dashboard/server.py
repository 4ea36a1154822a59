"""The dashboard's server: tails the pipeline's topics, polls PostgreSQL, pushes both to browsers.

Kafka is read outside any consumer group: every dashboard assigns itself all partitions and starts at
their end, so several dashboards each see every camera, a restarted one shows the newest frames at once,
and nothing is ever committed. Frames go to each browser at ``dashboard_fps`` (only the newest frame
of each camera, so a slow browser skips frames instead of queueing them), the panels every
``dashboard_refresh_seconds``. Nothing from the settings is sent to the page but the display rate.

Every request names an allowed Host, carries no foreign Origin and, where a token is set, presents it
(web_access.py); at most ``dashboard_max_clients`` browsers connect, and the page may send nothing but tiny
messages. A record that is not what its topic's writer sends is counted and logged, never fatal, and every
background task that fails is logged and started again.
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
from visionstream.core.kafka_client import check_kafka_connection, kafka_client_kwargs
from visionstream.core.retry import Backoff
from visionstream.dashboard.state import MAX_IMAGE_KEY, BadRecord, DashboardState
from visionstream.faces.visitors import visitors_since
from visionstream.frames.records import Frame, parse_frame
from visionstream.settings import Settings
from visionstream.web_access import TOKEN_COOKIE, WebAccess, is_loopback, presented_token

log = logging.getLogger(__name__)

REQUESTED_KEPT = 100_000  # image keys remembered with their request time, for the images' latency
FETCH_MAX_RECORDS = 500
INBOUND_MESSAGE_BYTES = 1024  # the page sends nothing; aiohttp's default would buffer 4 MiB per message
BAD_RECORD_LOG_SECONDS = 10.0  # bad records are logged at most this often per topic (the count says the rest)
RESTART_MAX_SECONDS = 10.0
# The page loads only itself; it is never framed; the token in /?token=... is never sent on as a referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

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


def dashboard_access(settings: Settings) -> WebAccess:
    """Who may use this dashboard; SystemExit naming the setting for a non-loopback bind without a token."""
    token = settings.dashboard_token.get_secret_value() if settings.dashboard_token else None
    if token is None and not is_loopback(settings.dashboard_host):
        raise SystemExit(f"VISIONSTREAM_DASHBOARD_HOST={settings.dashboard_host!r} is not a loopback address: "
                         "anyone who reaches it would see the cameras. Fix: set VISIONSTREAM_DASHBOARD_TOKEN "
                         "(and VISIONSTREAM_DASHBOARD_ALLOWED_HOSTS to the names browsers use), or bind 127.0.0.1")
    return WebAccess.for_bind(settings.dashboard_host, settings.dashboard_allowed_hosts, token)


class Dashboard:
    def __init__(self, settings: Settings, state: DashboardState | None = None) -> None:
        self.settings = settings
        self.state = state or DashboardState()
        self.access = dashboard_access(settings)
        self._requested: OrderedDict[str, float] = OrderedDict()
        self._clients: set[web.WebSocketResponse] = set()
        self._bad_logged: dict[str, float] = {}  # topic -> when a bad record of it was last logged

    # Kafka ---------------------------------------------------------------------------------------------

    async def _tail(self, topics: list[str], handle: Callable[[Any], None]) -> None:
        """Every record of ``topics`` from their end on, to ``handle``; never returns (see background)."""
        await check_kafka_connection(self.settings)  # a refused login is logged as such, not as "Unable to bootstrap"
        consumer = AIOKafkaConsumer(
            **kafka_client_kwargs(self.settings), group_id=None, enable_auto_commit=False,
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
                        except Exception as exc:  # noqa: BLE001 - whatever a record holds, the tail goes on
                            self._bad_record(record.topic, exc)
        finally:
            await consumer.stop()

    def _bad_record(self, topic: str, exc: Exception) -> None:
        counts = self.state.bad_records
        counts[topic] += 1
        now = self.state.clock()
        if now - self._bad_logged.get(topic, -BAD_RECORD_LOG_SECONDS) >= BAD_RECORD_LOG_SECONDS:
            self._bad_logged[topic] = now
            log.warning("dashboard: skipped a bad record of %s (%s: %s); %d so far", topic, type(exc).__name__,
                        str(exc)[:200], counts[topic])

    def _on_frame(self, record: Any) -> None:
        frame = parse_frame(record.key, record.value, record.headers)
        if frame.jpeg is not None:  # claim-checked frames (JPEG in S3) are not shown
            self.state.on_frame(frame)

    def _on_result(self, record: Any) -> None:
        settings = self.settings
        if record.topic == settings.images_topic:
            if not record.key or len(record.key) > MAX_IMAGE_KEY:
                raise BadRecord(f"an image request's key is not 1-{MAX_IMAGE_KEY} bytes")
            self._requested[record.key.decode("utf-8", "replace")] = record.timestamp / 1000.0
            if len(self._requested) > REQUESTED_KEPT:
                self._requested.popitem(last=False)
            return
        value = json.loads(record.value)
        if record.topic == settings.processed_frames_topic:
            self.state.on_processed_frame(value)
        elif record.topic == settings.predictions_topic:
            self.state.on_prediction(value, lambda image_key: self._requested.pop(image_key, None))
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
            "visitors": await visitors_since(conn),  # what /stats/visitors says (faces/visitors.py)
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
        try:
            while not ws.closed:
                for camera in [c for c in sent if c not in self.state.cameras]:  # evicted cameras
                    del sent[camera]
                for camera, view in list(self.state.cameras.items()):
                    if (shown := view.shown()) is None:
                        continue
                    frame, result = shown
                    if sent.get(camera) != (key := (frame.seq, result and result["seq"])):
                        sent[camera] = key
                        await ws.send_bytes(frame_message(frame, result))
                next_tick = max(next_tick + interval, time.monotonic())
                await asyncio.sleep(next_tick - time.monotonic())
        except (ConnectionError, RuntimeError) as exc:  # the browser went away mid-send
            log.debug("dashboard: a feed ended (%s)", exc)
        except Exception:  # a bug ends this browser's feed, not the dashboard; the page reconnects
            log.exception("dashboard: a browser's feed failed")
        finally:
            await ws.close()

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= self.settings.dashboard_max_clients:
            log.warning("dashboard: refused a browser: %d connected (VISIONSTREAM_DASHBOARD_MAX_CLIENTS)",
                        len(self._clients))
            raise web.HTTPServiceUnavailable(text="too many dashboard clients\n")
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=INBOUND_MESSAGE_BYTES)
        self._clients.add(ws)  # before the handshake's awaits: concurrent handshakes count against the cap
        feed: asyncio.Future[None] | None = None
        try:
            await ws.prepare(request)
            await ws.send_str(json.dumps({"type": "hello", "fps": self.settings.dashboard_fps}))
            await ws.send_str(json.dumps(self.state.panels()))
            feed = asyncio.ensure_future(self._feed(ws))
            async for message in ws:  # the page sends nothing; this waits for it to go away
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(ws)
            if feed is not None:
                feed.cancel()
                await asyncio.gather(feed, return_exceptions=True)
        return ws

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Every request: an allowed Host, no foreign Origin, the token where one is set (web_access.py)."""
        token = presented_token(request.headers, request.query, request.cookies)
        refusal = self.access.refusal(request.headers.get("Host"), request.headers.get("Origin"), token)
        if refusal is not None:
            log.warning("dashboard: refused %s %s from %s: %s", request.method, request.path, request.remote,
                        refusal)
            raise web.HTTPForbidden(text=f"{refusal}\n")
        response = await handler(request)
        if not isinstance(response, web.WebSocketResponse):
            response.headers.update(SECURITY_HEADERS)
            if self.access.token is not None and "token" in request.query:  # the page's later requests
                response.set_cookie(TOKEN_COOKIE, self.access.token, httponly=True, samesite="Strict", path="/")
        return response

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

        app = web.Application(middlewares=[self._guard], client_max_size=INBOUND_MESSAGE_BYTES)
        app.router.add_get("/", page)
        app.router.add_get(r"/static/{name:[a-z0-9_.-]+}", page)
        app.router.add_get("/ws", self.websocket)
        return app

    def background(self) -> list[Awaitable[None]]:
        """The dashboard's tasks, each supervised: a failure (broker down, a topic missing, a bug) is logged
        and the task started again."""
        s = self.settings
        results = [s.processed_frames_topic, s.identified_faces_topic, s.predictions_topic, s.images_topic]
        tasks: dict[str, Callable[[], Awaitable[None]]] = {
            f"tail of {s.frames_topic}": lambda: self._tail([s.frames_topic], self._on_frame),
            f"tail of {', '.join(results)}": lambda: self._tail(results, self._on_result),
            "PostgreSQL totals": self._poll_totals,
            "panel updates": self._broadcast_panels,
        }
        return [supervised(name, task) for name, task in tasks.items()]


async def supervised(name: str, task: Callable[[], Awaitable[None]]) -> None:
    """Runs ``task`` again whenever it fails, after a capped backoff; logs each failure."""
    await Backoff(maximum=RESTART_MAX_SECONDS).run(f"dashboard: {name}", task, (Exception,))


async def serve(settings: Settings, serving: Callable[[str], None]) -> None:
    """Serve until cancelled; ``serving(url)`` once the port is bound (the command prints it)."""
    dashboard = Dashboard(settings)
    # No access log: aiohttp's logs the request line with its query, and `/?token=...` is how a browser logs in.
    runner = web.AppRunner(dashboard.web_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.dashboard_host, settings.dashboard_port)
    await site.start()
    serving(f"http://{settings.dashboard_host}:{settings.dashboard_port}/")
    try:
        await asyncio.gather(*dashboard.background())
    finally:
        await runner.cleanup()
