"""The fault model (faults.py) and each service's classifier: pure logic, with fakes for the services."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
)
from faust.exceptions import ProducerSendError

from visionstream.core.faults import (
    BadMessage,
    Fault,
    RetryPolicy,
    ServiceHealth,
    describe,
    isolate_failures,
    run_each,
    run_isolated,
)
from visionstream.core.s3 import s3_fault
from visionstream.core.sinks import db_fault, kafka_fault

from ..clock import Clock


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


class Probe:
    def __init__(self, works: bool) -> None:
        self.works = works
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if not self.works:
            raise ConnectionRefusedError("down")


def policy(sleeps: list[float], clock: Clock | None = None, attempts: int = 3) -> RetryPolicy:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)
        if clock is not None:
            clock.now += seconds

    return RetryPolicy(attempts, initial=0.5, maximum=2.0, sleep=sleep)


def failing(errors: list[BaseException], result: str = "ok"):
    """An operation that raises each error in turn, then returns result."""
    calls = []

    async def operation() -> str:
        await asyncio.sleep(0)  # a request takes a while: other requests run meanwhile
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return operation, calls


def run(coro):
    return asyncio.run(coro)


def test_a_bad_message_is_given_up_at_once_without_asking_the_service():
    probe, sleeps = Probe(works=True), []
    operation, calls = failing([client_error("InvalidRequest", 400)])
    with pytest.raises(BadMessage) as caught:
        run(policy(sleeps).run("GET", operation, s3_fault, ServiceHealth("S3", probe)))
    assert (caught.value.attempts, len(calls), probe.calls, sleeps) == (1, 1, 0, [])


def test_an_outage_is_waited_out_however_long_it_lasts():
    probe, sleeps = Probe(works=False), []
    operation, calls = failing([EndpointConnectionError(endpoint_url="http://s3")] * 10)
    assert run(policy(sleeps, attempts=3).run("GET", operation, s3_fault, ServiceHealth("S3", probe))) == "ok"
    assert len(calls) == 11 and probe.calls == 10
    assert sleeps == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_a_message_failing_while_the_service_works_gets_bounded_attempts():
    probe, sleeps = Probe(works=True), []
    operation, calls = failing([client_error("InternalError", 500)] * 10)
    with pytest.raises(BadMessage) as caught:
        run(policy(sleeps, attempts=3).run("GET", operation, s3_fault, ServiceHealth("S3", probe)))
    assert caught.value.attempts == 3 and len(calls) == 3
    assert "InternalError" in caught.value.reason and "3 attempts while S3 worked" in caught.value.reason


def test_another_requests_success_means_the_service_works_without_a_probe():
    probe, clock = Probe(works=False), Clock()
    health = ServiceHealth("S3", probe, clock=clock)
    operation, calls = failing([client_error("InternalError", 500)] * 10)

    async def scenario() -> None:
        async def other_request_succeeds() -> None:
            while True:
                await asyncio.sleep(0)
                clock.now += 0.01
                health.succeeded()

        other = asyncio.ensure_future(other_request_succeeds())
        try:
            await policy([], clock, attempts=2).run("GET", operation, s3_fault, health)
        finally:
            other.cancel()

    with pytest.raises(BadMessage) as caught:
        run(scenario())
    assert caught.value.attempts == 2  # the probe always fails: only the other requests made these count


def test_a_service_coming_back_does_not_count_the_waits_as_attempts():
    probe, sleeps = Probe(works=False), []
    operation, calls = failing([client_error("ServiceUnavailable", 503)] * 5 + [client_error("InternalError", 500)])
    health = ServiceHealth("S3", probe)

    async def scenario() -> str:
        async def probe_recovers(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 5:
                probe.works = True

        return await RetryPolicy(2, sleep=probe_recovers).run("GET", operation, s3_fault, health)

    assert run(scenario()) == "ok"  # 5 waits and 1 attempt while S3 worked: under the limit of 2
    assert len(calls) == 7


@pytest.mark.parametrize(("error", "fault"), [
    (ParamValidationError(report="Invalid bucket name"), Fault.BAD_MESSAGE),
    (client_error("InvalidRequest", 400), Fault.BAD_MESSAGE),
    (client_error("NoSuchKey", 404), Fault.BAD_MESSAGE),
    (client_error("AccessDenied", 403), Fault.BAD_MESSAGE),
    (client_error("KeyTooLongError", 400), Fault.BAD_MESSAGE),
    (client_error("SlowDown", 503), Fault.OUTAGE),
    (client_error("RequestTimeTooSkewed", 403), Fault.OUTAGE),
    (client_error("InvalidAccessKeyId", 403), Fault.OUTAGE),
    (client_error("TooManyRequests", 429), Fault.OUTAGE),
    (client_error("InternalError", 500), None),
    (EndpointConnectionError(endpoint_url="http://s3"), None),
    (asyncio.TimeoutError(), None),
])
def test_s3_errors_are_classified(error, fault):
    assert s3_fault(error) is fault


@pytest.mark.parametrize(("error", "fault"), [
    (asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"), Fault.BAD_MESSAGE),
    (asyncpg.NumericValueOutOfRangeError("integer out of range"), Fault.BAD_MESSAGE),
    (asyncpg.CheckViolationError("violates check constraint"), Fault.BAD_MESSAGE),
    (asyncpg.DataError("invalid input for query argument $2"), Fault.BAD_MESSAGE),
    (asyncpg.UndefinedTableError("relation does not exist"), Fault.OUTAGE),
    (asyncpg.InsufficientPrivilegeError("permission denied"), Fault.OUTAGE),
    (asyncpg.CannotConnectNowError("the database system is starting up"), Fault.OUTAGE),
    (asyncpg.DeadlockDetectedError("deadlock detected"), Fault.OUTAGE),
    (asyncpg.ConnectionDoesNotExistError("connection was closed"), Fault.OUTAGE),  # SQLSTATE 08003
    (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), None),
    (ConnectionRefusedError(), None),
])
def test_database_errors_are_classified(error, fault):
    assert db_fault(error) is fault


def test_kafka_errors_are_classified():
    wrapped = ProducerSendError("Error while sending")
    wrapped.__cause__ = KafkaTimeoutError()
    assert kafka_fault(wrapped) is Fault.OUTAGE
    assert kafka_fault(KafkaTimeoutError()) is Fault.OUTAGE
    assert kafka_fault(MessageSizeTooLargeError()) is Fault.BAD_MESSAGE
    assert kafka_fault(TypeError("not JSON serializable")) is Fault.BAD_MESSAGE


def test_bisection_finds_exactly_the_failing_items_and_the_rest_is_done():
    done: list[int] = []
    runs: list[list[int]] = []

    async def write(items):
        runs.append(list(items))
        if {3, 11} & set(items):
            raise BadMessage(f"rejected {sorted({3, 11} & set(items))}")
        done.extend(items)

    failures = run(isolate_failures(list(range(16)), write))
    assert [(item, error.reason) for item, error in failures] == [(3, "rejected [3]"), (11, "rejected [11]")]
    assert [error.attempts for _, error in failures] == [5, 5]  # the 16, 8, 4, 2 and 1 item runs
    assert sorted(done) == [i for i in range(16) if i not in (3, 11)]
    assert len(runs) == 1 + 2 + 4 + 4 + 4  # each level splits only the halves that failed


def test_a_model_that_raises_on_one_input_gives_results_for_all_the_others():
    def model(batch):
        if any(x < 0 for x in batch):
            raise ValueError("torch.cat(): expected a non-empty list of Tensors")
        return [x * 10 for x in batch]

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            return await run_isolated(executor, model, [1, 2, -3, 4, 5])

    results, failures = run(scenario())
    assert results == {0: 10, 1: 20, 3: 40, 4: 50}
    assert list(failures) == [2] and "ValueError: torch.cat()" in failures[2].reason


def test_a_model_returning_the_wrong_number_of_results_fails_the_items():
    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            return await run_isolated(executor, lambda batch: [], [1, 2])

    results, failures = run(scenario())
    assert results == {} and sorted(failures) == [0, 1]


@pytest.mark.parametrize("chunks", [1, 2, 3, 7, 50])
def test_run_each_keeps_order_and_puts_each_failure_in_its_items_place(chunks):
    def invert(x: int) -> float:
        return 1 / x  # ZeroDivisionError for the zeros: those items' fault only

    items = [3, 0, 2, 5, 0, 1, 4]
    with ThreadPoolExecutor(2) as pool:
        out = asyncio.run(run_each(pool, invert, items, chunks))
    assert [isinstance(r, BadMessage) for r in out] == [x == 0 for x in items]
    assert [r for r in out if not isinstance(r, BadMessage)] == [1 / x for x in items if x]
    assert all("ZeroDivisionError" in r.reason for r in out if isinstance(r, BadMessage))


def test_run_each_uses_one_executor_call_per_chunk():
    calls = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            calls.append(len(args[1]))
            return super().submit(fn, *args, **kwargs)

    with Counting(2) as pool:
        assert asyncio.run(run_each(pool, str, list(range(32)), 2)) == [str(i) for i in range(32)]
        assert asyncio.run(run_each(pool, str, [], 2)) == []
    assert calls == [16, 16]


def test_every_reason_masks_url_credentials_where_it_is_made():
    raw = OSError("connect to postgresql://vs:hunter2@db:5432/vs failed; s3://key:secret@host/b")
    masked = "OSError: connect to postgresql://***@db:5432/vs failed; s3://***@host/b"
    assert describe(raw) == masked
    assert BadMessage.from_exception(raw).reason == masked
    assert str(BadMessage("refused redis://:pw@cache/0")) == "refused redis://***@cache/0"
    assert BadMessage(masked).reason == masked  # masking twice changes nothing
    assert describe(OSError("see https://example.org/a@b")) == "OSError: see https://example.org/a@b"  # no userinfo
