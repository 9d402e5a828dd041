"""Checkpoint I/O: our safetensors format, strict reporting, truncation and unsafe files refused early."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from efficientsam3_ros.modeling.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from efficientsam3_ros.modeling.checkpoint_files import (
    CheckpointError,
    check_safetensors,
    open_checkpoint,
    write_safetensors,
)
from efficientsam3_ros.modeling.convert_backbones import timm_to_features, tinyvit_rename
from efficientsam3_ros.modeling.convert_common import QKV, STRIP_CLS, TRANSPOSE
from efficientsam3_ros.modeling.registry import build_model


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_model("es-ev-tiny-mobileclip")


def test_save_and_load_roundtrip_with_config(tiny, tmp_path: Path) -> None:
    path = save_checkpoint(tiny, tmp_path / "m.safetensors")
    config = read_config(path)
    assert config is not None
    assert config.to_dict() == json.loads(json.dumps(tiny.config.to_dict()))  # tuples come back as lists
    assert json.loads((tmp_path / "m.json").read_text())["name"] == tiny.config.name
    other = build_model(config)
    report = load_checkpoint(other, path)
    assert report.format == "efficientsam3_ros" and report.plan.ok
    for key, value in tiny.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def _tensor_bytes(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's tensor entries (offsets, dtypes, shapes) and its data section."""
    header, length = check_safetensors(path)
    header.pop("__metadata__")
    return header, path.read_bytes()[8 + length :]


def test_set_point_rewrites_the_operating_point_and_nothing_else(tiny, tmp_path: Path, capsys) -> None:
    from efficientsam3_ros.cli import main

    src = save_checkpoint(tiny, tmp_path / "m.safetensors")
    dst = tmp_path / "tuned" / "m.safetensors"
    argv = ["models", "set-point", str(src), "--out", str(dst), "--score-threshold", "0.3"]
    assert main([*argv, "--new-track-threshold", "0.45", "--crop-masks-to-boxes"]) == 0
    assert "score_threshold       0.5 -> 0.3" in capsys.readouterr().out
    point = read_config(dst).operating_point
    assert (point.score_threshold, point.new_track_threshold, point.crop_masks_to_boxes) == (0.3, 0.45, True)
    assert point.mask_threshold == tiny.config.operating_point.mask_threshold  # not asked: kept
    assert json.loads((dst.parent / "m.json").read_text())["operating_point"]["score_threshold"] == 0.3
    assert _tensor_bytes(dst) == _tensor_bytes(src)  # the weights, byte for byte
    other = read_config(dst).to_dict()
    other["operating_point"] = read_config(src).to_dict()["operating_point"]
    assert other == read_config(src).to_dict()  # the rest of the config too
    # in place, atomically; the file stays loadable
    assert main(["models", "set-point", str(dst), "--out", str(dst), "--mask-threshold", "0.2"]) == 0
    assert read_config(dst).operating_point.mask_threshold == 0.2
    assert load_checkpoint(build_model(read_config(dst)), dst).plan.ok
    assert sorted(p.name for p in dst.parent.iterdir()) == ["m.json", "m.safetensors"]


def test_set_point_refuses_bad_values_and_files_without_a_config(tiny, tmp_path: Path, capsys) -> None:
    from efficientsam3_ros.cli import main

    src = save_checkpoint(tiny, tmp_path / "m.safetensors", sidecar=False)
    out = tmp_path / "out.safetensors"
    assert main(["models", "set-point", str(src), "--out", str(out)]) == 2
    assert "nothing to change" in capsys.readouterr().err
    assert main(["models", "set-point", str(src), "--out", str(out), "--score-threshold", "1.5"]) == 2
    assert "score_threshold must be in [0, 1]" in capsys.readouterr().err
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    assert main(["models", "set-point", str(bare), "--out", str(out), "--score-threshold", "0.3"]) == 2
    assert "carries no operating point: pass the thresholds at run time" in capsys.readouterr().err
    assert not out.exists()


def test_strict_load_names_missing_unexpected_and_misshaped(tiny, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    gone = "detector.text_projection.bias"
    del state[gone]
    state["detector.not_a_module.weight"] = torch.zeros(3)
    state["detector.text_projection.weight"] = torch.zeros(5, 5)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata={"format": "efficientsam3_ros"})
    model = build_model("es-ev-tiny-mobileclip")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, path)
    text = str(info.value)
    assert (
        gone in text and "detector.not_a_module.weight" in text and "detector.text_projection.weight" in text
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), (
        "strict failure must copy nothing"
    )
    report = load_checkpoint(model, path, strict=False)
    assert gone in report.plan.missing and "detector.not_a_module.weight" in report.plan.unexpected


def test_the_same_weights_always_write_the_same_bytes(tiny, tmp_path: Path) -> None:
    """safetensors orders the metadata by a hash map that changes from call to call (before
    write_safetensors, 6 saves of one model gave 3 different checksums), so a reproduced model
    could not be checked by its sha256."""
    paths = [save_checkpoint(tiny, tmp_path / f"m{i}.safetensors", sidecar=False) for i in range(6)]
    assert len({hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}) == 1
    report = load_checkpoint(build_model(read_config(paths[0])), paths[0], strict=True)
    assert report.format == "efficientsam3_ros" and report.plan.ok


def test_write_safetensors_sorts_the_metadata_and_keeps_the_file_valid(tmp_path: Path) -> None:
    tensors = {"weight": torch.arange(6.0).reshape(2, 3), "scale": torch.ones(3, dtype=torch.float16)}
    metadata = {key: f'{key} "quoted" é' for key in ("kind", "config", "format", "image_config", "a")}
    paths = [write_safetensors(tensors, tmp_path / f"t{i}.safetensors", metadata) for i in range(6)]
    assert len({path.read_bytes() for path in paths}) == 1
    raw = paths[0].read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert list(json.loads(raw[8 : 8 + length])["__metadata__"]) == sorted(metadata)
    open_checkpoint(paths[0], full_check=True)  # the header still accounts for every byte
    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == metadata
        for key, value in tensors.items():
            assert torch.equal(f.get_tensor(key), value), key


def test_truncated_safetensors_refused(tiny, tmp_path: Path) -> None:
    path = save_checkpoint(tiny, tmp_path / "m.safetensors", sidecar=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(path)


def test_truncated_torch_zip_refused(tmp_path: Path) -> None:
    path = tmp_path / "release.pt"
    torch.save({"model": {"detector.x": torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        open_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hostile file is pickled on purpose
def test_pickled_code_is_not_executed(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pt"
    torch.save(
        {"model": {"detector.x": torch.zeros(1)}, "payload": _Evil()},
        path,
        pickle_protocol=pickle.DEFAULT_PROTOCOL,
    )
    with pytest.raises(CheckpointError, match="weights_only"):
        open_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_transforms_are_the_documented_ones() -> None:
    x = torch.arange(24.0).reshape(6, 4)
    q, k, v = (t.apply(x) for t in QKV)
    assert torch.equal(torch.cat([q, k, v]), x) and q.shape == (2, 4)
    assert torch.equal(TRANSPOSE.apply(x), x.T) and TRANSPOSE.shape((6, 4)) == (4, 6)
    pos = torch.randn(1, 577, 8)
    assert torch.equal(STRIP_CLS.apply(pos), pos[:, 1:]) and STRIP_CLS.shape((1, 577, 8)) == (1, 576, 8)


def test_backbone_rename_rules() -> None:
    assert tinyvit_rename("layers.0.downsample.conv1.c.weight") == "stages.1.downsample.conv1.conv.weight"
    assert tinyvit_rename("patch_embed.seq.2.bn.bias") == "patch_embed.conv2.bn.bias"
    assert (
        timm_to_features("stem.in_conv.conv.weight", ["stem_in_conv", "stages_0"])
        == "stem_in_conv.conv.weight"
    )
    assert timm_to_features("head.fc.weight", ["stages_0"]) is None


def _rewrite_header(path: Path, edit) -> None:
    """Change a safetensors header in place, keeping its length (so the file size still adds up)."""
    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    assert len(new) <= length
    raw[8 : 8 + length] = new.ljust(length, b" ")
    path.write_bytes(bytes(raw))


def test_a_safetensors_header_that_disagrees_with_its_data_is_refused_up_front(tmp_path: Path) -> None:
    """A damaged header whose sizes still add up (a dtype flipped, an entry without offsets) passed
    the size check: `verify` said OK and the load died in safetensors without naming the file."""
    model = build_model("es-ev-tiny")
    path = save_checkpoint(model, tmp_path / "m.safetensors", sidecar=False)
    key = next(k for k, v in model.state_dict().items() if v.dtype == torch.float32 and v.numel() > 1)

    def half(header: dict) -> None:
        header[key]["dtype"] = "F16"  # the same bytes now claim half the data

    _rewrite_header(path, half)
    with pytest.raises(CheckpointError, match=f"{path}.*{key}"):
        open_checkpoint(path)
    path = save_checkpoint(model, tmp_path / "n.safetensors", sidecar=False)
    _rewrite_header(path, lambda header: header[key].pop("data_offsets"))
    with pytest.raises(CheckpointError, match=str(path)):
        open_checkpoint(path)


def test_a_tensor_of_the_wrong_kind_of_dtype_is_named(tmp_path: Path) -> None:
    """Integers in a float parameter (or floats in an integer buffer) were cast silently; half
    precision for a float32 parameter is a normal checkpoint and still loads."""
    model = build_model("es-ev-tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.dtype == torch.float32 and v.numel() > 1)
    counter = next(k for k, v in state.items() if k.endswith("num_batches_tracked"))
    state[key] = torch.ones_like(state[key], dtype=torch.int32)
    state[counter] = state[counter].float()
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={"format": "efficientsam3_ros"})
    with pytest.raises(CheckpointMismatchError, match="dtype") as info:
        load_checkpoint(build_model("es-ev-tiny"), bad)
    assert key in str(info.value) and counter in str(info.value)
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(half, str(tmp_path / "half.safetensors"), metadata={"format": "efficientsam3_ros"})
    assert load_checkpoint(build_model("es-ev-tiny"), tmp_path / "half.safetensors").plan.ok
