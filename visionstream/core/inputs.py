"""An input topic as the worker sees it: its agent, adapter, analyzers' names and its own outputs.

One spec per input (images/input.py, frames/input.py); the composition root (worker/assemble.py) builds
each into a handler the same way. What an input writes beside its analyzers' outputs (a frame's row, the
processed-frames record) is its ``outputs``; stores whose objects the PostgreSQL rows name (the frame
archive) are its ``stores``, written first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from visionstream.core.analyzers import OutputContext, Outputs
from visionstream.core.faults import RetryPolicy
from visionstream.core.pipeline import AnalyzedImage, ImageOutcome, InboundMessage, InputAdapter
from visionstream.core.sinks import PostgresSink, Sink
from visionstream.settings import Settings

# (settings, S3 client (aiobotocore's, untyped), retry policy, PostgreSQL sink) -> (name, sink) of each sink that
# stores what the PostgreSQL rows point to.
Stores = Callable[[Settings, Any, RetryPolicy, PostgresSink[AnalyzedImage]], list[tuple[str, Sink]]]


def no_stores(settings: Settings, client: Any, policy: RetryPolicy, database: PostgresSink[AnalyzedImage]
              ) -> list[tuple[str, Sink]]:
    return []


def no_outputs(context: OutputContext) -> Outputs:
    return Outputs()


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input topic: its agent's name, adapter, analyzers and what it writes itself."""

    agent: str  # the agent's name (metrics, readiness)
    kind: str  # "images", "frames": what analyzers' outputs hooks are told (OutputContext.input)
    label: str  # what it takes, for the log: "S3 images", "frames"
    adapter: InputAdapter
    analyzers: Sequence[str]
    observe: Callable[[Settings], Callable[[Sequence[InboundMessage], ImageOutcome], None]]  # batch metrics
    outputs: Callable[[OutputContext], Outputs] = no_outputs
    stores: Stores = no_stores  # run before PostgreSQL, so that a row never names an object not yet stored
    payload_kept: int = 0  # bytes of a value that does not parse kept in processing_errors (pipeline.parse_each)
