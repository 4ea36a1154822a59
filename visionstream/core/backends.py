"""Where a network runs on a CPU: torch, ONNX Runtime or OpenVINO, from the same weights; what the classifier
(classification/backends.py) and MTCNN (faces/mtcnn_backends.py) share.

Graphs are exported from the loaded torch modules at start (never downloaded) and cached on local disk under
their weights' digest, so a restart or a second worker on the machine reuses them. ``auto`` decides by
measuring on this machine, not by the CPU's name (issue 26: ONNX Runtime was fastest for the classifier on an
AVX2-only EPYC, OpenVINO bf16 on one with AVX-512 BF16): each candidate's agreement with fp32 eager torch is
measured, only those that agree are timed, interleaved, and the fastest is kept. The choice is recorded beside
the graphs, keyed by everything it depends on (``machine_key``), so only a machine's first start pays.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
MIN_AGREEMENT = 0.995  # agreement with fp32 eager torch a backend needs to be chosen by ``auto``
ONNX_OPSET = 17

Run = Callable[[np.ndarray], list[np.ndarray]]  # a graph's one input -> all its outputs
Graphs = TypeVar("Graphs")  # what a model exports: one graph's path, or one per net


@dataclass(frozen=True, slots=True)
class Trial:
    """One candidate's start-up measurement."""

    backend: str
    precision: str
    agreement: float  # agreement with fp32 eager torch, 0..1 (each model says of what)
    images_per_second: float  # 0 when not timed (it did not agree)


def choose(trials: list[Trial], minimum: float = MIN_AGREEMENT) -> Trial | None:
    """The fastest trial that agrees with fp32 eager on at least ``minimum``; None if none does."""
    allowed = [trial for trial in trials if trial.agreement >= minimum]
    return max(allowed, key=lambda trial: trial.images_per_second, default=None)


def images_per_second(runs: Mapping[str, Callable[[], object]], batch_size: int, rounds: int = 3,
                      seconds: float = 0.4, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Each run's best images/s over ``rounds`` interleaved rounds of about ``seconds`` each (after one warm-up
    call): interleaving keeps a neighbour's burst on this shared CPU from favouring whichever ran alone."""
    best = dict.fromkeys(runs, 0.0)
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            calls, start = 0, clock()
            while (elapsed := clock() - start) < seconds or calls == 0:
                run()
                calls += 1
            best[name] = max(best[name], calls * batch_size / elapsed)
    return best


def agreement_images(preprocess: Callable[[bytes], np.ndarray],
                     count: int) -> tuple[np.ndarray, bool]:
    """``count`` preprocessed images and whether they are photos: the package's sample photos (scikit-image's,
    needs the local or test extra: core/samples.py), else generated smooth colour fields (a production install). Nobody has
    measured that the fields flip a lossy backend's labels as often as photos do, so without photos the
    classifier's ``auto`` gates only fp32 candidates on them (a broken export still shows), never a bf16 one;
    MTCNN finds no face in them."""
    try:
        from visionstream.core.samples import sample_images

        return np.stack([preprocess(jpeg) for _, _, jpeg in sample_images(count)]), True
    except ImportError:
        from PIL import Image

        from visionstream.core.samples import IMAGENET_SIZE, encode_jpeg

        rng = np.random.default_rng(0)
        fields = (Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            IMAGENET_SIZE, Image.Resampling.BICUBIC) for _ in range(count))
        return np.stack([preprocess(encode_jpeg(field)) for field in fields]), False


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's parameters and buffers, by name: the ONNX cache key."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder: workers starting together never read half a file.
    The name is unique (mkstemp), not the pid: containers sharing a cache volume all run the worker as pid 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    partial = Path(name)
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str],
                dynamic: dict[int, str], again: bool = False) -> Path:
    """The module as an ONNX graph at ``path`` (input ``input``; the ``dynamic`` axes, e.g. {0: "batch"}, are
    dynamic in the input and every output), exported unless already there (or ``again``: replaced, for readers
    that found the file there unusable)."""
    if path.is_file() and not again:
        return path

    def write(target: Path) -> None:
        # The TorchScript exporter: the dynamo one needs onnxscript and gave the same graph for SqueezeNet.
        torch.onnx.export(module.eval(), (example,), str(target), input_names=["input"], output_names=outputs,
                          dynamic_axes={"input": dynamic, **{name: {axis: f"{name}_{label}" for axis, label
                                                                     in dynamic.items()} for name in outputs}},
                          opset_version=ONNX_OPSET, dynamo=False)

    started = time.monotonic()
    atomic_write(path, write)
    log.info("exported %s in %.1f s", path, time.monotonic() - started)
    return path


class MissingBackend(RuntimeError):
    """The chosen backend's package is not installed: the message says which and how."""


class CacheNotWritable(RuntimeError):
    """An ONNX Runtime or OpenVINO backend was asked for and its export cannot be written: the message says
    which setting to change."""


def cache_not_writable(cache_dir: Path, error: OSError) -> str:
    return (f"cannot write the ONNX exports in VISIONSTREAM_MODEL_CACHE_DIR={cache_dir} ({error}): "
            "set VISIONSTREAM_MODEL_CACHE_DIR to a writable folder (the shipped deployments use "
            "/var/lib/visionstream/models), or VISIONSTREAM_INFERENCE_BACKEND=torch")


def onnxruntime_run(path: Path, threads: int) -> Run:
    try:
        import onnxruntime
    except ImportError:
        raise MissingBackend("VISIONSTREAM_INFERENCE_BACKEND=onnxruntime needs the onnxruntime package (one of "
                             "visionstream's requirements): pip install onnxruntime, or set it to torch") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda values: session.run(None, {name: values})


def openvino_run(path: Path, precision: str, threads: int) -> Run:
    try:
        import openvino
    except ImportError:
        raise MissingBackend("VISIONSTREAM_INFERENCE_BACKEND=openvino needs the openvino package (one of "
                             "visionstream's requirements): pip install openvino, or set it to torch") from None
    # LATENCY: one request at a time on all threads, as the model thread calls it (THROUGHPUT's streams
    # would split 2 cores between requests that never come).
    compiled = openvino.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
    })
    outputs = compiled.outputs
    return lambda values: [result[output] for result in (compiled(values),) for output in outputs]


@functools.cache
def runtime_threads() -> int:
    """Threads an exported runtime's session gets: torch's count for the process, read once. torch's count is
    per thread in its OpenMP build, and one thread lowers its own while MTCNN runs (faces/mtcnn_backends.detect):
    a session or a record key sized from that thread's state would keep 1 thread for good."""
    return torch.get_num_threads()


def exported_run(backend: str, precision: str, path: Path, threads: int) -> Run:
    if backend == "onnxruntime":
        return onnxruntime_run(path, threads)
    return openvino_run(path, precision, threads)


def machine_key(parts: Mapping[str, object]) -> str:
    """A digest of what a start-up measurement depends on, this CPU and the installed runtimes included."""
    cpu = ""
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")),
                   "")
    except OSError:  # not Linux: the processor string stands for the CPU
        pass
    versions = {}
    for package in ("onnxruntime", "openvino"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    described = json.dumps({**parts, "cpu": [platform.processor(), platform.machine(), cpu], "torch": torch.__version__,
                            **versions}, sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def load_trials(path: Path) -> list[Trial] | None:
    try:
        return [Trial(**row) for row in json.loads(path.read_text())["trials"]]
    except (OSError, ValueError, TypeError, KeyError):  # absent, or unreadable: measure again
        return None


def save_trials(path: Path, trials: list[Trial]) -> None:
    text = json.dumps({"trials": [asdict(trial) for trial in trials]}, indent=1)
    atomic_write(path, lambda target: target.write_text(text))


def chosen_backend(record: Path, export: Callable[[bool], Graphs], measure: Callable[[Graphs], list[Trial]],
                   use: Callable[[Trial, Graphs], None], what: str, trust_record: bool = True
                   ) -> tuple[Trial | None, bool]:
    """``auto``'s choice for one model (the classifier, MTCNN) and whether it was measured now: the record's
    (``record``: absent or unreadable, measured and kept), with the graphs exported just now when measuring
    (``export(again)``; a cache that cannot be written raises CacheNotWritable, for the caller's fallback). An
    exported choice is loaded (``use``); a recorded one whose graph does not load is exported and measured
    again, one that loaded while measuring moments ago is not the file's fault and raises. Torch's
    preparation stays with the caller (None: no candidate agreed)."""
    trials = load_trials(record) if trust_record else None
    measured = trials is None
    try:
        graphs = export(measured)  # what is measured is a graph written just now
    except OSError as exc:
        raise CacheNotWritable(cache_not_writable(record.parent, exc)) from exc
    if trials is None:
        trials = measure(graphs)
        try:
            save_trials(record, trials)
        except OSError as exc:
            log.warning("the %s backend measurement is not kept (%s): the next start measures again", what, exc)
    chosen = choose(trials)
    log.info("%s backends %s on this CPU (%s): %s; chosen %s", what, "measured" if measured else "as measured",
             record, ", ".join(f"{t.backend}/{t.precision} {t.images_per_second:.1f} images/s agree {t.agreement:.1%}"
                               for t in trials), chosen and f"{chosen.backend}/{chosen.precision}")
    if chosen is not None and chosen.backend != "torch":
        try:
            use(chosen, graphs)
        except Exception as exc:  # a damaged graph: each runtime raises its own type
            if measured:
                raise
            log.warning("%s cannot load %s's graphs (%s): exporting and measuring again", chosen.backend, what, exc)
            return chosen_backend(record, export, measure, use, what, trust_record=False)
    return chosen, measured


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "visionstream" / "models"
