"""dlib's face-recognition ResNet run by OpenVINO: the same weights, read from dlib's own model file.

dlib-bin's wheel runs the network on its own single-threaded matrix code (no BLAS): 76-100 ms a face on this
2-core EPYC (issue 26). The network is small and fixed (dlib's dnn_face_recognition_ResNet example: a 7x7
convolution, 14 residual blocks of 32-256 channels, a 128-d linear layer), so it is rebuilt here as an OpenVINO
graph from the parameters in ``dlib_face_recognition_resnet_model_v1.dat`` (nothing exported, nothing
downloaded), on the same 150x150 chips dlib cuts: 14-17 ms a face in fp32, embeddings within 4e-7 of dlib's
on the arcade clip's faces. Two things dlib does its own way are kept: a residual sum of tensors of different
sizes is taken over their union, the missing part zero (``add_prev``), and pooling rounds sizes down.

The file is dlib's serialisation: each layer writes its name (a length-prefixed string), then its fields;
integers as a byte holding the length (and sign, 0x80) then little-endian bytes, floats as such an integer
mantissa and exponent, tensors as version 2, four dimensions and raw little-endian float32s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionstream.core.backends import runtime_threads

CHIP_SIZE = 150  # dlib's input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # what compute_face_descriptor cuts around the five points
DIMENSION = 128
CHUNK = 32  # chips per inference call (ResnetRunner)
# A layer's name as the file writes it: length 1 byte, the length, the name.
_LAYER = re.compile(rb"\x01[\x03-\x20](con_[4-6]|affine_2?|fc_[2-3]|input_rgb_image_sized)")


class ResnetFileError(ValueError):
    """The file is not the network this module rebuilds."""


@dataclass(frozen=True, slots=True)
class ConvLayer:
    weights: np.ndarray  # out x in x kh x kw, the affine layer after it folded in
    bias: np.ndarray  # out
    stride: int
    padding: int


@dataclass(frozen=True, slots=True)
class ResnetWeights:
    mean_rgb: tuple[float, float, float]  # subtracted from each pixel, then divided by 256 (dlib's input layer)
    convs: list[ConvLayer]  # the stem's, then two per residual block
    fc: np.ndarray  # 256 x 128: embedding = pooled features @ fc (no bias)


class _Reader:
    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.position = position

    def take(self, size: int) -> bytes:
        if self.position + size > len(self.data):
            raise ResnetFileError("dlib network file ends inside a layer")
        chunk = self.data[self.position:self.position + size]
        self.position += size
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size > 8:
            raise ResnetFileError(f"dlib network file: an integer of {size} bytes")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def name(self) -> str:
        return self.take(self.integer()).decode("ascii")

    def real(self) -> float:
        mantissa = self.integer()
        return float(mantissa * 2.0 ** self.integer())

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise ResnetFileError("dlib network file: a tensor of an unknown version")
        shape = [self.integer() for _ in range(4)]
        count = int(np.prod(shape))
        if min(shape) < 0 or count > len(self.data):
            raise ResnetFileError(f"dlib network file: a tensor of shape {shape}")
        return np.frombuffer(self.take(4 * count), "<f4").astype(np.float32)

    def alias(self) -> list[int]:
        if self.integer() != 1:
            raise ResnetFileError("dlib network file: an alias tensor of an unknown version")
        return [self.integer() for _ in range(4)]


def read_resnet(path: Path) -> ResnetWeights:
    """The parameters of dlib's face-recognition ResNet, in the order the network applies them."""
    data = path.read_bytes()
    mean: tuple[float, float, float] | None = None
    convs: list[tuple[np.ndarray, np.ndarray, int, int]] = []
    affines: list[tuple[np.ndarray, np.ndarray]] = []
    fc: np.ndarray | None = None
    for found in _LAYER.finditer(data):  # dlib writes a network input side first
        reader = _Reader(data, found.start())
        kind = reader.name()
        if kind == "input_rgb_image_sized":
            mean = (reader.real(), reader.real(), reader.real())
            if (reader.integer(), reader.integer()) != (CHIP_SIZE, CHIP_SIZE):
                raise ResnetFileError(f"dlib network file: input is not {CHIP_SIZE}x{CHIP_SIZE}")
        elif kind.startswith("con_"):
            params = reader.tensor()
            filters, rows, cols = reader.integer(), reader.integer(), reader.integer()
            stride, stride_x, padding, padding_x = (reader.integer() for _ in range(4))
            shape = reader.alias()
            size = int(np.prod(shape))
            if (shape[0], shape[2], shape[3]) != (filters, rows, cols) or (stride, padding) != (stride_x, padding_x) \
                    or len(params) != size + filters:
                raise ResnetFileError(f"dlib network file: convolution {len(convs)} is not square or not whole")
            convs.append((params[:size].reshape(shape), params[size:], stride, padding))
        elif kind.startswith("affine_"):
            params = reader.tensor()
            half = len(params) // 2
            affines.append((params[:half], params[half:]))
        else:
            reader.integer(), reader.integer()  # outputs, inputs
            fc = reader.tensor()
    if mean is None or fc is None or len(convs) != 29 or len(affines) != len(convs) or fc.size != 256 * DIMENSION:
        raise ResnetFileError(f"{path} is not dlib's face-recognition ResNet (found {len(convs)} convolutions, "
                              f"{len(affines)} affine layers)")
    folded = []
    for (weights, bias, stride, padding), (gamma, beta) in zip(convs, affines, strict=True):
        if len(gamma) != len(bias):
            raise ResnetFileError("dlib network file: an affine layer does not follow its convolution")
        folded.append(ConvLayer(weights * gamma[:, None, None, None], bias * gamma + beta, stride, padding))
    return ResnetWeights(mean, folded, fc.reshape(256, DIMENSION))


def resnet_graph(weights: ResnetWeights):  # -> openvino.Model
    """The network as an OpenVINO graph: N x 150 x 150 x 3 RGB uint8 chips -> N x 128 (not normalised)."""
    import openvino
    import openvino.opset13 as ops

    chips = ops.parameter([-1, CHIP_SIZE, CHIP_SIZE, 3], openvino.Type.u8, name="chips")
    x = ops.transpose(ops.convert(chips, openvino.Type.f32), ops.constant(np.array([0, 3, 1, 2], np.int64)))
    x = ops.multiply(ops.subtract(x, ops.constant(np.array(weights.mean_rgb, np.float32).reshape(1, 3, 1, 1))),
                     ops.constant(np.float32(1 / 256)))
    shape = [3, CHIP_SIZE, CHIP_SIZE]  # channels, rows, columns: static, for the residual sums' padding

    def conv(x, layer: ConvLayer):
        pad = [layer.padding] * 2
        y = ops.convolution(x, ops.constant(layer.weights), [layer.stride] * 2, pad, pad, [1, 1])
        shape[:] = [layer.weights.shape[0], *((side + 2 * layer.padding - layer.weights.shape[2]) // layer.stride + 1
                                             for side in shape[1:])]
        return ops.add(y, ops.constant(layer.bias.reshape(1, -1, 1, 1)))

    def pooled(size: int, stride: int) -> list[int]:
        shape[1:] = [(side - size) // stride + 1 for side in shape[1:]]  # no padding, sizes rounded down
        return [size] * 2

    def padded_to(x, have: list[int], want: list[int]):
        if have == want:
            return x
        ends = np.array([0, *(w - h for w, h in zip(want, have, strict=True))], np.int64)
        return ops.pad(x, ops.constant(np.zeros(4, np.int64)), ops.constant(ends), "constant")

    x = ops.relu(conv(x, weights.convs[0]))
    x = ops.max_pool(x, [2, 2], [1, 1], [0, 0], [0, 0], pooled(3, 2), rounding_type="floor").output(0)
    for first, second in zip(weights.convs[1::2], weights.convs[2::2], strict=True):
        before = list(shape)
        y = conv(ops.relu(conv(x, first)), second)
        after = list(shape)
        if first.stride != 1:  # dlib's residual_down: the shortcut average-pooled 2x2
            shape[:] = before
            x = ops.avg_pool(x, [2, 2], [0, 0], [0, 0], pooled(2, 2), exclude_pad=True, rounding_type="floor")
            before = list(shape)
        union = [max(a, b) for a, b in zip(before, after, strict=True)]
        x = ops.relu(ops.add(padded_to(y, after, union), padded_to(x, before, union)))
        shape[:] = union
    x = ops.reduce_mean(x, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    return openvino.Model([ops.matmul(x, ops.constant(weights.fc), False, False)], [chips], "dlib_resnet_v1")


class ResnetRunner:
    """Compiled once; call with N x 150 x 150 x 3 uint8 chips (``dlib.get_face_chips``), get N x 128 float32."""

    def __init__(self, path: Path) -> None:
        import openvino

        # LATENCY: one request at a time, as the model thread calls it; on the process's torch thread count like
        # the classifier's and MTCNN's sessions: OpenVINO sizes its own pool from the cores it sees, not from a
        # container's CPU quota, and would oversubscribe one.
        self._compiled = openvino.Core().compile_model(resnet_graph(read_resnet(path)), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": runtime_threads(),
            "INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        # In chunks: one call's memory grows ~1.1 MB a chip (peak RSS 827 MB at 16 chips, 1383 at 512), while
        # the time per chip hardly does past a few dozen (7.2 ms at 16, 7.0 at 128; review F1, 06:49 UTC).
        return np.concatenate([np.zeros((0, DIMENSION), np.float32)] + [
            np.asarray(self._compiled(np.ascontiguousarray(chips[start:start + CHUNK], np.uint8))[0], np.float32)
            for start in range(0, len(chips), CHUNK)])
