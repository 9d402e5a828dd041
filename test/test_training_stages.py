"""The four training stages on tiny models: loss drops, kill-and-resume, DDP, cache, export, CLI.

Margins (stated per test, measured values in /work/notes/training.md): the mean of the
last 10 of 50 steps must be below a fraction of the mean of the first 10.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import (
    CONFIGS,
    drop_ratio,
    fill_tiny_feature_cache,
    write_datasets,
    write_tracker_checkpoint,
)

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.training.checkpointing import CheckpointError, list_checkpoints, load_checkpoint
from efficientsam3_ros.training.cli import main as cli_main
from efficientsam3_ros.training.config import load_config
from efficientsam3_ros.training.distributed import DistContext
from efficientsam3_ros.training.export import load_weights
from efficientsam3_ros.training.trainer import build_stage, optimizer_flags, train


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("training-data"))


@pytest.fixture(scope="module")
def tracker_checkpoint(tmp_path_factory):
    return write_tracker_checkpoint(tmp_path_factory.mktemp("tracker") / "tracker.safetensors")


def _config(name: str, tmp_path, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", [f"run.output_dir={tmp_path / 'run'}", *overrides])


# ----------------------------------------------------------------------------- loss drops
def test_stage1_image_loss_drops(datasets, tmp_path, one_thread):
    result = train(_config("tiny_stage1_image", tmp_path, f"data.root={datasets['sa1b']}"))
    assert result.step == 50 and len(result.losses()) == 50
    assert drop_ratio(result.losses()) < 0.7  # measured ~0.56
    export = result.export_path
    assert export is not None and export.is_file()
    # the export loads into a fresh student (safetensors + config.json) and gives the trained features
    meta = json.loads(export.with_suffix(".json").read_text())
    assert meta["name"] == "es-ev-tiny"
    from efficientsam3_ros.modeling.checkpoint import read_config

    assert read_config(export).name == "es-ev-tiny"
    model = build_model("es-ev-tiny")
    assert load_weights(model, export, strict=True) == []
    state = load_file(str(export))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_stage1_image_prompt_in_the_loop_with_feature_cache(
    datasets, tracker_checkpoint, tmp_path, one_thread
):
    cache = tmp_path / "cache"
    config = _config(
        "tiny_stage1_image_prompt",
        tmp_path,
        f"data.root={datasets['sa1b']}",
        f"options.feature_cache={cache}",
        f"model.tracker_checkpoint={tracker_checkpoint}",
    )
    result = train(config)
    assert drop_ratio(result.losses()) < 0.8  # measured ~0.66
    masks = [h["mask_bce"] for h in result.history]
    assert drop_ratio(masks) < 0.8  # the student/teacher mask KL itself falls (measured ~0.5)
    index = json.loads((cache / "index.json").read_text())
    assert index["num_samples"] == 8 and len(index["shards"]) == 2 and index["grid"] == 8
    # the cached feature is the teacher's, in fp16
    torch.manual_seed(0)  # the trainer builds the teacher first, right after seeding with run.seed
    teacher = build_model("sam3-tiny")
    from efficientsam3_ros.training.data import SA1BDataset
    from efficientsam3_ros.training.feature_cache import FeatureCache

    sample = SA1BDataset(datasets["sa1b"], 112)[0]
    with torch.no_grad():
        expected = teacher.trunk_features(sample["pixels"][None])[0]
    cached = FeatureCache(cache)[sample["key"]]
    assert cached.dtype == torch.float16
    assert torch.allclose(cached.float(), expected, atol=1e-2, rtol=1e-2)


def test_stage1_text_loss_drops(datasets, tmp_path, one_thread):
    result = train(_config("tiny_stage1_text", tmp_path, f"data.prompts={datasets['prompts']}"))
    assert drop_ratio(result.losses()) < 0.3  # measured ~0.06
    model = build_model("es-ev-tiny-mobileclip")
    assert load_weights(model, result.export_path, strict=True) == []


def test_stage2_loss_drops(datasets, tracker_checkpoint, tmp_path, one_thread):
    config = _config(
        "tiny_stage2",
        tmp_path,
        f"data.root={datasets['sav']}",
        f"model.tracker_checkpoint={tracker_checkpoint}",
    )
    result = train(config)
    assert drop_ratio(result.losses()) < 0.7  # measured ~0.49
    meta = json.loads(result.export_path.with_suffix(".json").read_text())
    assert meta["kind"] == "tracker" and meta["config"]["memory"] == "perceiver"
    state = load_file(str(result.export_path))
    assert any(k.startswith("memory_codec.resampler.") for k in state)


def test_stage3_loss_drops(datasets, tmp_path, one_thread):
    config = _config("tiny_stage3", tmp_path, f"data.root={datasets['saco']}")
    result = train(config)
    assert drop_ratio(result.losses()) < 0.75  # measured ~0.58
    env = json.loads((Path(config.run.output_dir) / "environment.json").read_text())["starts"]
    assert len(env) == 1 and torch.__version__.startswith(env[0]["packages"]["torch"])  # 2.14.1(+cu130)
    assert env[0]["torch_threads"] == 1 and env[0]["world_size"] == 1
    keys = set(result.history[-1])
    assert {"class", "bbox", "giou", "mask_dice", "mask_focal", "presence", "distill", "aux"} <= keys
    assert all(row["aux"] > 0 for row in result.history)  # the earlier decoder layers are trained too


def test_a_resume_in_another_environment_is_recorded_and_warned(tmp_path, caplog, monkeypatch):
    from efficientsam3_ros.training import environment
    from efficientsam3_ros.training.distributed import DistContext

    ctx = DistContext()
    environment.record_environment(tmp_path, ctx, resumed=False)
    with caplog.at_level("WARNING"):
        environment.record_environment(tmp_path, ctx, resumed=True)  # the same machine and packages: quiet
    assert not caplog.records
    real = environment._version
    monkeypatch.setattr(environment, "_version", lambda name: "99.0" if name == "timm" else real(name))
    with caplog.at_level("WARNING"):
        environment.record_environment(tmp_path, ctx, resumed=True)
    assert "timm" in caplog.text and "-> 99.0" in caplog.text and "not be bit-identical" in caplog.text
    starts = json.loads((tmp_path / "environment.json").read_text())["starts"]
    assert [s["packages"]["timm"] for s in starts] == [real("timm"), real("timm"), "99.0"]
    caplog.clear()
    with caplog.at_level("WARNING"):  # a fresh run in the same folder starts its own record
        environment.record_environment(tmp_path, ctx, resumed=False)
    assert not caplog.records
    assert len(json.loads((tmp_path / "environment.json").read_text())["starts"]) == 1


def test_decoder_tap_reads_every_layer_and_its_last_is_the_output():
    from efficientsam3_ros.training.stage3 import DecoderTap, run_detector

    torch.manual_seed(0)
    model = build_model("es-ev-tiny")
    layers = model.config.detector["detr_decoder"]["num_layers"]
    tap = DecoderTap(model)
    out = run_detector(model, torch.randn(2, 3, 112, 112), ["red circle", "blue square"])
    logits, boxes, presence = tap.layers()
    tap.close()
    assert (
        logits.shape == (layers, 2, 16)
        and boxes.shape == (layers, 2, 16, 4)
        and presence.shape == (layers, 2)
    )
    torch.testing.assert_close(logits[-1], out.pred_logits)
    torch.testing.assert_close(boxes[-1], out.pred_boxes)
    torch.testing.assert_close(presence[-1], out.presence_logits[:, 0])
    assert not (logits[0] - logits[-1]).abs().max() < 1e-6  # the earlier layers are really earlier layers
    assert not model.detector.detr_decoder._forward_hooks  # closed: later forwards run unobserved


def test_aux_weight_zero_trains_the_last_layer_only(datasets, tmp_path, one_thread):
    config = _config(
        "tiny_stage3", tmp_path, f"data.root={datasets['saco']}", "run.steps=2", "options.aux_weight=0"
    )
    result = train(config)
    assert all(row["aux"] == 0 for row in result.history)


def test_stage3_with_phrases_grouped_per_image_trains(datasets, tmp_path, one_thread, monkeypatch):
    from efficientsam3_ros.training.stage3 import ConceptModule

    seen = []
    original = ConceptModule.forward

    def counting(self, batch, generator):
        seen.append((len(batch), len({s["key"] for s in batch})))
        return original(self, batch, generator)

    monkeypatch.setattr(ConceptModule, "forward", counting)

    config = _config(
        "tiny_stage3",
        tmp_path,
        f"data.root={datasets['saco']}",
        "data.limit=null",
        "run.steps=3",
        "run.batch_size=4",
        "data.phrases_per_image=4",
    )
    result = train(config)
    assert result.step == 3 and all(math.isfinite(x) for x in result.losses())
    assert all(n == 4 for n, _ in seen) and any(images < 4 for _, images in seen)


@pytest.mark.parametrize("at_input", [False, True])
def test_stage3_mask_losses_at_the_head_or_at_the_input_size(
    datasets, tmp_path, one_thread, monkeypatch, at_input
):
    from efficientsam3_ros.training import stage3

    shapes = []
    original = stage3.dice_loss

    def recording(logits, targets, **kwargs):
        shapes.append((tuple(logits.shape[-2:]), tuple(targets.shape[-2:])))
        return original(logits, targets, **kwargs)

    monkeypatch.setattr(stage3, "dice_loss", recording)
    config = _config(
        "tiny_stage3",
        tmp_path,
        f"data.root={datasets['saco']}",
        "run.steps=2",
        f"options.mask_loss_at_input={str(at_input).lower()}",
    )
    result = train(config)
    assert result.step == 2 and all(math.isfinite(x) for x in result.losses())
    model_config = build_model(config.model.student).config
    size = config.model.input_size or model_config.image_size
    head = 4 * size // model_config.patch_size  # the mask head's 4g x 4g (g: the patch grid side)
    expected = (size, size) if at_input else (head, head)
    assert shapes and all(pred == truth == expected for pred, truth in shapes)


def test_stage3_freeze_patterns_choose_what_trains(datasets, tmp_path, one_thread):
    config = _config(
        "tiny_stage3",
        tmp_path,
        f"data.root={datasets['saco']}",
        "run.steps=2",
        "options.distill_weight=0",
        "options.train=['detector.detr_decoder.*']",
        "options.freeze=['*.bias']",
        "model.init_from_teacher=false",
    )
    torch.manual_seed(0)  # what the trainer does before building the student (no teacher needed here)
    before = build_model("es-ev-tiny")
    result = train(config)
    after = load_file(str(result.export_path))
    changed = {k for k, v in before.state_dict().items() if k in after and not torch.equal(v, after[k])}
    assert changed and all(
        k.startswith("detector.detr_decoder.") and not k.endswith(".bias") for k in changed
    )


def test_feature_cache_resumes_and_refuses_a_stale_cache(datasets, tmp_path, one_thread):
    from efficientsam3_ros.training.distributed import DistContext
    from efficientsam3_ros.training.feature_cache import CacheError, fill_cache

    folder = tmp_path / "cache"
    ds, keys, teacher, kwargs = fill_tiny_feature_cache(datasets["sa1b"], folder)
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 3
    kept = shards[0].stat().st_mtime_ns
    shards[1].unlink()  # a fill killed before its second shard: no shard 1, no index
    (folder / "index.json").unlink()
    shards[2].write_bytes(b"half")  # and a broken shard
    fill_cache(folder, ds, keys, teacher, DistContext(), **kwargs)
    assert shards[0].stat().st_mtime_ns == kept and shards[1].is_file() and shards[2].stat().st_size > 4
    with pytest.raises(CacheError, match="another teacher"):
        fill_cache(folder, ds, keys, teacher, DistContext(), **{**kwargs, "teacher_name": "sam3"})


# ----------------------------------------------------------------------------- resume
def test_kill_and_resume_matches_uninterrupted_run(datasets, tracker_checkpoint, tmp_path, one_thread):
    """Stopped at step 5 (last checkpoint at 3, as if killed), resumed to 8 == a straight run to 8."""
    common = [
        f"data.root={datasets['sa1b']}",
        "options.feature_cache=null",
        f"model.tracker_checkpoint={tracker_checkpoint}",
        "data.hflip=0.5",  # augmentation randomness must replay too
        "run.steps=8",
        "run.checkpoint_every=3",
        "run.batch_size=2",
    ]
    straight = train(_config("tiny_stage1_image_prompt", tmp_path / "a", *common))
    killed = _config("tiny_stage1_image_prompt", tmp_path / "b", *common, "run.stop_at_step=5")
    first = train(killed)
    assert first.stopped_early and first.step == 5 and first.export_path is None
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [3]
    (tmp_path / "b" / "run" / "checkpoints" / "step-00000004.pt.tmp.123").write_bytes(b"half-written")
    resumed = train(_config("tiny_stage1_image_prompt", tmp_path / "b", *common), resume="auto")
    assert resumed.resumed_from.name == "step-00000003.pt" and resumed.step == 8
    a, b = load_file(str(straight.export_path)), load_file(str(resumed.export_path))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in straight.history[3:]] == [h["loss"] for h in resumed.history]
    ckpt_a = load_checkpoint(tmp_path / "a" / "run" / "checkpoints" / "step-00000008.pt")
    ckpt_b = load_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "step-00000008.pt")
    assert ckpt_a["scheduler"]["last_epoch"] == ckpt_b["scheduler"]["last_epoch"] == 8


def test_optimizer_implementation_auto_is_fused_on_cpu_and_cuda_else_foreach():
    assert optimizer_flags("auto", torch.device("cpu")) == {"fused": True, "foreach": False}
    assert optimizer_flags("auto", torch.device("cuda", 0)) == {"fused": True, "foreach": False}
    assert optimizer_flags("auto", torch.device("mps")) == {"fused": False, "foreach": True}
    assert optimizer_flags("for-loop", torch.device("cpu")) == {"fused": False, "foreach": False}


def test_optimizer_implementations_are_the_same_update_and_a_resume_takes_the_configs(
    datasets, tmp_path, one_thread
):
    """for-loop and fused AdamW train the same (to float rounding); a run resumed under another
    ``optim.implementation`` steps with the new one, not the one its checkpoint's groups carry."""
    common = [f"data.prompts={datasets['prompts']}", "run.steps=6", "run.checkpoint_every=1"]
    loop = train(_config("tiny_stage1_text", tmp_path / "loop", *common, "optim.implementation=for-loop"))
    fused = train(_config("tiny_stage1_text", tmp_path / "fused", *common, "optim.implementation=fused"))
    assert loop.losses() == pytest.approx(fused.losses(), rel=1e-4)  # other kernels, same maths
    a, b = load_file(str(loop.export_path)), load_file(str(fused.export_path))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    groups = load_checkpoint(list_checkpoints(tmp_path / "fused" / "run")[-1][1])["optimizer"]["param_groups"]
    assert all(g["fused"] and not g["foreach"] for g in groups)

    train(
        _config(
            "tiny_stage1_text", tmp_path / "b", *common, "optim.implementation=for-loop", "run.stop_at_step=3"
        )
    )
    resumed = train(
        _config("tiny_stage1_text", tmp_path / "b", *common, "optim.implementation=fused"), resume="auto"
    )
    assert resumed.step == 6
    groups = load_checkpoint(list_checkpoints(tmp_path / "b" / "run")[-1][1])["optimizer"]["param_groups"]
    assert all(g["fused"] and not g["foreach"] for g in groups)
    assert [h["loss"] for h in resumed.history] == pytest.approx(loop.losses()[3:], rel=1e-4)


def test_a_channels_last_step_has_the_gradients_of_an_nchw_one(datasets, tmp_path, one_thread):
    """The layout changes where numbers sit, not the maths: every gradient agrees to float rounding.

    Three BatchNorm biases of the tiny trunk have a gradient that is zero in exact arithmetic
    (|g| ~ 1e-8, rounding noise, different in each layout); Adam scales such noise up to
    lr-sized steps, so whole runs in the two layouts part after a few steps (0.5 % in the loss
    by step 6) as any two summation orders do. Those are left out here.
    """
    config = _config(
        "tiny_stage1_image", tmp_path, f"data.root={datasets['sa1b']}", "options.feature_cache=null"
    )
    torch.manual_seed(0)
    stage = build_stage(config, DistContext())
    nchw = stage.module.train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    batch = stage.collate([stage.dataset[i] for i in range(4)])
    for module in (nchw, nhwc):
        loss, _ = module(batch, torch.Generator().manual_seed(1))
        loss.backward()
    compared = 0
    for (name, a), b in zip(nchw.named_parameters(), nhwc.parameters(), strict=True):
        if a.grad is None or a.grad.abs().max() < 1e-6:
            continue
        assert b.grad.is_contiguous(memory_format=torch.channels_last) or a.dim() != 4, name
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-4 * float(a.grad.abs().max()), msg=name)
        compared += 1
    assert compared >= 60  # of the 69 trunk tensors that get a gradient


def test_a_resume_lays_the_optimizer_state_out_like_the_weights(datasets, tmp_path, one_thread):
    """An NCHW checkpoint (every one written before run.memory_format) resumed in a channels-last
    run steps as the NCHW run does. torch's fused CPU AdamW walks the moments in the weights'
    element order, so NCHW moments beside channels-last weights would update each weight with
    another one's moments, silently: measured without the re-layout, the losses of steps 5 and 6
    were 0.7 % and 1.4 % off, against 2e-6 and 5e-6 with it (rounding, from the new layout)."""
    common = [
        f"data.root={datasets['sa1b']}",
        "options.feature_cache=null",
        "run.steps=6",
        "run.checkpoint_every=1",
        "optim.implementation=fused",
    ]
    straight = train(_config("tiny_stage1_image", tmp_path / "a", *common, "run.memory_format=contiguous"))
    before = [*common, "run.memory_format=contiguous", "run.stop_at_step=3"]
    train(_config("tiny_stage1_image", tmp_path / "b", *before))
    resumed = train(
        _config("tiny_stage1_image", tmp_path / "b", *common, "run.memory_format=channels_last"),
        resume="auto",
    )
    assert resumed.step == 6
    assert [h["loss"] for h in resumed.history] == pytest.approx(straight.losses()[3:], rel=1e-4)
    payload = load_checkpoint(list_checkpoints(tmp_path / "b" / "run")[-1][1])
    weights = [v for v in payload["model"].values() if v.dim() == 4]
    moments = [s["exp_avg"] for s in payload["optimizer"]["state"].values() if s["exp_avg"].dim() == 4]
    assert weights and moments
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in weights + moments)


def test_the_frozen_models_a_step_reads_follow_the_modules_layout(datasets, tmp_path):
    """Teachers and a tracker's image model sit in a tuple (out of state_dict, DDP, the optimizer);
    the trainer's ``.to(memory_format=...)`` must still reach them, or they run NCHW."""
    config = _config(
        "tiny_stage1_image", tmp_path, f"data.root={datasets['sa1b']}", "options.feature_cache=null"
    )
    module = build_stage(config, DistContext()).module.to(memory_format=torch.channels_last)
    teacher_convs = [p for p in module.teacher.parameters() if p.dim() == 4]
    assert teacher_convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in teacher_convs)
    assert not any(k.startswith("_frozen") or "teacher" in k for k in module.state_dict())


@pytest.mark.parametrize("stage", ["tiny_stage3", "tiny_stage1_text", "tiny_stage2"])
def test_the_trainers_move_reaches_every_frozen_model(stage, datasets, tracker_checkpoint, tmp_path):
    """These stages leave their teachers (and stage 2's image model) where they were built and rely
    on the trainer's ``module.to(device)`` to move them. A dtype move takes the same path
    (``nn.Module._apply``) and runs without a GPU."""
    data = {
        "tiny_stage3": [f"data.root={datasets['saco']}"],
        "tiny_stage1_text": [f"data.prompts={datasets['prompts']}"],
        "tiny_stage2": [f"data.root={datasets['sav']}", f"model.tracker_checkpoint={tracker_checkpoint}"],
    }[stage]
    module = build_stage(_config(stage, tmp_path, *data), DistContext()).module
    frozen = [model for model in module._frozen if model is not None]
    assert frozen, "each of these stages reads a frozen model"
    module.to(torch.float64)
    for model in frozen:
        assert {p.dtype for p in model.parameters()} == {torch.float64}, type(model).__name__


def test_corrupt_checkpoint_is_refused(datasets, tmp_path, one_thread):
    config = _config("tiny_stage1_text", tmp_path, f"data.prompts={datasets['prompts']}", "run.steps=2")
    config.run.checkpoint_every = 1
    train(config)
    newest = list_checkpoints(tmp_path / "run")[-1][1]
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        train(config, resume="auto")
    with pytest.raises(CheckpointError, match="stage"):
        load_checkpoint(list_checkpoints(tmp_path / "run")[0][1], stage="stage3")


# ----------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config_dict: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from efficientsam3_ros.training.config import config_from_dict

    train(config_from_dict(config_dict))


def _train_on_two_processes(config) -> None:
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), config.to_dict()), nprocs=2, join=True)


def test_two_process_ddp_on_cpu_writes_one_checkpoint(datasets, tmp_path):
    cache = tmp_path / "cache"
    config = _config(
        "tiny_stage1_image",
        tmp_path,
        f"data.root={datasets['sa1b']}",
        f"options.feature_cache={cache}",
        "options.cache_shard_size=2",
        "run.steps=3",
        "run.batch_size=2",
    )
    _train_on_two_processes(config)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [3]
    payload = load_checkpoint(list_checkpoints(tmp_path / "run")[0][1], stage="stage1-image")
    assert payload["world_size"] == 2
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    index = json.loads((cache / "index.json").read_text())
    assert len(index["shards"]) == 4 and sum(len(v) for v in index["shards"].values()) == 8
    assert not list(cache.glob("*.tmp.*"))


def _ddp_stage_config(stage: str, data: list[str], tmp_path, *overrides: str):
    return _config(stage, tmp_path, *data, "run.steps=2", "run.checkpoint_every=1", *overrides)


@pytest.mark.parametrize("stage", ["tiny_stage1_text", "tiny_stage2", "tiny_stage3"])
def test_every_stage_trains_under_ddp_with_its_defaults(stage, datasets, tracker_checkpoint, tmp_path):
    """Stage 3 never reaches some of the detector, stage 1 text would not reach MobileCLIP's pooled
    projection: each runs two steps on two processes without a DDP setting of its own."""
    data = {
        "tiny_stage1_text": [f"data.prompts={datasets['prompts']}"],
        "tiny_stage2": [f"data.root={datasets['sav']}", f"model.tracker_checkpoint={tracker_checkpoint}"],
        "tiny_stage3": [f"data.root={datasets['saco']}"],
    }[stage]
    config = _ddp_stage_config(stage, data, tmp_path)
    assert config.run.find_unused_parameters is None  # the stage decides
    _train_on_two_processes(config)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")][-1] == 2
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_ddp_without_unused_parameter_search_fails_on_stage3(datasets, tmp_path):
    """What the stage's default prevents: the error a torchrun of stage 3 used to end in."""
    config = _ddp_stage_config(
        "tiny_stage3", [f"data.root={datasets['saco']}"], tmp_path, "run.find_unused_parameters=false"
    )
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="not used in producing loss"):
        _train_on_two_processes(config)


# ----------------------------------------------------------------------------- CLI
def test_cli_runs_and_reports_bad_keys(datasets, tmp_path, capsys, one_thread):
    config = CONFIGS / "tiny_stage1_text.yaml"
    out = tmp_path / "run"
    args = [
        "stage1-text",
        "--config",
        str(config),
        f"data.prompts={datasets['prompts']}",
        f"run.output_dir={out}",
    ]
    assert cli_main([*args, "run.steps=2"]) == 0
    assert "exported" in capsys.readouterr().out
    assert cli_main([*args, "optim.lr_warmup=3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr_warmup" in err and "warmup_steps" in err
    assert cli_main(["stage3", "--config", str(config)]) == 2
    assert "stage1-text" in capsys.readouterr().err


def test_stage2_on_ground_truth_trains_a_whole_tracker_that_the_pipeline_loads(
    datasets, tmp_path, one_thread
):
    """target: gt + train ["*"] (the demo recipe's stage 2): no dense teacher, every tracker part learns,
    and the export loads through ConceptSegmenter's memory_checkpoint with its own sizes."""
    from efficientsam3_ros.modeling.checkpoint_files import CheckpointError as FileError
    from efficientsam3_ros.modeling.tracker_checkpoint import load_tracker
    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter
    from efficientsam3_ros.training.stage2 import MemoryDistillStage

    config = _config(
        "tiny_stage2", tmp_path, f"data.root={datasets['sav']}", "options.target=gt", 'options.train=["*"]'
    )
    result = train(config)
    assert drop_ratio(result.losses()) < 0.8
    # the export comes with its propagation scores: does the tracker follow its own objects?
    scores = json.loads((result.export_path.parent / "propagation.json").read_text())
    assert scores["clips"] >= 1 and scores["track_frames"] >= 1
    assert all(0.0 <= scores[k] <= 1.0 for k in ("own_dice", "other_dice", "own_wins", "copy_dice"))
    assert scores["follows_its_object"] == (scores["own_dice"] > scores["other_dice"])
    from efficientsam3_ros.training.distributed import DistContext

    stage = MemoryDistillStage(config, DistContext())
    assert stage.module._frozen[0] is None, "no dense teacher is built for target: gt"
    trained = load_file(str(result.export_path))
    assert any(k.startswith("sam.mask_decoder.") for k in trained) and any(
        k.startswith("tracker_neck.") for k in trained
    )
    seg = ConceptSegmenter.from_name(
        "es-ev-tiny", backend="torch-cpu", memory="perceiver", memory_checkpoint=str(result.export_path)
    )
    for key, value in seg.memory.state_dict().items():
        assert torch.equal(value, trained[key]), key
    with pytest.raises(FileError, match="'perceiver'-memory tracker, not 'dense'"):
        load_tracker(result.export_path, seg.model.config, memory="dense")
    other = build_model("demo-student").config
    with pytest.raises(FileError, match="is a tracker for es-ev-tiny"):
        load_tracker(result.export_path, other)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="teacher-target"),
        pytest.param(
            [
                "options.target=gt",
                'options.train=["*"]',
                "options.tracker={prompt_previous_mask: true}",
                "options.condition_weight=1.0",
            ],
            id="demo-recipe",
        ),
    ],
)
def test_stage2_runs_a_batchs_clips_together_as_if_one_at_a_time(
    overrides, datasets, tracker_checkpoint, tmp_path, one_thread
):
    """Stage 2 sends all clips of a batch through the tracker together (one call per frame index);
    the loss, each loss term and every gradient must be what the clips give one at a time,
    weighted by their propagated frames."""
    from efficientsam3_ros.training.distributed import DistContext
    from efficientsam3_ros.training.stage2 import MemoryDistillStage

    config = _config(
        "tiny_stage2",
        tmp_path,
        f"data.root={datasets['sav']}",
        f"model.tracker_checkpoint={tracker_checkpoint}",
        *overrides,
    )
    stage = MemoryDistillStage(config, DistContext())
    module = stage.module.eval()  # no dropout: both ways must see the same network
    clips = [stage.dataset[(i, 0)] for i in range(3)]
    # clips of a batch may differ in their numbers of objects and frames: the second keeps only its
    # first object, the third only its first two frames
    clips[1] = {**clips[1], "masks": clips[1]["masks"][:, :1], "visible": clips[1]["visible"][:, :1]}
    clips[2] = {key: clips[2][key][:2] for key in ("pixels", "masks", "visible")}
    assert len({c["masks"].shape[1] for c in clips}) > 1 and len({len(c["pixels"]) for c in clips}) > 1
    params = [p for p in module.parameters() if p.requires_grad]

    def run(batch):
        module.zero_grad(set_to_none=True)
        loss, terms = module(stage.collate(batch), torch.Generator().manual_seed(0))
        loss.backward()
        return (
            loss.detach(),
            terms,
            [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params],
        )

    together = run(clips)
    alone = [run([clip]) for clip in clips]
    frames = [clip["pixels"].shape[0] - 1 for clip in clips]
    weights = [n / sum(frames) for n in frames]
    torch.testing.assert_close(
        together[0], sum(w * a[0] for w, a in zip(weights, alone)), atol=1e-5, rtol=1e-4
    )
    for key, value in together[1].items():
        expected = sum(w * a[1][key] for w, a in zip(weights, alone))
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-6), key
    moved = 0
    for i, grad in enumerate(together[2]):
        expected = sum(w * a[2][i] for w, a in zip(weights, alone))
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-3)
        moved += bool(grad.abs().sum() > 0)
    assert moved > len(params) // 2, "most trainable tensors should get a gradient"


def test_stage2_trains_a_tracker_that_prompts_with_its_previous_mask(datasets, tmp_path, one_thread):
    """options.tracker reaches the tracker being trained, and its export carries it to the pipeline."""
    from efficientsam3_ros.modeling.tracker_checkpoint import load_tracker

    config = _config(
        "tiny_stage2",
        tmp_path,
        f"data.root={datasets['sav']}",
        "options.target=gt",
        'options.train=["*"]',
        "options.tracker={prompt_previous_mask: true}",
    )
    result = train(config)
    assert drop_ratio(result.losses()) < 0.8
    meta = json.loads(result.export_path.with_suffix(".json").read_text())
    assert meta["config"]["prompt_previous_mask"] is True
    tracker = load_tracker(result.export_path, build_model("es-ev-tiny").config)
    assert tracker.config.prompt_previous_mask and tracker.step_graph.prompt_previous_mask


def test_stage3_encodes_each_distinct_image_once_with_the_same_outputs():
    from efficientsam3_ros.training.stage3 import distinct_images, run_detector

    torch.manual_seed(0)
    model = build_model("es-ev-tiny").eval()
    a, b = torch.randn(3, 112, 112), torch.randn(3, 112, 112)
    batch = [
        {"key": "a.jpg", "pixels": a, "phrase": "red circle"},
        {"key": "b.jpg", "pixels": b, "phrase": "red circle"},
        {"key": "a.jpg", "pixels": a.clone(), "phrase": "blue square"},
        {"key": "a.jpg", "pixels": a.flip(-1), "phrase": "green star"},  # flipped: an image of its own
    ]
    images, index = distinct_images(batch)
    assert images.shape[0] == 3 and index.tolist() == [0, 1, 0, 2]
    phrases = [s["phrase"] for s in batch]
    calls = []
    hook = model.image_trunk.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    with torch.no_grad():
        shared = run_detector(model, images, phrases, index)
        hook.remove()
        repeated = run_detector(model, torch.stack([s["pixels"] for s in batch]), phrases)
    assert calls == [3]  # three images through the trunk for four datapoints
    torch.testing.assert_close(shared.pred_logits, repeated.pred_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shared.pred_masks, repeated.pred_masks, rtol=1e-4, atol=1e-4)


def test_a_trackers_random_start_depends_on_the_run_seed_only(tmp_path):
    """Image-model flags draw different amounts of randomness while the student is built; the
    tracker that stage 2 trains from scratch must not change with them (nor with anything else
    drawn before it), only with ``run.seed``."""
    from efficientsam3_ros.training.models import build_tracker

    config = _config("tiny_stage2", tmp_path)
    image_model = build_model("es-ev-tiny")
    first = build_tracker(image_model, "perceiver", config).state_dict()
    torch.rand(1000)  # what building a bigger image model would have drawn
    again = build_tracker(image_model, "perceiver", config).state_dict()
    config.run.seed += 1
    other = build_tracker(image_model, "perceiver", config).state_dict()
    random_start = [k for k, v in first.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0]
    assert random_start
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in random_start)


# ----------------------------------------------------------------------------- review fixes
def test_a_date_style_seed_trains(datasets, tmp_path, one_thread):
    """run.seed=20240101 made the per-step seed ~8e19, past what torch.manual_seed takes."""
    from efficientsam3_ros.training.trainer import _step_seed

    config = _config(
        "tiny_stage1_text",
        tmp_path,
        f"data.prompts={datasets['prompts']}",
        "run.seed=20240101",
        "run.steps=1",
    )
    assert train(config).step == 1
    assert 0 <= _step_seed(2**32 - 1, 10**9, 1023, 64) < 2**63
    assert _step_seed(0, 5, 1, 2) == ((0 * 1_000_003 + 5) * 1_009 + 2) * 4_099 + 1  # small seeds unchanged


def test_the_feature_cache_refuses_other_teacher_weights_and_another_data_root(
    datasets, tmp_path, one_thread
):
    """The fingerprint holds the teacher's weights (sha256 of its checkpoint) and the resolved data
    root: a cache filled from one checkpoint was silently reused after the checkpoint changed."""
    from efficientsam3_ros.modeling.checkpoint import save_checkpoint
    from efficientsam3_ros.training.data import SA1BDataset
    from efficientsam3_ros.training.feature_cache import CacheError, fill_cache, weights_identity

    teachers = {}
    for name, seed in (("a", 123), ("b", 456)):
        torch.manual_seed(seed)
        teachers[name] = save_checkpoint(build_model("sam3-tiny"), tmp_path / f"teacher_{name}.safetensors")
    cache = tmp_path / "cache"

    def prepare(teacher_file):
        config = _config(
            "tiny_stage1_image",
            tmp_path,
            f"data.root={datasets['sa1b']}",
            f"options.feature_cache={cache}",
            f"model.teacher_checkpoint={teacher_file}",
        )
        build_stage(config, DistContext()).prepare()

    prepare(teachers["a"])
    prepare(teachers["a"])  # the same teacher file: the cache is reused
    with pytest.raises(CacheError, match=r"another teacher.*teacher_weights 'sha256:[0-9a-f]+' -> 'sha256:"):
        prepare(teachers["b"])
    assert weights_identity(None, 7) == "random (run.seed 7)"

    teacher = build_model("sam3-tiny")
    ds = SA1BDataset(datasets["sa1b"], 112)
    keys = [ds.key(i) for i in range(len(ds))]
    kwargs = {"teacher_name": "sam3-tiny", "input_size": 112, "resize": "stretch", "teacher_weights": "w"}
    folder = tmp_path / "cache2"
    fill_cache(folder, ds, keys, teacher, DistContext(), data_root="/data/one", **kwargs)
    with pytest.raises(CacheError, match="data_root '/data/one' -> '/data/two'"):
        fill_cache(folder, ds, keys, teacher, DistContext(), data_root="/data/two", **kwargs)


def test_only_the_cuda_rng_states_of_visible_gpus_are_restored():
    """A checkpoint written with 4 GPUs visible resumes on a machine with fewer."""
    from efficientsam3_ros.training.checkpointing import cuda_states_to_restore

    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]
    assert [int(s[0]) for s in cuda_states_to_restore(states, 1)] == [0]
    assert [int(s[0]) for s in cuda_states_to_restore(states, 4)] == [0, 1, 2, 3]
    assert [int(s[0]) for s in cuda_states_to_restore(states, 8)] == [0, 1, 2, 3]
    assert cuda_states_to_restore([], 2) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rng_states_saved_with_more_gpus_than_visible_restore():
    from efficientsam3_ros.training.checkpointing import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    saved = state["cuda"][0].clone()
    state["cuda"] = [*state["cuda"], saved.clone()]  # as if written on a node with one more GPU
    torch.cuda.manual_seed_all(1234)
    restore_rng_state(state)  # raised IndexError in set_rng_state_all
    assert torch.equal(torch.cuda.get_rng_state(0), saved)


def test_a_resume_drops_the_metrics_logged_after_its_checkpoint(datasets, tmp_path, one_thread):
    """Killed at step 5 with the last checkpoint at 4: step 5 was logged, is run again on resume,
    and must be in metrics.jsonl once (the resumed run's entry)."""
    common = [
        f"data.prompts={datasets['prompts']}",
        "run.steps=6",
        "run.checkpoint_every=2",
        "run.log_every=1",
    ]
    train(_config("tiny_stage1_text", tmp_path, *common, "run.stop_at_step=5"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write('{"step": 6, "loss": 0.')  # and a line the kill cut short
    resumed = train(_config("tiny_stage1_text", tmp_path, *common), resume="auto")
    assert resumed.resumed_from.name == "step-00000004.pt"
    entries = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [e["step"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[4]["loss"] == resumed.history[0]["loss"]


def test_environment_json_is_replaced_whole(tmp_path, monkeypatch):
    """Written like the checkpoints (temp file, fsync, rename): a kill mid-write leaves the old file."""
    from efficientsam3_ros.training import checkpointing
    from efficientsam3_ros.training.environment import record_environment

    path = tmp_path / "environment.json"
    record_environment(tmp_path, DistContext(), resumed=False)
    before = path.read_text()
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        seen.append(Path(dst).read_text())  # what a reader sees until the rename: the whole old file
        real_replace(src, dst)

    monkeypatch.setattr(checkpointing.os, "replace", replace)
    record_environment(tmp_path, DistContext(), resumed=True)
    assert seen == [before]
    assert len(json.loads(path.read_text())["starts"]) == 2


def test_stage2_trains_with_the_trackers_dropout_and_keeps_frozen_heads_in_eval(
    datasets, tracker_checkpoint, tmp_path, one_thread
):
    """Dropout modules own no parameters: they follow the part they sit in, so the memory attention's
    dropout applies while it trains, and the frozen SAM heads stay in eval mode."""
    from efficientsam3_ros.training.distributed import DistContext
    from efficientsam3_ros.training.stage2 import MemoryDistillStage

    config = _config(
        "tiny_stage2",
        tmp_path,
        f"data.root={datasets['sav']}",
        f"model.tracker_checkpoint={tracker_checkpoint}",
    )
    stage = MemoryDistillStage(config, DistContext())
    student = stage.module.train().student
    dropouts = {
        n: m.training for n, m in student.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0
    }
    in_memory = {n: t for n, t in dropouts.items() if n.startswith("sam.memory_attention.")}
    assert in_memory and all(in_memory.values()), dropouts
    frozen = [
        n
        for n, m in student.named_modules()
        if list(m.parameters()) and not any(p.requires_grad for p in m.parameters())
    ]
    assert frozen and not any(student.get_submodule(n).training for n in frozen)
    assert all(not training for n, training in dropouts.items() if any(n.startswith(f + ".") for f in frozen))
    batch = stage.collate([stage.dataset[(0, 0)]])
    losses = []
    for seed in (1, 2):  # dropout draws from torch's global generator
        torch.manual_seed(seed)
        losses.append(float(stage.module(batch, torch.Generator().manual_seed(0))[0].detach()))
    assert losses[0] != losses[1]
    assert not stage.module.eval().student.training
