"""Benchmark: SqueezeNet images/s per execution path, JPEG decode+preprocess images/s, fast-path top-1 agreement.

    .venv/bin/python bench/bench_model.py [--weights PATH] [--batch-sizes 1 32] [--json OUT]

Model paths run on pre-decoded, normalised tensors; "classifier" rows run the production Classifier from
uint8 images to top-k. Agreement is top-1 against fp32 eager on a few hundred real photos (scikit-image's
colour photos and crops, flips and rescales of them).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data
from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1

from visionstream.classification.model import (
    MODELS,
    Classifier,
    ReducedPrecision,
    cpu_has_fast,
)
from visionstream.core.imaging import Preprocessing

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "models" / "squeezenet1_1_imagenet.pth"
# scikit-image's colour photos bundled in its wheel (others need the optional pooch download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel", "logo")
TRANSFORM = SqueezeNet1_1_Weights.IMAGENET1K_V1.transforms()


def colour_photos() -> dict[str, Image.Image]:
    motorcycle = data.stereo_motorcycle()
    arrays = {name: getattr(data, name)() for name in PHOTOS}
    arrays["motorcycle_left"], arrays["motorcycle_right"] = motorcycle[0], motorcycle[1]
    return {name: Image.fromarray(pixels).convert("RGB") for name, pixels in arrays.items()}


def variants(photos: dict[str, Image.Image], count: int, seed: int = 0) -> Iterator[Image.Image]:
    """Distinct real images: each photo, then random crops (20-100% of each side), flips and rescales."""
    rng = random.Random(seed)
    yield from photos.values()
    sources = list(photos.values())
    for _ in range(count - len(sources)):
        image = rng.choice(sources)
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.2, 1.0)), int(h * rng.uniform(0.2, 1.0))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = image.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.6, 2.0)
        yield image.resize((max(64, int(cw * scale)), max(64, int(ch * scale))), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def imagenet_like_jpegs(photos: dict[str, Image.Image]) -> list[bytes]:
    """500x375 JPEGs (ImageNet's typical size) at quality 98: about 90 KB for these smooth photos."""
    return [jpeg(image.resize((500, 375), Image.Resampling.BICUBIC), 98) for image in photos.values()]


def images_per_second(run: Callable[[], object], images: int, seconds: float) -> float:
    run()  # warm-up: allocations, oneDNN primitive creation
    start, calls = time.perf_counter(), 0
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return images * calls / elapsed


def model_paths(state: dict, device: torch.device, compile_model: bool) -> dict[str, tuple[torch.nn.Module, Callable]]:
    """Name -> (model, input transform) for each way of running the network."""
    def build(memory_format: torch.memory_format = torch.contiguous_format, dtype: torch.dtype = torch.float32):
        model = squeezenet1_1(weights=None)
        model.load_state_dict(state)
        return model.eval().to(device, dtype, memory_format=memory_format)

    cl = torch.channels_last
    paths = {
        "fp32 eager NCHW": (build(), lambda x: x),
        "fp32 channels_last": (build(cl), lambda x: x.contiguous(memory_format=cl)),
    }
    half = torch.bfloat16 if device.type == "cpu" else torch.float16
    half_name = "bf16" if device.type == "cpu" else "fp16"
    paths[f"{half_name} autocast channels_last"] = (
        _Autocast(build(cl), device, half), lambda x: x.contiguous(memory_format=cl)
    )
    paths[f"{half_name} weights channels_last"] = (build(cl, half), lambda x: x.to(half, memory_format=cl))
    # What the production Classifier runs for reduced precision: the body in half, the two ends in fp32.
    paths[f"{half_name} body, fp32 ends, channels_last"] = (
        ReducedPrecision(MODELS["squeezenet1_1"], build(), half).to(device, memory_format=cl),
        lambda x: x.contiguous(memory_format=cl),
    )
    if compile_model:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant-fold the weights into the compiled graph
        paths["fp32 torch.compile channels_last"] = (
            torch.compile(build(cl), dynamic=False), lambda x: x.contiguous(memory_format=cl)
        )
    return paths


class _Autocast(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device.type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)


def synchronise(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def bench_models(state: dict, device: torch.device, batch_sizes: list[int], seconds: float, compile_model: bool,
                 agreement_inputs: torch.Tensor, weights: Path) -> list[dict]:
    rows = []
    sync = synchronise(device)
    reference_top1 = None
    for name, (model, prepare) in model_paths(state, device, compile_model).items():
        with torch.inference_mode():
            top1 = torch.cat([model(prepare(chunk.to(device))).argmax(1).cpu()
                              for chunk in agreement_inputs.split(32)])
        reference_top1 = top1 if reference_top1 is None else reference_top1
        row = {"device": device.type, "path": name,
               "agreement": float((top1 == reference_top1).float().mean()), "images": len(top1)}
        for batch_size in batch_sizes:
            x = prepare(torch.randn(batch_size, 3, 224, 224, device=device))
            start = time.perf_counter()
            with torch.inference_mode():
                model(x)  # for torch.compile this is the compile
            row[f"first_call_s@{batch_size}"] = round(time.perf_counter() - start, 2)

            def step() -> None:
                with torch.inference_mode():
                    model(x)
                sync()

            row[f"img/s@{batch_size}"] = round(images_per_second(step, batch_size, seconds), 1)
        rows.append(row)
        print(_row_text(row, batch_sizes), flush=True)

    # The production object, uint8 images in, top-k out: precision auto compiled (a worker's default), and fp32.
    uint8_images = _to_uint8(agreement_inputs)
    for precision, compiled in (("auto", True), ("fp32", False)):
        classifier = Classifier(weights_path=weights, device=device.type, precision=precision,
                                compile_for_batch=max(batch_sizes) if compiled else None)
        top1 = torch.tensor([r[0][0] for chunk in np.array_split(uint8_images, max(1, len(uint8_images) // 32))
                             for r in classifier(chunk)])
        how = f"{classifier.precision}{', compiled' if classifier.compiled else ''}"
        row = {"device": device.type, "path": f"classifier precision={precision} ({how})",
               "agreement": float((top1 == reference_top1).float().mean()), "images": len(top1)}
        for batch_size in batch_sizes:
            batch = uint8_images[np.arange(batch_size) % len(uint8_images)]
            row[f"img/s@{batch_size}"] = round(images_per_second(lambda: classifier(batch), batch_size, seconds), 1)
        rows.append(row)
        print(_row_text(row, batch_sizes), flush=True)
    return rows


def _to_uint8(normalised: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(TRANSFORM.mean).view(1, 3, 1, 1), torch.tensor(TRANSFORM.std).view(1, 3, 1, 1)
    pixels = ((normalised * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def _row_text(row: dict, batch_sizes: list[int]) -> str:
    speeds = "  ".join(f"{row[f'img/s@{b}']:8.1f}" for b in batch_sizes)
    return f"{row['device']:5s} {row['path']:42s} {speeds}   top-1 agree {row['agreement']:6.1%} of {row['images']}"


def bench_decode(photos: dict[str, Image.Image], threads: list[int], seconds: float) -> list[dict]:
    preprocess = Preprocessing(max_pixels=100_000_000)
    rows = []
    sets = {"imagenet-like 500x375": imagenet_like_jpegs(photos),
            "large 2400x1600 (DCT draft)": [jpeg(image.resize((2400, 1600), Image.Resampling.BICUBIC))
                                            for image in photos.values()]}
    for name, jpegs in sets.items():
        kb = sum(map(len, jpegs)) / len(jpegs) / 1000
        for workers in threads:
            with ThreadPoolExecutor(workers) as pool:
                speed = images_per_second(lambda: list(pool.map(preprocess, jpegs * 4)), 4 * len(jpegs), seconds)
            row = {"set": name, "mean_kb": round(kb, 1), "threads": workers, "img/s": round(speed, 1)}
            rows.append(row)
            print(f"decode {name:30s} {kb:6.1f} KB  threads={workers}  {speed:8.1f} img/s", flush=True)
    return rows


def draft_agreement(state: dict, images: list[Image.Image]) -> dict:
    """Top-1 of the DCT-draft decode path vs torchvision's transform on the same large JPEGs (fp32)."""
    model = squeezenet1_1(weights=None)
    model.load_state_dict(state)
    model.eval()
    classifier_input = Preprocessing(max_pixels=100_000_000)
    mean, std = torch.tensor(TRANSFORM.mean).view(1, 3, 1, 1), torch.tensor(TRANSFORM.std).view(1, 3, 1, 1)
    ours, reference = [], []
    with torch.inference_mode():
        for image in images:
            w, h = image.size
            scale = 1024 / min(w, h)  # shorter side 1024: decoded at 1/2 scale in the DCT domain
            large = jpeg(image.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC))
            pixels = torch.from_numpy(classifier_input(large).copy()).permute(2, 0, 1)[None].float() / 255
            ours.append(model((pixels - mean) / std).argmax(1))
            reference.append(model(TRANSFORM(Image.open(io.BytesIO(large)).convert("RGB"))[None]).argmax(1))
    agreement = float((torch.cat(ours) == torch.cat(reference)).float().mean())
    print(f"decode DCT-draft vs torchvision transform, top-1 agree {agreement:.1%} of {len(images)} large JPEGs")
    return {"agreement": agreement, "images": len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="SqueezeNet 1.1 state_dict")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    parser.add_argument("--images", type=int, default=300, help="distinct real images for top-1 agreement")
    parser.add_argument("--decode-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (tens of seconds per batch size)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    photos = colour_photos()
    images = list(variants(photos, args.images))
    agreement_inputs = torch.stack([TRANSFORM(image) for image in images])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU native bf16: {cpu_has_fast('bf16')}, "
          f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"{'':48s}" + "  ".join(f"{f'bs={b} img/s':>8s}" for b in args.batch_sizes))

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = {"models": [], "torch": torch.__version__, "threads": torch.get_num_threads()}
    for device in devices:
        results["models"] += bench_models(state, device, args.batch_sizes, args.seconds,
                                          not args.no_compile, agreement_inputs, args.weights)
    results["decode"] = bench_decode(photos, args.decode_threads, args.seconds)
    results["draft_agreement"] = draft_agreement(state, images[:100])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
