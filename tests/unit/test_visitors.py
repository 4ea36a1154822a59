"""Distinct visitors: the online clustering of visit embeddings into anonymous visitor ids (pure logic)."""

from __future__ import annotations

import itertools
import uuid

import numpy as np

from visionstream.faces.visitors import KnownVisit, PendingVisits, VisitorClusterer, VisitorMemory, VisitorStore
from visionstream.settings import load_settings

from ..clock import Clock


def unit(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


A, A2, B = unit(1, 0, 0), unit(1, 0.2, 0), unit(0, 1, 0)  # A·A2 = 0.98, A·B = 0


def counter_ids():
    numbers = itertools.count()
    return lambda: f"visitor-{next(numbers)}"


def test_a_similar_visit_is_the_same_visitor_and_another_face_a_new_one():
    clusterer = VisitorClusterer(0.93, 3600, counter_ids())
    assert clusterer.assign(A, 0.0, []) == ("visitor-0", True)
    known = [KnownVisit("visitor-0", A, 0.0)]
    assert clusterer.assign(A2, 60.0, known) == ("visitor-0", False)
    assert clusterer.assign(B, 60.0, known) == ("visitor-1", True)


def test_the_nearest_visitor_above_the_threshold_wins():
    clusterer = VisitorClusterer(0.5, 3600, counter_ids())
    known = [KnownVisit("far", unit(1, 0.9, 0), 0.0), KnownVisit("near", unit(1, 0.1, 0), 0.0)]
    assert clusterer.assign(A, 1.0, known) == ("near", False)


def test_outside_the_window_a_returning_face_is_a_new_visitor():
    clusterer = VisitorClusterer(0.93, 600, counter_ids())
    known = [KnownVisit("visitor-x", A, 0.0)]
    assert clusterer.assign(A, 600.0, known) == ("visitor-x", False)
    assert clusterer.assign(A, 601.0, known) == ("visitor-0", True)
    assert clusterer.assign(A, -601.0, known) == ("visitor-1", True)  # replayed footage from before it too


def test_a_visitor_in_the_same_frame_is_someone_else():
    clusterer = VisitorClusterer(0.9, 3600, counter_ids())
    known = [KnownVisit("twin", A, 0.0)]
    assert clusterer.assign(A2, 0.0, known, busy={"twin"}) == ("visitor-0", True)


def test_ids_are_random_not_derived_from_the_face():
    first, second = VisitorClusterer(0.93, 3600), VisitorClusterer(0.93, 3600)
    one, _ = first.assign(A, 0.0, [])
    two, _ = second.assign(A, 0.0, [])
    assert one != two and uuid.UUID(one).version == 4 and uuid.UUID(two).version == 4


def test_memory_counts_a_return_once_and_forgets_embeddings_after_the_retention():
    clock = Clock(1000.0)
    memory = VisitorMemory(VisitorClusterer(0.93, 3600, counter_ids()), retention_seconds=100, clock=clock)
    assert memory.visitor("cam/1/0", A, 0.0) == "visitor-0"
    assert memory.visitor("cam/1/0", B, 1.0) == "visitor-0"  # a visit keeps its visitor
    assert memory.visitor("other/5/0", A2, 300.0) == "visitor-0"  # back, on another camera
    assert memory.visitor("cam/9/1", B, 300.0) == "visitor-1"
    assert len(memory) == 3
    clock.now += 101
    assert len(memory) == 0  # embeddings gone
    assert memory.visitors == {"cam/1/0": "visitor-0", "other/5/0": "visitor-0", "cam/9/1": "visitor-1"}
    # After the retention nothing is left to match: the same face is a new visitor.
    assert memory.visitor("cam/20/0", A, 400.0) == "visitor-2"


def test_a_visit_is_clustered_by_the_mean_of_its_first_faces_or_all_of_them_when_it_ends():
    pending = PendingVisits(faces=3, max_visits=10)
    assert pending.add("door", "v", A) is None
    assert pending.add("door", "v", A2) is None
    mean = pending.add("door", "v", unit(1, -0.2, 0))
    assert mean is not None and np.allclose(mean, A, atol=1e-6)  # the turns cancel: the visit's own face
    assert pending.add("door", "glimpse", B) is None
    assert pending.add("hall", "elsewhere", B) is None
    assert pending.ended("door", {"glimpse"}) == []  # still open
    ended = pending.ended("door", set())
    assert [visit for visit, _ in ended] == ["glimpse"] and np.allclose(ended[0][1], B)  # other cameras wait
    assert pending.ended("door", set()) == []


def test_pending_visits_are_bounded_oldest_first():
    pending = PendingVisits(faces=2, max_visits=2)
    for visit in ("a", "b", "c"):
        pending.add("door", visit, A)
    assert pending.add("door", "a", A) is None  # "a" was dropped: its collection starts again
    assert pending.add("door", "c", A) is not None


def test_the_store_clusters_a_visit_once_its_faces_are_collected_or_it_ends_and_never_an_enrolled_face():
    store = VisitorStore(load_settings(face_visitor_faces=2))
    embeddings = np.stack([A, B, A2])
    visits, matches = ["door/1/0", "door/1/1", "door/1/2"], [None, "a match", None]
    assert store.ready("door", 0.0, visits, embeddings, matches, set(visits)) == []
    ready = store.ready("door", 0.1, visits[:2], embeddings[:2], matches[:2], set(visits[:2]))
    # door/1/0 has its 2 faces; door/1/2 ended with one; the enrolled face is never collected.
    assert [(n.visit, n.camera_id, n.seen_at, n.beside) for n in ready] == [
        ("door/1/2", "door", 0.1, []), ("door/1/0", "door", 0.1, ["door/1/1"])]
    assert np.allclose(ready[0].embedding, A2) and np.allclose(ready[1].embedding, A)
    # No embeddings (the identify step did not run) or a mismatch in length: nothing to cluster.
    assert store.ready("door", 0.2, ["door/2/0"], None, [None], {"door/2/0"}) == []
    assert store.ready("door", 0.2, ["door/2/0"], embeddings[:2], [None], {"door/2/0"}) == []


def test_a_face_that_carries_its_track_s_identity_instead_of_an_embedding_is_not_collected():
    store = VisitorStore(load_settings(face_visitor_faces=2))
    zero = np.zeros(3, np.float32)  # a reused face's row (faces/reuse.py): no embedding
    assert store.ready("door", 0.0, ["door/1/0"], np.stack([A]), [None], {"door/1/0"}) == []
    assert store.ready("door", 0.1, ["door/1/0"], np.stack([zero]), [None], {"door/1/0"}, (True,)) == []
    ready = store.ready("door", 0.2, ["door/1/0"], np.stack([A2]), [None], {"door/1/0"}, (False,))
    assert len(ready) == 1 and np.allclose(ready[0].embedding, (A + A2) / np.linalg.norm(A + A2))


def test_the_live_table_counts_a_visit_at_the_face_that_opens_it():
    from types import SimpleNamespace

    from visionstream.tables.visit_counts import hour_label, visits_opened

    def faces(*visits, accepted=True):
        return [SimpleNamespace(visit=v, accepted=accepted) for v in visits]

    frame = SimpleNamespace(camera_id="door", seq=12, faces=faces("door/12/0", "door/3/1", "door/12/2", None))
    assert visits_opened(frame) == 2  # door/3/1 began at frame 3; an untracked face opens nothing
    assert visits_opened(SimpleNamespace(camera_id="door", seq=1, faces=faces("door/1/0", accepted=False))) == 0
    # "door/1" is not a prefix of another camera's or frame's ids: the seq ends at its "/".
    assert visits_opened(SimpleNamespace(camera_id="door", seq=1, faces=faces("door/12/0", "door/1/0"))) == 1
    assert hour_label(7200.0 + 59 * 60) == "1970-01-01T02:00Z"
