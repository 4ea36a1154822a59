"""Reading dlib's serialisation (faces/dlib_resnet.py): its integers, floats and strings, and a file that is not
dlib's face-recognition network refused by name, before OpenVINO builds anything from it."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from visionstream.faces.dlib_resnet import ResnetFileError, _Reader, read_resnet


def _integer(value: int) -> bytes:
    """dlib's encoding: a control byte (length, 0x80 when negative), then the magnitude little-endian."""
    magnitude = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "little")
    return bytes([len(magnitude) | (0x80 if value < 0 else 0)]) + magnitude


def test_integers_floats_and_names_read_as_dlib_writes_them():
    data = (_integer(-300) + _integer(70000) + _integer(3) + _integer(-1) + _integer(5) + b"con_4"
            + _integer(2) + b"".join(_integer(n) for n in (1, 2, 1, 1)) + struct.pack("<2f", 0.5, -2.0))
    reader = _Reader(data, 0)
    assert reader.integer() == -300
    assert reader.integer() == 70000
    assert reader.real() == 1.5  # mantissa 3 x 2^-1
    assert reader.name() == "con_4"
    assert reader.tensor().tolist() == [0.5, -2.0]
    assert reader.position == len(data)


def test_a_layer_cut_short_is_an_error_not_a_read_past_the_end():
    data = _integer(2) + b"".join(_integer(n) for n in (10, 1, 1, 1)) + struct.pack("<2f", 0.5, -2.0)  # 10 floats said, 2 there
    with pytest.raises(ResnetFileError, match="ends inside a layer"):
        _Reader(data, 0).tensor()


def test_a_file_without_the_networks_layers_is_refused(tmp_path):
    path = tmp_path / "not_a_network.dat"
    # one convolution-shaped layer name, then noise: 1 of the 29 convolutions, no input or fc layer
    path.write_bytes(b"\x01\x05con_4" + np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(ResnetFileError):
        read_resnet(path)
