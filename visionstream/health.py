"""GET /healthz and GET /readyz on the worker's web port, for orchestrators and load balancers.

/healthz is liveness: answering at all shows the process and its event loop run (a blocked loop
answers nothing, and the orchestrator's probe timeout restarts the worker). /readyz is readiness:

- ``models``: every agent that loads a model has its handler open (the agents open it through
  :meth:`Readiness.model_gate`);
- ``consumer_group``: the worker has joined its consumer group at least once. An empty assignment
  counts (a worker waiting for a partition, with more workers than partitions, is a ready standby), and
  a later rebalance does not make it unready: every worker rebalances at once, and failing them all
  would read as an outage to a PodDisruptionBudget or a rolling update;
- ``breaker``: no agent's dead-letter breaker has tripped (core/faults.py: DeadLetterBreaker); a tripped
  one holds its agent on purpose until the fix is deployed, and names the stage and the error here;
- ``s3`` and ``postgres``: a cheap request answers within ``PROBE_TIMEOUT``. Probe results are cached
  for ``CACHE_SECONDS``, so probes from several sources do not hammer the servers.

Bodies are small JSON objects naming each check; errors are described by type and S3 error code only,
never by message (which could carry a URL or a user name).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aioboto3
import asyncpg
from botocore.config import Config
from botocore.exceptions import ClientError

from visionstream.core.faults import BreakerTripped
from visionstream.core.fresh import FreshFor
from visionstream.core.s3 import client_kwargs
from visionstream.metrics import BREAKER_TRIPPED
from visionstream.settings import Settings

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

T = TypeVar("T")

PROBE_TIMEOUT = 2.0
CACHE_SECONDS = 2.0
# One attempt with short timeouts: a slow answer is the failure the S3 probe reports.
PROBE_S3_CONFIG = Config(connect_timeout=PROBE_TIMEOUT, read_timeout=PROBE_TIMEOUT, retries={"max_attempts": 1})


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


class Readiness:
    """What the worker itself knows: which model handlers are open and whether the group was joined."""

    def __init__(self) -> None:
        self._expected: set[str] = set()
        self._open: Counter[str] = Counter()
        self.group_joined = False
        self._tripped: dict[str, BreakerTripped] = {}

    def breaker_closed(self, agent: str) -> None:
        """The agent's breaker is armed and closed: its series at 0 (stage and error empty), so that the
        metric the alert rule reads exists before anything trips."""
        BREAKER_TRIPPED.labels(agent, "", "").set(0)

    def breaker_tripped(self, agent: str, tripped: BreakerTripped) -> None:
        self._tripped[agent] = tripped
        with contextlib.suppress(KeyError):  # armed by breaker_closed
            BREAKER_TRIPPED.remove(agent, "", "")
        BREAKER_TRIPPED.labels(agent, tripped.stage, tripped.error).set(1)

    def breaker(self) -> Check:
        if self._tripped:
            return Check(False, "; ".join(f"{agent}: tripped at stage {t.stage} by {t.error}"
                                          for agent, t in sorted(self._tripped.items())))
        return Check(True, "closed")

    def model_gate(self, name: str, opener: Callable[..., AbstractAsyncContextManager[T]]
                   ) -> Callable[..., AbstractAsyncContextManager[T]]:
        """Declare that agent ``name`` loads a model in ``opener`` (its handler's context manager); the model
        counts as loaded while a handler opened through the returned wrapper is open."""
        self._expected.add(name)

        @asynccontextmanager
        async def opened(*args: Any, **kwargs: Any) -> AsyncIterator[T]:
            async with opener(*args, **kwargs) as handler:
                self._open[name] += 1
                try:
                    yield handler
                finally:
                    self._open[name] -= 1

        return opened

    def models(self) -> Check:
        waiting = sorted(name for name in self._expected if self._open[name] <= 0)
        if waiting:
            return Check(False, "loading: " + ", ".join(waiting))
        return Check(True, "loaded: " + ", ".join(sorted(self._expected)))

    def consumer_group(self, assignment: Callable[[], Iterable[Any]], rebalancing: bool) -> Check:
        if not self.group_joined:
            return Check(False, "consumer group not joined yet")
        per_topic = Counter(tp.topic for tp in assignment())
        detail = ", ".join(f"{topic}: {n}" for topic, n in sorted(per_topic.items())) or \
            "no partitions assigned (waiting for assignment)"
        return Check(True, f"joined; {detail}{'; rebalancing' if rebalancing else ''}")


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return f"ClientError {exc.response.get('Error', {}).get('Code')}"
    return type(exc).__name__


class CachedProbe:
    """Runs ``probe`` at most once per ``ttl`` seconds; concurrent callers share one run."""

    def __init__(self, probe: Callable[[], Awaitable[None]], ttl: float = CACHE_SECONDS,
                 timeout: float = PROBE_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._timeout = timeout
        self._fresh = FreshFor(self._run, ttl, clock)

    async def __call__(self) -> Check:
        return await self._fresh.get()

    async def _run(self) -> Check:
        try:
            await asyncio.wait_for(self._probe(), self._timeout)
            return Check(True, "ok")
        except TimeoutError:
            return Check(False, f"no answer within {self._timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - any failure is "not reachable"; the type says which
            return Check(False, describe_error(exc))


async def postgres_probe(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=PROBE_TIMEOUT)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close(timeout=PROBE_TIMEOUT)


async def s3_probe(client: Any, bucket: str) -> None:
    """HEAD the bucket. 403 passes: the server answered, and a worker's credentials need only GetObject."""
    try:
        await client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
            raise



def readiness_body(checks: Mapping[str, Check]) -> tuple[int, dict[str, Any]]:
    failed = [name for name, check in checks.items() if not check.ok]
    body = {"ready": not failed, "failed": failed, "checks": {name: c.as_json() for name, c in checks.items()}}
    return (503 if failed else 200), body


class S3Probe:
    """HEADs the bucket with one client, made on first use (no connection is made before) and kept."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def __call__(self) -> None:
        if self._client is None:
            kwargs = client_kwargs(self._settings)
            kwargs["config"] = kwargs["config"].merge(PROBE_S3_CONFIG)
            self._client = await self._stack.enter_async_context(aioboto3.Session().client("s3", **kwargs))
        await s3_probe(self._client, self._settings.s3_bucket)

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


def register_health(app: VisionApp) -> None:
    settings = app.settings
    readiness = app.readiness
    s3 = S3Probe(settings)
    probes = {"s3": CachedProbe(s3), "postgres": CachedProbe(lambda: postgres_probe(settings))}

    @app.on_rebalance_complete.connect
    async def _joined(sender: Any, **_: Any) -> None:
        readiness.group_joined = True

    @app.on_before_shutdown.connect
    async def _close(sender: Any, **_: Any) -> None:
        await s3.close()

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        results = await asyncio.gather(*(probe() for probe in probes.values()))
        checks = {
            "models": readiness.models(),
            "consumer_group": readiness.consumer_group(app.consumer.assignment, app.rebalancing),
            "breaker": readiness.breaker(),
            **dict(zip(probes, results)),
        }
        status, body = readiness_body(checks)
        return web.json(body, status=status)
