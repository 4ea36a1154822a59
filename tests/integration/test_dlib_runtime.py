"""dlib's face network run by OpenVINO (faces/dlib_resnet.py) embeds real faces as dlib's own run does: the
portraits and the arcade clip's faces (MTCNN at 960 px, dlib's alignment), the same person matched for each;
and a network file whose weights were changed is refused at start (auto falls back to dlib, openvino fails)."""

from __future__ import annotations

import dlib
import numpy as np
import pytest

from visionstream.faces.detector import FaceDetector
from visionstream.faces.dlib_embedder import RECOGNITION_FILE, DlibEmbedder, agreeing_network, models_folder
from visionstream.faces.dlib_resnet import CHUNK
from visionstream.faces.enroll import photo_embeddings
from visionstream.faces.identifier import DEFAULT_THRESHOLDS
from visionstream.faces.identities import IdentityMatcher
from visionstream.settings import load_settings

from ..media import arcade_jpegs, portraits


@pytest.fixture(scope="module")
def embedders():
    return DlibEmbedder(runtime="openvino"), DlibEmbedder(runtime="dlib")


def test_openvino_embeds_portraits_and_arcade_faces_as_dlib_does(embedders):
    openvino, own = embedders
    assert (openvino.runtime, own.runtime) == ("openvino", "dlib")
    assert openvino.model_id == own.model_id  # rows keyed by the model id must not depend on the runtime
    detector = FaceDetector.from_settings(load_settings(device="cpu", face_detect_max_side=960))
    frames = [detector.prepare(jpeg) for jpeg in arcade_jpegs(8, 6, start=40)]  # the clip's nearest walkers
    faces = [list(found) for found in detector.detect(frames)]
    ours = np.concatenate(openvino.embed_batch(frames, faces))
    theirs = np.concatenate(own.embed_batch(frames, faces))
    assert len(ours) >= 20
    # A batch of more faces than one network call takes (dlib_resnet.CHUNK): the same embeddings, in order.
    assert len(ours) * 4 > CHUNK
    assert np.allclose(np.concatenate(openvino.embed_batch(frames * 4, faces * 4)), np.tile(ours, (4, 1)), atol=1e-6)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert float(np.max(1 - np.sum(ours * theirs, axis=1))) < 1e-5  # measured: 1e-7

    photos = portraits()
    enrolled = photo_embeddings(detector, own, photos)
    assert float(np.max(1 - np.sum(photo_embeddings(detector, openvino, photos) * enrolled, axis=1))) < 1e-5
    matcher = IdentityMatcher([p.parent.name for p in photos] + ["arcade walker"],
                              np.concatenate([enrolled, theirs[:1]]), DEFAULT_THRESHOLDS["dlib"], own.model_id)
    assert [m and m.person for m in matcher.match(ours)] == [m and m.person for m in matcher.match(theirs)]


def test_a_network_whose_weights_were_changed_is_refused(embedders, tmp_path, caplog):
    data = bytearray((models_folder() / RECOGNITION_FILE).read_bytes())
    last_convolution = data.rfind(b"\x01\x05con_4")
    data[last_convolution + 1_000:last_convolution + 1_001_000] = bytes(1_000_000)  # a quarter of its filters: 0
    changed = tmp_path / RECOGNITION_FILE
    changed.write_bytes(bytes(data))
    recognition = dlib.face_recognition_model_v1(str(models_folder() / RECOGNITION_FILE))
    with pytest.raises(RuntimeError, match="VISIONSTREAM_FACE_EMBEDDER_RUNTIME=openvino: its embeddings differ"):
        agreeing_network(recognition, changed, required=True)
    assert agreeing_network(recognition, changed, required=False) is None
    assert "runs on dlib, not OpenVINO" in caplog.text
    assert agreeing_network(recognition, models_folder() / RECOGNITION_FILE, required=True) is not None
