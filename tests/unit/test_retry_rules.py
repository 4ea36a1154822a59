"""Pure rules with no server: the outage backoff's schedule and what `visionstream retry` sends back."""

from __future__ import annotations

import asyncio
import json

import pytest

from visionstream.cli.dead_letters import plan_retry
from visionstream.core.retry import Backoff


class Flaky:
    """Fails with the given errors in turn, then returns ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_backoff_retries_until_success_with_capped_doubling_delays() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    operation = Flaky(*(ConnectionError("down") for _ in range(6)))
    backoff = Backoff(initial=0.5, maximum=3.0, factor=2.0, sleep=sleep)
    assert asyncio.run(backoff.run("GET", operation, (ConnectionError,))) == "done"
    assert operation.calls == 7
    assert slept == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_backoff_does_not_retry_other_errors() -> None:
    async def sleep(delay: float) -> None:
        raise AssertionError("must not wait for an error it does not retry")

    operation = Flaky(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(Backoff(sleep=sleep).run("GET", operation, (ConnectionError,)))
    assert operation.calls == 1


def test_a_parse_error_goes_back_as_its_raw_payload() -> None:
    row = {"id": 7, "stage": "parse", "image_key": "odd\\x00key", "payload": b"{not json", "bucket": None}
    plan = plan_retry(row)
    assert (plan.error_id, plan.key, plan.value) == (7, b"odd\\x00key", b"{not json")


def test_a_parse_error_without_payload_goes_back_empty() -> None:
    assert plan_retry({"id": 1, "stage": "parse", "image_key": "k", "payload": None, "bucket": None}).value == b""


@pytest.mark.parametrize(("bucket", "expected"), [("other-bucket", "other-bucket"), (None, None)])
def test_a_later_stage_error_goes_back_as_a_fresh_request_in_image_info_bucket(bucket, expected) -> None:
    row = {"id": 3, "stage": "fetch", "image_key": "a/b.jpg", "payload": b"ignored", "bucket": bucket}
    plan = plan_retry(row)
    request = json.loads(plan.value)
    assert plan.key == b"a/b.jpg" and request["image_key"] == "a/b.jpg"
    assert request.get("bucket") == expected
