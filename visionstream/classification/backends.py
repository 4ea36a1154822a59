"""Where the classifier's network runs on a CPU: torch, ONNX Runtime or OpenVINO, from the same weights.

The ONNX graph is exported from the loaded torch module at start (never downloaded) and cached on local disk
under its weights' digest, so a restart or a second worker on the machine reuses it. The graph takes what the
decode threads make, uint8 N x H x W x 3, and normalises inside, so the runtimes get 4x fewer bytes than
floats.

``auto`` decides by measuring on this machine, not by the CPU's name: the CPUs here differ (an EPYC with
AVX-512 BF16, where compiled bf16 torch ran 386 img/s against ONNX Runtime's ~220, and one with AVX2 only,
where ONNX Runtime ran 186-197 against torch's 125: issue 26). Each candidate classifies the same sample
images as fp32 eager torch; only those whose top-1 agrees on at least 99.5% of them are timed, interleaved,
at the worker's batch size, and the fastest is kept. Without the sample photos (scikit-image is in the
local/test extras only) the exported candidates are fp32 only: bf16 OpenVINO is never gated on the synthetic
stand-ins (``agreement_images``). The choice is cached beside the graph, keyed by everything it depends on
(weights, batch size, threads, package versions, CPU), so only a machine's first start pays the ~10 s. A
cache folder that cannot be written leaves ``auto`` on torch as configured, with a warning (model.py).
"""

from __future__ import annotations

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

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
MIN_AGREEMENT = 0.995  # top-1 agreement with fp32 eager torch a backend needs to be chosen by ``auto``
AGREEMENT_IMAGES = 200  # one disagreement in 200 is 99.5%
ONNX_OPSET = 17

Logits = Callable[[np.ndarray], np.ndarray]  # uint8 N x H x W x 3 -> float logits N x classes


@dataclass(frozen=True, slots=True)
class Trial:
    """One candidate's start-up measurement."""

    backend: str
    precision: str
    agreement: float  # top-1 agreement with fp32 eager torch on the sample images, 0..1
    images_per_second: float  # at the worker's batch size; 0 when not timed (it did not agree)


def choose(trials: list[Trial], minimum: float = MIN_AGREEMENT) -> Trial | None:
    """The fastest trial that agrees with fp32 eager on at least ``minimum`` of the images; None if none does."""
    allowed = [trial for trial in trials if trial.agreement >= minimum]
    return max(allowed, key=lambda trial: trial.images_per_second, default=None)


def top1_agreement(reference: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose arg-max is the same in both N x classes arrays."""
    if reference.shape != logits.shape or not len(reference):
        raise ValueError(f"cannot compare logits of shape {reference.shape} with {logits.shape}")
    return float(np.mean(reference.argmax(axis=1) == logits.argmax(axis=1)))


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


class PixelsToLogits(nn.Module):
    """uint8 N x H x W x 3 -> logits, normalisation included: the graph every backend runs."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's parameters and buffers, by name: the ONNX cache key."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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


def export_onnx(module: PixelsToLogits, crop: int, path: Path, again: bool = False) -> Path:
    """The module as an ONNX graph at ``path`` (batch size dynamic), exported unless already there (or
    ``again``: replaced, for readers that found the file there unusable)."""
    if path.is_file() and not again:
        return path
    example = torch.zeros((2, crop, crop, 3), dtype=torch.uint8)

    def write(target: Path) -> None:
        # The TorchScript exporter: the dynamo one needs onnxscript and gave the same graph for SqueezeNet.
        torch.onnx.export(module.eval(), (example,), str(target), input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)

    started = time.monotonic()
    _atomic_write(path, write)
    log.info("exported the classifier to %s in %.1f s", path, time.monotonic() - started)
    return path


class MissingBackend(RuntimeError):
    """The chosen backend's package is not installed: the message says which and how."""


class CacheNotWritable(RuntimeError):
    """An ONNX Runtime or OpenVINO backend was asked for and its export cannot be written: the message says
    which setting to change."""


def cache_not_writable(cache_dir: Path, error: OSError) -> str:
    return (f"cannot write the classifier's ONNX export in VISIONSTREAM_MODEL_CACHE_DIR={cache_dir} ({error}): "
            "set VISIONSTREAM_MODEL_CACHE_DIR to a writable folder (the shipped deployments use "
            "/var/lib/visionstream/models), or VISIONSTREAM_INFERENCE_BACKEND=torch")


def onnxruntime_logits(path: Path, threads: int) -> Logits:
    try:
        import onnxruntime
    except ImportError:
        raise MissingBackend("VISIONSTREAM_INFERENCE_BACKEND=onnxruntime needs the onnxruntime package (one of "
                             "visionstream's requirements): pip install onnxruntime, or set it to torch") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(None, {"pixels": pixels})[0]


def openvino_logits(path: Path, precision: str, threads: int) -> Logits:
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
    output = compiled.output(0)
    return lambda pixels: compiled(pixels)[output]


def exported_logits(backend: str, precision: str, path: Path, threads: int) -> Logits:
    if backend == "onnxruntime":
        return onnxruntime_logits(path, threads)
    return openvino_logits(path, precision, threads)


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
    _atomic_write(path, lambda target: target.write_text(text))


def agreement_images(preprocess: Callable[[bytes], np.ndarray],
                     count: int = AGREEMENT_IMAGES) -> tuple[np.ndarray, bool]:
    """``count`` preprocessed images and whether they are photos: the package's sample photos (scikit-image's,
    needs the local or test extra), else generated smooth colour fields (a production install). Nobody has
    measured that the fields flip a lossy backend's labels as often as photos do, so without photos ``auto``
    gates only fp32 candidates on them (a broken export still shows), never a bf16 one."""
    try:
        from visionstream.dev.samples import sample_images

        return np.stack([preprocess(jpeg) for _, _, jpeg in sample_images(count)]), True
    except ImportError:
        from PIL import Image

        from visionstream.dev.samples import IMAGENET_SIZE, encode_jpeg

        rng = np.random.default_rng(0)
        fields = (Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            IMAGENET_SIZE, Image.Resampling.BICUBIC) for _ in range(count))
        return np.stack([preprocess(encode_jpeg(field)) for field in fields]), False


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "visionstream" / "models"
