"""Scoring functions (mask IoU, COCO AP, motmetrics tracking), GT loading, stats and the report.

Predictions are built from the synthetic world's exact ground truth, so the right
answer is known: GT scored against itself is perfect; shifted, dropped or id-swapped
copies must score lower on exactly the metrics that measure that defect.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from efficientsam3_ros.evaluation.coco_ap import coco_ap_per_concept
from efficientsam3_ros.evaluation.ground_truth import (
    GroundTruthError,
    ground_truth_from_coco,
    load_ground_truth,
)
from efficientsam3_ros.evaluation.masks import iou_matrix, mask_iou_scores
from efficientsam3_ros.evaluation.records import FrameRecord, InstanceRecord, mask_to_record_rle
from efficientsam3_ros.evaluation.report import write_report
from efficientsam3_ros.evaluation.scoring import score
from efficientsam3_ros.evaluation.stats import instances_over_time, latency_stats, track_lifetimes
from efficientsam3_ros.evaluation.tracking import tracking_metrics
from efficientsam3_ros.synthetic.world import WorldConfig, render_video

CONCEPTS = ["red circle", "blue square"]
T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def gt() -> dict[int, FrameRecord]:
    """8 frames of a 96x72 synthetic video with two target concepts, keyed by stamp."""
    cfg = WorldConfig(
        width=96,
        height=72,
        concepts=tuple(CONCEPTS),
        num_objects=(2, 3),
        num_distractors=(0, 0),
        p_enter=0.0,
        p_leave=0.0,
        scale_range=(0.15, 0.2),
    )
    frames = {}
    for f in render_video(3, 8, cfg):
        stamp = T0 + f.index * 100_000_000
        frames[stamp] = FrameRecord(
            stamp,
            (f.height, f.width),
            [InstanceRecord(o.concept, mask_to_record_rle(o.mask), 1.0, o.track_id) for o in f.objects],
        )
    assert sum(len(f.instances) for f in frames.values()) >= 16
    return frames


def _map(frames: dict[int, FrameRecord], fn) -> dict[int, FrameRecord]:
    return {
        s: replace(f, instances=[fn(i, k, s) for k, i in enumerate(f.instances)]) for s, f in frames.items()
    }


def _shift(inst: InstanceRecord, pixels: int) -> InstanceRecord:
    from pycocotools import mask as mask_utils

    from efficientsam3_ros.evaluation.records import rle_for_coco

    mask = mask_utils.decode(rle_for_coco(inst.rle)).astype(bool)
    return replace(inst, rle=mask_to_record_rle(np.roll(mask, pixels, axis=1)))


def test_gt_against_itself_is_perfect(gt):
    result = score(gt, gt, CONCEPTS, source="self")
    for concept in CONCEPTS:
        assert result["mask_iou"][concept]["mean_iou"] == pytest.approx(1.0)
        assert result["mask_iou"][concept]["semantic_iou"] == pytest.approx(1.0)
        assert result["coco"][concept]["AP"] == pytest.approx(1.0)
        assert result["tracking"][concept]["idf1"] == pytest.approx(1.0)
        assert result["tracking"][concept]["mota"] == pytest.approx(1.0)
        assert result["tracking"][concept]["num_switches"] == 0
    assert result["tracking"]["overall"]["idf1"] == pytest.approx(1.0)
    assert result["frames_evaluated"] == len(gt)


def test_shifted_predictions_score_lower(gt):
    shifted = _map(gt, lambda i, k, s: _shift(i, 4))
    result = score(gt, shifted, CONCEPTS)
    for concept in CONCEPTS:
        assert 0.2 < result["mask_iou"][concept]["mean_iou"] < 0.95
        assert result["coco"][concept]["AP"] < 0.9
    far = score(gt, _map(gt, lambda i, k, s: _shift(i, 30)), CONCEPTS)
    assert far["tracking"]["overall"]["idf1"] < result["tracking"]["overall"]["idf1"] <= 1.0
    assert far["tracking"]["overall"]["mota"] < 1.0


def test_id_switch_lowers_idf1_but_not_iou(gt):
    stamps = sorted(gt)
    half = stamps[len(stamps) // 2]
    swapped = _map(gt, lambda i, k, s: replace(i, track_id=i.track_id + 100) if s >= half else i)
    result = score(gt, swapped, CONCEPTS)
    assert result["tracking"]["overall"]["num_switches"] >= 2
    assert result["tracking"]["overall"]["idf1"] < 0.9
    for concept in CONCEPTS:
        assert result["mask_iou"][concept]["mean_iou"] == pytest.approx(1.0)


def test_tracking_is_scored_in_the_order_the_frames_were_processed():
    """Header stamps that go backwards (0, 2, 1, 3 in bag order): the tracker changed the id once,
    between the 2nd and 3rd frame it saw; re-sorting by stamp would count 3 switches."""
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    rle = mask_to_record_rle(mask)

    def frames(stamps: list[int], ids: list[int]) -> dict[int, FrameRecord]:
        return {
            T0 + s: FrameRecord(T0 + s, (8, 8), [InstanceRecord(CONCEPTS[0], rle, 1.0, t)])
            for s, t in zip(stamps, ids)
        }

    processed = [0, 2, 1, 3]
    result = tracking_metrics(frames(sorted(processed), [1] * 4), frames(processed, [1, 1, 2, 2]), CONCEPTS)
    overall = result["overall"]
    assert (overall["num_switches"], overall["frames"]) == (1, 4)
    assert overall["mota"] == pytest.approx(0.75)


def test_misses_and_false_positives(gt):
    dropped = {s: replace(f, instances=f.instances[:1]) for s, f in gt.items()}
    result = mask_iou_scores(gt, dropped, CONCEPTS)
    total_gt = sum(result[c]["gt_instances"] for c in CONCEPTS)
    assert sum(result[c]["matched"] for c in CONCEPTS) < total_gt
    assert min(result[c]["mean_iou"] for c in CONCEPTS) < 1.0
    assert all(result[c]["matched_mean_iou"] in (None, pytest.approx(1.0)) for c in CONCEPTS)
    # A false positive more confident than the true ones (a copy labelled as the other concept) lowers AP.
    other = {CONCEPTS[0]: CONCEPTS[1], CONCEPTS[1]: CONCEPTS[0]}
    noisy = {
        s: replace(
            f,
            instances=[replace(i, score=0.5) for i in f.instances]
            + [replace(i, label=other[i.label], score=0.99) for i in f.instances],
        )
        for s, f in gt.items()
    }
    ap = coco_ap_per_concept(gt, noisy, CONCEPTS)
    assert all(ap[c]["AP"] < 1.0 for c in CONCEPTS)
    assert tracking_metrics(gt, noisy, CONCEPTS)["overall"]["num_false_positives"] > 0


def test_only_frames_on_both_sides_count(gt):
    stamps = sorted(gt)
    half = {s: gt[s] for s in stamps[::2]}
    result = score(gt, half, CONCEPTS, gt_labels=CONCEPTS + ["green star"])
    assert result["frames_evaluated"] == len(half)
    assert result["gt_frames_not_processed"] == len(gt) - len(half)
    assert result["coco"][CONCEPTS[0]]["AP"] == pytest.approx(1.0)  # unprocessed frames are not misses
    assert score(gt, half, ["green star"])["concepts_without_gt"] == ["green star"]


def test_frames_whose_image_sizes_differ_are_left_out_and_counted(gt, caplog):
    """Masks of different sizes never overlap: scoring such a frame would report zeros as results."""
    first = min(gt)
    small = np.zeros((36, 48), bool)
    small[:10, :10] = True
    shrunk = dict(gt)
    shrunk[first] = replace(
        gt[first],
        image_size=(36, 48),
        instances=[replace(i, rle=mask_to_record_rle(small)) for i in gt[first].instances],
    )
    result = score(gt, shrunk, CONCEPTS)
    assert result["frames_size_mismatch"] == 1 and result["frames_evaluated"] == len(gt) - 1
    assert result["overall"]["mask_iou"] == pytest.approx(1.0)  # the left-out frame scores no zeros
    assert "differ in size" in caplog.text and "[72, 96]" in caplog.text and "[36, 48]" in caplog.text


def test_iou_matrix_orientation():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    g = [InstanceRecord("x", mask_to_record_rle(a))]
    p = [InstanceRecord("x", mask_to_record_rle(a)), InstanceRecord("x", mask_to_record_rle(b))]
    m = iou_matrix(g, p)
    assert m.shape == (1, 2)
    assert m[0, 0] == pytest.approx(1.0) and m[0, 1] == pytest.approx(25 / 75)


def _coco_doc() -> dict:
    square = np.zeros((20, 30), bool)
    square[2:8, 3:9] = True
    rle = mask_to_record_rle(square)
    return {
        "images": [
            {"id": 1, "stamp_ns": 5, "height": 20, "width": 30},
            {"id": 2, "stamp": {"sec": 0, "nanosec": 2_000_000_000}, "height": 20, "width": 30},
        ],
        "categories": [{"id": 7, "name": "red square"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "track_id": 4, "segmentation": rle},
            {"id": 2, "image_id": 2, "category_id": 7, "segmentation": [[3, 2, 9, 2, 9, 8, 3, 8]]},
            {
                "id": 3,
                "image_id": 2,
                "category_id": 7,
                "segmentation": {"size": [20, 30], "counts": [40, 6, 554]},
            },
        ],
    }


def test_ground_truth_formats(tmp_path: Path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_coco_doc()))
    frames, labels = load_ground_truth(path)
    assert labels == ["red square"]
    assert sorted(frames) == [5, 2_000_000_000]  # unnormalised {sec, nanosec} summed, not misread
    assert frames[5].instances[0].track_id == 4
    assert [i.track_id for i in frames[2_000_000_000].instances] == [-1, -1]
    poly = frames[2_000_000_000].instances[0]
    assert iou_matrix([frames[5].instances[0]], [poly])[0, 0] > 0.6  # polygon rasterised to the same square


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["images"][0].pop("stamp_ns"), "stamp_ns"),
        (lambda d: d["annotations"][0].update(category_id=99), "unknown category"),
        (lambda d: d["annotations"][0].update(image_id=99), "unknown image"),
        (lambda d: d["images"][1].update(stamp={"sec": 0, "nanosec": 5}), "share stamp"),
        (lambda d: d.pop("categories"), "categories"),
        (lambda d: d["images"][0].pop("height"), "image 1 has no 'height'"),
        (lambda d: d["images"][1].update(width=None), "image 2: int"),
        (lambda d: d["annotations"][0].pop("segmentation"), "annotation 1 has no 'segmentation'"),
        (lambda d: d["annotations"][1].pop("image_id"), "annotation 2 has no 'image_id'"),
        (lambda d: d["categories"][0].pop("name"), "category 7 has no 'name'"),
        # a mask of another size than its image (here transposed) would score 0 against everything
        (
            lambda d: d["annotations"][0].update(segmentation=mask_to_record_rle(np.zeros((30, 20), bool))),
            r"annotation 1: segmentation size \[30, 20\] differs from its image's \[height, width\] \[20, 30\]",
        ),
        # counts pycocotools cannot read, or that stop short of the image: its merge would loop forever
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [20, 30], "counts": b"!!!notrle"}),
            "annotation 1: segmentation counts are not a valid COCO RLE",
        ),
        (
            lambda d: d["annotations"][0]["segmentation"].update(
                counts=mask_to_record_rle(np.ones((10, 30), bool))["counts"]
            ),
            "annotation 1: segmentation counts do not cover the 20x30 image",
        ),
        (
            lambda d: d["annotations"][2]["segmentation"].update(counts=[40, 6, 100]),
            "annotation 3: segmentation counts do not cover",
        ),
    ],
)
def test_ground_truth_errors(mutate, match):
    doc = _coco_doc()
    mutate(doc)
    with pytest.raises(GroundTruthError, match=match):
        ground_truth_from_coco(doc)


def test_ground_truth_file_errors(tmp_path: Path):
    with pytest.raises(GroundTruthError, match="does not exist"):
        load_ground_truth(tmp_path / "missing.json")
    with pytest.raises(GroundTruthError, match=f"cannot read ground-truth file {tmp_path}: Is a directory"):
        load_ground_truth(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(GroundTruthError, match="must be a JSON object"):
        load_ground_truth(tmp_path / "list.json")


def test_synthetic_rosbag_gt_needs_no_conversion(tmp_path: Path):
    """The synthetic world's gt.json is already the --gt format (stamp_ns images, track_id annotations)."""
    from efficientsam3_ros.synthetic.writers import write_rosbag

    _, gt_path = write_rosbag(tmp_path, seed=1, num_frames=3, config=WorldConfig(width=48, height=32))
    frames, labels = load_ground_truth(gt_path)
    assert len(frames) == 3 and len(labels) == 36
    assert all(i.track_id >= 1 for f in frames.values() for i in f.instances)
    assert min(frames) == 1_700_000_000_000_000_000


def test_latency_and_track_stats():
    timings = [{"encode": float(v), "detect": 2.0, "total": float(v) + 2.0} for v in range(1, 101)]
    stats = latency_stats(timings)
    assert stats["encode"]["p50_ms"] == pytest.approx(50.5)
    assert stats["encode"]["p99_ms"] == pytest.approx(99.01)
    assert stats["detect"]["fps"] == pytest.approx(500.0)
    assert "track" not in stats and stats["total"]["frames"] == 100
    rle = mask_to_record_rle(np.ones((4, 4), bool))
    frames = [
        FrameRecord(
            T0 + k * 10**9,
            (4, 4),
            [InstanceRecord("a", rle, track_id=1)]
            + ([InstanceRecord("b", rle, track_id=2)] if k == 1 else []),
        )
        for k in range(3)
    ]
    tracks = track_lifetimes(frames)
    assert tracks["count"] == 2
    assert [(t["label"], t["frames"], t["duration_s"]) for t in tracks["tracks"]] == [
        ("a", 3, 2.0),
        ("b", 1, 0.0),
    ]
    series = instances_over_time(frames, ["a", "c"])
    assert series["t_s"] == [0.0, 1.0, 2.0]
    assert series["counts"] == {"a": [1, 1, 1], "c": [0, 0, 0], "b": [0, 1, 0]}


def test_report_is_self_contained(tmp_path: Path, gt):
    frames = [gt[s] for s in sorted(gt)]
    timings = [{"preprocess": 1.0, "encode": 5.0 + k, "detect": 3.0, "post": 0.5} for k in range(len(frames))]
    report = {
        "run": {"bag": "b", "storage": "mcap", "image_topic": "/cam", "model": "m", "concepts": CONCEPTS},
        "backend": {"backend": "torch-cpu", "fallbacks": []},
        "stop": {"reason": "interrupted", "message": "stopped by Ctrl-C", "frame_index": 7, "stamp_ns": 1},
        "frames": {
            "total_seen": 8,
            "processed": 8,
            "skipped": 0,
            "failed": 0,
            "duplicate_stamps": 0,
            "wall_fps": float("inf"),
        },
        "failures": [],
        "latency_ms": latency_stats(timings),
        "instances_over_time": instances_over_time(frames, CONCEPTS),
        "tracks": track_lifetimes(frames),
        "scores": score(gt, gt, CONCEPTS, source="self"),
    }
    json_path, html_path = write_report(report, tmp_path, timings)
    data = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["frames"]["wall_fps"] is None
    page = html_path.read_text()
    assert "interrupted" in page and "at image message 7" in page
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3  # latency, instances, tracks
    assert base64.b64decode(images[0].split('"')[0]).startswith(b"\x89PNG")
    assert "http" not in page.replace("http-equiv", "")  # no external resources


def test_overall_scores_weight_iou_by_instances_and_skip_concepts_without_gt():
    from efficientsam3_ros.evaluation.scoring import overall_scores

    mask_iou = {
        "red circle": {"mean_iou": 0.9, "gt_instances": 3},
        "blue square": {"mean_iou": 0.5, "gt_instances": 1},
        "green star": {"mean_iou": None, "gt_instances": 0},
    }
    coco = {"red circle": {"AP": 0.8}, "blue square": {"AP": 0.4}, "green star": {"AP": -1.0}}
    tracking = {"overall": {"idf1": 0.7, "mota": 0.6}}
    overall = overall_scores(mask_iou, coco, tracking)
    assert overall["gt_instances"] == 4
    assert overall["mask_iou"] == pytest.approx((0.9 * 3 + 0.5) / 4)  # not the per-concept mean 0.7
    assert overall["mask_ap"] == pytest.approx(0.6)
    assert (overall["idf1"], overall["mota"]) == (0.7, 0.6)
    empty = overall_scores({"x": {"mean_iou": None, "gt_instances": 0}}, {}, {})
    assert empty["mask_iou"] is None and empty["mask_ap"] is None and empty["idf1"] is None
