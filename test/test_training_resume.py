"""Resuming a training run: bit-exact for every stage, and refusing what cannot be resumed.

Tiny configs, a few steps each (each test well under 30 s on 2 CPU cores).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import zipfile
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from training_fixtures import CONFIGS, write_datasets

from efficientsam3_ros.training import trainer
from efficientsam3_ros.training.checkpointing import CheckpointError, list_checkpoints, load_checkpoint
from efficientsam3_ros.training.cli import main as cli_main
from efficientsam3_ros.training.config import ConfigError, config_from_dict, load_config
from efficientsam3_ros.training.trainer import cosine_with_warmup, train


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
    first_abandoned = (folder / "step-00000004.pt.abandoned").read_bytes()
    # a second rollback past step 4 keeps the first one's abandoned checkpoint
    train(
        _config("tiny_stage1_text", tmp_path, *common, "run.stop_at_step=3"),
        resume=str(folder / "step-00000002.pt"),
    )
    assert (folder / "step-00000004.pt.abandoned").read_bytes() == first_abandoned
    assert (folder / "step-00000004.pt.abandoned-2").is_file()


def test_tensorboard_curves_restart_at_the_resumed_step(datasets, tmp_path, one_thread):
    """Killed at step 3 after the checkpoint at 2: the resumed run logs step 3 again, and
    TensorBoard shows each step once (the killed run's step 3 is purged), as metrics.jsonl does."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is the train extra"
    )
    train(_stage3(datasets, tmp_path, "run.stop_at_step=3", "run.tensorboard=true"))
    train(_stage3(datasets, tmp_path, "run.tensorboard=true"), resume="auto")
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4], steps
    assert [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ] == steps


# ----------------------------------------------------------------------------- fresh starts
def _text(datasets, out, *overrides: str):
    common = [f"data.prompts={datasets['prompts']}", "run.log_every=1"]
    return _config("tiny_stage1_text", out, *common, *overrides)


def _logged_steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _must_not_build(config, ctx):
    raise AssertionError("the stage was built before the run folder was checked")


def test_a_fresh_start_in_a_folder_with_checkpoints_is_refused_before_anything_is_built(
    datasets, tmp_path, one_thread, monkeypatch, capsys
):
    """It was accepted: the new run's checkpoints went among the old ones, metrics.jsonl mixed the
    two, and a later --resume auto could continue the old run's newest checkpoint."""
    config = _text(datasets, tmp_path, "run.steps=2", "run.checkpoint_every=1")
    train(config)
    outputs = {name: (tmp_path / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    monkeypatch.setattr(trainer, "build_stage", _must_not_build)
    with pytest.raises(CheckpointError) as refused:
        train(config)
    message = str(refused.value)
    for part in (str(tmp_path), "step-00000002.pt", "--resume auto", "run.output_dir=", "--start-over"):
        assert part in message, (part, message)
    assert outputs == {name: (tmp_path / name).read_bytes() for name in outputs}
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]

    args = ["stage1-text", "--config", str(CONFIGS / "tiny_stage1_text.yaml"), f"run.output_dir={tmp_path}"]
    assert cli_main([*args, f"data.prompts={datasets['prompts']}"]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # starting over and resuming exclude each other
        cli_main([*args, "--resume", "auto", "--start-over"])
    assert usage.value.code == 2 and "not allowed with argument --resume" in capsys.readouterr().err


def test_a_fresh_start_is_refused_where_only_an_earlier_export_is_left(datasets, tmp_path, one_thread):
    """Checkpoints deleted to save space, the trained model kept: a fresh start would overwrite it."""
    import shutil

    config = _text(datasets, tmp_path, "run.steps=2", "run.checkpoint_every=1")
    exported = train(config).export_path
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="holds an earlier run") as refused:
        train(config)
    assert str(exported) in str(refused.value)
    train(config, start_over=True)
    assert (tmp_path / "abandoned" / "1" / "export" / exported.name).is_file()


def test_start_over_moves_the_earlier_run_aside_whole_and_trains_from_step_0(datasets, tmp_path, one_thread):
    config = _text(datasets, tmp_path, "run.steps=2", "run.checkpoint_every=1")
    first = train(config)
    again = train(config, start_over=True)
    assert again.resumed_from is None and again.step == 2
    assert again.losses() == first.losses()  # from scratch: nothing of the earlier run leaked in
    earlier = tmp_path / "abandoned" / "1"
    assert sorted(p.name for p in earlier.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "environment.json",
        "export",
        "metrics.jsonl",
    ]
    assert sorted(p.name for p in (earlier / "checkpoints").iterdir()) == [
        "step-00000001.pt",
        "step-00000002.pt",
    ]
    assert _logged_steps(earlier) == _logged_steps(tmp_path) == [1, 2]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]
    # a second start-over takes the next folder: the first one's files stay as they were
    kept = (earlier / "checkpoints" / "step-00000002.pt").read_bytes()
    assert cli_main(_cli_args(datasets, tmp_path, "run.steps=1", "--start-over")) == 0
    assert sorted(p.name for p in (tmp_path / "abandoned").iterdir()) == ["1", "2"]
    assert (earlier / "checkpoints" / "step-00000002.pt").read_bytes() == kept
    assert [s for s, _ in list_checkpoints(tmp_path / "abandoned" / "2")] == [1, 2]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1] and _logged_steps(tmp_path) == [1]


def _cli_args(datasets, out, *extra: str) -> list[str]:
    config = CONFIGS / "tiny_stage1_text.yaml"
    common = [f"data.prompts={datasets['prompts']}", f"run.output_dir={out}", "run.checkpoint_every=1"]
    return ["stage1-text", "--config", str(config), *common, *extra]


def test_a_start_at_step_0_drops_the_metrics_of_a_start_killed_before_its_first_checkpoint(
    datasets, tmp_path, one_thread
):
    """A requeued job (--resume auto) killed before its first checkpoint starts at step 0 again and
    logged every step a second time after the first attempt's."""
    common = ["run.steps=4", "run.checkpoint_every=4"]
    train(_text(datasets, tmp_path, *common, "run.stop_at_step=2"))
    assert not list_checkpoints(tmp_path) and _logged_steps(tmp_path) == [1, 2]
    restarted = train(_text(datasets, tmp_path, *common), resume="auto")
    assert restarted.resumed_from is None and _logged_steps(tmp_path) == [1, 2, 3, 4]


def _ddp_rank(rank: int, world: int, port: int, config_dict: dict) -> None:
    """One rank of a two-process job that starts fresh, then starts over, in one process group.

    Rank 1 does not see the run folder's checkpoints (as on a node the folder is not shared
    with) and leaves a mark if it sets a run aside; a refusal is written to
    ``refused-RANK-START_OVER`` rather than raised, so both ranks go on. The group's timeout
    turns ranks left waiting in mismatched collectives into a failure instead of a hang.
    """
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )  # one start-up for both runs
    if rank == 1:
        trainer.earlier_run_evidence = lambda output_dir: None
        trainer.set_aside_run = lambda output_dir: Path(output_dir, "set-aside-by-rank-1").touch()
    config = config_from_dict(config_dict)
    for start_over in (False, True):
        try:
            train(config, start_over=start_over)
        except CheckpointError as err:
            (Path(config.run.output_dir) / f"refused-{rank}-{start_over}").write_text(str(err))
    torch.distributed.destroy_process_group()


def test_two_ranks_refuse_a_fresh_start_together_and_start_over_moves_the_run_once(datasets, tmp_path):
    """Rank 0 alone refusing would leave rank 1 waiting in DDP's first collective; rank 1 moving
    files too would race rank 0 (or set the earlier run aside twice)."""
    config = _text(datasets, tmp_path, "run.steps=2", "run.checkpoint_every=1")
    train(config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(2, port, config.to_dict()), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob("refused-*")) == ["refused-0-False", "refused-1-False"]
    assert "the latest: " in (tmp_path / "refused-0-False").read_text()
    assert "seen by another rank" in (tmp_path / "refused-1-False").read_text()
    assert not (tmp_path / "set-aside-by-rank-1").exists()
    assert [p.name for p in (tmp_path / "abandoned").iterdir()] == ["1"]
    assert [s for s, _ in list_checkpoints(tmp_path / "abandoned" / "1")] == [1, 2]
    assert load_checkpoint(list_checkpoints(tmp_path)[-1][1])["world_size"] == 2


def _ddp_resume_rank(rank: int, world: int, port: int, config_dict: dict) -> None:
    """One rank of a two-process ``--resume auto`` where rank 1 sees no checkpoint (an unshared
    folder), then where rank 1 cannot read its checkpoint; each refusal is written, not raised."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    config = config_from_dict(config_dict)
    real_resolve, real_load = trainer.resolve_resume, trainer.load_checkpoint

    def unreadable(path, stage=None):
        raise CheckpointError(f"{path}: corrupt (rank 1's copy)")

    for case, resolve, load in (
        ("unshared", lambda resume, out: None, real_load),
        ("unreadable", real_resolve, unreadable),
    ):
        if rank == 1:
            trainer.resolve_resume, trainer.load_checkpoint = resolve, load
        try:
            train(config, resume="auto")
        except CheckpointError as err:
            (Path(config.run.output_dir) / f"refused-{case}-{rank}").write_text(str(err))
    torch.distributed.destroy_process_group()


def test_two_ranks_refuse_together_to_resume_from_different_steps(datasets, tmp_path):
    """Rank 0 resuming step 2 while rank 1 (its folder not shared) started at step 0 trained two
    different runs in one job; a rank that cannot read its checkpoint left the other waiting."""
    config = _text(datasets, tmp_path, "run.steps=4", "run.checkpoint_every=1", "run.stop_at_step=2")
    train(config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_resume_rank, args=(2, port, config.to_dict()), nprocs=2, join=True)
    refusals = {p.name: p.read_text() for p in tmp_path.glob("refused-*")}
    assert sorted(refusals) == [
        "refused-unreadable-0",
        "refused-unreadable-1",
        "refused-unshared-0",
        "refused-unshared-1",
    ]
    assert "rank 0: step 2 from" in refusals["refused-unshared-0"]
    assert "rank 1: no checkpoint" in refusals["refused-unshared-1"]
    assert "filesystem every node shares" in refusals["refused-unshared-0"]
    assert "another rank could not read its checkpoint" in refusals["refused-unreadable-0"]
    assert "rank 1's copy" in refusals["refused-unreadable-1"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2], "nothing trained"


# ----------------------------------------------------------------------------- config changes on request
def test_a_new_lr_on_resume_is_refused_unless_named_and_then_takes_effect_at_once(
    datasets, tmp_path, one_thread, caplog
):
    """Rolled back after a loss spike, continued at a lower lr: the optimizer's groups and the
    scheduler's base lrs come from the checkpoint, so without re-applying the config the resumed
    run stepped at the old lr while its next checkpoint recorded the new one."""
    common = ["run.steps=6", "run.checkpoint_every=2"]  # lr 3e-3, warm-up 2, min_lr_ratio 0.1
    train(_text(datasets, tmp_path, *common, "run.stop_at_step=2"))
    lower = _text(datasets, tmp_path, *common, "optim.lr=1e-3", "optim.weight_decay=0.05")
    with pytest.raises(CheckpointError) as refused:
        train(lower, resume="auto")
    message = str(refused.value)
    assert "\n  optim.lr: 0.003 -> 0.001" in message and "\n  optim.weight_decay: 0.01 -> 0.05" in message
    assert "add --allow-config-change optim.lr,optim.weight_decay" in message
    seeded = _text(datasets, tmp_path, *common, "optim.lr=1e-3", "run.seed=7")
    with pytest.raises(CheckpointError) as refused:  # only the named keys may change
        train(seeded, resume="auto", allow_config_change=["optim.lr"])
    assert "\n  run.seed: 0 -> 7" in str(refused.value) and "optim.lr:" not in str(refused.value)

    used: list[list[tuple[float, float]]] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: used.append([(g["lr"], g["weight_decay"]) for g in opt.param_groups])
    )
    try:
        with caplog.at_level("WARNING"):
            resumed = train(lower, resume="auto", allow_config_change=["optim.lr", "optim.weight_decay"])
    finally:
        hook.remove()
    assert resumed.step == 6
    expected = [1e-3 * cosine_with_warmup(step, 6, 2, 0.1) for step in range(2, 6)]
    assert [groups[0][0] for groups in used] == pytest.approx(expected, rel=1e-12)
    assert all(groups == [(groups[0][0], 0.05), (groups[0][0], 0.0)] for groups in used)
    assert "config change applied at step 2 (--allow-config-change): optim.lr: 0.003 -> 0.001" in caplog.text
    assert "optim.weight_decay: 0.01 -> 0.05" in caplog.text
    payload = load_checkpoint(list_checkpoints(tmp_path)[-1][1])
    assert payload["config"]["optim"]["lr"] == 1e-3 and payload["scheduler"]["base_lrs"] == [1e-3, 1e-3]
    assert [g["initial_lr"] for g in payload["optimizer"]["param_groups"]] == [1e-3, 1e-3]
    # the new value is the run's now: resuming again needs no flag
    assert train(lower, resume=str(tmp_path / "checkpoints" / "step-00000004.pt")).step == 6


def test_allow_config_change_takes_only_optimizer_settings_and_only_on_resume(datasets, tmp_path, capsys):
    config = _text(datasets, tmp_path)
    with pytest.raises(
        ConfigError, match=r"--allow-config-change model\.student: .*start a new run.*optim\.lr"
    ):
        train(config, resume="auto", allow_config_change=["model.student"])
    with pytest.raises(ConfigError, match=r"run\.steps: .*without asking"):
        train(config, resume="auto", allow_config_change=["run.steps"])
    with pytest.raises(ConfigError, match="applies to a resume"):
        train(config, allow_config_change=["optim.lr"])
    with pytest.raises(ConfigError, match="start over or resume, not both"):
        train(config, resume="auto", start_over=True)
    allow = ["--resume", "auto", "--allow-config-change", "optim.lr,data.root"]
    assert cli_main(_cli_args(datasets, tmp_path, *allow)) == 2
    assert "--allow-config-change data.root" in capsys.readouterr().err
    assert not tmp_path.joinpath("config.yaml").exists()
