"""Resuming a training run: bit-exact for every stage, and refusing what cannot be resumed.

Tiny configs, a few steps each (each test well under 30 s on 2 CPU cores).
"""

from __future__ import annotations

import zipfile

import pytest
import torch
from training_fixtures import CONFIGS, write_datasets

from efficientsam3_ros.training.checkpointing import CheckpointError, list_checkpoints, load_checkpoint
from efficientsam3_ros.training.config import load_config
from efficientsam3_ros.training.trainer import train


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("training-data"))


def _config(name: str, out, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", [f"run.output_dir={out}", *overrides])


def _stage3(datasets, out, *overrides: str):
    common = [f"data.root={datasets['saco']}", "run.steps=4", "run.checkpoint_every=2", "run.log_every=1"]
    return _config("tiny_stage3", out, *common, *overrides)


def test_stage3_kill_and_resume_matches_uninterrupted_run(datasets, tmp_path, one_thread):
    """Stopped at step 3 (last checkpoint at 2), resumed to 4 == a straight run to 4.

    The first step after a (re)start used to differ: the DataLoader's iterator was created
    lazily inside that step, drawing its base seed from the just re-seeded global RNG.
    """
    straight = train(_stage3(datasets, tmp_path / "a", "data.hflip=0.5"))
    first = train(_stage3(datasets, tmp_path / "b", "data.hflip=0.5", "run.stop_at_step=3"))
    assert first.stopped_early and first.step == 3
    assert first.losses() == straight.losses()[:3]
    resumed = train(_stage3(datasets, tmp_path / "b", "data.hflip=0.5"), resume="auto")
    assert resumed.resumed_from.name == "step-00000002.pt" and resumed.step == 4
    assert resumed.losses() == straight.losses()[2:]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000004.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000004.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flip_bytes_in_largest_member(path) -> str:
    """Flip bytes inside the largest zip member (as bit rot would): same length, zip still opens."""
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 16, start + info.file_size - 16, 512):
        raw[i] ^= 0x7F
    path.write_bytes(bytes(raw))
    return info.filename


def test_a_checkpoint_with_flipped_bytes_is_refused(datasets, tmp_path, one_thread):
    config = _config(
        "tiny_stage1_text",
        tmp_path,
        f"data.prompts={datasets['prompts']}",
        "run.steps=2",
        "run.checkpoint_every=1",
    )
    train(config)
    newest = list_checkpoints(tmp_path)[-1][1]
    member = _flip_bytes_in_largest_member(newest)
    with pytest.raises(CheckpointError, match=f"{member} fails its CRC check.*delete it to resume"):
        load_checkpoint(newest)
    with pytest.raises(CheckpointError, match="step-00000002.pt is corrupt"):
        train(config, resume="auto")


def test_a_resume_with_another_model_or_trainable_set_is_refused(datasets, tmp_path, one_thread):
    train(
        _stage3(
            datasets, tmp_path, "options.train=['detector.detr_decoder.layers.0.*']", "run.stop_at_step=2"
        )
    )
    checkpoint = tmp_path / "checkpoints" / "step-00000002.pt"
    # the same shapes: the optimizer state would load onto other parameters without complaint
    with pytest.raises(
        CheckpointError, match=r"options\.train: \['detector\.detr_decoder\.layers\.0\.\*'\] -> "
    ):
        train(
            _stage3(datasets, tmp_path, "options.train=['detector.detr_decoder.layers.1.*']"), resume="auto"
        )
    other_model = [
        "options.train=['detector.detr_decoder.layers.0.*']",
        "model.student=es-rv-tiny",
    ]
    with pytest.raises(CheckpointError, match="model.student: 'es-ev-tiny' -> 'es-rv-tiny'") as refused:
        train(_stage3(datasets, tmp_path, *other_model), resume="auto")
    assert "start a new run" in str(refused.value) and str(checkpoint) in str(refused.value)
    # a checkpoint that records neither (older code): the state loads are checked too
    payload = load_checkpoint(checkpoint)
    del payload["config"], payload["trainable"]
    torch.save(payload, checkpoint)
    with pytest.raises(CheckpointError, match="weights do not fit this run's model"):
        train(_stage3(datasets, tmp_path, *other_model), resume="auto")
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        train(_stage3(datasets, tmp_path, "options.train=['detector.detr_decoder.*']"), resume="auto")


def test_a_resume_with_a_changed_config_is_refused_unless_the_change_is_safe(datasets, tmp_path, one_thread):
    common = [f"data.prompts={datasets['prompts']}", "run.steps=4", "run.checkpoint_every=2"]
    train(_config("tiny_stage1_text", tmp_path, *common, "run.stop_at_step=2"))
    saved_config = (tmp_path / "config.yaml").read_text()
    changed = [
        "optim.lr=0.1",
        "optim.weight_decay=0.5",
        "optim.betas=[0.8,0.99]",
        "run.seed=7",
        "run.batch_size=1",
    ]
    with pytest.raises(CheckpointError) as refused:
        train(_config("tiny_stage1_text", tmp_path, *common, *changed), resume="auto")
    message = str(refused.value)
    for line in (
        "optim.lr: 0.003 -> 0.1",
        "optim.weight_decay: 0.01 -> 0.5",
        "optim.betas: [0.9, 0.999] -> [0.8, 0.99]",
        "run.seed: 0 -> 7",
        "run.batch_size: 8 -> 1",
    ):
        assert f"\n  {line}" in message, (line, message)
    assert "resume with its original config" in message and "start a new run" in message
    assert (tmp_path / "config.yaml").read_text() == saved_config  # not overwritten by the refused run
    # observation, storage and the step count may change
    safe = ["run.steps=5", "run.log_every=1", "run.keep_checkpoints=1", "optim.implementation=for-loop"]
    resumed = train(_config("tiny_stage1_text", tmp_path, *common, *safe), resume="auto")
    assert resumed.step == 5 and resumed.resumed_from.name == "step-00000002.pt"


def test_a_save_removes_the_temp_files_of_killed_checkpoint_writes(datasets, tmp_path, one_thread):
    common = [f"data.prompts={datasets['prompts']}", "run.steps=4", "run.checkpoint_every=2"]
    train(_config("tiny_stage1_text", tmp_path, *common, "run.stop_at_step=2"))
    folder = tmp_path / "checkpoints"
    killed = folder / "step-00000004.pt.tmp.999999999"  # a write that SIGKILL cut short
    killed.write_bytes(b"PK" + b"x" * 1000)
    other = folder / "notes.tmp.999999999"  # not a checkpoint temp file: left alone
    other.write_bytes(b"")
    train(_config("tiny_stage1_text", tmp_path, *common), resume="auto")
    assert not killed.exists() and other.exists()
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.tmp.999999999",
        "step-00000002.pt",
        "step-00000004.pt",
    ]


def test_a_rollback_abandons_the_later_checkpoints_so_resume_auto_cannot_pick_them(
    datasets, tmp_path, one_thread, caplog
):
    common = [
        f"data.prompts={datasets['prompts']}",
        "run.steps=8",
        "run.checkpoint_every=2",
        "run.keep_checkpoints=0",
    ]
    train(_config("tiny_stage1_text", tmp_path, *common, "run.stop_at_step=6"))
    folder = tmp_path / "checkpoints"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 6]
    with caplog.at_level("WARNING"):  # roll back to step 2, killed at step 3 before another checkpoint
        train(
            _config("tiny_stage1_text", tmp_path, *common, "run.stop_at_step=3"),
            resume=str(folder / "step-00000002.pt"),
        )
    assert "renamed 2 later checkpoint(s) of the abandoned run to *.abandoned" in caplog.text
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert (folder / "step-00000004.pt.abandoned").is_file() and (
        folder / "step-00000006.pt.abandoned"
    ).is_file()
    resumed = train(_config("tiny_stage1_text", tmp_path, *common, "run.stop_at_step=4"), resume="auto")
    assert resumed.resumed_from.name == "step-00000002.pt"
