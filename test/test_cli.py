"""The ``efficientsam3`` command: models, segment, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from efficientsam3_ros.cli import SUBCOMMANDS, build_parser, main
from efficientsam3_ros.pipeline import rle_to_mask


@pytest.fixture
def image_file(tmp_path, rgb_image):
    path = tmp_path / "frame.png"
    Image.fromarray(rgb_image).save(path)
    return path


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for name, _, _ in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: efficientsam3" in capsys.readouterr().out


def test_help_and_world_do_not_import_torch():
    """``main`` imports only the named subcommand's module: help and the world writer stay fast."""
    probe = (
        "import sys\n"
        "from efficientsam3_ros.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    for argv in (["--help"], ["world", "--help"]):
        out = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True
        ).stdout
        assert "usage: efficientsam3" in out
        assert "TORCH False" in out, argv
    # a subcommand that runs a model still gets its arguments
    out = subprocess.run(
        [sys.executable, "-c", probe, "eval-bag", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--gt" in out


def test_models_lists_students_teacher_and_tiny(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ["sam3", "es-rv-s", "es-tv-l", "es-ev-m", "es-ev-tiny", "sam3-tiny"]:
        assert f"\n{name} " in out
    architecture_rows = out.split("architecture", 1)[1].splitlines()
    row = next(line for line in architecture_rows if line.startswith("es-ev-s "))
    assert row.split()[3] == "0.68"  # backbone params (M), the paper's EfficientViT-B0 count


def test_segment_writes_overlay_and_json(tmp_path, image_file, capsys):
    out = tmp_path / "out" / "overlay.png"
    argv = [
        "segment",
        str(image_file),
        "--concept",
        "red mug",
        "--concept",
        "person",
        "--model",
        "es-ev-tiny",
        "--out",
        str(out),
        "--score-threshold",
        "0.0",
    ]
    assert main(argv) == 0
    overlay = np.asarray(Image.open(out))
    assert overlay.shape == (90, 130, 3)
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["concepts"] == {"0": "red mug", "1": "person"}
    assert len(payload["instances"]) == 32
    first = payload["instances"][0]
    assert set(first) == {"concept_id", "concept", "score", "box_xyxy", "mask_rle"}
    assert rle_to_mask(first["mask_rle"]).shape == (90, 130)
    # a lower mask threshold reads larger masks from the same queries
    low = tmp_path / "low" / "overlay.png"
    assert main([*argv[:-4], "--out", str(low), "--score-threshold", "0.0", "--mask-threshold", "0.05"]) == 0
    grown = json.loads(low.with_suffix(".json").read_text())["instances"]
    area = lambda instances: sum(int(rle_to_mask(i["mask_rle"]).sum()) for i in instances)  # noqa: E731
    assert len(grown) == 32 and area(grown) > area(payload["instances"])


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--concept", "mug", "--model", "es-ev-tiny"], "does not exist"),
        (["--concept", "   ", "--model", "es-ev-tiny"], "empty concept"),
        (["--concept", "mug", "--model", "no-such-model"], "unknown model"),
        (
            ["--concept", "mug", "--model", "no-such-model", "--mask-threshold", "0"],
            "--mask-threshold is a mask",
        ),
    ],
)
def test_segment_refuses_bad_input(tmp_path, image_file, capsys, argv_tail, message):
    image = tmp_path / "missing.png" if message == "does not exist" else image_file
    code = main(["segment", str(image), *argv_tail, "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1


def test_segment_refuses_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    code = main(
        ["segment", str(bad), "--concept", "mug", "--model", "es-ev-tiny", "--out", str(tmp_path / "o.png")]
    )
    assert code == 2 and "cannot read image" in capsys.readouterr().err


def _one_error_line(capsys, code: int) -> str:
    """The command's stderr, checked to be one error line (no traceback) after exit code 2."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def blank_safetensors(tmp_path):
    """A readable safetensors file with no model config beside it (and one tensor of no model's)."""
    from safetensors.torch import save_file

    path = tmp_path / "blank.safetensors"
    save_file({"a": torch.zeros(1)}, path)
    return path


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ('{"name": "y", "family": "sam3", "bogus": 1}', r"unknown model config keys \['bogus'\]"),
        ("{not json", "Expecting property name"),
    ],
    ids=["unknown-key", "invalid-json"],
)
def test_models_verify_names_a_bad_sidecar_in_one_line(blank_safetensors, capsys, sidecar, message):
    blank_safetensors.with_suffix(".json").write_text(sidecar)
    err = _one_error_line(capsys, main(["models", "verify", str(blank_safetensors)]))
    assert "blank.json" in err and re.search(message, err) and "--model" in err


def test_models_verify_refuses_an_unknown_model_name_in_one_line(blank_safetensors, capsys):
    err = _one_error_line(capsys, main(["models", "verify", str(blank_safetensors), "--model", "nope"]))
    assert "unknown model 'nope'" in err and "sam3-litetext-s0" in err and "es-ev-tiny" in err


def test_models_verify_takes_a_zoo_only_name(tmp_path, blank_safetensors, capsys):
    """sam3-litetext-s0 is a zoo name, not a registry one: its architecture is the directory's config.json."""
    from efficientsam3_ros.modeling import build_model

    build_model("sam3-tiny").detector.save_pretrained(tmp_path / "hf")
    assert main(["models", "verify", str(tmp_path / "hf"), "--model", "sam3-litetext-s0"]) == 0
    assert "architecture sam3-litetext-s0" in capsys.readouterr().out
    argv = ["models", "verify", str(blank_safetensors), "--model", "sam3-litetext-s0"]
    assert "verify its directory" in _one_error_line(capsys, main(argv))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
        (["--device", "cuda:99"], "CUDA device"),  # none on a CPU machine, too few on a GPU one
        (["--out", "photo"], "--out photo has no image extension; use e.g. photo.png"),
        (["--out", "photo.txt"], "Pillow writes no image format as .txt"),
        (["--out", "photo.json"], "the JSON is written beside the overlay"),
        (["--score-threshold", "2"], r"--score-threshold must be in \[0, 1\]"),
        (["--score-threshold", "-5"], r"--score-threshold must be in \[0, 1\]"),
    ],
    ids=" ".join,
)
def test_segment_refuses_a_bad_flag_before_the_model_loads(
    tmp_path, image_file, capsys, monkeypatch, flags, message
):
    """Each of these loaded the model first, then ended in a traceback or a silently wrong answer."""
    from efficientsam3_ros.pipeline import ConceptSegmenter

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(ConceptSegmenter, "from_name", no_model)
    monkeypatch.chdir(tmp_path)
    argv = ["segment", str(image_file), "--concept", "mug", "--model", "es-ev-tiny", "--out", "o.png", *flags]
    err = _one_error_line(capsys, main(argv))
    assert re.search(message, err), err
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob("photo*"))
