"""training/demo/recipe.sh, start to finish, shrunk: every command it runs, in its order, for real.

The recipe is the only script that chains the world writers, all four training runs (each
stage reading the previous stage's export), eval-bag on three models and the held-out summary.
Nothing else runs that chain, so a renamed flag, a moved export or a broken summary snippet
would only show after an hour of training. Here it runs on a twentieth of the data and a thousandth
of the steps (a few minutes): the numbers mean nothing, the plumbing is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "training" / "demo" / "recipe.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="the recipe is a bash script")
def test_recipe_runs_start_to_finish_on_a_shrunk_world(tmp_path):
    bin_dir = Path(sys.executable).parent  # efficientsam3 / efficientsam3-train of this install
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DEMO_SCALE": "0.001",  # 6000 steps -> 6, 1000 -> 1, 1500 -> 2 (round half to even), 300 -> 1
        "DEMO_DATA_SCALE": "0.05",  # 150 images, 8 clips, 4-frame bags
        "DEMO_THREADS": "1",
        "DEMO_INSTALL": "0",  # never touch models/demo
    }
    shipped = (REPO / "models" / "demo" / "model.safetensors").stat().st_mtime_ns
    work = tmp_path / "demo"
    run = subprocess.run(
        ["bash", str(RECIPE), str(work)], env=env, capture_output=True, text=True, timeout=1800
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # each stage ran its scaled step count and exported, the shipped size last
    for name, steps in [
        ("teacher", 6),
        ("student-stage1", 1),
        ("student", 6),
        ("student-336", 2),
        ("tracker", 1),
    ]:
        rows = [
            json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()
        ]
        assert rows[-1]["step"] == steps, name
        assert (work / "runs" / name / "export" / "model.safetensors").is_file(), name
    exported = json.loads((work / "runs" / "student-336" / "export" / "model.json").read_text())
    assert exported["image_size"] == 336
    assert not (work / "runs" / "student-224").exists()  # no 224 px finish since session 29
    environment = json.loads((work / "runs" / "teacher" / "environment.json").read_text())
    assert environment  # the run recorded what it ran under

    summary = json.loads((work / "scores.json").read_text())
    assert summary["heldout_seeds"] == [424242, 424243, 424244]
    for who in ("teacher", "student", "student+memory"):
        row = summary[who]
        assert row["sequences"] == 3 and row["gt_instances"] > 0, who
        assert 0.0 <= row["mask_iou"] <= 1.0 and 0.0 <= row["idf1"] <= 1.0, who
    # the wall time of every part, in the recipe's order, for the card's time table
    assert list(summary["wall_s"]) == [
        "data",
        "teacher",
        "student-stage1",
        "student",
        "student-336",
        "tracker",
        "evaluation",
    ]
    assert all(seconds >= 0 for seconds in summary["wall_s"].values())
    assert sum(summary["wall_s"].values()) >= summary["train_wall_s"]
    scores_md = (work / "scores.md").read_text()
    assert "| student+memory |" in scores_md and "| tracker |" in scores_md
    assert "pooled by counts (MOTChallenge's combined scores), IDF1 / MOTA: teacher " in scores_md
    assert summary["student"]["tracking_counts"]["num_objects"] == summary["student"]["gt_instances"]
    assert "[recipe]" in run.stdout and "recipe done" in run.stdout
    assert (REPO / "models" / "demo" / "model.safetensors").stat().st_mtime_ns == shipped
