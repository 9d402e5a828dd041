"""The evaluator against independent references: brute-force CLEAR-MOT / IDF1 and pycocotools on the file.

Why: eval-bag's headline numbers (mask AP, IDF1, MOTA) come from motmetrics and pycocotools fed by
our own records; these tests check the feeding (identities, concepts, frame order, crowd regions)
against definitions written out here by hand, on random and adversarial cases, rather than
against numbers the code under test produced.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import random

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from efficientsam3_ros.evaluation.coco_ap import coco_ap_per_concept
from efficientsam3_ros.evaluation.ground_truth import GroundTruthError, ground_truth_from_coco
from efficientsam3_ros.evaluation.records import FrameRecord, InstanceRecord, mask_to_record_rle
from efficientsam3_ros.evaluation.scoring import overall_scores, pool_overall, score
from efficientsam3_ros.evaluation.tracking import tracking_metrics

CONCEPTS = ["red circle", "blue square"]


def _box(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


# ---------------------------------------------------------------- brute-force CLEAR-MOT and IDF1
# A frame is (ground truth, predictions), each a list of (identity, mask); an identity is
# (concept, id) and only identities of one concept may match.


def _optimal_matchings(pairs: dict[tuple[int, int], float]) -> list[list[tuple[int, int]]]:
    """Every one-to-one matching of the valid pairs with the most pairs, then the least total cost."""
    found: list[tuple[int, float, list[tuple[int, int]]]] = []
    keys = list(pairs)

    def walk(start: int, rows: set, cols: set, chosen: list, cost: float) -> None:
        found.append((len(chosen), cost, list(chosen)))
        for t in range(start, len(keys)):
            i, j = keys[t]
            if i not in rows and j not in cols:
                walk(t + 1, rows | {i}, cols | {j}, [*chosen, (i, j)], cost + pairs[(i, j)])

    walk(0, set(), set(), [], 0.0)
    most = max(n for n, _, _ in found)
    least = min(c for n, c, _ in found if n == most)
    return [m for n, c, m in found if n == most and abs(c - least) < 1e-12]


def clear_mot(frames: list, threshold: float = 0.5) -> dict | None:
    """Misses, false positives and switches per Bernardin & Stiefelhagen 2008; None when a frame's
    optimal matching is not unique (then any tie-break is right, and implementations may differ)."""
    last: dict = {}  # ground-truth identity -> the prediction identity it was last matched to
    fn = fp = switches = objects = 0
    for gts, preds in frames:
        objects += len(gts)
        valid = {
            (i, j): 1.0 - _iou(gm, pm)
            for i, (gk, gm) in enumerate(gts)
            for j, (pk, pm) in enumerate(preds)
            if gk[0] == pk[0] and _iou(gm, pm) >= threshold
        }
        kept = []  # correspondences of the previous frames that are still valid are kept first
        for i, (gk, _) in enumerate(gts):
            j = next((j for j, (pk, _) in enumerate(preds) if gk in last and pk == last[gk]), None)
            if j is not None and (i, j) in valid:
                if any(j == k for _, k in kept):
                    return None  # two objects last matched to one prediction: which keeps it is a tie
                kept.append((i, j))
        rows, cols = {i for i, _ in kept}, {j for _, j in kept}
        rest = {p: c for p, c in valid.items() if p[0] not in rows and p[1] not in cols}
        options = _optimal_matchings(rest)
        if len(options) > 1:
            return None
        for i, j in options[0]:
            if gts[i][0] in last and last[gts[i][0]] != preds[j][0]:
                switches += 1
        for i, j in kept + options[0]:
            last[gts[i][0]] = preds[j][0]
        matched = len(kept) + len(options[0])
        fn += len(gts) - matched
        fp += len(preds) - matched
    mota = 1.0 - (fn + fp + switches) / objects if objects else None
    return {"fn": fn, "fp": fp, "switches": switches, "mota": mota}


def idf1(frames: list, threshold: float = 0.5) -> float | None:
    """IDF1 per Ristani et al. 2016: the one-to-one map of whole trajectories with the most IDTP."""
    gt_len: dict = {}
    pred_len: dict = {}
    overlap: dict = {}
    for gts, preds in frames:
        for gk, _ in gts:
            gt_len[gk] = gt_len.get(gk, 0) + 1
        for pk, _ in preds:
            pred_len[pk] = pred_len.get(pk, 0) + 1
        for gk, gm in gts:
            for pk, pm in preds:
                if gk[0] == pk[0] and _iou(gm, pm) >= threshold:
                    overlap[(gk, pk)] = overlap.get((gk, pk), 0) + 1
    gts_, preds_ = list(gt_len), list(pred_len)
    best = 0

    def walk(k: int, used: frozenset, tp: int) -> None:
        nonlocal best
        if k == len(gts_):
            best = max(best, tp)
            return
        walk(k + 1, used, tp)
        for p in preds_:
            if p not in used and (gts_[k], p) in overlap:
                walk(k + 1, used | {p}, tp + overlap[(gts_[k], p)])

    walk(0, frozenset(), 0)
    idfn, idfp = sum(gt_len.values()) - best, sum(pred_len.values()) - best
    return 2 * best / (2 * best + idfp + idfn) if gt_len or pred_len else None


def _random_sequence(rng: random.Random, size: int = 24) -> tuple[dict, dict, list]:
    """Objects of two concepts wandering on a small image, predicted with noise, drops, untracked
    and false detections, id changes, and frames processed out of stamp order."""
    n_frames = rng.randint(1, 6)
    objects = [(rng.choice(CONCEPTS), t) for t in range(rng.randint(0, 4))]
    where = {o: [rng.randint(0, 14), rng.randint(0, 14)] for o in objects}
    hyp = {o: rng.randint(1, 3) for o in objects}
    gt: dict[int, FrameRecord] = {}
    pred: dict[int, FrameRecord] = {}
    for f in range(n_frames):
        g, p = [], []
        for o in objects:
            where[o] = [min(14, max(0, v + rng.randint(-2, 2))) for v in where[o]]
            if rng.random() < 0.2:
                continue  # the object is not annotated in this frame (left, occluded)
            (y, x), s = where[o], rng.randint(5, 9)
            g.append(
                InstanceRecord(o[0], mask_to_record_rle(_box(size, size, y, x, y + s, x + s)), 1.0, o[1])
            )
            if rng.random() < 0.8:
                if rng.random() < 0.2:
                    hyp[o] = rng.randint(1, 4)  # the tracker changed this object's id
                d = [rng.randint(-2, 2) for _ in range(4)]
                mask = _box(size, size, y + d[0], x + d[1], y + s + d[2], x + s + d[3])
                track = hyp[o] if rng.random() > 0.1 else -1
                p.append(InstanceRecord(o[0], mask_to_record_rle(mask), rng.random(), track))
        for _ in range(rng.randint(0, 2)):
            y, x = rng.randint(0, 18), rng.randint(0, 18)
            mask = _box(size, size, y, x, y + 6, x + 6)
            p.append(
                InstanceRecord(
                    rng.choice(CONCEPTS), mask_to_record_rle(mask), rng.random(), rng.choice([-1, 1, 5])
                )
            )
        seen: set = set()  # one instance per (concept, track id) per frame, as a tracker emits
        p = [
            i
            for i in p
            if i.track_id < 0 or not ((i.label, i.track_id) in seen or seen.add((i.label, i.track_id)))
        ]
        gt[f] = FrameRecord(f, (size, size), g)
        pred[f] = FrameRecord(f, (size, size), p)
    order = list(range(n_frames))
    if rng.random() < 0.3:
        rng.shuffle(order)
    pred = {f: pred[f] for f in order}  # processing order
    frames = []
    for f in order:
        frames.append(
            (
                [((i.label, i.track_id), _decode(i)) for i in gt[f].instances],
                [
                    ((i.label, i.track_id if i.track_id >= 0 else ("untracked", f, k)), _decode(i))
                    for k, i in enumerate(pred[f].instances)
                ],
            )
        )
    return gt, pred, frames


def _decode(inst: InstanceRecord) -> np.ndarray:
    rle = {"size": inst.rle["size"], "counts": inst.rle["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _only(frames: list, concept: str) -> list:
    return [([x for x in g if x[0][0] == concept], [x for x in p if x[0][0] == concept]) for g, p in frames]


def test_tracking_metrics_match_brute_force_clear_mot_and_idf1():
    rng = random.Random(2024)
    compared = 0
    for _ in range(120):
        gt, pred, frames = _random_sequence(rng)
        result = tracking_metrics(gt, pred, CONCEPTS)
        for name, part in [("overall", frames)] + [(c, _only(frames, c)) for c in CONCEPTS]:
            expected = clear_mot(part)
            got = result[name]
            assert got["idf1"] == pytest.approx(idf1(part)) if idf1(part) is not None else got["idf1"] is None
            if expected is None:
                continue  # a tie in some frame's matching
            compared += 1
            assert (got["num_misses"], got["num_false_positives"], got["num_switches"]) == (
                expected["fn"],
                expected["fp"],
                expected["switches"],
            ), name
            if expected["mota"] is None:
                assert got["mota"] is None, name
            else:
                assert got["mota"] == pytest.approx(expected["mota"]), name
    assert compared > 300


def _in_sequence(part: list, sequence: int) -> list:
    """Identities (concept, id) made (concept, (sequence, id)): the same id in two bags is two objects."""
    return [((key[0], (sequence, key[1])), mask) for key, mask in part]


def test_pooled_idf1_and_mota_are_those_of_the_sequences_played_one_after_another():
    """MOTChallenge's combined scores: the sequences' counts summed. Brute force on the joined
    sequences (identities kept apart per sequence) must give the same IDF1 and MOTA."""
    rng = random.Random(7)
    compared = 0
    for _ in range(40):
        runs, joined = [], []
        for s in range(rng.randint(2, 4)):
            gt, pred, frames = _random_sequence(rng)
            runs.append(overall_scores({}, {}, tracking_metrics(gt, pred, CONCEPTS)))
            joined += [(_in_sequence(g, s), _in_sequence(p, s)) for g, p in frames]
        pooled = pool_overall(runs)
        want = idf1(joined)
        assert (
            pooled["idf1_pooled"] == pytest.approx(want)
            if want is not None
            else pooled["idf1_pooled"] is None
        )
        expected = clear_mot(joined)
        if expected is None:
            continue  # a tie in some frame's matching
        compared += 1
        if expected["mota"] is None:
            assert pooled["mota_pooled"] is None
        else:
            assert pooled["mota_pooled"] == pytest.approx(expected["mota"])
        assert pooled["tracking_counts"]["num_switches"] == expected["switches"]
    assert compared > 20


def test_pooled_scores_are_none_for_reports_without_counts():
    """A report written before the counts were stored cannot be pooled by counts: None, not 0."""
    old = {"gt_instances": 3, "mask_iou": 0.5, "mask_ap": 0.4, "idf1": 0.6, "mota": 0.1}
    pooled = pool_overall([old, old])
    assert (
        pooled["idf1"] == pytest.approx(0.6)
        and pooled["idf1_pooled"] is None
        and pooled["mota_pooled"] is None
    )


def test_switch_is_counted_against_the_last_matched_id_across_a_gap():
    """GT 1 matched to a, lost for two frames, then found as b: one switch (CLEAR-MOT), not zero."""
    a = mask_to_record_rle(_box(8, 8, 0, 0, 4, 4))

    def seq(ids: list) -> dict[int, FrameRecord]:
        return {
            f: FrameRecord(f, (8, 8), [] if t is None else [InstanceRecord(CONCEPTS[0], a, 1.0, t)])
            for f, t in enumerate(ids)
        }

    out = tracking_metrics(seq([1, 1, 1, 1]), seq([7, None, None, 8]), CONCEPTS)["overall"]
    assert (out["num_switches"], out["num_misses"]) == (1, 2)
    assert out["mota"] == pytest.approx(1 - 3 / 4)
    assert out["idf1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 3))  # a covers 1 frame, b 1 frame


def test_repeated_predicted_track_id_in_a_frame_cannot_push_idf1_over_one():
    """Two instances of one concept with the same track id in one frame (a tracker bug, or a
    reference topic): before, motmetrics counted the pair's overlap twice, IDF1 4/3."""
    r = mask_to_record_rle(_box(8, 8, 0, 0, 4, 4))
    gt = {0: FrameRecord(0, (8, 8), [InstanceRecord("red circle", r, 1.0, 1)])}
    pred = {0: FrameRecord(0, (8, 8), [InstanceRecord("red circle", r, 1.0, 5)] * 2)}
    out = tracking_metrics(gt, pred, CONCEPTS)["overall"]
    # the repeat scored as an identity of its own: IDTP 1, IDFP 1, IDFN 0
    assert out["idf1"] == pytest.approx(2 / 3)
    assert (out["num_false_positives"], out["mota"]) == (1, pytest.approx(0.0))


def test_repeated_ground_truth_track_id_in_a_frame_does_not_crash_scoring(caplog):
    """Before, motmetrics raised KeyError after the whole model pass."""
    a = mask_to_record_rle(_box(8, 8, 0, 0, 4, 4))
    b = mask_to_record_rle(_box(8, 8, 4, 4, 8, 8))
    gt = {
        0: FrameRecord(
            0, (8, 8), [InstanceRecord("red circle", a, 1.0, 1), InstanceRecord("red circle", b, 1.0, 1)]
        )
    }
    pred = {
        0: FrameRecord(
            0, (8, 8), [InstanceRecord("red circle", a, 1.0, 5), InstanceRecord("red circle", b, 1.0, 6)]
        )
    }
    with caplog.at_level(logging.WARNING):
        out = tracking_metrics(gt, pred, CONCEPTS)["overall"]
    assert (out["num_objects"], out["num_misses"], out["mota"], out["idf1"]) == (2, 0, 1.0, 1.0)
    assert "track id" in caplog.text


def test_ground_truth_with_a_repeated_track_id_in_an_image_is_refused_at_load():
    rle = mask_to_record_rle(_box(4, 4, 0, 0, 2, 2))
    ann = {"image_id": 1, "category_id": 1, "track_id": 0, "segmentation": rle}
    data = {
        "images": [{"id": 1, "stamp_ns": 5, "height": 4, "width": 4}],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
        "annotations": [{**ann, "id": 1}, {**ann, "id": 2}],
    }
    with pytest.raises(GroundTruthError, match="track_id 0"):
        ground_truth_from_coco(data)
    data["annotations"][1]["category_id"] = 2  # the same id in another category is another object
    ground_truth_from_coco(data)
    del data["annotations"][0]["track_id"], data["annotations"][1]["track_id"]
    data["annotations"][1]["category_id"] = 1
    ground_truth_from_coco(data)  # no track ids at all: fine (tracking metrics are then per frame)


def test_mota_without_ground_truth_objects_is_undefined_not_minus_infinity():
    r = mask_to_record_rle(_box(8, 8, 0, 0, 4, 4))
    gt = {0: FrameRecord(0, (8, 8), [])}
    pred = {0: FrameRecord(0, (8, 8), [InstanceRecord("red circle", r, 1.0, 5)])}
    result = score(gt, pred, CONCEPTS)
    assert result["tracking"]["overall"]["mota"] is None
    assert result["tracking"]["red circle"]["mota"] is None
    assert result["tracking"]["overall"]["num_false_positives"] == 1


def test_concepts_that_normalise_alike_are_scored_once():
    """``--concept "red circle" --concept "Red Circle"`` is one concept: before, it weighted that
    concept twice in the overall mask IoU and AP, and left one spelling's tracking scores empty."""
    a = mask_to_record_rle(_box(8, 8, 0, 0, 4, 4))
    b = mask_to_record_rle(_box(8, 8, 4, 4, 8, 8))
    gt = {
        0: FrameRecord(
            0, (8, 8), [InstanceRecord("red circle", a, 1.0, 1), InstanceRecord("blue square", b, 1.0, 1)]
        )
    }
    pred = {0: FrameRecord(0, (8, 8), [InstanceRecord("red circle", a, 1.0, 1)])}
    result = score(gt, pred, ["red circle", "Red  Circle", "blue square"])
    overall = result["overall"]
    assert (overall["gt_instances"], overall["mask_iou"], overall["mask_ap"]) == (2, 0.5, pytest.approx(0.5))
    assert result["tracking"]["red circle"]["idf1"] == 1.0
    assert list(result["mask_iou"]) == ["red circle", "blue square"]


# ---------------------------------------------------------------- COCO mask AP against pycocotools


def _json_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _random_coco(rng: random.Random, crowd: bool) -> tuple[dict, list]:
    h, w = 30, 40
    images, anns, dets = [], [], []
    for image_id in range(1, rng.randint(2, 5)):
        images.append({"id": image_id, "height": h, "width": w, "stamp_ns": 1000 + image_id})
        for _ in range(rng.randint(0, 4)):
            y, x, s, cat = rng.randint(0, 20), rng.randint(0, 30), rng.randint(3, 10), rng.choice([1, 2])
            rle = _json_rle(_box(h, w, y, x, y + s, x + s))
            iscrowd = int(crowd and rng.random() < 0.3)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": rle,
                    "iscrowd": iscrowd,
                    "track_id": len(anns),
                    "area": float(mask_utils.area({**rle, "counts": rle["counts"].encode()})),
                }
            )
            for _ in range(rng.randint(0, 2)):
                d = [rng.randint(-3, 3) for _ in range(2)]
                mask = _box(h, w, y + d[0], x + d[1], y + s + d[0], x + s + d[1])
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": cat,
                        "segmentation": _json_rle(mask),
                        "score": rng.random(),
                    }
                )
        for _ in range(rng.randint(0, 2)):
            y, x = rng.randint(0, 20), rng.randint(0, 30)
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": rng.choice([1, 2, 3]),
                    "segmentation": _json_rle(_box(h, w, y, x, y + 6, x + 6)),
                    "score": rng.random(),
                }
            )
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _pycocotools_ap(data: dict, dets: list) -> dict[str, float | None]:
    """Per-category mask AP of one COCOeval run over everything, straight from its precision array."""
    if not dets:  # loadRes refuses an empty list; with nothing detected, AP is 0 wherever it is defined
        found = {a["category_id"] for a in data["annotations"] if not a["iscrowd"]}
        return {c["name"]: 0.0 if c["id"] in found else None for c in data["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(data)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), iouType="segm")
        ev.evaluate()
        ev.accumulate()
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]  # all areas, maxDets 100
        out[data["categories"][cat - 1]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else None
    return out


@pytest.mark.parametrize("crowd", [False, True])
def test_mask_ap_matches_pycocotools_on_the_same_json(crowd: bool):
    """Crowd annotations are COCO's ignore regions: a detection on one is neither a hit nor a false
    positive. Before, they were dropped, so such a detection counted as a false positive."""
    rng = random.Random(7 + crowd)
    for _ in range(40):
        data, dets = _random_coco(rng, crowd)
        gt, _ = ground_truth_from_coco(data)
        stamps = {im["id"]: im["stamp_ns"] for im in data["images"]}
        pred = {s: FrameRecord(s, f.image_size, []) for s, f in gt.items()}
        for d in dets:
            name = data["categories"][d["category_id"] - 1]["name"]
            pred[stamps[d["image_id"]]].instances.append(InstanceRecord(name, d["segmentation"], d["score"]))
        got = coco_ap_per_concept(gt, pred, ["a", "b", "c"])
        for name, ap in _pycocotools_ap(data, dets).items():
            assert got[name]["AP"] == (pytest.approx(ap) if ap is not None else None), name


def test_crowd_regions_are_ignored_by_mask_ap_and_left_out_of_iou_and_tracking():
    """A detection on a crowd region: not a false positive for AP (COCO), not an instance for mask
    IoU or tracking (which have no ignore regions, so there it stays a false positive)."""
    person, crowd = _box(20, 20, 0, 0, 8, 8), _box(20, 20, 10, 10, 20, 20)
    data = {
        "images": [{"id": 1, "stamp_ns": 9, "height": 20, "width": 20}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "track_id": 0, "segmentation": _json_rle(person)},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": _json_rle(crowd)},
        ],
    }
    gt, _ = ground_truth_from_coco(data)
    on_crowd = InstanceRecord("person", _json_rle(crowd), 0.9, 2)  # more confident than the hit
    pred = {9: FrameRecord(9, (20, 20), [InstanceRecord("person", _json_rle(person), 0.5, 1), on_crowd])}
    result = score(gt, pred, ["person"])
    assert result["coco"]["person"]["AP"] == pytest.approx(
        1.0
    )  # was 0.5: the crowd hit ranked first, as an FP
    assert result["coco"]["person"]["gt_instances"] == 1
    assert (result["mask_iou"]["person"]["gt_instances"], result["mask_iou"]["person"]["mean_iou"]) == (
        1,
        1.0,
    )
    tracking = result["tracking"]["person"]
    assert (tracking["num_objects"], tracking["num_false_positives"]) == (1, 1)
