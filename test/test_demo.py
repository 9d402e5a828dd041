"""``efficientsam3 demo`` end to end on a shortened sequence."""

from __future__ import annotations

import json

from PIL import Image

from efficientsam3_ros.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[demo] summary" in printed and "mean IoU" in printed
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["frames"]["processed"] == 4
    assert report["scores"]["frames_evaluated"] == 4  # ground truth was paired with every frame
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == 4
    assert (out / "eval" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_demo_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "world").mkdir(parents=True)
    assert main(["demo", "--out", str(out), "--frames", "4", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
