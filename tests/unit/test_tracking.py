"""The per-camera face tracker (faces/tracking.py) and the detection floor (faces/detector.py): pure logic."""

from __future__ import annotations

from visionstream.faces.detector import DetectedFace, FaceFloor
from visionstream.faces.tracking import FaceTracker, TrackerLimits, iou
from visionstream.faces.visits import stored_tracks
from visionstream.metrics import REGISTRY

LANDMARKS = ((0.0, 0.0),) * 5


def shifted(box, dx, dy=0.0):
    return (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)


def test_floor_splits_candidates_and_keeps_the_rejected_beside():
    strong = DetectedFace((0, 0, 40, 50), 0.995, LANDMARKS)
    weak = DetectedFace((100, 0, 140, 50), 0.93, LANDMARKS)
    tiny = DetectedFace((200, 0, 210, 12), 0.999, LANDMARKS)
    faces = FaceFloor(0.97, 20).split([strong, weak, tiny])
    assert list(faces) == [strong] and faces.below_floor == [weak, tiny]
    assert list(FaceFloor().split([weak])) == [weak]  # no floor: every candidate


def test_a_crowded_frame_keeps_its_most_probable_faces_and_counts_the_rest():
    faces = [DetectedFace((x, 0, x + 40, 50), probability, LANDMARKS)
             for x, probability in zip(range(0, 500, 100), (0.98, 0.999, 0.93, 0.975, 0.99), strict=True)]
    before = REGISTRY.get_sample_value("visionstream_faces_over_limit_total") or 0.0
    kept = FaceFloor(0.97, 0, max_faces=2).split(faces)
    assert list(kept) == [faces[1], faces[4]]  # the two most probable, in MTCNN's order
    assert kept.below_floor == [faces[2]]  # below the floor: stored flagged, as before; not over the limit
    assert REGISTRY.get_sample_value("visionstream_faces_over_limit_total") == before + 2
    assert list(FaceFloor(0.97, 0, max_faces=4).split(faces)) == [faces[0], faces[1], faces[3], faces[4]]


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 15, 10)) - 50 / 150) < 1e-9


def test_a_moving_face_is_one_visit_and_two_people_are_two():
    tracker = FaceTracker()
    a, b = (100, 100, 150, 160), (600, 100, 650, 160)
    ids = [tracker.assign("cam", seq, seq / 25, [shifted(a, 4 * seq), shifted(b, -4 * seq)]) for seq in range(50)]
    assert {tuple(i) for i in ids} == {("cam/0/0", "cam/0/1")}


def test_a_gap_within_tolerance_continues_beyond_it_starts_a_new_visit():
    limits = TrackerLimits(max_gap_frames=3, max_gap_seconds=10)
    tracker = FaceTracker(limits)
    box = (100, 100, 150, 160)
    assert tracker.assign("cam", 0, 0.0, [box]) == ["cam/0/0"]
    assert tracker.assign("cam", 4, 0.4, [box]) == ["cam/0/0"]  # 3 frames missed
    assert tracker.assign("cam", 9, 0.9, [box]) == ["cam/9/0"]  # 4 missed
    # The time gap counts as well: the same box 11 s later is a new visit.
    assert tracker.assign("cam", 10, 11.0, [box]) == ["cam/10/0"]


def test_a_fast_face_continues_by_its_centre():
    tracker = FaceTracker(TrackerLimits(min_iou=0.5, max_centre_shift=0.5))
    box = (100, 100, 140, 150)
    tracker.assign("cam", 0, 0.0, [box])
    assert tracker.assign("cam", 1, 0.04, [shifted(box, 15)]) == ["cam/0/0"]  # IoU 0.45, centre 0.375 widths
    assert tracker.assign("cam", 2, 0.08, [shifted(box, 60)]) == ["cam/2/0"]  # 1.1 widths away


def test_cameras_are_apart():
    tracker = FaceTracker()
    box = (100, 100, 150, 160)
    assert tracker.assign("a", 0, 0.0, [box]) == ["a/0/0"]
    assert tracker.assign("b", 1, 0.0, [box]) == ["b/1/0"]
    assert tracker.assign("a", 1, 0.04, [box]) == ["a/0/0"]


def test_a_redelivered_frame_gets_its_ids_back_and_moves_nothing():
    tracker = FaceTracker()
    box = (100, 100, 150, 160)
    first = [tracker.assign("cam", seq, seq / 25, [box, shifted(box, 300)]) for seq in range(5)]
    assert tracker.assign("cam", 3, 3 / 25, [box, shifted(box, 300)]) == first[3]
    assert tracker.assign("cam", 5, 5 / 25, [box]) == ["cam/0/0"]


def test_a_cold_tracker_seeded_from_stored_frames_assigns_as_the_warm_one_did():
    box = (100, 100, 150, 160)
    frames = [(seq, seq / 25, [shifted(box, 3 * seq)] + ([shifted(box, 400)] if seq >= 6 else []))
              for seq in range(20)]
    warm = FaceTracker()
    stored = [(seq, at, boxes, warm.assign("cam", seq, at, boxes)) for seq, at, boxes in frames]
    # A worker crashed after frame 11 was written; the new one sees frames 12.. again, seeded from the
    # stored frames of the gap window before 12.
    cold = FaceTracker()
    cold.seed("cam", [row for row in stored if row[0] < 12])
    assert [cold.assign("cam", seq, at, boxes) for seq, at, boxes in frames[12:]] == [row[3] for row in stored[12:]]
    unseeded = FaceTracker()
    assert unseeded.assign("cam", 12, frames[12][1], frames[12][2]) != stored[12][3]


def test_a_tracker_that_missed_frames_knows_it_is_stale_and_reseeding_joins_the_others_visits():
    """A rebalance moved the camera to another worker for frames 6-13 and back: a person who appeared there
    keeps the visit the other worker opened, not a second one."""
    box = (100, 100, 150, 160)
    frames = [(seq, seq / 25, [box] + ([shifted(box, 400)] if seq >= 8 else [])) for seq in range(20)]
    other = FaceTracker()
    stored = [(seq, at, boxes, other.assign("cam", seq, at, boxes)) for seq, at, boxes in frames[:14]]
    here = FaceTracker()
    for seq, at, boxes in frames[:6]:
        here.assign("cam", seq, at, boxes)
    assert not here.missed_frames_before("cam", 6) and here.missed_frames_before("cam", 14)
    stale = here.assign("cam", 14, frames[14][1], frames[14][2])
    here.forget("cam")
    here.seed("cam", stored)
    assert stale[1] != stored[13][3][1]  # without the seed: a second visit of the person who came at 8
    assert here.assign("cam", 14, frames[14][1], frames[14][2]) == stored[13][3] == other.assign(
        "cam", 14, frames[14][1], frames[14][2])


def test_tracks_and_cameras_are_bounded_and_idle_cameras_forgotten():
    now = [0.0]
    tracker = FaceTracker(TrackerLimits(max_tracks=3, max_cameras=2, idle_seconds=60), clock=lambda: now[0])
    tracker.assign("a", 0, 0.0, [(i * 100, 0, i * 100 + 50, 60) for i in range(10)])
    assert tracker.open_tracks("a") == 3
    tracker.assign("b", 0, 0.0, [])
    tracker.assign("c", 0, 0.0, [])
    assert len(tracker) == 2 and not tracker.knows("a")  # the longest idle went first
    now[0] = 61.0
    tracker.assign("d", 0, 0.0, [])
    assert len(tracker) == 1 and tracker.knows("d")


def test_stored_tracks_reads_only_accepted_tracked_faces():
    stored = ('[{"box": [1, 2, 3, 4], "visit": "cam/0/0", "accepted": true},'
              ' {"box": [5, 6, 7, 8], "visit": null, "accepted": false}, {"box": [9, 9, 9, 9]}]')
    assert stored_tracks(stored) == ([(1, 2, 3, 4)], ["cam/0/0"])
    assert stored_tracks(None) == ([], [])
