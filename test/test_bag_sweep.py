"""``sweep-thresholds``: one model pass per bag, the tracker replayed per threshold pair.

The sweep's claim is that a replayed pair scores exactly what ``eval-bag`` scores at that pair;
these tests hold it to that with the shipped demo model on a short world sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientsam3_ros.bag.run import EvalConfig, evaluate_bag
from efficientsam3_ros.cli import main
from efficientsam3_ros.evaluation.scoring import pool_overall
from efficientsam3_ros.synthetic import DEFAULT_CONCEPTS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = REPO_ROOT / "models" / "demo" / "model.safetensors"
TOPIC = "/camera/image_raw"
PAIRS = [(0.1, 0.35), (0.25, 0.35), (0.25, 0.5)]


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
        world_bags, tmp_path / "sweep", "--score-thresholds", "0.1,0.25", "--new-track-thresholds", "0.35,0.5"
    )
    assert main(argv) == 0
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    got = {(r["score_threshold"], r["new_track_threshold"]): r for r in summary["pairs"]}
    assert sorted(got) == sorted(PAIRS + [(0.1, 0.5)])
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
        for key in ("gt_instances", "mask_iou", "mask_ap", "idf1", "mota"):
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
    assert "4 pairs on 2 bag(s), 12 frames" in printed and "the model's own pair 0.1 / 0.35 ranks" in printed


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
