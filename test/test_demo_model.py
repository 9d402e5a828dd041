"""The shipped demo model (models/demo/, made by training/demo/recipe.sh) loads and still scores.

On a short held-out world sequence (the demo's own seed 90210, which the recipe never trains on)
eval-bag with ground truth must reach floors set just under the measured scores, so a change
that breaks the model, its loading, the pipeline or the scoring fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = REPO_ROOT / "models" / "demo" / "model.safetensors"
DEMO_TRACKER = REPO_ROOT / "models" / "demo" / "tracker.safetensors"
SEED, FRAMES = 90210, 8

# Measured with the shipped weights on the sequence above, without and with the shipped memory
# tracker (see models/demo/MODEL_CARD.md); floors sit just under them. Whoever ships new weights
# measures them and updates both: until then a present model fails this test rather than
# passing vacuously.
# (The tracker propagates only weakly yet, so its row is lower: see the model card.)
MEASURED: dict[str, dict[str, float | None]] = {
    "none": {"mask_iou": 0.816, "idf1": 0.800},
    "perceiver": {"mask_iou": 0.362, "idf1": 0.095},
}
FLOORS: dict[str, dict[str, float | None]] = {
    "none": {"mask_iou": 0.75, "idf1": 0.70},
    "perceiver": {"mask_iou": 0.30, "idf1": 0.05},
}

pytestmark = pytest.mark.skipif(
    not DEMO_WEIGHTS.is_file(),
    reason=f"{DEMO_WEIGHTS} is absent (run training/demo/recipe.sh to make it)",
)


def test_demo_model_loads():
    from efficientsam3_ros.modeling.registry import DEMO_OPERATING_POINT
    from efficientsam3_ros.zoo import resolve_model

    model = resolve_model(str(DEMO_WEIGHTS))
    assert model.config.name == "demo-student"
    assert model.config.operating_point == DEMO_OPERATING_POINT  # the shipped file carries it
    assert model.config.image_size % model.config.patch_size == 0
    assert DEMO_WEIGHTS.stat().st_size < 20 * 1024 * 1024


def test_demo_tracker_loads_for_the_demo_model():
    from efficientsam3_ros.modeling import load_tracker
    from efficientsam3_ros.zoo import resolve_model

    assert DEMO_TRACKER.is_file(), "the recipe installs the stage-2 tracker next to the model"
    model = resolve_model(str(DEMO_WEIGHTS))
    tracker = load_tracker(DEMO_TRACKER, model.config, memory="perceiver")
    assert tracker.config.hidden_size == 64 and tracker.tokens_per_memory_frame == 32
    assert DEMO_TRACKER.stat().st_size < 20 * 1024 * 1024


@pytest.mark.parametrize("memory", ["none", "perceiver"])
def test_demo_model_scores_on_held_out_sequence(tmp_path, one_thread, memory):
    from efficientsam3_ros.bag.run import EvalConfig, evaluate_bag
    from efficientsam3_ros.synthetic import DEFAULT_CONCEPTS, WorldConfig
    from efficientsam3_ros.synthetic.writers import DEFAULT_TOPIC, write_rosbag

    floors, measured = FLOORS[memory], MEASURED[memory]
    assert None not in floors.values(), (
        f"set FLOORS for the shipped {DEMO_WEIGHTS.name} (measured: {measured})"
    )
    assert torch.get_num_threads() == 1
    bag, gt = write_rosbag(tmp_path / "world", seed=SEED, num_frames=FRAMES, config=WorldConfig())
    outcome = evaluate_bag(
        EvalConfig(
            bag=bag,
            image_topic=DEFAULT_TOPIC,
            concepts=list(DEFAULT_CONCEPTS),
            out_dir=tmp_path / "eval",
            model=str(DEMO_WEIGHTS),
            memory=memory,
            memory_checkpoint=str(DEMO_TRACKER) if memory != "none" else None,
            backend="torch-cpu",
            device="cpu",
            gt=gt,
            progress=False,
        )
    )
    assert outcome.exit_code == 0, outcome.error
    run = outcome.report["run"]  # no thresholds given: the model's own operating point
    assert (run["score_threshold"], run["new_track_threshold"], run["crop_masks_to_boxes"]) == (
        0.25,
        0.35,
        True,
    )
    scores = outcome.report["scores"]
    assert scores["frames_evaluated"] == FRAMES
    overall = scores["overall"]
    assert overall["gt_instances"] > 0
    iou, idf1 = overall["mask_iou"], overall["idf1"] or 0.0
    assert iou >= floors["mask_iou"], f"mask IoU {iou:.3f} < floor {floors['mask_iou']} (measured {measured})"
    assert idf1 >= floors["idf1"], f"IDF1 {idf1:.3f} < floor {floors['idf1']} (measured {measured})"
