"""The benchmarks still run against the current code (their numbers live in the README).

A benchmark that silently broke would leave stale numbers behind; this runs one at its
smallest setting and checks what it reports, never its timings.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(autouse=True)
def bench_on_path(monkeypatch):
    """The benches import their shared ``timing`` module as scripts do: from their own folder."""
    monkeypatch.syspath_prepend(str(BENCH))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_step_bench_groups_an_images_phrases(capsys, one_thread):
    bench = _load("training_step")
    assert bench.main(["--steps", "1", "--threads", "1", "--models", "demo-student"]) == 0
    out = capsys.readouterr().out
    per_batch = {}
    for line in out.splitlines():
        if "images per batch" in line:  # "  phrases_per_image 4:  160.0 ms/step (4.2 images per batch of 12)"
            group = int(line.split(":")[0].split()[-1])
            per_batch[group] = float(line.split("(")[1].split()[0])
    assert set(per_batch) == {1, 4}, out
    # grouped batches hold fewer distinct images: what makes the step cheaper
    assert per_batch[4] < per_batch[1] <= 12, out
    assert "faster than 1" in out


def test_training_step_bench_times_the_detr_levels_side_by_side(capsys, one_thread):
    bench = _load("training_step")
    assert bench.main(["--steps", "1", "--threads", "1", "--detr-levels"]) == 0
    out = capsys.readouterr().out
    timed = [line.split(":")[0].strip() for line in out.splitlines() if "ms/step" in line]
    assert timed == ["detr_level_scale 1.0", "detr_level_scale 2.0"], out
    assert "the 2x level's steps take" in out


@pytest.mark.parametrize(
    "flag, settings, summary",
    [
        ("--optimizer", ["for-loop", "foreach", "fused"], "faster than for-loop"),
        ("--amp", ["float32", "bf16"], "as long as float32"),
        ("--losses", ["whole step", "detector alone"], "matching and losses take"),
    ],
)
def test_training_step_bench_times_each_setting_side_by_side(capsys, one_thread, flag, settings, summary):
    bench = _load("training_step")
    assert bench.main(["--steps", "1", "--threads", "1", flag, "--models", "demo-teacher"]) == 0
    out = capsys.readouterr().out
    timed = [line.split(":")[0].strip() for line in out.splitlines() if "ms/step" in line]
    assert timed == settings, out
    assert summary in out


def test_tracker_training_step_bench_times_a_batchs_clips_together_and_one_at_a_time(capsys, one_thread):
    bench = _load("tracker_training_step")
    assert bench.main(["--steps", "1", "--threads", "1", "--clips", "2"]) == 0
    out = capsys.readouterr().out
    timed = [line.split(":")[0].strip() for line in out.splitlines() if "ms/step" in line]
    assert timed == ["together", "one at a time"], out
    assert "2 clips of 4 frames and up to 3 objects per step" in out  # the recipe's stage-2 batch
    assert "faster than one clip at a time" in out


def test_memory_format_bench_times_both_layouts_of_a_stage_and_of_inference(capsys, one_thread):
    bench = _load("memory_format")
    assert (
        bench.main(["--steps", "1", "--rounds", "1", "--threads", "1", "--only", "stage1-image", "inference"])
        == 0
    )
    rows = [
        line for line in capsys.readouterr().out.splitlines() if "channels-last" in line and "NCHW" in line
    ]
    labels = [line.split("NCHW")[0].strip() for line in rows]
    assert labels == [
        "stage 1, trunk distillation",
        "inference, demo-student image encoder",
        "inference, demo-student detector",
    ], rows
    for line in rows:  # "  what   NCHW  607.5 ms   channels-last  470.9 ms   1.29x"
        nchw, last = (
            float(part.split("ms")[0].split()[-1]) for part in line.split("NCHW")[1].split("channels-last")
        )
        assert nchw > 0 and last > 0
        assert float(line.split()[-1].rstrip("x")) == pytest.approx(nchw / last, abs=0.02), line


def test_encodings_bench_times_opencv_and_numpy_side_by_side(capsys):
    pytest.importorskip("cv2", reason="the bench compares OpenCV with the numpy fallback")
    bench = _load("encodings")
    assert bench.main(["--repeats", "1", "--sizes", "VGA"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("VGA")]
    assert [row[1] for row in rows] == list(bench.FAMILIES)
    for _, encoding, fast, slow, ratio in rows:  # "VGA    yuyv    0.07    2.06    31.3x"
        # parsed, not compared: a copy of rgb8 rounds to 0.00 ms, and one timed call can land on a busy core
        assert float(fast) >= 0 and float(slow) >= 0
        assert ratio == "-" if encoding == "rgb8" else float(ratio.rstrip("x")) >= 0


def test_tracking_bench_times_each_downsample_beside_the_exact_iou(capsys):
    bench = _load("tracking")
    argv = ["--size", "160x120", "--objects", "3", "--frames", "4", "--side", "10", "--downsample", "1", "4"]
    assert bench.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "4"]
    assert rows[0][2] == "1.00x"
    for _, ms, ratio, ids in rows:  # "4    9.50    2.34x    10"
        assert float(ms) > 0 and float(ratio.rstrip("x")) > 0
        assert int(ids) == 3  # one id per object, exact or downsampled


def test_frame_bench_times_each_setting_through_the_segmenter(capsys, one_thread):
    bench = _load("frame")
    argv = ["--model", "es-ev-tiny", "--sizes", "112", "--concepts", "1", "3", "--repeats", "1"]
    assert bench.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:3] == "112"]
    assert [(row[1], row[2]) for row in rows] == [("fp32", "1"), ("fp32", "3")]
    for _, _, _, published, ms, fps, ratio in rows:  # "112  fp32  3  3  18.9  53.0  1.00x"
        assert int(published) >= 1 and float(ms) > 0 and float(fps) > 0 and ratio == "1.00x"


def test_frame_bench_times_whole_frame_masks_against_windows(capsys, one_thread):
    from efficientsam3_ros.pipeline import preprocess, segmenter

    bench = _load("frame")
    argv = ["--model", "es-ev-tiny", "--sizes", "112", "--concepts", "2", "--repeats", "1"]
    assert bench.main([*argv, "--crop", "--whole-frame-masks"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:3] == "112"]
    assert len(rows) == 1 and len(rows[0]) == 9, rows  # + whole-frame ms and whole / windows
    assert float(rows[0][7]) > 0 and rows[0][8].endswith("x")
    assert segmenter.masks_to_image is preprocess.masks_to_image  # the bench put the windows back
    assert bench.main(["--world", "--frames", "2", "--repeats", "1", "--whole-frame-masks"]) == 0
    out = capsys.readouterr().out
    assert "demo model on a world video, 1280x720, 8 concepts" in out
    assert [line.split()[0] for line in out.splitlines()[2:4]] == ["windows", "whole"]
    assert "whole frame / windows:" in out
    assert segmenter.masks_to_image is preprocess.masks_to_image


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda path: path.stem)
def test_every_bench_imports_against_the_current_code(path):
    """The full-size benches (runtime.py, tracker.py) take minutes; importing them still catches a
    renamed function or a moved module, which is how a bench usually breaks."""
    bench = _load(path.stem)
    assert callable(getattr(bench, "main", None)) or path.stem == "timing"


def test_median_ms_times_each_repeat_after_the_warmup():
    timing = _load("timing")
    calls: list[int] = []
    ms = timing.median_ms(lambda: calls.append(len(calls)), repeats=5, warmup=2)
    assert len(calls) == 7
    assert 0 <= ms < 1e3


def test_data_loading_bench_times_both_readers_and_fills_the_cache(capsys, one_thread):
    bench = _load("data_loading")
    assert bench.main(["--images", "6", "--batches", "1", "--threads", "1", "--size", "56"]) == 0
    out = capsys.readouterr().out
    timed = [line.split(":")[0].strip() for line in out.splitlines() if "ms/batch" in line]
    assert timed == ["no cache", "cache_mb 1200"] * 2, out
    held = [int(line.split("(")[1].split()[0]) for line in out.splitlines() if "cache holds" in line]
    assert held == [6, 6], out  # the warm pass put every image in (no flips: one entry each)
    assert out.count("faster") == 2
