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
        width, height = gif.size
    with Image.open(out / "overlay.png") as still:  # 2 x 2 frames
        assert still.size == (2 * width, 2 * height)
    assert "all concepts" in printed  # the overall row (IoU over every GT instance)
    assert (out / "eval" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_demo_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "world").mkdir(parents=True)
    assert main(["demo", "--out", str(out), "--frames", "4", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_contact_sheet_picks_evenly_spaced_frames_first_and_last():
    from efficientsam3_ros.commands.demo import contact_sheet

    frames = [Image.new("RGB", (4, 3), (i, 0, 0)) for i in range(10)]
    sheet = contact_sheet(frames, tiles=4, columns=2)
    assert sheet.size == (8, 6)
    picked = [sheet.getpixel((x, y))[0] for y in (0, 3) for x in (0, 4)]
    assert picked == [0, 3, 6, 9]
    assert contact_sheet(frames[:1], tiles=4).size == (4, 3)


def test_demo_with_the_memory_tracker(tmp_path, capsys):
    """--memory perceiver runs the shipped stage-2 tracker; another model must name its own tracker."""
    from efficientsam3_ros.commands.demo import demo_dir

    out = tmp_path / "demo"
    if (demo_dir() / "tracker.safetensors").is_file():
        assert (
            main(["demo", "--out", str(out), "--frames", "3", "--no-progress", "--memory", "perceiver"]) == 0
        )
        report = json.loads((out / "eval" / "report.json").read_text())
        assert report["run"]["memory"] == "perceiver"
        assert report["run"]["memory_checkpoint"].endswith("tracker.safetensors")
        assert "track memory         perceiver" in capsys.readouterr().out
    args = ["demo", "--out", str(tmp_path / "x"), "--model", "es-ev-tiny", "--memory", "perceiver"]
    assert main(args) == 2
    assert "--memory-checkpoint" in capsys.readouterr().err
