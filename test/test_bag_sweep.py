"""``sweep-thresholds``: one model pass per bag, the tracker replayed per threshold pair.

The sweep's claim is that a replayed pair scores exactly what ``eval-bag`` scores at that pair;
these tests hold it to that with the shipped demo model on a short world sequence.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from test_bag import (
    CONCEPTS,
    T0,
    TS,
    FakeSegmenter,
    compressed_bomb_bag,
    failing_decoder,
    image_cdr,
    write_bag,
)

from efficientsam3_ros.bag.run import EvalConfig, evaluate_bag
from efficientsam3_ros.bag.sweep import SweepBag, detect, sweep
from efficientsam3_ros.cli import main
from efficientsam3_ros.evaluation.ground_truth import load_ground_truth
from efficientsam3_ros.evaluation.records import mask_to_record_rle
from efficientsam3_ros.evaluation.scoring import pool_overall
from efficientsam3_ros.modeling.config import OperatingPoint
from efficientsam3_ros.pipeline.results import FrameResult, Instance
from efficientsam3_ros.ros import messages
from efficientsam3_ros.synthetic import DEFAULT_CONCEPTS
from efficientsam3_ros.tracking import ConceptTracker, TrackingConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = REPO_ROOT / "models" / "demo" / "model.safetensors"
TOPIC = "/camera/image_raw"
PAIRS = [(0.05, 0.4), (0.25, 0.4), (0.25, 0.5)]


@pytest.fixture(scope="module")
def world_bags(tmp_path_factory) -> list[tuple[Path, Path]]:
    """Two short validation-seed sequences (the demo recipe's seeds 5 and 6), 6 frames each."""
    from efficientsam3_ros.synthetic.writers import write_rosbag

    out = tmp_path_factory.mktemp("sweep")
    return [write_rosbag(out / f"val-{seed}", seed=seed, num_frames=6, topic=TOPIC) for seed in (5, 6)]


def _sweep_argv(bags: list[tuple[Path, Path]], out: Path, *extra: str) -> list[str]:
    argv = ["sweep-thresholds", "--image-topic", TOPIC, "--model", str(DEMO_WEIGHTS), "--backend", "torch"]
    argv += ["--device", "cpu", "--no-progress", "--out", str(out)]
    for bag, gt in bags:
        argv += ["--bag", str(bag), str(gt)]
    for concept in DEFAULT_CONCEPTS:
        argv += ["--concept", concept]
    return argv + list(extra)


@pytest.mark.skipif(
    not DEMO_WEIGHTS.is_file(), reason="models/demo/model.safetensors is not in this checkout"
)
def test_a_replayed_pair_scores_what_eval_bag_scores_at_that_pair(tmp_path, world_bags, capsys, one_thread):
    argv = _sweep_argv(
        world_bags, tmp_path / "sweep", "--score-thresholds", "0.05,0.25", "--new-track-thresholds", "0.4,0.5"
    )
    assert main(argv) == 0
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    got = {(r["score_threshold"], r["new_track_threshold"]): r for r in summary["pairs"]}
    assert sorted(got) == sorted(PAIRS + [(0.05, 0.5)])
    for s, nt in PAIRS:
        runs = []
        for i, (bag, gt) in enumerate(world_bags):
            outcome = evaluate_bag(
                EvalConfig(
                    bag=bag,
                    image_topic=TOPIC,
                    concepts=list(DEFAULT_CONCEPTS),
                    out_dir=tmp_path / f"eval-{s}-{nt}-{i}",
                    model=str(DEMO_WEIGHTS),
                    backend="torch",
                    device="cpu",
                    score_threshold=s,
                    new_track_threshold=nt,
                    gt=gt,
                    progress=False,
                )
            )
            assert outcome.exit_code == 0, outcome.error
            runs.append(outcome.report["scores"]["overall"])
        expected = pool_overall(runs)
        for key in ("gt_instances", "mask_iou", "mask_ap", "idf1", "mota", "idf1_pooled", "mota_pooled"):
            assert got[(s, nt)][key] == pytest.approx(expected[key], abs=1e-9), (s, nt, key)
    # the pairs differ, so the comparison above could have failed
    assert (
        len({round(r["idf1"], 6) for r in got.values()} | {round(r["mask_iou"], 6) for r in got.values()}) > 1
    )
    ranked = [r["criterion"] for r in summary["pairs"]]
    assert ranked == sorted(ranked, reverse=True)
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert table.count("\n") == len(got) + 2
    printed = capsys.readouterr().out
    assert "4 pairs on 2 bag(s), 12 frames" in printed and "the model's own pair 0.05 / 0.4 ranks" in printed


def test_missing_bag_is_a_usage_error_before_the_model_loads(tmp_path, capsys):
    argv = _sweep_argv([(tmp_path / "nope", tmp_path / "gt.json")], tmp_path / "out")
    assert main(argv) == 2
    assert f"bag {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_thresholds_must_be_probabilities(tmp_path, capsys):
    argv = _sweep_argv([(tmp_path, tmp_path)], tmp_path / "out", "--score-thresholds", "0.1,1.5")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "expected scores in [0, 1]" in capsys.readouterr().err


def test_pool_overall_weights_iou_by_instances_and_averages_the_rest():
    runs = [
        {"gt_instances": 30, "mask_iou": 0.9, "mask_ap": 0.5, "idf1": 0.8, "mota": 0.2},
        {"gt_instances": 10, "mask_iou": 0.5, "mask_ap": None, "idf1": 0.4, "mota": -0.2},
    ]
    pooled = pool_overall(runs)
    assert pooled["mask_iou"] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert pooled["mask_ap"] == pytest.approx(0.25) and pooled["idf1"] == pytest.approx(0.6)
    assert pooled["mota"] == pytest.approx(0.0) and pooled["gt_instances"] == 40
    with pytest.raises(ValueError, match="at least one"):
        pool_overall([])


@pytest.mark.skipif(
    not DEMO_WEIGHTS.is_file(), reason="models/demo/model.safetensors is not in this checkout"
)
def test_missing_topic_is_a_usage_error_naming_the_bags_topics(tmp_path, world_bags, capsys):
    argv = _sweep_argv(world_bags[:1], tmp_path / "out")
    argv[argv.index(TOPIC)] = "/no/such/topic"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "/no/such/topic" in err and TOPIC in err


def test_unreadable_ground_truth_is_a_usage_error_before_the_model_loads(tmp_path, world_bags, capsys):
    bad = tmp_path / "gt.json"
    bad.write_text("{not json")
    argv = _sweep_argv([(world_bags[0][0], bad)], tmp_path / "out", "--model", "no-such-model")
    assert main(argv) == 2
    assert str(bad) in capsys.readouterr().err


# ----------------------------------------------------------------------------- stand-in models, small bags


def write_gt(path: Path, stamps: list[int], mask: np.ndarray | None = None) -> Path:
    """One "red circle" per frame, at ``mask`` (default: where FakeSegmenter puts it in a 24 x 32 frame)."""
    if mask is None:
        mask = np.zeros((24, 32), bool)
        mask[:12, 0:3] = True
    h, w = mask.shape
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i + 1, "stamp_ns": s, "height": h, "width": w} for i, s in enumerate(stamps)
                ],
                "categories": [{"id": 1, "name": CONCEPTS[0]}],
                "annotations": [
                    {
                        "id": i + 1,
                        "image_id": i + 1,
                        "category_id": 1,
                        "track_id": 1,
                        "segmentation": mask_to_record_rle(mask),
                    }
                    for i in range(len(stamps))
                ],
            }
        )
    )
    return path


def sweep_bag(bag: Path, gt: Path) -> SweepBag:
    seq = SweepBag(bag, gt)
    seq.gt, seq.gt_labels = load_ground_truth(gt)
    return seq


def test_a_new_track_threshold_under_every_score_threshold_is_scored_as_equal(tmp_path):
    """(0.6, 0.5) starts tracks exactly as (0.6, 0.6) does; it used to be skipped, leaving no rows."""
    stamps = write_bag(tmp_path / "in", n=3)
    seq = sweep_bag(tmp_path / "in", write_gt(tmp_path / "gt.json", stamps))
    fake = FakeSegmenter()
    fake.set_concepts(CONCEPTS)
    detect(fake, seq, "/cam", progress=False)
    rows = sweep([seq], CONCEPTS, OperatingPoint(), [0.6], [0.5])
    assert [(r["score_threshold"], r["new_track_threshold"]) for r in rows] == [(0.6, 0.6)]
    assert rows[0]["mask_iou"] == pytest.approx(1.0)
    grid = sweep([seq], CONCEPTS, OperatingPoint(), [0.2, 0.6], [0.5, 0.6])  # (0.6, 0.5) repeats (0.6, 0.6)
    assert [(r["score_threshold"], r["new_track_threshold"]) for r in grid] == [
        (0.2, 0.5),
        (0.2, 0.6),
        (0.6, 0.6),
    ]
    with pytest.raises(ValueError, match="no threshold pairs"):
        sweep([seq], CONCEPTS, OperatingPoint(), [0.6], [])


class StandInSegmenter(FakeSegmenter):
    """What sweep-thresholds reads from a ConceptSegmenter, around FakeSegmenter's squares."""

    model = SimpleNamespace(config=SimpleNamespace(operating_point=OperatingPoint()))
    mask_threshold = 0.5
    crop_masks_to_boxes = False


def test_cli_with_no_new_track_threshold_above_the_score_threshold(tmp_path, monkeypatch, capsys):
    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter

    monkeypatch.setattr(ConceptSegmenter, "from_name", lambda *a, **k: StandInSegmenter())
    stamps = write_bag(tmp_path / "in", n=3)
    gt = write_gt(tmp_path / "gt.json", stamps)
    argv = ["sweep-thresholds", "--image-topic", "/cam", "--bag", str(tmp_path / "in"), str(gt)]
    argv += ["--concept", CONCEPTS[0], "--no-progress", "--out", str(tmp_path / "out")]
    argv += ["--score-thresholds", "0.6", "--new-track-thresholds", "0.5"]
    assert main(argv) == 0
    pairs = json.loads((tmp_path / "out" / "sweep.json").read_text())["pairs"]
    assert [(r["score_threshold"], r["new_track_threshold"]) for r in pairs] == [(0.6, 0.6)]
    assert "best 0.6 / 0.6" in capsys.readouterr().out


def test_an_image_the_decoder_refuses_does_not_stop_the_model_pass(tmp_path, png_bomb):
    """As in eval-bag: OpenCV's cv2.error on one message fails that frame only."""
    stamps = compressed_bomb_bag(tmp_path / "in", png_bomb)
    seq = sweep_bag(tmp_path / "in", write_gt(tmp_path / "gt.json", stamps))
    fake = FakeSegmenter()
    fake.set_concepts(CONCEPTS)
    detect(fake, seq, "/cam", progress=False)
    assert seq.failed == 1 and len(seq.frames) == 4


def test_whatever_the_decoder_raises_does_not_stop_the_model_pass(tmp_path, monkeypatch):
    stamps = write_bag(tmp_path / "in", n=3)
    failing_decoder(monkeypatch, stamps[1])
    seq = sweep_bag(tmp_path / "in", write_gt(tmp_path / "gt.json", stamps))
    fake = FakeSegmenter()
    fake.set_concepts(CONCEPTS)
    detect(fake, seq, "/cam", progress=False)
    assert seq.failed == 1 and [f.stamp_ns for f in seq.frames] == [stamps[0], stamps[2]]


class StampDetector:
    """Finds the object (columns 0..7) in every frame but message 2, whose stamp repeats message 1's
    and where it misses by far; the message index is written into the pixels."""

    backend_info = {"backend": "stand-in"}

    def __init__(self, tracker: ConceptTracker | None = None) -> None:
        self.tracker = tracker

    def set_concepts(self, labels: list[str]) -> list[int]:
        return [0]

    def process(self, rgb: np.ndarray) -> FrameResult:
        h, w = rgb.shape[:2]
        mask = np.zeros((h, w), bool)
        columns = slice(20, 28) if int(rgb[0, 0, 0]) // 40 == 2 else slice(0, 8)
        mask[:, columns] = True
        instances = [Instance(0, CONCEPTS[0], 0.9, np.array([0, 0, 8, h], np.float32), mask)]
        if self.tracker is not None:
            instances = self.tracker.update(instances).instances
        return FrameResult(instances, (h, w), {0: CONCEPTS[0]}, {"total": 1.0})


def test_a_repeated_stamp_scores_the_same_frame_as_eval_bag(tmp_path):
    """Both score the first frame of a repeated stamp (the tracker still sees every frame)."""
    stamps = [T0, T0 + 10**8, T0 + 10**8, T0 + 2 * 10**8]  # messages 1 and 2 share a stamp
    bag = tmp_path / "in"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        cam = writer.add_connection("/cam", messages.IMAGE, typestore=TS)
        for k, stamp in enumerate(stamps):
            writer.write(cam, stamp + 1000 + k, image_cdr(np.full((24, 32, 3), k * 40, np.uint8), stamp))
    mask = np.zeros((24, 32), bool)
    mask[:, 0:8] = True
    gt = write_gt(tmp_path / "gt.json", sorted(set(stamps)), mask)
    point = OperatingPoint(score_threshold=0.5, new_track_threshold=0.7)
    evaluated = evaluate_bag(
        EvalConfig(
            bag=bag, image_topic="/cam", concepts=CONCEPTS[:1], out_dir=tmp_path / "ev", gt=gt, progress=False
        ),
        segmenter=StampDetector(ConceptTracker(TrackingConfig(new_det_threshold=0.7))),
    )
    assert evaluated.report["frames"]["duplicate_stamps"] == 1
    expected = evaluated.report["scores"]["overall"]
    seq = sweep_bag(bag, gt)
    detect(StampDetector(), seq, "/cam", progress=False)
    (row,) = sweep([seq], CONCEPTS[:1], point, [0.5], [0.7])
    assert expected["mask_iou"] == pytest.approx(1.0)  # message 1, not its miss-by-far repeat, was scored
    for key, value in expected.items():
        assert row[key] == pytest.approx(value), key


def test_every_bags_image_topic_is_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """A topic typo (or an empty topic) in the 2nd bag used to surface after the model build and
    the 1st bag's whole model pass."""
    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(ConceptSegmenter, "from_name", no_model)
    stamps = write_bag(tmp_path / "a", n=2)
    gt = write_gt(tmp_path / "gt.json", stamps)
    with Writer(tmp_path / "b", version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        writer.add_connection("/camera/image_raw", messages.IMAGE, typestore=TS)
    write_bag(tmp_path / "empty", n=0)
    for second, says in (("b", "Image topics in it: /camera/image_raw"), ("empty", "/cam has no messages")):
        argv = ["sweep-thresholds", "--image-topic", "/cam", "--concept", CONCEPTS[0], "--no-progress"]
        argv += ["--bag", str(tmp_path / "a"), str(gt), "--bag", str(tmp_path / second), str(gt)]
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / second) in err and says in err
    assert not (tmp_path / "out").exists()


def test_stamps_going_backwards_are_counted_in_the_sweep(tmp_path):
    bag = tmp_path / "in"
    stamps = [T0, T0 + 2 * 10**8, T0 + 10**8]
    with Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        cam = writer.add_connection("/cam", messages.IMAGE, typestore=TS)
        for k, stamp in enumerate(stamps):
            writer.write(cam, T0 + k, image_cdr(np.zeros((24, 32, 3), np.uint8), stamp))
    seq = sweep_bag(bag, write_gt(tmp_path / "gt.json", sorted(stamps)))
    fake = FakeSegmenter()
    fake.set_concepts(CONCEPTS)
    detect(fake, seq, "/cam", progress=False)
    assert seq.stamps_backwards == 1 and [f.stamp_ns for f in seq.frames] == stamps
