"""ImageNet classification: a model loaded once, travelling with its preprocessing and labels.

``Classifier(batch)`` takes the uint8 images that :class:`visionstream.core.imaging.Preprocessing` makes and
returns each image's top-k ``(class_index, category, confidence)``. Conversion to float and normalisation
happen here, on the model's device, so decode threads only move bytes. Call it from one thread.

On CUDA the JPEG decode moves to the GPU as well (``decode_jpegs``, the classify analyzer's
``decode_encoded``): the worker's decode threads only check headers (core/pipeline.py's Prepare), and a batch's
JPEGs are decoded by nvJPEG in one call, resized and cropped there. Images nvJPEG should not or cannot take
(PNG, EXIF-rotated, CMYK, a decoder error) are decoded on the CPU, and join the batch through a pinned buffer
(``classify_prepared``). bench/gpu_model.py measures it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.models import SqueezeNet1_1_Weights, WeightsEnum, squeezenet1_1
from torchvision.transforms.v2 import functional as F

from visionstream.classification.backends import (
    AGREEMENT_IMAGES,
    Logits,
    PixelsToLogits,
    export_classifier,
    exported_logits,
    top1_agreement,
)
from visionstream.core.backends import (
    BACKENDS,
    MIN_AGREEMENT,
    CacheNotWritable,
    Trial,
    agreement_images,
    cache_not_writable,
    chosen_backend,
    default_cache_dir,
    images_per_second,
    machine_key,
    runtime_threads,
    weights_digest,
)
from visionstream.core.device import resolve_device
from visionstream.core.imaging import EncodedJpeg, Preprocessing
from visionstream.settings import EXPORTED_BACKEND_PRECISIONS, Settings

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")
TopK = list[tuple[int, str, float]]  # (class_index, category, confidence), best first


class WeightsUnavailable(RuntimeError):
    """No usable weights: the message says what was tried and how to fix it."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """An architecture with its published weights, which carry the preprocessing and class names.

    ``split`` cuts the model into stem, body and head (the three applied in turn give its logits): reduced
    precision runs only the body in bf16/fp16.
    """

    build: Callable[..., nn.Module]
    weights: WeightsEnum
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module, nn.Module]]

    @property
    def categories(self) -> list[str]:
        return list(self.weights.meta["categories"])

    def preprocessing(self, max_pixels: int) -> Preprocessing:
        transform = self.weights.transforms()
        return Preprocessing(max_pixels, resize_size=transform.resize_size[0], crop_size=transform.crop_size[0])

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        transform = self.weights.transforms()
        return tuple(transform.mean), tuple(transform.std)


def _split_squeezenet(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    return model.features[0], model.features[1:], nn.Sequential(model.classifier, nn.Flatten(1))


MODELS: dict[str, ModelSpec] = {
    "squeezenet1_1": ModelSpec(squeezenet1_1, SqueezeNet1_1_Weights.IMAGENET1K_V1, _split_squeezenet),
}


class ReducedPrecision(nn.Module):
    """The body in bf16/fp16, the first convolution and the classifier in fp32.

    All-bf16 SqueezeNet agreed with fp32 on 97% of the benchmark's photos (every disagreement a near tie):
    8-bit mantissas round the normalised pixels and the classifier's inputs. With the two ends in fp32 it
    agreed on 99.5% at 80% of all-bf16's speed (bench/bench_model.py).
    """

    def __init__(self, spec: ModelSpec, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.stem, self.body, self.head = spec.split(model)
        self.body.to(dtype)
        self.dtype = dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(pixels).to(self.dtype)).float())


def cpu_has_fast(precision: str) -> bool:
    """Whether this CPU does the precision's math natively; emulated bf16/fp16 is several times slower than fp32."""
    if precision == "bf16":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if precision == "fp16":
        return torch.cpu._is_amx_fp16_supported()
    return True



def resolve_precision(setting: str, device: torch.device) -> str:
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_fast("bf16") else "fp32"


def exported_precision(backend: str, precision: str) -> str:
    """The precision an ONNX Runtime or OpenVINO classifier runs at for the precision setting."""
    allowed = EXPORTED_BACKEND_PRECISIONS[backend]
    if precision not in allowed:
        raise ValueError(f"VISIONSTREAM_PRECISION={precision} is not available with VISIONSTREAM_INFERENCE_BACKEND="
                         f"{backend}: use {' or '.join(allowed)}, or the torch backend")
    # OpenVINO's bf16 runs the whole network in bf16 (no fp32 ends): only when asked for, or chosen by auto
    # after its agreement was measured.
    return "bf16" if precision == "bf16" else "fp32"


class Classifier:
    """Loads the model once; each call classifies one batch of preprocessed uint8 images.

    ``backend``: torch, onnxruntime, openvino (CPU only, from the same weights), or auto (on a CPU, the fastest
    that agrees with fp32 eager torch, measured at start: backends.py). ``backend`` and ``precision`` say what
    runs; ``model_id`` never depends on them.
    """

    def __init__(
        self,
        model_name: str = "squeezenet1_1",
        weights_path: Path | str | None = None,
        device: str = "auto",
        precision: str = "auto",
        top_k: int = 5,
        *,
        allow_random_weights: bool = False,
        compile_for_batch: int | None = None,
        decode_on_device: bool | None = None,
        backend: str = "torch",
        cache_dir: Path | str | None = None,
        batch_size: int = 32,
        device_decode_bytes: int | None = None,
    ) -> None:
        if model_name not in MODELS:
            raise ValueError(f"unknown model {model_name!r}; known: {', '.join(MODELS)}")
        if precision not in ("auto", *_DTYPES):
            raise ValueError(f"unknown precision {precision!r}; use auto, {', '.join(_DTYPES)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown inference backend {backend!r}; use {', '.join(BACKENDS)}")
        self.name = model_name
        self.spec = MODELS[model_name]
        self.categories = self.spec.categories
        self.top_k = min(top_k, len(self.categories))
        self.device = resolve_device(device)
        if self.device.type != "cpu" and backend in ("onnxruntime", "openvino"):
            raise ValueError(f"VISIONSTREAM_INFERENCE_BACKEND={backend} runs on the CPU only: set "
                             "VISIONSTREAM_DEVICE=cpu, or the backend to torch or auto")
        self.backend = "torch"
        self._exported: Logits | None = None  # the classifier when ONNX Runtime or OpenVINO runs it
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._device_decode_bytes = device_decode_bytes  # decoded pixels one device decode call may hold
        model, self.weights_source, self.version = _load_model(self.spec, weights_path, allow_random_weights)
        self.model_id = f"{model_name}@{self.version}"  # stored with every result: versions sit side by side
        model = model.eval()
        if backend in ("onnxruntime", "openvino"):
            self.precision = exported_precision(backend, precision)
            try:
                graph = self._onnx_graph(model)
            except OSError as exc:
                raise CacheNotWritable(cache_not_writable(self._cache_dir, exc)) from exc
            self._use_exported(backend, self.precision, graph)
            return
        if backend == "auto" and self.device.type == "cpu":
            self._choose_backend(model, precision, compile_for_batch, decode_on_device, batch_size)
        else:
            self._prepare_torch(model, resolve_precision(precision, self.device), compile_for_batch,
                                decode_on_device)

    def _prepare_torch(self, model: nn.Module, precision: str, compile_for_batch: int | None,
                       decode_on_device: bool | None) -> None:
        self.precision = precision
        if self.device.type == "cpu" and not cpu_has_fast(self.precision):
            log.warning("this CPU has no native %s math: expect %s slower than fp32", self.precision, self.precision)
        dtype = _DTYPES[self.precision]
        model = model if dtype == torch.float32 else ReducedPrecision(self.spec, model, dtype)
        # channels_last: oneDNN and cuDNN pick their fastest convolutions for NHWC (2x on CPU here).
        self._model = model.to(self.device, memory_format=torch.channels_last)
        mean, std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in self.spec.normalisation())
        # (x / 255 - mean) / std as one multiply-add on uint8 pixel values.
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        # JPEG decode on the model's device: by default on CUDA only (a CPU decodes faster with Pillow's
        # DCT-domain scaling; True there exercises the same code path in tests).
        self.decode_on_device = self.device.type == "cuda" if decode_on_device is None else decode_on_device
        self._pinned: torch.Tensor | None = None  # host staging buffer for CPU-decoded images (CUDA)
        self.compiled = compile_for_batch is not None and self._compile(compile_for_batch)

    def _graph_path(self, fp32: nn.Module) -> Path:
        return self._cache_dir / f"{self.name}-{weights_digest(fp32)}.onnx"

    def _onnx_graph(self, fp32: nn.Module, again: bool = False) -> Path:
        """This model's ONNX graph on local disk, exported from these weights the first time (or ``again``)."""
        graph = PixelsToLogits(fp32, *self.spec.normalisation())
        crop = self.spec.preprocessing(1).crop_size
        return export_classifier(graph, crop, self._graph_path(fp32), again)

    def _use_exported(self, backend: str, precision: str, graph: Path) -> None:
        self._exported = exported_logits(backend, precision, graph, runtime_threads())
        self.backend, self.precision, self.compiled = backend, precision, False
        self.decode_on_device = False  # exported backends run on the CPU, which decodes with Pillow

    def _choose_backend(self, model: nn.Module, precision_setting: str, compile_for_batch: int | None,
                        decode_on_device: bool | None, batch_size: int) -> None:
        """The fastest backend that agrees with fp32 eager: measured at this machine's first start (torch
        prepared as configured, against each exported backend), read from the record after that. A cache
        that cannot be written leaves torch as configured (auto is never worse than torch); a recorded choice
        whose graph does not load is measured again, on a fresh export."""
        fp32 = copy.deepcopy(model)  # the reference: reduced precision converts the body in place
        key = machine_key({"graph": self._graph_path(fp32).name, "precision": precision_setting,
                           "batch": batch_size, "compile": compile_for_batch is not None,
                           "threads": runtime_threads(), "images": AGREEMENT_IMAGES})
        configured = resolve_precision(precision_setting, self.device)

        def measure(graph: Path) -> list[Trial]:
            self._prepare_torch(model, configured, compile_for_batch, decode_on_device)  # a candidate, as set
            return self._measure_backends(fp32, graph, precision_setting, batch_size)

        try:
            chosen, measured = chosen_backend(
                self._cache_dir / f"{self.name}-choice-{key}.json",
                lambda again: self._onnx_graph(fp32, again), measure,
                lambda trial, graph: self._use_exported(trial.backend, trial.precision, graph), self.name)
        except CacheNotWritable as exc:
            log.warning("VISIONSTREAM_INFERENCE_BACKEND=auto runs torch as configured: %s", exc)
            self._prepare_torch(model, configured, compile_for_batch, decode_on_device)
            return
        if chosen is None:  # even torch at reduced precision disagreed: fp32 torch is the reference itself
            self._prepare_torch(fp32, "fp32", compile_for_batch, decode_on_device)
        elif chosen.backend == "torch" and not measured:
            self._prepare_torch(model, chosen.precision, compile_for_batch, decode_on_device)

    def _measure_backends(self, fp32: nn.Module, graph: Path, precision_setting: str,
                          batch_size: int) -> list[Trial]:
        """Top-1 agreement with fp32 eager of torch as prepared and of each installed exported backend, and
        the images/s of those that agree, at ``batch_size``."""
        images, photos = agreement_images(self.preprocessor(1 << 62), AGREEMENT_IMAGES)
        threads = runtime_threads()
        candidates: dict[tuple[str, str], Logits] = {
            ("torch", self.precision): lambda pixels: self._torch_logits(pixels).numpy()}
        exported = [("onnxruntime", "fp32"), ("openvino", "fp32")]
        if precision_setting in ("auto", "bf16") and cpu_has_fast("bf16"):
            if photos:
                exported.append(("openvino", "bf16"))
            else:
                log.info("openvino/bf16 not measured: its agreement needs the sample photos (scikit-image, the "
                         "local or test extra), and synthetic images are no evidence for reduced precision")
        for backend, precision in exported:
            if precision_setting not in ("auto", precision):
                continue
            try:
                candidates[backend, precision] = exported_logits(backend, precision, graph, threads)
            except Exception as exc:  # not installed, or the runtime cannot load the graph on this CPU
                log.info("inference backend %s/%s not measured: %s", backend, precision, exc)
        reference_model = PixelsToLogits(fp32, *self.spec.normalisation()).eval()

        def over_images(logits: Logits) -> np.ndarray:
            return np.concatenate([logits(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

        with torch.inference_mode():
            reference = over_images(lambda pixels: reference_model(torch.from_numpy(pixels)).numpy())
            agreement = {name: top1_agreement(reference, over_images(run)) for name, run in candidates.items()}
            batch = np.resize(images, (batch_size, *images.shape[1:]))  # repeats the images if there are fewer
            speeds = images_per_second({name: (lambda run=run: run(batch)) for name, run in candidates.items()
                                        if agreement[name] >= MIN_AGREEMENT}, batch_size)
        return [Trial(backend, precision, agreement[backend, precision], speeds.get((backend, precision), 0.0))
                for backend, precision in candidates]

    @classmethod
    def from_settings(cls, settings: Settings) -> Classifier:
        return cls(
            settings.model_name,
            settings.model_weights,
            settings.device,
            settings.precision,
            settings.top_k,
            allow_random_weights=settings.allow_random_weights,
            compile_for_batch=settings.batch_size if settings.compile_model else None,
            backend=settings.inference_backend,
            cache_dir=settings.model_cache_dir,
            batch_size=settings.batch_size,
            device_decode_bytes=settings.decode_memory_bytes,
        )

    def _compile(self, batch_size: int) -> bool:
        """torch.compile the model, compiling now for every batch size up to ``batch_size``; False (and eager
        from then on) when this machine cannot compile, e.g. without a C++ compiler or triton."""
        eager = self._model
        self._model = torch.compile(eager, dynamic=True)
        crop = self.spec.preprocessing(1).crop_size
        try:
            # Inductor specialises batch sizes 1, 2-15 and 16+ separately: compile all three now, not mid-stream.
            for size in sorted({1, 2, batch_size}):
                self(np.zeros((size, crop, crop, 3), np.uint8))
        except Exception as exc:  # compilation failures surface at the first call, with many exception types
            log.warning("torch.compile failed (%s: %s); running the model eagerly", type(exc).__name__, exc)
            self._model = eager
            return False
        return True

    def preprocessor(self, max_image_pixels: int) -> Preprocessing:
        """This model's bytes -> uint8 image function, for the decode threads."""
        return self.spec.preprocessing(max_image_pixels)

    def decode_jpegs(self, jpegs: Sequence[EncodedJpeg]) -> list[torch.Tensor | None]:
        """Each JPEG as ``classify_prepared`` takes it, decoded, resized and cropped on the device (3 x crop x
        crop uint8), or None where the device's decoder refuses it. Decoded in calls that hold at most
        ``device_decode_bytes`` of full-size pixels each: a batch of large JPEGs would take GPU memory by the
        gigabyte in one call (32 of 64 MP: 6 GB)."""
        preprocessing = self.preprocessor(1 << 62)  # sizes were checked from the header already
        crop = preprocessing.crop_size
        out: list[torch.Tensor | None] = []
        for chunk in _chunks(jpegs, lambda jpeg: 3 * jpeg.width * jpeg.height, self._device_decode_bytes):
            for image in self._decode_jpegs([jpeg.data for jpeg in chunk]):
                if image is not None:
                    image = F.center_crop(F.resize(image, [preprocessing.resize_size], antialias=True), [crop, crop])
                out.append(image)
        return out

    def classify_prepared(self, items: Sequence[np.ndarray | torch.Tensor]) -> list[TopK]:
        """Top-k per image for a batch of uint8 crops: H x W x 3 arrays (decoded on the CPU) and 3 x H x W
        tensors on the device (``decode_jpegs``)."""
        if not any(isinstance(item, torch.Tensor) for item in items):
            return self(np.stack(items))  # type: ignore[arg-type]
        with torch.inference_mode():
            return self._top_k(self._model(self._normalise(self._device_batch(items))))

    def _device_batch(self, items: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """N x 3 x crop x crop uint8 on the device: the device's crops placed, the host's copied in at once."""
        crop = self.spec.preprocessing(1).crop_size
        batch = torch.empty((len(items), 3, crop, crop), dtype=torch.uint8, device=self.device)
        host = [i for i, item in enumerate(items) if not isinstance(item, torch.Tensor)]
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                batch[i] = item
        if host:
            pixels = self._to_device(torch.from_numpy(np.stack([items[i] for i in host])))
            batch[host] = pixels.permute(0, 3, 1, 2)
        return batch

    def _decode_jpegs(self, blobs: Sequence[bytes]) -> list[torch.Tensor | None]:
        """Each JPEG decoded to 3 x H x W uint8 on the device, in one batched call; None where the decoder
        fails (then retried alone, so one bad image does not send the whole batch to the CPU)."""
        if not blobs:
            return []
        tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            decoded: list[torch.Tensor | None] = []
            for tensor in tensors:
                try:
                    decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    decoded.append(None)
            return decoded

    def _to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` on the model's device; on CUDA staged in a reused pinned buffer and copied without blocking
        (uint8 crosses the bus: 4x fewer bytes than float). Reuse is safe: every call ends by copying the
        top-k back, which waits for this copy."""
        if self.device.type != "cuda":
            return pixels.to(self.device)
        if self._pinned is None or self._pinned.numel() < pixels.numel():
            self._pinned = torch.empty(pixels.numel(), dtype=torch.uint8).pin_memory()
        staging = self._pinned[: pixels.numel()].view(pixels.shape)
        staging.copy_(pixels)
        return staging.to(self.device, non_blocking=True)

    def __call__(self, batch: np.ndarray | Sequence[np.ndarray]) -> list[TopK]:
        """Top-k per image for uint8 RGB images, N x H x W x 3 (what the preprocessor makes) or N x 3 x H x W."""
        with torch.inference_mode():
            if self._exported is not None:
                return self._top_k(torch.from_numpy(self._exported(_nhwc(batch))))
            return self._top_k(self._torch_logits(batch))

    def _torch_logits(self, batch: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        return self._model(self._to_input(batch)).float()

    def _top_k(self, logits: torch.Tensor) -> list[TopK]:
        probabilities = torch.softmax(logits.float(), dim=1)
        confidences, indexes = probabilities.topk(self.top_k, dim=1)
        confidences, indexes = confidences.cpu().tolist(), indexes.cpu().tolist()
        return [
            [(i, self.categories[i], c) for i, c in zip(row_indexes, row_confidences, strict=True)]
            for row_indexes, row_confidences in zip(indexes, confidences, strict=True)
        ]

    def _to_input(self, batch: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(batch if isinstance(batch, np.ndarray) else np.stack(batch)))
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"expected a uint8 batch of N images, got {pixels.dtype} of shape {tuple(pixels.shape)}")
        pixels = self._to_device(pixels)
        if pixels.shape[-1] == 3:
            pixels = pixels.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: already channels_last, no copy
        elif pixels.shape[1] != 3:
            raise ValueError(f"expected 3 colour channels, got shape {tuple(pixels.shape)}")
        return self._normalise(pixels)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W on the device -> the model's normalised float input, channels_last."""
        return torch.addcmul(self._shift, pixels, self._scale).contiguous(memory_format=torch.channels_last)


def _chunks(items: Sequence[T], cost: Callable[[T], int], budget: int | None) -> list[Sequence[T]]:
    """``items`` in order, in runs whose costs add up to at most ``budget`` (an item over it alone in its run)."""
    if budget is None:
        return [items] if items else []
    runs: list[Sequence[T]] = []
    start, total = 0, 0
    for i, item in enumerate(items):
        if i > start and total + cost(item) > budget:
            runs.append(items[start:i])
            start, total = i, 0
        total += cost(item)
    if start < len(items):
        runs.append(items[start:])
    return runs


def _nhwc(batch: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """A uint8 batch as contiguous N x H x W x 3, what the exported graph takes."""
    pixels = batch if isinstance(batch, np.ndarray) else np.stack(batch)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or 3 not in (pixels.shape[1], pixels.shape[-1]):
        raise ValueError(f"expected a uint8 batch of N RGB images, got {pixels.dtype} of shape {pixels.shape}")
    return np.ascontiguousarray(pixels if pixels.shape[-1] == 3 else pixels.transpose(0, 2, 3, 1))


def weights_file_version(path: Path | str) -> str:
    """A local weights file's version: ``file-`` and the first 12 hex digits of its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"file-{digest.hexdigest()[:12]}"


def _load_model(spec: ModelSpec, weights_path: Path | str | None,
                allow_random: bool) -> tuple[nn.Module, str, str]:
    """The model with its weights, where they came from (file:<path>, torchvision-hub or random) and their
    version (the file's hash, the torchvision weights enum name, or ``random``)."""
    if weights_path is not None:
        model = spec.build(weights=None)
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # unreadable, not a state_dict, or one for another architecture
            raise WeightsUnavailable(
                f"weights file {weights_path} is not a usable state_dict for this model: {exc}"
            ) from None
        return model, f"file:{weights_path}", weights_file_version(weights_path)
    try:
        return spec.build(weights=spec.weights), "torchvision-hub", spec.weights.name
    except Exception as exc:  # no hub cache and no network, or a corrupt download
        if not allow_random:
            raise WeightsUnavailable(
                f"could not load torchvision's {spec.weights} (hub cache {torch.hub.get_dir()}): {exc}. "
                "Set VISIONSTREAM_MODEL_WEIGHTS to a state_dict file, or VISIONSTREAM_ALLOW_RANDOM_WEIGHTS=true "
                "to run with untrained weights"
            ) from None
        log.warning("!!! %s: no weights could be loaded (%s); running with RANDOM weights: every predicted "
                    "label is meaningless !!!", spec.weights, exc)
        # One model id, one model: every worker draws the same weights, so a result re-computed by another
        # worker is the one already stored (unseeded, the live tables and PostgreSQL disagreed after a
        # takeover: tests/integration/test_chaos.py).
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return spec.build(weights=None), "random", "random"
