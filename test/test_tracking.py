"""Tests of the tracking layer: association, lifecycle, ids, reconditioning, bounded state.

All masks are small hand-made rectangles so that every IoU in a test can be computed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from efficientsam3_ros.pipeline.results import Instance, TrackState
from efficientsam3_ros.tracking import (
    ConceptTracker,
    TrackingConfig,
    box_from_mask,
    mask_iou_matrix,
)

SHAPE = (64, 64)


def rect(y0: int, x0: int, y1: int, x1: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Bool mask with rows [y0, y1) and columns [x0, x1) set."""
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def det(mask: np.ndarray, score: float = 0.9, concept: int = 0) -> Instance:
    """A detection as the pipeline hands it over (no track id yet)."""
    return Instance(
        concept_id=concept,
        label=f"c{concept}",
        score=score,
        box_xyxy=box_from_mask(mask),
        mask=mask,
    )


A = rect(0, 0, 10, 10)  # 100 px
A_SHIFT = rect(0, 1, 10, 11)  # IoU with A = 90 / 110 = 0.82
B = rect(30, 30, 40, 40)  # disjoint from A
C = rect(50, 0, 60, 10)  # disjoint from A and B


def by_id(update) -> dict[int, Instance]:
    return {inst.track_id: inst for inst in update.instances}


# ---------------------------------------------------------------------------- IoU


def test_mask_iou_matrix_matches_naive_definition():
    rng = np.random.default_rng(0)
    a = [rng.random((37, 53)) < p for p in (0.1, 0.5, 0.9)] + [np.zeros((37, 53), bool)]
    b = [rng.random((37, 53)) < p for p in (0.2, 0.7)] + [np.zeros((37, 53), bool)]
    got = mask_iou_matrix(a, b)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            union = np.logical_or(x, y).sum()
            want = np.logical_and(x, y).sum() / union if union else 0.0
            assert got[i, j] == pytest.approx(want)
    assert mask_iou_matrix(a, []).shape == (4, 0)
    # Downsampling is an approximation, close on blobs that are large against the stride.
    big, big_shift = rect(0, 0, 200, 200, (256, 256)), rect(3, 13, 203, 213, (256, 256))
    exact = mask_iou_matrix([big], [big_shift])[0, 0]
    assert exact == pytest.approx(197 * 187 / (2 * 200**2 - 197 * 187))
    assert mask_iou_matrix([big], [big_shift], downsample=4)[0, 0] == pytest.approx(
        exact, abs=0.05
    )  # error ~ stride / object size
    with pytest.raises(ValueError):
        mask_iou_matrix([A], [np.zeros((3, 3), bool)])


def test_downsampled_iou_keeps_objects_smaller_than_the_stride():
    """iou_downsample kept every n-th pixel: an object between the sampled rows and columns had
    area 0, so it matched nothing and was born again on every frame (a new id per frame). Each
    cell now stands for its whole n x n block, so a small object is always seen."""
    trk = ConceptTracker(TrackingConfig(iou_downsample=4))
    ids = []
    for step in range(6):  # a 3 x 3 object moving one pixel a frame, off the sampled grid
        update = trk.update([det(rect(1, 1 + step, 4, 4 + step))])
        ids.append([i.track_id for i in update.instances])
    assert ids == [[1]] * 6
    small, small_shift = rect(1, 1, 4, 4), rect(1, 2, 4, 5)
    assert mask_iou_matrix([small], [small_shift], downsample=4)[0, 0] == pytest.approx(0.5)  # exact: 6 / 12
    assert mask_iou_matrix([small], [rect(9, 9, 12, 12)], downsample=4)[0, 0] == 0.0  # apart stays apart


def test_box_from_mask():
    np.testing.assert_array_equal(box_from_mask(rect(2, 3, 5, 9)), [3, 2, 9, 5])
    np.testing.assert_array_equal(box_from_mask(np.zeros(SHAPE, bool)), [0, 0, 0, 0])


# ---------------------------------------------------------------------------- births and matches


def test_birth_then_match_keeps_id():
    trk = ConceptTracker()
    up = trk.update([det(A)])
    assert up.new_track_ids == [1]
    assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.NEW)]
    assert up.memory_inputs().keys() == {1}

    up = trk.update([det(A_SHIFT, 0.85)])
    assert up.new_track_ids == []
    assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.TRACKED)]
    assert up.instances[0].score == pytest.approx(0.85)
    np.testing.assert_array_equal(up.instances[0].mask, A_SHIFT)  # no propagation: detection mask
    assert trk.stats.births == 1


def test_input_detections_are_not_modified():
    d = det(A)
    ConceptTracker().update([d])
    assert d.track_id == -1 and d.state == TrackState.UNTRACKED


def test_low_score_detection_does_not_start_a_track():
    trk = ConceptTracker()
    up = trk.update([det(A, score=0.69)])
    assert up.instances == [] and up.new_track_ids == []
    assert trk.stats.dropped_detections == 1
    assert trk.update([det(A, score=0.7)]).new_track_ids == [1]  # threshold is inclusive


def test_mid_overlap_detection_neither_matches_nor_births():
    trk = ConceptTracker()
    trk.update([det(A)])
    # IoU with A = 50 / 150 = 0.33: above max_iou_for_new (0.1), below assoc_iou_threshold (0.5).
    mid = rect(0, 5, 10, 15)
    assert mask_iou_matrix([mid], [A])[0, 0] == pytest.approx(1 / 3)
    up = trk.update([det(mid, score=0.99)])
    assert up.new_track_ids == [] and up.instances == []  # no match, no birth, no stale mask
    assert trk.stats.dropped_detections == 1
    assert len(trk) == 1  # the track lives on unreported


def test_overlapping_births_in_one_frame_keep_the_best():
    trk = ConceptTracker()
    up = trk.update([det(A, 0.8), det(A_SHIFT, 0.95), det(B, 0.9)])
    inst = by_id(up)
    assert sorted(inst) == [1, 2]
    np.testing.assert_array_equal(inst[1].mask, A_SHIFT)  # highest score is born first
    np.testing.assert_array_equal(inst[2].mask, B)
    assert trk.stats.dropped_detections == 1


def test_hungarian_beats_greedy_assignment():
    """Greedy (best pair first) would match D1-T1 and leave T2 unmatched; Hungarian matches both."""
    shape = (4, 100)

    def band(x0: int, x1: int) -> np.ndarray:
        return rect(0, x0, 4, x1, shape)

    trk = ConceptTracker(TrackingConfig(young_track_frames=0))  # no duplicate rule for this test
    trk.update([det(band(0, 40)), det(band(60, 100))])
    t1, t2 = band(0, 90), band(0, 60)
    d1, d2 = band(0, 100), band(40, 90)
    ious = mask_iou_matrix([d1, d2], [t1, t2])
    assert ious[0, 0] > ious[0, 1] >= 0.5 and ious[1, 0] >= 0.5 > ious[1, 1]
    up = trk.update([det(d1), det(d2)], propagated={1: (t1, 0.9), 2: (t2, 0.9)})
    assert {i.track_id: i.state for i in up.instances} == {1: TrackState.TRACKED, 2: TrackState.TRACKED}
    assert up.new_track_ids == []


def test_propagated_mask_is_the_prediction():
    trk = ConceptTracker()
    trk.update([det(A)])
    moved = rect(20, 20, 30, 30)
    # Without propagation the moved object would not match A (IoU 0) and would start track 2.
    up = trk.update([det(moved)], propagated={1: (moved, 0.8), 99: (B, 0.5)})  # unknown id ignored
    assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.TRACKED)]
    assert trk.stats.births == 1


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_a_propagation_with_a_non_finite_score_counts_as_none(score):
    """A memory model gone wrong (NaN object score) published a PREDICTED instance scored NaN;
    its entry is now ignored: the track is predicted by its last mask, as without memory."""
    trk = ConceptTracker(TrackingConfig(stale_mask_frames=1))
    trk.update([det(A)])
    (inst,) = trk.update([], propagated={1: (B, score)}).instances
    assert (inst.track_id, inst.state) == (1, TrackState.PREDICTED)
    assert math.isfinite(inst.score)
    np.testing.assert_array_equal(inst.mask, A)
    assert trk.stats.bad_propagations == 1


def test_associate_last_mask_rescues_a_rough_propagation():
    """A propagated mask half off the object (IoU 1/3 with the detection) does not match it; with
    associate_last_mask the track's last mask (IoU 0.82) does, and the id survives."""
    rough = rect(0, 5, 10, 15)  # IoU with A_SHIFT = 50 / 150
    sam3 = ConceptTracker()
    sam3.update([det(A)])
    up = sam3.update([det(A_SHIFT)], propagated={1: (rough, 0.9)})
    # neither a match (1/3 < 0.5) nor a birth (1/3 >= 0.1): the detection is dropped
    assert [i.state for i in up.instances] == [TrackState.PREDICTED] and sam3.stats.dropped_detections == 1
    rule = ConceptTracker(TrackingConfig(associate_last_mask=True))
    rule.update([det(A)])
    up = rule.update([det(A_SHIFT)], propagated={1: (rough, 0.9)})
    assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.TRACKED)]
    assert rule.stats.dropped_detections == 0
    # without a memory tracker the prediction is the last mask already: the rule changes nothing
    plain, rule = ConceptTracker(), ConceptTracker(TrackingConfig(associate_last_mask=True))
    for frame in ([A], [A_SHIFT], [C], [A_SHIFT, B]):
        ours, theirs = rule.update([det(m) for m in frame]), plain.update([det(m) for m in frame])
        assert [(i.track_id, i.state) for i in ours.instances] == [
            (i.track_id, i.state) for i in theirs.instances
        ]


def test_matched_track_keeps_its_mask_when_memory_gives_an_empty_one():
    """associate_last_mask matches the detection against the last mask while the memory lost the
    object (empty propagated mask): the track reports the detection's mask, not an empty one with
    box [0,0,0,0], and keeps it, so the same detection next frame continues it (no duplicate id)."""
    empty = {1: (np.zeros(SHAPE, bool), 0.2)}
    trk = ConceptTracker(TrackingConfig(associate_last_mask=True))
    trk.update([det(A)])
    (inst,) = trk.update([det(A)], propagated=empty).instances
    assert (inst.track_id, inst.state) == (1, TrackState.TRACKED)
    np.testing.assert_array_equal(inst.mask, A)
    np.testing.assert_array_equal(inst.box_xyxy, box_from_mask(A))
    up = trk.update([det(A)], propagated=empty)
    assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.TRACKED)]
    assert trk.track_ids() == [1] and trk.stats.births == 1


def test_output_mask_source():
    prop = rect(0, 0, 10, 9)  # IoU with A_SHIFT = 80 / 110, below recondition_iou
    trk = ConceptTracker()
    trk.update([det(A)])
    up = trk.update([det(A_SHIFT)], propagated={1: (prop, 0.6)})
    np.testing.assert_array_equal(up.instances[0].mask, prop)  # SAM3: tracker mask, detector validates
    np.testing.assert_array_equal(up.instances[0].box_xyxy, [0, 0, 9, 10])
    assert up.instances[0].score == pytest.approx(0.9)  # concept confidence comes from the detector

    trk = ConceptTracker(TrackingConfig(use_propagated_masks=False))
    trk.update([det(A)])
    up = trk.update([det(A_SHIFT)], propagated={1: (prop, 0.6)})
    np.testing.assert_array_equal(up.instances[0].mask, A_SHIFT)


def test_same_mask_two_concepts_gives_two_tracks():
    trk = ConceptTracker()
    up = trk.update([det(A, concept=0), det(A, concept=1)])
    assert up.new_track_ids == [1, 2]
    assert {i.track_id: i.concept_id for i in up.instances} == {1: 0, 2: 1}
    up = trk.update([det(A_SHIFT, concept=1), det(A_SHIFT, concept=0)])
    assert {i.track_id: (i.concept_id, i.state) for i in up.instances} == {
        1: (0, TrackState.TRACKED),
        2: (1, TrackState.TRACKED),
    }
    # A concept-1 detection never matches (nor is blocked by) a concept-0 track.
    trk = ConceptTracker(TrackingConfig(stale_mask_frames=1))
    trk.update([det(A, concept=0)])
    up = trk.update([det(A, concept=1)])
    assert {i.track_id: (i.concept_id, i.state) for i in up.instances} == {
        1: (0, TrackState.PREDICTED),
        2: (1, TrackState.NEW),
    }


# ---------------------------------------------------------------------------- lifecycle


def test_occlusion_survival_then_removal():
    cfg = TrackingConfig(max_missed_frames=5, young_track_frames=3, stale_mask_frames=5)
    trk = ConceptTracker(cfg)
    for _ in range(4):  # past youth
        trk.update([det(A)])
    for k in range(cfg.max_missed_frames):
        up = trk.update([])
        assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.PREDICTED)], k
        assert up.removed_track_ids == []
    up = trk.update([])
    assert up.instances == [] and up.removed_track_ids == [1]
    assert trk.stats.removed_missed == 1 and len(trk) == 0


def test_reappearing_within_window_keeps_id_and_resets_budget():
    trk = ConceptTracker(TrackingConfig(max_missed_frames=3, young_track_frames=0))
    trk.update([det(A)])
    for _ in range(3):
        trk.update([])
    assert by_id(trk.update([det(A)]))[1].state == TrackState.TRACKED
    for _ in range(3):  # a fresh budget of 3 misses
        assert trk.update([]).removed_track_ids == []
    assert trk.update([]).removed_track_ids == [1]


def test_default_occlusion_budget():
    trk = ConceptTracker()
    cfg = trk.config
    for _ in range(cfg.young_track_frames):
        trk.update([det(A)])
    for _ in range(cfg.max_missed_frames):  # alive, not published (no memory: its mask is stale)
        up = trk.update([])
        assert up.instances == [] and up.removed_track_ids == []
    assert trk.update([]).removed_track_ids == [1]


def test_stale_masks_are_published_only_for_the_first_misses():
    trk = ConceptTracker(TrackingConfig(young_track_frames=0, max_missed_frames=6, stale_mask_frames=2))
    trk.update([det(A)])
    published = [len(trk.update([]).instances) for _ in range(4)]
    assert published == [1, 1, 0, 0]
    # the hidden track still continues when its object is detected again, with its id
    assert [(i.track_id, i.state) for i in trk.update([det(A_SHIFT)]).instances] == [(1, TrackState.TRACKED)]
    assert [len(trk.update([]).instances) for _ in range(3)] == [1, 1, 0]  # a fresh window
    # a propagated mask is published whatever the window
    up = trk.update([], propagated={1: (A, 0.4)})
    assert [(i.track_id, i.state, i.score) for i in up.instances] == [(1, TrackState.PREDICTED, 0.4)]
    with pytest.raises(ValueError, match="stale_mask_frames must be >= 0"):
        TrackingConfig(stale_mask_frames=-1)


def test_young_track_removed_faster():
    cfg = TrackingConfig()
    assert cfg.young_track_max_missed < cfg.max_missed_frames
    trk = ConceptTracker(cfg)
    trk.update([det(A)])
    for _ in range(cfg.young_track_max_missed):
        assert trk.update([]).removed_track_ids == []
    up = trk.update([])
    assert up.removed_track_ids == [1]
    assert trk.stats.removed_young == 1 and trk.stats.removed_missed == 0


def test_young_track_misses_are_cumulative():
    trk = ConceptTracker(TrackingConfig(young_track_frames=15, young_track_max_missed=3))
    trk.update([det(A)])  # frame 0
    removed_at = None
    for frame in range(1, 15):
        up = trk.update([det(A)] if frame % 2 == 0 else [])  # miss on odd frames
        if up.removed_track_ids:
            removed_at = frame
            break
    assert removed_at == 7  # 4th miss (frames 1, 3, 5, 7) even though every miss was followed by a hit


def test_ids_monotonic_and_never_reused():
    trk = ConceptTracker(TrackingConfig(max_missed_frames=0, young_track_max_missed=0))
    assert trk.update([det(A)]).new_track_ids == [1]
    assert trk.update([]).removed_track_ids == [1]
    assert trk.update([det(A)]).new_track_ids == [2]  # same place, new id
    assert trk.remove_track(2) and not trk.remove_track(2)
    assert trk.stats.removed_by_request == 1 and trk.stats.deaths == 2
    assert trk.update([det(A)]).new_track_ids == [3]
    assert trk.remove_concept(0) == [3]
    assert trk.update([det(A), det(B, concept=1)]).new_track_ids == [4, 5]
    assert trk.reset() == [4, 5]
    assert trk.update([det(A)]).new_track_ids == [6]
    assert trk.next_track_id == 7
    trk.reset(reset_ids=True)
    assert trk.update([det(A)]).new_track_ids == [1]
    assert trk.stats.births == 1  # a fresh session also starts fresh statistics


def test_duplicate_young_track_is_suppressed_older_wins():
    trk = ConceptTracker()
    trk.update([det(A)])  # track 1, frame 0
    trk.update([det(A), det(B)])  # track 2 born at frame 1, elsewhere
    # Memory drifts track 2 onto the object of track 1. The detection matches track 2 better,
    # yet the younger id is the one that goes.
    up = trk.update([det(A)], propagated={1: (A_SHIFT, 0.8), 2: (A, 0.8)})
    assert up.removed_track_ids == [2]
    assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.PREDICTED)]
    assert trk.stats.removed_duplicate == 1 and trk.track_ids() == [1]


def test_mature_overlapping_tracks_are_not_suppressed():
    trk = ConceptTracker(TrackingConfig(young_track_frames=2))
    trk.update([det(A)])
    trk.update([det(A), det(B)])
    trk.update([det(A), det(B)])
    trk.update([det(A), det(B)])  # track 2 is now 2 frames old: mature
    up = trk.update([det(A)], propagated={1: (A_SHIFT, 0.8), 2: (A, 0.8)})
    assert up.removed_track_ids == []
    assert trk.track_ids() == [1, 2]


def test_duplicate_frames_delays_suppression():
    trk = ConceptTracker(TrackingConfig(duplicate_frames=2))
    trk.update([det(A)])
    trk.update([det(A), det(B)])
    prop = {1: (A_SHIFT, 0.8), 2: (A, 0.8)}
    assert trk.update([det(A)], propagated=prop).removed_track_ids == []
    assert trk.update([det(A)], propagated=prop).removed_track_ids == [2]


def test_track_cap_refuses_lowest_scores():
    trk = ConceptTracker(TrackingConfig(max_tracks=2, young_track_frames=0, max_missed_frames=0))
    up = trk.update([det(C, 0.75), det(A, 0.9), det(B, 0.8)])
    assert {tuple(box_from_mask(i.mask)) for i in up.instances} == {
        tuple(box_from_mask(A)),
        tuple(box_from_mask(B)),
    }
    assert trk.stats.refused_births == 1
    up = trk.update([det(C, 0.75), det(A, 0.9), det(B, 0.8)])
    assert up.new_track_ids == [] and trk.stats.refused_births == 2
    up = trk.update([det(C, 0.75), det(A, 0.9)])  # B's track dies this frame, freeing a slot
    assert up.removed_track_ids == [2] and up.new_track_ids == [3]
    assert len(trk) == 2


def test_recondition_schedule():
    trk = ConceptTracker(TrackingConfig(recondition_every=4))
    frames = []
    for frame in range(13):
        up = trk.update([det(A, 0.9)])
        if up.recondition:
            assert list(up.recondition) == [1]
            assert up.recondition[1].track_id == 1
            np.testing.assert_array_equal(up.recondition[1].mask, A)
            frames.append(frame)
    assert frames == [4, 8, 12]  # birth at frame 0 conditions the memory
    assert trk.stats.reconditions == 3


def test_recondition_waits_for_a_good_detection_then_fires():
    """The interval counts from the track's last conditioning, not from a global frame index."""
    trk = ConceptTracker(TrackingConfig(recondition_every=3))
    low_iou = {1: (rect(0, 0, 10, 9), 0.9)}  # IoU 81/110 with A_SHIFT: below recondition_iou (0.8)
    fired = []
    for frame in range(10):
        if frame == 3:
            up = trk.update([det(A, 0.75)])  # due, but score below recondition_score (0.8)
        elif frame == 4:
            up = trk.update([det(A_SHIFT, 0.95)], propagated=low_iou)  # due, but IoU too low
        else:
            up = trk.update([det(A, 0.95)])
        if up.recondition:
            assert up.memory_inputs().keys() == {1}
            fired.append(frame)
    assert fired == [5, 8]  # a global "frame % 3 == 0" schedule would give [6, 9]


def test_recondition_disabled_and_reports_detection_mask():
    trk = ConceptTracker(TrackingConfig(recondition_every=0))
    for _ in range(40):
        assert trk.update([det(A)]).recondition == {}
    trk = ConceptTracker(TrackingConfig(recondition_every=1))
    trk.update([det(A)])
    prop = rect(0, 0, 10, 10)
    prop[0, 0] = False  # propagated differs slightly; IoU 0.99
    up = trk.update([det(A, 0.95)], propagated={1: (prop, 0.9)})
    assert list(up.recondition) == [1]
    np.testing.assert_array_equal(up.instances[0].mask, A)  # SAM3: reconditioned frames show the detection


def test_reset_and_remove_concept():
    trk = ConceptTracker()
    trk.update([det(A, concept=0), det(B, concept=1), det(C, concept=1)])
    assert trk.track_ids(1) == [2, 3]
    assert trk.remove_concept(1) == [2, 3]
    assert trk.remove_concept(1) == []
    up = trk.update([det(A, concept=0), det(B, concept=1)])
    assert {i.track_id: i.state for i in up.instances} == {1: TrackState.TRACKED, 4: TrackState.NEW}
    assert trk.reset() == [1, 4]
    assert len(trk) == 0 and trk.update([]).instances == []
    assert trk.stats.removed_by_request == 4
    assert trk.stats.deaths == 4


def test_predicted_with_empty_propagated_mask_is_hidden_but_alive():
    trk = ConceptTracker(TrackingConfig(young_track_frames=0))
    trk.update([det(A)])
    up = trk.update([], propagated={1: (np.zeros(SHAPE, bool), 0.1)})
    assert up.instances == [] and up.removed_track_ids == []
    assert trk.track_ids() == [1]
    # no propagation: predicted by (and, inside stale_mask_frames, published with) the last non-empty mask
    trk = ConceptTracker(TrackingConfig(young_track_frames=0, stale_mask_frames=3))
    trk.update([det(A)])
    trk.update([], propagated={1: (np.zeros(SHAPE, bool), 0.1)})
    np.testing.assert_array_equal(trk.update([]).instances[0].mask, A)


def test_bad_masks_are_rejected():
    trk = ConceptTracker()
    trk.update([det(A)])
    with pytest.raises(ValueError, match="one size"):
        trk.update([det(np.zeros((32, 32), bool))])
    trk.reset()
    trk.update([det(np.zeros((32, 32), bool))])  # fine after a reset
    with pytest.raises(ValueError, match="bool or integer"):
        ConceptTracker().update([det(A.astype(np.float32))])
    assert ConceptTracker().update([det(A.astype(np.uint8))]).new_track_ids == [1]


def test_a_refused_frame_leaves_the_tracker_as_it_was():
    """A frame update() refuses (float mask, other size, bad score) is no frame: it does not
    advance the frame index, count in the statistics, or age a young track toward removal."""
    trk = ConceptTracker(TrackingConfig(young_track_frames=3, young_track_max_missed=0))
    trk.update([det(A)])
    bad_frames = [
        [det(A.astype(np.float32))],
        [det(np.zeros((32, 32), bool))],
        [det(A, float("nan"))],
    ]
    for frames, bad in enumerate(bad_frames):
        with pytest.raises(ValueError):
            trk.update(bad)
        assert (trk.frame_index, trk.stats.frames) == (0, 1), frames
    with pytest.raises(ValueError, match="bool or integer"):
        trk.update([det(A)], propagated={1: (A.astype(np.float32), 0.5)})
    assert trk.frame_index == 0
    assert trk.update([det(A)]).instances[0].state == TrackState.TRACKED  # frame 1, not 5
    # frame 2: still young (under 3 frames old), so its first miss removes it
    assert trk.update([]).removed_track_ids == [1] and trk.stats.removed_young == 1
    fresh = ConceptTracker()  # a refused first frame does not fix the session's mask size either
    with pytest.raises(ValueError):
        fresh.update([det(np.zeros((32, 32), np.float32))])
    assert fresh.update([det(A)]).new_track_ids == [1]


def test_detection_scores_must_be_probabilities():
    """A NaN score used to continue a track and be published (TRACKED, score nan); an inf one
    started a track with score inf. Scores are probabilities in [0, 1], as the message says."""
    for score in (float("nan"), float("inf"), -0.1, 1.5):
        trk = ConceptTracker()
        trk.update([det(A)])
        with pytest.raises(ValueError, match=r"scores must be in \[0, 1\]"):
            trk.update([det(A_SHIFT), det(B, score)])
        assert trk.stats.frames == 1 and trk.track_ids() == [1]
    assert ConceptTracker().update([det(A, 0.0), det(B, 1.0)]).new_track_ids == [1]


def test_config_validation():
    cfg = TrackingConfig(max_tracks=5)
    assert TrackingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrackingConfig.from_dict({"max_track": 5})
    with pytest.raises(ValueError):
        TrackingConfig(assoc_iou_threshold=1.5)
    with pytest.raises(ValueError):
        TrackingConfig(max_tracks=0)
    with pytest.raises(ValueError):
        TrackingConfig(max_iou_for_new=0.6, assoc_iou_threshold=0.5)
    with pytest.raises(ValueError):
        TrackingConfig(max_missed_frames=-1)


def test_constructor_checks_kinds_as_from_dict_does():
    """Only from_dict checked kinds: TrackingConfig(iou_downsample=2.0) was accepted and failed on
    the first update (a float slice step), a string "false" switched a bool on, and a count of
    2.5 frames was compared as a number. The pipeline and the node build it directly."""
    for name, bad in (
        ("iou_downsample", 2.0),
        ("max_tracks", 2.5),
        ("use_propagated_masks", "false"),
        ("stale_mask_frames", True),
        ("assoc_iou_threshold", "0.5"),
    ):
        with pytest.raises(ValueError, match=f"tracking parameter {name} must be of type"):
            TrackingConfig(**{name: bad})
    assert TrackingConfig(assoc_iou_threshold=1, new_det_threshold=np.float64(0.35)).assoc_iou_threshold == 1


def test_zero_overlap_thresholds_are_refused():
    """max_iou_for_new 0 asked for IoU < 0: no track was ever born, even in an empty scene;
    duplicate_iou 0 removed every young track of a concept that has an older one, disjoint or not."""
    for name in ("max_iou_for_new", "duplicate_iou"):
        with pytest.raises(ValueError, match=rf"{name} must be in \(0, 1\]"):
            TrackingConfig(**{name: 0.0})
    assert TrackingConfig(max_iou_for_new=0.01, duplicate_iou=1.0).duplicate_iou == 1.0


def test_tracks_keep_their_own_read_only_masks():
    """The pipeline's masks are views into one [N, H, W] array per frame. A track kept its view,
    and with it every mask of that frame, for as long as it lived (here 50x its own mask); and a
    caller writing into a published mask or re-using its detection buffer changed the track, so
    the next frame's detection started a new id."""
    stack = np.zeros((50, *SHAPE), bool)  # one frame's masks, as masks_to_image returns them
    stack[0] = A
    stack[1:, 40:45, 40:45] = True
    trk = ConceptTracker()
    (inst,) = trk.update([det(stack[0])] + [det(m, 0.3) for m in stack[1:]]).instances
    assert not np.shares_memory(inst.mask, stack)  # the frame's 49 dropped masks are not kept alive
    with pytest.raises(ValueError, match="read-only"):
        inst.mask[:] = False  # writing into a track's mask is refused, not silently applied
    stack[:] = False  # the caller re-uses its buffer for the next frame
    prop = rect(0, 0, 10, 11)
    up = trk.update([det(A_SHIFT)], propagated={1: (prop, 0.9)})
    assert [(i.track_id, i.state) for i in up.instances] == [(1, TrackState.TRACKED)]
    assert not np.shares_memory(up.instances[0].mask, prop)
    for track in trk._tracks.values():
        assert track.mask.base is None and not track.mask.flags.writeable


# ---------------------------------------------------------------------------- bounded state


def _container_sizes(obj) -> dict[str, int]:
    return {k: len(v) for k, v in vars(obj).items() if isinstance(v, (list, dict, set, tuple))}


def test_state_bounded_over_1000_random_frames():
    cfg = TrackingConfig(max_tracks=12)
    trk = ConceptTracker(cfg)
    rng = np.random.default_rng(1234)
    shape = (48, 48)
    last_max_id = 0
    for frame in range(1000):
        dets = []
        for _ in range(rng.integers(0, 8)):
            y, x = rng.integers(0, 40, size=2)
            h, w = rng.integers(3, 12, size=2)
            dets.append(det(rect(y, x, y + h, x + w, shape), float(rng.random()), int(rng.integers(0, 3))))
        propagated = None
        if frame % 3 == 0:
            propagated = {
                tid: (np.roll(rect(0, 0, 8, 8, shape), int(rng.integers(0, 40)), axis=1), 0.5)
                for tid in trk.track_ids()
            }
        up = trk.update(dets, propagated)
        ids = [i.track_id for i in up.instances]
        assert len(ids) == len(set(ids)) <= cfg.max_tracks
        assert set(ids) <= set(trk.track_ids())
        if up.new_track_ids:
            assert min(up.new_track_ids) > last_max_id
            last_max_id = max(up.new_track_ids)
        assert len(trk) <= cfg.max_tracks
        assert all(n <= cfg.max_tracks for n in _container_sizes(trk).values())
        for track in trk._tracks.values():
            assert all(n == 0 for n in _container_sizes(track).values())  # no per-track history
            assert track.mask.shape == shape
    stats = trk.stats
    assert stats.frames == 1000
    assert stats.births > 50 and stats.deaths > 50  # the run really churned tracks
    assert stats.births - stats.deaths == len(trk)
    # With no more detections every track dies within the occlusion budget.
    for _ in range(cfg.max_missed_frames + 1):
        trk.update([])
    assert len(trk) == 0
    assert trk.stats.births == trk.stats.deaths
