"""bench/face_peers.py's reference for recall: a face counts for a detector only when two other detector
families found it, so no detector (and no second model of its own family) votes for itself."""

import runpy
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _face_peers() -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(BENCH / "face_peers.py")))


FACE = [100, 100, 140, 150]
NEAR = [104, 96, 146, 148]  # the same face as another detector draws it (IoU ~0.7)
ELSEWHERE = [400, 300, 430, 340]


def test_recall_counts_only_faces_two_other_families_found():
    face_peers = _face_peers()
    found = {  # one frame each
        "MTCNN (production)": [[FACE, ELSEWHERE]],
        "dlib HOG": [[NEAR]],
        "OpenCV Haar": [[FACE]],
        # both BlazeFace models see ELSEWHERE: one family, so it is not confirmed for MTCNN
        "BlazeFace full-range": [[ELSEWHERE]],
        "BlazeFace short-range": [[ELSEWHERE]],
    }
    scores = face_peers.agreement(found)
    assert scores["MTCNN (production)"] == {"confirmed": 1, "found": 1, "boxes": 2, "unconfirmed": 0}
    # MTCNN and BlazeFace agree on ELSEWHERE: two other families for HOG, which missed it
    assert scores["dlib HOG"] == {"confirmed": 2, "found": 1, "boxes": 1, "unconfirmed": 0}
    # for BlazeFace, FACE is confirmed (MTCNN, HOG, Haar) and missed; ELSEWHERE has MTCNN's vote alone
    assert scores["BlazeFace full-range"] == {"confirmed": 1, "found": 0, "boxes": 1, "unconfirmed": 0}
    assert face_peers.consensus_faces(found) == 2


def test_a_box_no_other_family_found_is_unconfirmed():
    face_peers = _face_peers()
    found = {"MTCNN (production)": [[FACE]], "dlib HOG": [[FACE]], "OpenCV Haar": [[FACE, ELSEWHERE]],
             "BlazeFace full-range": [[]], "BlazeFace short-range": [[]]}
    assert face_peers.agreement(found)["OpenCV Haar"] == {"confirmed": 1, "found": 1, "boxes": 2, "unconfirmed": 1}
    assert face_peers.iou(FACE, [130, 100, 170, 150]) < face_peers.MATCH_IOU  # a quarter overlap is another face
