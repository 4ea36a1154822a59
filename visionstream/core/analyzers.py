"""Analyzers: a model with its own input preparation, run batched on every image an input adapter decodes.

An analyzer has a name (the key of its output and of its setting value), a stage (its failures' stage in
dead letters), a ``model_id`` (``name@version``, stored with every result), ``decode_size`` (the smallest
decoded size its input can be made from: the image is decoded once, at the smallest JPEG DCT scale that
satisfies every analyzer), ``prepare`` (the decoded image -> its input, in a decode thread) and ``run`` (a
batch of inputs -> one output each, in the model thread). An analyzer with ``after`` set builds on another
one's output instead of on pixels: its ``run`` takes (that analyzer's input, its output) pairs.

Built in: ``classify`` (SqueezeNet 1.1: top-k categories) and ``faces`` (MTCNN: boxes, probabilities,
landmarks; identification follows it when an embedder and enrolled people exist, faces/analyzer.py). A
user's own analyzer is named in the setting by a dotted path (``mypkg.mod:build``) or by an entry point of
the ``visionstream.analyzers`` group; either is a function ``Settings -> Analyzer`` whose outputs are
JSON values, stored in ``analyzer_results``. A worker builds only the analyzers its settings name, so a
model that is not used is never loaded.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from visionstream.settings import Settings

if TYPE_CHECKING:
    from visionstream.core.imaging import DecodedImage, DecodeSize

CLASSIFY = "classify"
FACES = "faces"
IDENTIFY = "identify"  # added after FACES by the worker when someone is enrolled, never named in a setting
BUILT_IN = (CLASSIFY, FACES)
ENTRY_POINT_GROUP = "visionstream.analyzers"
T = TypeVar("T")


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


class AnalyzerNotFound(ValueError):
    """A setting names an analyzer that is neither built in, nor an importable path, nor an entry point."""


def classify_analyzer(settings: Settings) -> Analyzer:
    import numpy as np

    from visionstream.classification.model import Classifier

    classifier = Classifier.from_settings(settings)
    crop = classifier.preprocessor(settings.max_image_pixels)
    return Analyzer(CLASSIFY, "classify", classifier.model_id, crop.decode_size, crop.from_decoded,
                    lambda batch: classifier(np.stack(batch)), classifier)  # stacked in the model thread


def faces_analyzer(settings: Settings) -> Analyzer:
    from visionstream.faces.detector import FaceDetector

    detector = FaceDetector.from_settings(settings)
    return Analyzer(FACES, "detect", detector.model_id, detector.decode_size, detector.prepare_decoded,
                    detector.detect, detector)


BUILDERS: dict[str, Callable[[Settings], Analyzer]] = {CLASSIFY: classify_analyzer, FACES: faces_analyzer}


def entry_point_names() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def check_analyzer_name(name: str) -> None:
    """Raise AnalyzerNotFound unless ``name`` can be built; imports nothing (settings are checked at start)."""
    if name in BUILT_IN or name in entry_point_names():
        return
    module, _, attribute = name.partition(":")
    if module and attribute and all(part.isidentifier() for part in (*module.split("."), *attribute.split("."))):
        return
    known = ", ".join((*BUILT_IN, *entry_point_names()))
    raise AnalyzerNotFound(f"{name!r} is not an analyzer: use one of {known}, or a builder function as "
                           "module.path:function")


def analyzer_builder(name: str) -> Callable[[Settings], Analyzer]:
    if name in BUILDERS:
        return BUILDERS[name]
    points = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if points:
        return points[0].load()  # type: ignore[no-any-return]
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
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
    for name in names:
        analyzer = analyzer_builder(name)(settings)
        if not isinstance(analyzer, Analyzer):
            raise TypeError(f"analyzer builder {name!r} returned {type(analyzer).__name__}, not an Analyzer")
        if name not in BUILT_IN and analyzer.name in (*BUILT_IN, IDENTIFY):
            raise ValueError(f"analyzer {name!r} calls itself {analyzer.name!r}, a built-in analyzer's name")
        analyzers.append(analyzer)
    return analyzers
