"""GET /healthz and /readyz: the readiness rules offline, then a real worker on its own local stack.

The module runs its own LocalStack (like test_reliability.py) because it stops PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest

from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.health import CachedProbe, Check, Readiness, readiness_body

from .stacks import running_stack

# Offline: the rules ------------------------------------------------------------------------------------


def test_models_are_ready_only_while_every_gate_is_open():
    readiness = Readiness()

    @asynccontextmanager
    async def opener(label: str):
        yield f"handler {label}"

    classify, faces = readiness.model_gate("classify", opener), readiness.model_gate("faces", opener)

    async def scenario() -> list[Check]:
        seen = [readiness.models()]
        async with classify("c") as handler:
            assert handler == "handler c"  # the wrapper hands the agent its own handler
            seen.append(readiness.models())
            async with faces("f"):
                seen.append(readiness.models())
        seen.append(readiness.models())  # the agents' handlers closed (stopping or crashed)
        return seen

    before, one, both, after = asyncio.run(scenario())
    assert (before.ok, before.detail) == (False, "loading: classify, faces")
    assert (one.ok, one.detail) == (False, "loading: faces")
    assert (both.ok, both.detail) == (True, "loaded: classify, faces")
    assert not after.ok


def test_a_handler_that_fails_to_open_leaves_its_model_not_loaded():
    readiness = Readiness()

    @asynccontextmanager
    async def broken():
        raise OSError("weights unreadable")
        yield

    gate = readiness.model_gate("classify", broken)

    async def scenario() -> None:
        async with gate():
            pass

    with pytest.raises(OSError):
        asyncio.run(scenario())
    assert readiness.models() == Check(False, "loading: classify")


def test_consumer_group_is_ready_once_joined_even_without_partitions():
    readiness = Readiness()
    tps = [SimpleNamespace(topic="vs-images", partition=p) for p in range(3)]

    def never_called() -> list:
        pytest.fail("assignment read before the group was joined")

    assert readiness.consumer_group(never_called, rebalancing=True) == Check(False, "consumer group not joined yet")
    readiness.group_joined = True
    assert readiness.consumer_group(list, rebalancing=False) == Check(
        True, "joined; no partitions assigned (waiting for assignment)")
    assert readiness.consumer_group(lambda: tps, rebalancing=True) == Check(True, "joined; vs-images: 3; rebalancing")


def test_probe_results_are_cached_and_shared():
    now = [100.0]
    calls = []

    async def probe() -> None:
        calls.append(now[0])
        await asyncio.sleep(0.05)

    cached = CachedProbe(probe, ttl=2.0, timeout=1.0, clock=lambda: now[0])

    async def scenario() -> list[Check]:
        first = await asyncio.gather(*(cached() for _ in range(5)))  # concurrent callers: one run
        now[0] = 101.5
        await cached()  # within the ttl: cached
        now[0] = 102.5
        await cached()  # past it: probed again
        return first

    assert asyncio.run(scenario()) == [Check(True, "ok")] * 5
    assert calls == [100.0, 102.5]


def test_probe_failures_name_the_error_type_only():
    async def refused() -> None:
        raise ConnectionRefusedError("connect to postgresql://vs:hunter2@db:5432 failed")

    async def hangs() -> None:
        await asyncio.sleep(10)

    assert asyncio.run(CachedProbe(refused)()) == Check(False, "ConnectionRefusedError")
    started = time.monotonic()
    assert asyncio.run(CachedProbe(hangs, timeout=0.2)()) == Check(False, "no answer within 0.2s")
    assert time.monotonic() - started < 2


def test_readiness_body_is_503_naming_each_failed_check():
    status, body = readiness_body({"models": Check(True, "loaded: classify"), "postgres": Check(False, "OSError")})
    assert status == 503
    assert body == {"ready": False, "failed": ["postgres"], "checks": {
        "models": {"ok": True, "detail": "loaded: classify"}, "postgres": {"ok": False, "detail": "OSError"}}}
    assert readiness_body({"models": Check(True, "x")})[0] == 200


# A real worker -----------------------------------------------------------------------------------------

MODEL_LINES = ("S3 images: classify (squeezenet1_1@", "frames: faces (mtcnn@")  # logged by the handler openers
JOIN_LINE = "Executing _on_partitions_assigned"  # Faust, on the group's first assignment


@pytest.fixture(scope="module")
def hstack(tmp_path_factory):
    """This module's own stack: the test stops PostgreSQL, which must not disturb other modules."""
    with running_stack(tmp_path_factory.mktemp("health")) as local:
        yield local


def get(port: int, path: str) -> tuple[int, dict] | None:
    """(status, JSON body), or None while nothing answers on the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
    except OSError:
        return None


def poll(worker: WorkerProcess, until, timeout: float, what: str) -> list[dict]:
    """GET /readyz and /healthz every 0.1 s until ``until(readyz)``; every answer, with what the log said
    right after it (a check that passed must have its cause in the log by then)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.log_text()[-4000:]}")
        readyz, healthz = get(worker.web_port, "/readyz"), get(worker.web_port, "/healthz")
        if readyz is not None:
            log = worker.log_text()
            seen.append({"readyz": readyz, "healthz": healthz, "models_logged": all(m in log for m in MODEL_LINES),
                         "join_logged": JOIN_LINE in log})
            if until(readyz):
                return seen
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last answers {seen[-3:]}\n"
                         f"{worker.log_text()[-4000:]}")


def test_ready_after_model_and_group_join_and_not_while_postgres_is_down(hstack, tmp_path):
    name = f"health{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = hstack.env(app_id=name, images_topic=f"{name}-images", predictions_topic=f"{name}-predictions",
                     dead_letter_topic=f"{name}-dead", frames_topic=f"{name}-frames",
                     allow_random_weights=True, compile_model=False, hostname="health", web_port=port)
    secrets = [env["VISIONSTREAM_S3_SECRET_ACCESS_KEY"], env["VISIONSTREAM_DATABASE_URL"]]
    worker = WorkerProcess(env, tmp_path / "worker.log", port)
    try:
        started = time.monotonic()
        startup = poll(worker, lambda r: r[0] == 200, 120, "/readyz to answer 200")
        ready_s = time.monotonic() - started
        *before, ready = startup
        # Not ready while a model was loading or the group was not joined; S3 and PostgreSQL were up.
        assert before, "the first answer was already 200: the test saw no not-ready worker"
        for answer in before:
            status, body = answer["readyz"]
            assert status == 503 and body["ready"] is False
            assert set(body["failed"]) <= {"models", "consumer_group"} and body["failed"], body
        for answer in startup:
            checks = answer["readyz"][1]["checks"]
            assert answer["models_logged"] or not checks["models"]["ok"], answer
            assert answer["join_logged"] or not checks["consumer_group"]["ok"], answer
        checks = ready["readyz"][1]["checks"]
        assert checks["models"] == {"ok": True, "detail": "loaded: classify, faces"}
        assert f"{name}-images: 4" in checks["consumer_group"]["detail"]  # one worker: all 4 partitions
        assert all(answer["healthz"] == (200, {"status": "ok"}) for answer in startup)

        stopped_at = time.monotonic()
        hstack.stop_server("postgres")
        outage = poll(worker, lambda r: r[0] == 503, 15, "/readyz to answer 503 with PostgreSQL stopped")
        noticed_s = time.monotonic() - stopped_at
        assert outage[-1]["readyz"][1]["failed"] == ["postgres"]
        time.sleep(3)  # past the cache: still not ready
        still = get(port, "/readyz")
        assert still is not None and still[0] == 503 and still[1]["failed"] == ["postgres"]
        hstack.up()
        back_at = time.monotonic()
        recovery = poll(worker, lambda r: r[0] == 200, 30, "/readyz to answer 200 after the restart")
        recovered_s = time.monotonic() - back_at

        # An S3 outage is named too: check s3, with the error's type only.
        hstack.stop_server("s3")
        s3_outage = poll(worker, lambda r: r[0] == 503, 15, "/readyz to answer 503 with S3 stopped")
        assert s3_outage[-1]["readyz"][1]["failed"] == ["s3"], s3_outage[-1]
        s3_detail = s3_outage[-1]["readyz"][1]["checks"]["s3"]["detail"]
        hstack.up()
        s3_recovery = poll(worker, lambda r: r[0] == 200, 30, "/readyz to answer 200 after S3's restart")
        outages, recoveries = outage + s3_outage, recovery + s3_recovery
        assert all(answer["healthz"] == (200, {"status": "ok"}) for answer in outages + recoveries)
        for answer in startup + outages + recoveries:
            text = json.dumps(answer["readyz"][1])
            assert not any(secret in text for secret in secrets)
    finally:
        worker.stop()
    print(f"\nhealth: ready {ready_s:.1f}s after start ({len(before)} not-ready answers first, failed: "
          f"{sorted({f for a in before for f in a['readyz'][1]['failed']})}); PostgreSQL stop noticed in "
          f"{noticed_s:.1f}s ({outage[-1]['readyz'][1]['checks']['postgres']['detail']}); ready again "
          f"{recovered_s:.1f}s after the restart; S3 stopped: {s3_detail}")
