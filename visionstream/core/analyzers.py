"""Analyzers: a model with its own input preparation, run batched on every image an input adapter decodes.

An analyzer has a name (the key of its output and of its setting value), a stage (its failures' stage in
dead letters), a ``model_id`` (``name@version``, stored with every result), ``decode_size`` (the smallest
decoded size its input can be made from: the image is decoded once, at the smallest JPEG DCT scale that
satisfies every analyzer), ``prepare`` (the decoded image -> its input, in a decode thread) and ``run`` (a
batch of inputs -> one output each, in the model thread). An analyzer with ``after`` set builds on another
one's output instead of on pixels: its ``run`` takes (that analyzer's input, its output) pairs. An analyzer
with ``decode_encoded`` decodes JPEGs on its own device (the classifier on CUDA: nvJPEG, batched): the images
that qualify (imaging.device_jpeg) reach it encoded and are left out of the CPU decode, and those its decoder
refuses are decoded on the CPU after all (core/pipeline.py).

Every analyzer, the ones that ship (``classify``, ``faces``, ``torchvision``) and a user's own, is an entry
point of the ``visionstream.analyzers`` group (setup.cfg) or a builder named by its dotted path
(``mypkg.mod:build``): a function ``Settings -> Analyzer``. Two hooks let an analyzer say more than its
outputs: ``outputs`` (where its results go: tables, topics, sinks after PostgreSQL; without it, its JSON
outputs go to ``analyzer_results``) and ``followers`` (analyzers that build on its output and need the
worker's database to load, as identification follows the face detector). A worker builds only the analyzers
its settings name, so a model that is not used is never loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from visionstream.settings import ANALYZER_ENTRY_POINTS, Settings, analyzer_entry_points

if TYPE_CHECKING:
    import asyncpg
    from faust.types import TopicT

    from visionstream.core.faults import RetryPolicy
    from visionstream.core.imaging import DecodedImage, DecodeSize, EncodedJpeg
    from visionstream.core.pipeline import AnalyzedImage
    from visionstream.core.sinks import PostgresSink, Records, ResultTable, Sink

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What an outputs hook may build on: which input runs it, the analyzers beside it, the app's topics."""

    input: str  # the input topic's kind: "images" or "frames" (core/inputs.py InputSpec.kind)
    analyzers: Mapping[str, Analyzer]
    settings: Settings
    topics: Any  # the app's result topics by attribute (faust_app.VisionApp)
    topic: Callable[[str], TopicT]  # a topic of JSON values by name, for an analyzer's own output topic
    policy: RetryPolicy  # the worker's, for a sink of its own under the fault model


@dataclass(frozen=True, slots=True)
class Outputs:
    """Where results go: tables written in the batch's one PostgreSQL transaction, records published after
    it, and sinks written between the two, built on the PostgreSQL sink (its pool and health)."""

    tables: list[ResultTable[AnalyzedImage]] = field(default_factory=list)
    records: list[Records] = field(default_factory=list)
    after_database: list[Callable[[PostgresSink[AnalyzedImage]], tuple[str, Sink]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FollowerContext:
    """What a followers hook may load with: the settings, the worker's database, its model thread."""

    settings: Settings
    pool: asyncpg.Pool
    model_executor: Executor


@dataclass(frozen=True, slots=True)
class Analyzer:
    name: str
    stage: str
    model_id: str
    decode_size: DecodeSize | None  # None: any decoded size will do (or ``after`` is set)
    prepare: Callable[[DecodedImage], Any] | None  # None when ``after`` is set
    run: Callable[[Sequence[Any]], list[Any]]
    model: Any = None  # the loaded model, to describe it (device, precision, weights: metrics.py)
    after: str | None = None  # the analyzer whose (input, output) pairs this one runs on
    outputs: Callable[[Analyzer, OutputContext], Outputs] | None = None  # None: JSON rows in analyzer_results
    followers: Callable[[Analyzer, FollowerContext], Awaitable[list[Analyzer]]] | None = None
    # With ``after``: (input, output, what the input adapter parsed: a Frame, an ImageRequest) triples instead
    # (identification tracks a camera's faces to embed only new ones, faces/reuse.py).
    with_source: bool = False
    # In the model thread: a batch of JPEGs -> each one's input as ``prepare`` makes it (on the device), or None
    # where the device's decoder refuses it. None: this analyzer takes decoded pixels only.
    decode_encoded: Callable[[Sequence[EncodedJpeg]], list[Any | None]] | None = None


class AnalyzerNotFound(ValueError):
    """A setting names an analyzer that is neither an entry point nor an importable builder path."""


def analyzer_builder(name: str) -> Callable[[Settings], Analyzer]:
    points = [ep for ep in importlib.metadata.entry_points(group=ANALYZER_ENTRY_POINTS) if ep.name == name]
    if points:
        return points[0].load()  # type: ignore[no-any-return]
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise AnalyzerNotFound(f"analyzer {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
    return target  # type: ignore[no-any-return]


# One model load at a time per process: the images and frames agents load theirs in their own model threads
# at once, and two threads importing torchvision together failed with "cannot import name 'InterpolationMode'
# from partially initialized module 'torchvision.transforms'" (tests/integration/test_poison.py, 2026-12-02).
_MODEL_LOADING = threading.Lock()


def load_models(load: Callable[..., T], *args: Any) -> T:
    """``load(*args)`` with no other model load of this process running (call in a model thread)."""
    with _MODEL_LOADING:
        return load(*args)


def build_analyzers(names: Sequence[str], settings: Settings) -> list[Analyzer]:
    """The named analyzers, models loaded (through load_models, in the model thread: loading is CPU work)."""
    analyzers = []
    entry_points = set(analyzer_entry_points())
    for name in names:
        analyzer = analyzer_builder(name)(settings)
        if not isinstance(analyzer, Analyzer):
            raise TypeError(f"analyzer builder {name!r} returned {type(analyzer).__name__}, not an Analyzer")
        # Another's name would put its outputs where that analyzer's readers expect their own type.
        if analyzer.name != name and analyzer.name in entry_points:
            raise ValueError(f"analyzer {name!r} calls itself {analyzer.name!r}, an installed analyzer's name")
        analyzers.append(analyzer)
    check_unique_names(analyzers)
    return analyzers


def check_unique_names(analyzers: Sequence[Analyzer]) -> None:
    """Outputs are keyed by analyzer name: two analyzers of one name would overwrite each other's."""
    seen: set[str] = set()
    for analyzer in analyzers:
        if analyzer.name in seen:
            raise ValueError(f"two analyzers call themselves {analyzer.name!r} ({analyzer.model_id} is one)")
        seen.add(analyzer.name)

