"""Embed only what is new (faces/reuse.py): which faces the identify step embeds, and whose identity the
others carry. The embedder is a stand-in (pure logic): a face's embedding is the one-hot vector of the
person its probability field names, so a match says who it was."""

from __future__ import annotations

import numpy as np

from visionstream.faces.detector import DetectedFace, PreparedFrame
from visionstream.faces.identifier import FaceIdentifier
from visionstream.faces.identities import IdentityMatcher
from visionstream.faces.reuse import EmbeddingReuse
from visionstream.faces.tracking import FaceTracker
from visionstream.settings import load_settings

ALICE, BOB, STRANGER, OTHER = 0.9901, 0.9902, 0.9903, 0.9904  # "probabilities" naming who a face is
PEOPLE = {ALICE: 0, BOB: 1, STRANGER: 2, OTHER: 3}
FRAME = PreparedFrame(np.zeros((4, 4, 3), np.uint8), 1.0, 4, 4)


class OneHotEmbedder:
    model_id = "onehot@1"

    def __init__(self) -> None:
        self.embedded = 0

    def embed_faces(self, frame, faces):
        return self.embed_batch([frame], [faces])[0]

    def embed_batch(self, frames, faces):
        self.embedded += sum(map(len, faces))
        return [np.eye(4, dtype=np.float32)[[PEOPLE[f.probability] for f in found]].reshape(len(found), 4)
                for found in faces]


def face(x: float, who: float = ALICE, size: float = 100) -> DetectedFace:
    return DetectedFace((x, 100, x + size, 100 + size), who, ())


def setup(recheck: int = 10, visitor_faces: int | None = None, unknown: int = 1
          ) -> tuple[EmbeddingReuse, FaceIdentifier, OneHotEmbedder]:
    embedder = OneHotEmbedder()
    matcher = IdentityMatcher(["alice", "bob"], np.eye(4, dtype=np.float32)[:2], 0.9, embedder.model_id)
    reuse = EmbeddingReuse(FaceTracker(), recheck, 0.5, visitor_faces, unknown)
    return reuse, FaceIdentifier(embedder, matcher), embedder


def run(reuse, identifier, start: int, frames: list[list[DetectedFace]], camera: str = "door"):
    """One batch through the identify step."""
    where = [(camera, start + k, (start + k) / 25) for k in range(len(frames))]
    return reuse.identify(identifier, [FRAME] * len(frames), frames, where)


def people(identified) -> list[list[str | None]]:
    return [[m.person if m else None for m in result.matches] for result in identified]


def test_an_identified_visit_is_not_embedded_again_until_its_recheck_and_keeps_its_name():
    reuse, identifier, embedder = setup(recheck=10)
    out = run(reuse, identifier, 0, [[face(100 + k)] for k in range(8)])
    assert embedder.embedded == 1  # the first face matched alice; the other 7 carry her
    assert people(out) == [["alice"]] * 8
    assert [r.reused for r in out] == [(False,)] + [(True,)] * 7
    assert out[3].matches[0] == out[0].matches[0]  # the check's similarity and embedder, carried
    out = run(reuse, identifier, 8, [[face(108 + k)] for k in range(8)])
    assert embedder.embedded == 2  # frame 10: ten frames after the check, embedded again
    assert [r.reused for r in out].index((False,)) == 2 and people(out) == [["alice"]] * 8


def test_a_box_that_changed_a_lot_is_embedded_again():
    reuse, identifier, embedder = setup()
    run(reuse, identifier, 0, [[face(100)]])
    out = run(reuse, identifier, 1, [[face(130, size=60)]])  # centre within half a width: same visit
    assert embedder.embedded == 2 and out[0].reused == (False,)


def test_a_visit_nobody_is_enrolled_as_is_embedded_every_frame_with_an_unknown_recheck_of_1():
    reuse, identifier, embedder = setup(unknown=1)
    out = run(reuse, identifier, 0, [[face(100 + k, STRANGER)] for k in range(8)])
    assert embedder.embedded == 8 and people(out) == [[None]] * 8
    assert all(not any(r.reused) for r in out)


def test_a_visit_nobody_is_recognised_in_is_rechecked_every_n_frames_and_never_takes_a_name():
    reuse, identifier, embedder = setup(recheck=10, unknown=4)
    out = run(reuse, identifier, 0, [[face(100 + k, STRANGER), face(600, BOB)] for k in range(8)])
    # The stranger at frames 0 and 4; bob once (matched, carried for 10 frames).
    assert embedder.embedded == 3 and people(out) == [[None, "bob"]] * 8
    assert [r.reused for r in out] == [(False, False)] + [(True, True)] * 3 + [(False, True)] + [(True, True)] * 3
    out = run(reuse, identifier, 8, [[face(108, STRANGER), face(600, BOB), face(1200, OTHER)]])
    # A new track (OTHER) is embedded at once; the stranger at its re-check (frame 8 = 4 after frame 4).
    assert embedder.embedded == 5 and people(out) == [[None, "bob", None]]
    assert out[0].reused == (False, True, False)
    out = run(reuse, identifier, 9, [[face(140, STRANGER, size=60), face(600, BOB), face(1200, OTHER)]])
    assert out[0].reused == (False, True, True)  # the stranger's box changed a lot: embedded at once


def test_an_enrolled_person_first_seen_turned_away_is_named_at_most_n_frames_late():
    for unknown in (1, 3, 5, 8):
        reuse, identifier, embedder = setup(recheck=10, unknown=unknown)
        # Frames 0-1: alice's face matches nobody (turned away); from frame 2 on it matches her.
        frames = [[face(100 + k, STRANGER if k < 2 else ALICE)] for k in range(16)]
        out = run(reuse, identifier, 0, frames[:8]) + run(reuse, identifier, 8, frames[8:])
        named = [k for k, who in enumerate(people(out)) if who == ["alice"]]
        assert named == list(range(named[0], 16)), (unknown, people(out))  # once named, named on
        assert 2 <= named[0] < 2 + unknown, (unknown, people(out))  # late by less than n frames
        assert all(who in (["alice"], [None]) for who in people(out))


def test_distinct_visitors_embed_a_stranger_visit_k_times_then_until_its_recheck():
    reuse, identifier, embedder = setup(recheck=10, visitor_faces=5)
    out = run(reuse, identifier, 0, [[face(100 + k, STRANGER)] for k in range(8)])
    assert embedder.embedded == 5 and [r.reused for r in out] == [(False,)] * 5 + [(True,)] * 3
    assert people(out) == [[None]] * 8
    run(reuse, identifier, 8, [[face(108 + k, STRANGER)] for k in range(8)])
    assert embedder.embedded == 6  # frame 14: ten frames after the last embedded one (4)
    reuse, identifier, embedder = setup(recheck=10, visitor_faces=5, unknown=20)
    run(reuse, identifier, 0, [[face(100 + k, STRANGER)] for k in range(16)][:8])
    run(reuse, identifier, 8, [[face(108 + k, STRANGER)] for k in range(8)])
    assert embedder.embedded == 5  # K faces, then nobody carried for the longer of the two re-checks (20)


def test_a_recheck_that_no_longer_matches_embeds_the_rest_and_names_nobody():
    reuse, identifier, embedder = setup(recheck=3)
    run(reuse, identifier, 0, [[face(100)]])
    # Same track, now someone else's face (a stand-in for a turned head that matches nobody).
    out = run(reuse, identifier, 1, [[face(101)], [face(102)], [face(103, STRANGER)], [face(104, STRANGER)],
                                              [face(105, STRANGER)]])
    assert people(out) == [["alice"], ["alice"], [None], [None], [None]]
    assert [r.reused for r in out] == [(True,), (True,), (False,), (False,), (False,)]


def test_faces_of_other_visits_and_s3_images_are_embedded_and_a_batch_is_one_embedder_call_per_round():
    reuse, identifier, embedder = setup()
    calls = []
    real = embedder.embed_batch
    embedder.embed_batch = lambda frames, faces: calls.append(sum(map(len, faces))) or real(frames, faces)
    frames = [[face(100), face(600, BOB)] for _ in range(4)]
    out = run(reuse, identifier, 0, frames)
    assert people(out) == [["alice", "bob"]] * 4 and calls == [2]  # one round: both matched at once
    images = reuse.identify(identifier, [FRAME, FRAME], [[face(100)], [face(100)]], [None, None])
    assert people(images) == [["alice"], ["alice"]] and calls == [2, 2]  # no camera, no tracks: embedded
    yard = run(reuse, identifier, 0, [[face(100)], [face(100)]], camera="yard")
    assert people(yard) == [["alice"], ["alice"]] and calls == [2, 2, 1]  # another camera's own track


def test_off_with_face_history_without_tracking_or_with_a_recheck_every_frame():
    settings = load_settings()
    assert settings.face_reembed_frames > 1
    assert EmbeddingReuse.from_settings(settings) is not None
    for off in ({"face_tracking": False}, {"store_face_embeddings": True}, {"face_reembed_frames": 1}):
        assert EmbeddingReuse.from_settings(settings.model_copy(update=off)) is None
    assert EmbeddingReuse.from_settings(settings).recheck_unknown_frames == settings.face_recheck_unknown_frames
    reuse = EmbeddingReuse.from_settings(settings.model_copy(update={"face_distinct_visitors": True}))
    assert reuse is not None and reuse.visitor_faces == settings.face_visitor_faces


def test_checks_are_bounded():
    reuse = EmbeddingReuse(FaceTracker(), 10, 0.5, None, 10, max_visits=3)
    for k in range(5):
        reuse.checked(f"door/{k}/0", k, (0, 0, 1, 1), None)
    assert len(reuse) == 3 and reuse.reused("door/0/0", 5, (0, 0, 1, 1)) is None
