"""The training loop every stage shares: DDP, AMP, accumulation, clipping, schedule, logs, checkpoints.

A stage supplies a ``StageRunner``: the trainable ``module`` (an ``nn.Module`` whose
forward takes a batch and a ``torch.Generator`` and returns ``(loss, logs)``; teachers
live outside it so they are neither DDP-synchronised nor checkpointed), the dataset,
an optional ``prepare`` (the stage-1 feature cache) and ``export``. The loop counts
optimizer steps; randomness is a function of (seed, step, rank) -- the global torch
RNG is re-seeded per step and the sampler derives per-sample seeds -- so a run resumed
from a checkpoint reproduces the uninterrupted run exactly, on any number of loader
workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..modeling import get_config
from ..modeling.memory_format import resolve_memory_format
from .checkpointing import (
    CheckpointError,
    abandon_checkpoints_after,
    atomic_write_text,
    earlier_run_evidence,
    fresh_start_refusal,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
    set_aside_run,
)
from .config import ConfigError, TrainConfig, config_from_dict
from .data import ResumableBatchSampler, collate_list
from .distributed import DistContext, init_distributed
from .environment import record_environment

log = logging.getLogger(__name__)


class StageRunner(ABC):
    """What a stage gives the loop. Build models in ``__init__`` (same seed on every rank)."""

    module: nn.Module
    dataset: Dataset
    # Whether a step can leave trainable parameters without a gradient. DDP must then look for
    # them after each backward (find_unused_parameters), or its next step fails on the missing
    # reductions. It costs a walk of the autograd graph per step, so stages that reach every
    # trainable parameter on every step say False.
    leaves_parameters_unused: bool = False
    # Whether a step runs images through convolutions (a student's trunk, the neck, the pixel
    # decoder): then ``run.memory_format: auto`` lays a student's stage out channels-last on the
    # CPU, which was measured faster there (modeling.memory_format). A stage that does not says False.
    convolves_images: bool = True

    def __init__(self, config: TrainConfig, ctx: DistContext):
        self.config = config
        self.ctx = ctx

    def collate(self, batch: list[dict[str, Any]]) -> Any:
        return collate_list(batch)

    def prepare(self) -> None:
        """Work before the first step (all ranks call it), e.g. filling the teacher feature cache."""
        return None

    @abstractmethod
    def export(self, path: Path) -> Path:
        """Write the final safetensors export (rank 0 only)."""


def set_trainable(module: nn.Module, train: list[str], freeze: list[str] | None = None) -> list[str]:
    """requires_grad = name matches a ``train`` pattern and no ``freeze`` pattern (fnmatch); returns trainable names."""
    trainable = []
    for name, param in module.named_parameters():
        on = any(fnmatch(name, p) for p in train) and not any(fnmatch(name, p) for p in freeze or [])
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    return trainable


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _lay_out_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Each parameter's optimizer state (AdamW's moments) in the parameter's memory layout.

    Why: a checkpoint keeps the layout its run had, and resuming it under another
    ``run.memory_format`` (an NCHW checkpoint into a channels-last run) would pair channels-last
    weights with NCHW moments. The for-loop and foreach updates cope, but the fused CPU kernel
    walks all of them in the weight's element order and silently updates each weight with
    another element's moments (torch 2.14; test_a_resume_lays_the_optimizer_state_out_like_the_weights).
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


#: AdamW's per-group settings a run's config gives (besides the lr, which the scheduler sets).
_GROUP_SETTINGS = ("weight_decay", "betas", "fused", "foreach")


def _group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's _GROUP_SETTINGS, as this run's config made them (taken before a load)."""
    return [{key: group[key] for key in _GROUP_SETTINGS} for group in optimizer.param_groups]


def _step_with_own_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    settings: list[dict[str, Any]],
    base_lrs: list[float],
    schedule: Callable[[int], float],
) -> None:
    """After a checkpoint is loaded: step with this run's hyperparameters, not the checkpoint's.

    Why: ``optimizer.load_state_dict`` restores the param groups of the run that wrote the
    checkpoint (lr, initial_lr, weight decay, betas, kernel flags) and ``scheduler.load_state_dict``
    its base lrs, so a value changed on resume (``--allow-config-change optim.lr``,
    ``optim.implementation``) went unused while the next checkpoint recorded it. Each group's lr is
    recomputed from the schedule at the resumed step, so a new lr, warm-up, ``min_lr_ratio`` or
    ``run.steps`` holds from the first resumed step. With an unchanged config every value written
    here equals the loaded one, bit for bit: a resume still repeats the uninterrupted run.
    """
    step = scheduler.last_epoch
    for group, own, base in zip(optimizer.param_groups, settings, base_lrs, strict=True):
        group.update(own, initial_lr=base, lr=base * schedule(step))
    scheduler.base_lrs = list(base_lrs)


def _amp(mode: str, device: torch.device) -> tuple[bool, torch.dtype | None]:
    """(enabled, dtype). ``auto``: bf16 where the GPU supports it, else fp16; off on CPU."""
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return False, None
    if mode == "auto":
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return True, torch.bfloat16 if mode == "bf16" else torch.float16


def optimizer_flags(implementation: str, device: torch.device) -> dict[str, bool]:
    """AdamW's ``fused`` / ``foreach`` keywords for ``optim.implementation``.

    Why not torch's default: on CPU it is the per-tensor for-loop, a dozen small kernels for each
    of hundreds of small tensors; the fused kernel does the same update in one pass (demo-student
    stage-3 steps 1.15x faster on 2 cores, bench/training_step.py --optimizer). ``auto`` takes the
    fused kernel on the devices torch ships it for here (CPU, CUDA), the multi-tensor path elsewhere.
    """
    if implementation == "auto":
        implementation = "fused" if device.type in ("cpu", "cuda") else "foreach"
    return {
        "fused": {"fused": True, "foreach": False},
        "foreach": {"fused": False, "foreach": True},
        "for-loop": {"fused": False, "foreach": False},
    }[implementation]


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm scales (1-D tensors), as usual for ViTs/DETRs."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step_seed(seed: int, step: int, rank: int, micro: int = 0) -> int:
    """One seed per (seed, step, rank, micro-batch), within what ``torch.manual_seed`` accepts.

    Why the modulo: the mix grows as seed * 4e12, so a date-style ``run.seed`` (20240101) gave
    8e19, past torch's 64-bit limit ("Overflow when unpacking long long"). Seeds whose mix
    stays below 2**63 (every seed below ~2.2 million) keep the values they always had.
    """
    return (((seed * 1_000_003 + step) * 1_009 + micro) * 4_099 + rank) % 2**63


@dataclass
class TrainResult:
    """What a run leaves behind (rank 0 fills ``history`` with every step's logs)."""

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    export_path: Path | None = None
    resumed_from: Path | None = None
    stopped_early: bool = False

    def losses(self) -> list[float]:
        return [h["loss"] for h in self.history]


def build_stage(config: TrainConfig, ctx: DistContext) -> StageRunner:
    from .stage1_image import ImageDistillStage
    from .stage1_text import TextDistillStage
    from .stage2 import MemoryDistillStage
    from .stage3 import ConceptFinetuneStage

    classes = {
        "stage1-image": ImageDistillStage,
        "stage1-text": TextDistillStage,
        "stage2": MemoryDistillStage,
        "stage3": ConceptFinetuneStage,
    }
    return classes[config.stage](config, ctx)


def stage_sampler(stage: StageRunner, ctx: DistContext, start_batch: int = 0) -> ResumableBatchSampler:
    """The batches of ``stage``'s dataset this rank trains on, in the run's order from ``start_batch``."""
    config = stage.config
    per_image = config.data.phrases_per_image
    return ResumableBatchSampler(
        len(stage.dataset),
        config.run.batch_size,
        ctx.rank,
        ctx.world_size,
        seed=config.run.seed,
        start_batch=start_batch,
        group_keys=_group_keys(stage.dataset, per_image),
        group_size=per_image,
    )


def _group_keys(dataset: Any, phrases_per_image: int) -> list[str] | None:
    """Each sample's image key, when batches should hold several phrases of one image."""
    if phrases_per_image <= 1:
        return None
    return [dataset.key(i) for i in range(len(dataset))]


def train(
    config: TrainConfig,
    resume: str | None = None,
    *,
    start_over: bool = False,
    allow_config_change: Iterable[str] = (),
) -> TrainResult:
    """Run (or continue) one stage as configured; returns the step reached and rank 0's loss history.

    ``resume``: None (a fresh start, refused in a ``run.output_dir`` that holds checkpoints unless
    ``start_over``, which first moves the earlier run aside), ``"auto"`` or a checkpoint path.
    ``allow_config_change``: keys of RESUMABLE_ON_REQUEST the resume may change (the CLI's
    ``--allow-config-change``).
    """
    allowed = check_allowed_changes(allow_config_change)
    if start_over and resume is not None:
        raise ConfigError("start over or resume, not both: --start-over begins at step 0")
    if allowed and resume is None:
        raise ConfigError(
            "--allow-config-change applies to a resume (--resume auto|PATH); a fresh start takes any config"
        )
    ctx = init_distributed(config.run.device)
    try:
        return _train(config, resume, ctx, start_over=start_over, allowed=allowed)
    finally:
        ctx.close()


def claim_output_dir(out: Path, ctx: DistContext, start_over: bool) -> None:
    """Before a fresh start: refuse a ``run.output_dir`` holding checkpoints, or, ``start_over``, clear it.

    Why: a fresh start there wrote its checkpoints among the earlier run's (and its metrics after
    them), and a later ``--resume auto`` (a requeue) could pick the earlier run's newest checkpoint,
    silently mixing two runs. Every rank looks and ``ctx.any`` shares what they saw, so all ranks
    refuse together (a rank going on alone would wait forever in DDP's first collective); only rank
    0 moves files, as only it writes, and the barrier holds the others until the folder is clear.
    """
    if start_over:
        if ctx.is_main:
            set_aside_run(out)
        ctx.barrier()
        return
    evidence = earlier_run_evidence(out)
    if ctx.any(evidence is not None):
        raise CheckpointError(fresh_start_refusal(out, evidence))


def agree_on_resume(
    resume: str, out: Path, stage: str, ctx: DistContext
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint ``--resume`` names and its payload, the same on every rank, or CheckpointError on all.

    Why: each rank resolves ``--resume auto`` by listing the folder itself. Where the folder is not
    shared between nodes, rank 0 found its checkpoints while the others found none and started at
    step 0, so the ranks trained at different steps with different optimizer states (or one rank
    failed to read the file and the others waited in the next collective). Every rank therefore
    reads its checkpoint, and then they compare: a rank that failed, or a step that differs, stops
    them all.
    """
    problem: CheckpointError | None = None
    path = payload = None
    try:
        path = resolve_resume(resume, out)
        if path is not None:
            payload = load_checkpoint(path, stage=stage)
    except CheckpointError as err:
        problem = err
    if ctx.any(problem is not None) and problem is None:
        raise CheckpointError(
            f"--resume {resume}: another rank could not read its checkpoint (see its error)"
        )
    if problem is not None:
        raise problem
    step = int(payload["step"]) if payload is not None else -1
    if not ctx.all_equal(step):
        here = f"step {step} from {path}" if path is not None else "no checkpoint (a fresh start)"
        raise CheckpointError(
            f"--resume {resume}: the ranks would resume different steps (rank {ctx.rank}: {here}); "
            f"run.output_dir {out} must be on a filesystem every node shares, or pass --resume PATH "
            "to a checkpoint every rank can read"
        )
    return path, payload


def _train(
    config: TrainConfig,
    resume: str | None,
    ctx: DistContext,
    start_over: bool = False,
    allowed: frozenset[str] = frozenset(),
) -> TrainResult:
    run = config.run
    out = Path(run.output_dir)
    device = ctx.device
    # the checkpoint first: a resume that cannot continue this run fails before anything is built
    if resume is None:  # the same on every rank (a command-line flag): so are the collectives below
        claim_output_dir(out, ctx, start_over)
        resume_path, payload = None, None
    else:
        resume_path, payload = agree_on_resume(resume, out, config.stage, ctx)
    applied: list[str] = []
    if resume_path is not None:
        applied = check_resumable(resume_path, payload, config, ctx.world_size, allowed)
    torch.manual_seed(run.seed)  # identical model initialisation on every rank
    stage = build_stage(config, ctx)
    stage.prepare()
    module = stage.module.to(device)
    memory_format = resolve_memory_format(
        run.memory_format, get_config(config.model.student), device, stage.convolves_images
    )
    module.to(memory_format=memory_format)  # before the optimizer: its state follows the weights
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{config.stage}: no trainable parameters (check the train/freeze patterns)")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        n_train = sum(p.numel() for p in params)
        log.info(
            "%s: %d trainable parameters (%.2f M), %s", config.stage, n_train, n_train / 1e6, memory_format
        )
    ddp: nn.Module = module
    if ctx.is_distributed:
        find_unused = run.find_unused_parameters
        if find_unused is None:
            find_unused = stage.leaves_parameters_unused
        if ctx.is_main:
            log.info("DDP over %d ranks, find_unused_parameters=%s", ctx.world_size, find_unused)
        ddp = DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )
    optim = config.optim
    adamw_flags = optimizer_flags(optim.implementation, device)
    optimizer = torch.optim.AdamW(
        _param_groups(module, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas), **adamw_flags
    )

    def schedule(step: int) -> float:
        return cosine_with_warmup(step, run.steps, optim.warmup_steps, optim.min_lr_ratio)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    own_settings, own_base_lrs = _group_settings(optimizer), list(scheduler.base_lrs)  # before a load
    amp_on, amp_dtype = _amp(run.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_on and amp_dtype == torch.float16)

    result = TrainResult(step=0)
    start = 0
    if payload is not None:
        _load_states(resume_path, payload, module, optimizer)
        _lay_out_like_params(optimizer)
        scheduler.load_state_dict(payload["scheduler"])
        _step_with_own_settings(optimizer, scheduler, own_settings, own_base_lrs, schedule)
        scaler.load_state_dict(payload["scaler"])
        restore_rng_state(payload["rng"])
        start = int(payload["step"])
        payload = None  # the states now live in the module and optimizer
        result.resumed_from = resume_path
        if ctx.is_main:
            log.info("resumed from %s at step %d", resume_path, start)
            for change in applied:
                log.warning("config change applied at step %d (--allow-config-change): %s", start, change)
    if ctx.is_main:  # after the resume checks: a refused resume leaves the run's config.yaml as it was
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        record_environment(out, ctx, resumed=resume_path is not None)
        # on a fresh start too (step 0): entries of a start killed before its first checkpoint
        drop_metrics_after(out / "metrics.jsonl", start)
        if resume_path is not None:
            abandon_checkpoints_after(out, start)  # so a later --resume auto cannot pick them
    result.step = start

    sampler = stage_sampler(stage, ctx, start_batch=start * optim.grad_accum)
    loader = DataLoader(
        stage.dataset,
        batch_sampler=sampler,
        collate_fn=stage.collate,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    # The iterator now, not lazily in the first step: creating it draws the loader's base seed
    # from the global torch RNG, which inside a step would come after the step's re-seed and shift
    # that step's dropout etc. (a resume then differed from the uninterrupted run at its first step).
    batches = iter(loader)
    writer = _summary_writer(out, first_step=start + 1) if ctx.is_main and run.tensorboard else None
    metrics = open(out / "metrics.jsonl", "a") if ctx.is_main else None  # noqa: SIM115 (closed below)
    stop = run.steps if run.stop_at_step is None else min(run.steps, run.stop_at_step)
    bar = None
    if ctx.is_main and run.progress and start < stop:
        from tqdm import tqdm

        bar = tqdm(total=run.steps, initial=start, desc=config.stage, dynamic_ncols=True)
    last_saved = start if resume_path is not None else -1
    module.train()
    try:
        for step in range(start, stop):
            t0 = time.perf_counter()
            torch.manual_seed(_step_seed(run.seed, step, ctx.rank))
            logs_sum: dict[str, float] = {}
            for micro in range(optim.grad_accum):
                batch = next(batches)
                generator = torch.Generator().manual_seed(_step_seed(run.seed, step, ctx.rank, micro + 1))
                sync = micro == optim.grad_accum - 1 or not ctx.is_distributed
                with (
                    contextlib.nullcontext() if sync else ddp.no_sync(),
                    torch.autocast(device.type, dtype=amp_dtype, enabled=amp_on),
                ):
                    loss, logs = ddp(batch, generator)
                scaler.scale(loss / optim.grad_accum).backward()
                for key, value in {"loss": float(loss.detach()), **logs}.items():
                    logs_sum[key] = logs_sum.get(key, 0.0) + value / optim.grad_accum
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, optim.grad_clip if optim.grad_clip > 0 else float("inf")
            )
            finite = bool(torch.isfinite(grad_norm))
            if scaler.is_enabled():
                scaler.step(optimizer)  # skips the update itself on inf/nan (fp16 overflow)
            elif not ctx.any(not finite):
                optimizer.step()
            else:
                log.warning("step %d: non-finite gradient norm, update skipped", step + 1)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            result.step = step + 1
            entry = {
                "step": step + 1,
                **logs_sum,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if finite else float("nan"),
                "step_time": time.perf_counter() - t0,
            }
            if ctx.is_main:
                result.history.append(entry)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}")
                if (step + 1) % run.log_every == 0 or step + 1 == stop:
                    metrics.write(json.dumps(entry) + "\n")
                    metrics.flush()
                    if writer is not None:
                        for key, value in entry.items():
                            if key != "step":
                                writer.add_scalar(f"train/{key}", value, step + 1)
            if (step + 1) % run.checkpoint_every == 0 or step + 1 == run.steps:
                result.checkpoints.append(
                    _checkpoint(ctx, config, step + 1, module, optimizer, scheduler, scaler)
                )
                last_saved = step + 1
        if result.step < run.steps:
            result.stopped_early = True
            return result
        if last_saved != result.step:
            result.checkpoints.append(
                _checkpoint(ctx, config, result.step, module, optimizer, scheduler, scaler)
            )
        if ctx.is_main:
            result.export_path = stage.export(out / "export" / run.export_name)
            log.info("exported %s", result.export_path)
        ctx.barrier()
        return result
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if metrics is not None:
            metrics.close()


def drop_metrics_after(path: Path, step: int) -> None:
    """On (re)start, keep only the ``metrics.jsonl`` entries up to the resumed ``step`` (0: none).

    Why: a killed run logged the steps after its last checkpoint, and the resumed run logs
    them again, so they appeared twice (with the second copy the one the weights have). A
    start at step 0 (``--resume auto`` finding no checkpoint: a job killed before its first)
    logs every step again. A line cut short by the kill goes too. Rewritten atomically, as
    the checkpoints are.
    """
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            logged = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            logged = step + 1  # a line the kill cut short
        if logged <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        log.info("metrics.jsonl: dropped %d entries after step %d, where this start begins", dropped, step)


def _checkpoint(
    ctx: DistContext,
    config: TrainConfig,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
) -> Path:
    """Rank 0 writes; every rank waits, so nobody races ahead of a checkpoint it may need."""
    path = Path(config.run.output_dir) / "checkpoints" / f"step-{step:08d}.pt"
    if ctx.is_main:
        state = {
            "stage": config.stage,
            "config": config.to_dict(),
            "model": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "world_size": ctx.world_size,
            "trainable": [name for name, p in module.named_parameters() if p.requires_grad],
        }
        path = save_checkpoint(config.run.output_dir, step, state, keep=config.run.keep_checkpoints)
    ctx.barrier()
    return path


#: Config keys a resume may change. Each only changes how the run is observed, stored or executed,
#: not what it computes -- or, for run.steps/stop_at_step, is what a resume is for (continuing or
#: extending a run; the cosine schedule then follows the new length from the resumed step). Any
#: other difference (data, seed, batch size, accumulation, model, trainable set, lr, weight decay,
#: betas, schedule, losses) means the checkpoint's weights and optimizer state belong to another
#: experiment, and continuing would silently mix the two: refused (check_resumable), except the
#: optimizer settings of RESUMABLE_ON_REQUEST when the user names them.
RESUMABLE_CHANGES = frozenset(
    {
        "run.output_dir",  # the run folder was moved
        "run.steps",  # extend a run (--resume auto run.steps=N)
        "run.stop_at_step",  # time-boxed jobs
        "run.progress",  # logging only
        "run.log_every",
        "run.tensorboard",
        "run.checkpoint_every",  # storage only
        "run.keep_checkpoints",
        "run.export_name",
        "run.device",  # another machine (environment.json records and warns about it)
        "run.find_unused_parameters",  # DDP's graph walk: speed, not results
        "run.memory_format",  # layout only; the optimizer state is re-laid out (_lay_out_like_params)
        "data.num_workers",  # samples are seeded per sample, not per worker
        "optim.implementation",  # the same AdamW update; the flags are re-applied on resume
    }
)

#: Config keys a resume may change when the user names them (``--allow-config-change KEY``): the
#: optimizer's hyperparameters, schedule and clipping, e.g. to continue a rollback past a loss
#: spike at a lower lr. None invalidates the checkpoint (its weights and AdamW moments fit any of
#: them), each is re-applied over the checkpoint's optimizer and scheduler states on resume
#: (_step_with_own_settings) or read every step (grad_clip), and the next checkpoint records the
#: new value. Named, not implied: an unnoticed lr change in a requeued job's overrides is still
#: refused. Not here: model, trainable set, data, seed, batch size and accumulation (the
#: checkpoint or the sampler's position would not fit), and the stages' loss weights (several
#: switch parts of a stage on or off, e.g. options.distill_weight > 0 adds a teacher pass).
RESUMABLE_ON_REQUEST = frozenset(
    {
        "optim.lr",
        "optim.weight_decay",
        "optim.betas",
        "optim.warmup_steps",
        "optim.min_lr_ratio",
        "optim.grad_clip",
    }
)


def check_allowed_changes(keys: Iterable[str]) -> frozenset[str]:
    """The keys of ``--allow-config-change``, each checked to be in RESUMABLE_ON_REQUEST (ConfigError)."""
    allowed = frozenset(keys)
    others = sorted(allowed - RESUMABLE_ON_REQUEST)
    if others:
        key = others[0]
        why = (
            "a resume may change it without asking"
            if key in RESUMABLE_CHANGES
            else "changing it would make the checkpoint belong to another experiment; start a new run"
        )
        raise ConfigError(
            f"--allow-config-change {key}: not a key to allow ({why}); the keys are "
            f"{', '.join(sorted(RESUMABLE_ON_REQUEST))}"
        )
    return allowed


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    """``{key: "key: old -> new"}`` for every key outside RESUMABLE_CHANGES that differs (defaults filled in)."""
    with contextlib.suppress(Exception):  # written by older code: fill keys added since with defaults
        old = config_from_dict(old).to_dict()
    a, b = _flatten(old), _flatten(new)
    missing = object()
    return {
        key: f"{key}: {a.get(key, missing)!r} -> {b.get(key, missing)!r}".replace(repr(missing), "<unset>")
        for key in sorted(a.keys() | b.keys())
        if key not in RESUMABLE_CHANGES and a.get(key, missing) != b.get(key, missing)
    }


def _how_to_proceed(path: Path, config: TrainConfig, askable: list[str]) -> str:
    """The ways on from a refused resume; ``askable``: refused keys that --allow-config-change takes."""
    allow = ""
    if askable:
        keys = ",".join(askable)
        allow = f"to continue it with the new {keys}, add --allow-config-change {keys}; "
    return (
        f"to continue that run, resume with its original config (saved in "
        f"{path.parent.parent / 'config.yaml'}); {allow}to train with the new settings, start a new run "
        f"with another run.output_dir than {config.run.output_dir}, or in the same one with --start-over "
        "(without --resume: the earlier run is moved aside)"
    )


def check_resumable(
    path: Path,
    payload: dict[str, Any],
    config: TrainConfig,
    world_size: int,
    allowed: frozenset[str] = frozenset(),
) -> list[str]:
    """Refuse (CheckpointError) to resume ``path`` under a config that would train something else.

    ``allowed``: keys of RESUMABLE_ON_REQUEST the user named; their changes are returned
    (``key: old -> new``) for the log, every other change is refused, all of them listed.
    """
    changes: dict[str, str] = {}
    if "config" not in payload:
        log.warning("checkpoint %s records no config: cannot check that it fits this run's", path)
    else:
        changes = config_changes(payload["config"], config.to_dict())
        old_steps = payload["config"].get("run", {}).get("steps")
        if old_steps is not None and old_steps != config.run.steps:
            log.warning(
                "run.steps changed on resume (%s -> %d): the lr schedule follows the new length from step %d",
                old_steps,
                config.run.steps,
                int(payload["step"]),
            )
    saved_world = payload.get("world_size")
    if saved_world is not None and int(saved_world) != world_size:
        # allowed: a requeued cluster job may get another number of GPUs. The global batch and
        # the samples each rank draws change from here on, so the run is no longer bit-identical
        log.warning(
            "resuming %s on %d process(es), written by %d: the global batch is now %d x %d and the "
            "run no longer repeats an uninterrupted one",
            path,
            world_size,
            int(saved_world),
            world_size,
            config.run.batch_size,
        )
    refused = {key: line for key, line in changes.items() if key not in allowed}
    if refused:
        listing = "".join(f"\n  {line}" for line in refused.values())
        askable = [key for key in refused if key in RESUMABLE_ON_REQUEST]
        raise CheckpointError(
            f"cannot resume from {path}: this run's config differs from the one the checkpoint was "
            f"trained with (old -> new):{listing}\n{_how_to_proceed(path, config, askable)}"
        )
    return [line for key, line in changes.items() if key in allowed]


def _load_states(path: Path, payload: dict[str, Any], module: nn.Module, optimizer: Any) -> None:
    """Model and optimizer states from a checkpoint; a mismatch is a CheckpointError, not a traceback."""
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    saved = payload.get("trainable")
    if saved is not None and list(saved) != trainable:
        only_old, only_new = sorted(set(saved) - set(trainable)), sorted(set(trainable) - set(saved))
        raise CheckpointError(
            f"cannot resume from {path}: it trained another set of parameters ({len(saved)} "
            f"trainable then, {len(trainable)} now; e.g. only then: {only_old[:3]}, only now: "
            f"{only_new[:3]}); resume with the original model / train / freeze settings, or start "
            "a new run in another run.output_dir"
        )
    try:
        module.load_state_dict(payload["model"])
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        summary = "; ".join(line if len(line) < 300 else line[:300] + " ..." for line in lines[:3])
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit this run's model ({summary}); resume "
            "with the original model settings, or start a new run in another run.output_dir"
        ) from None
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"cannot resume from {path}: its optimizer state does not fit this run's trainable "
            f"parameters ({err}); resume with the original train / freeze settings, or start a new "
            "run in another run.output_dir"
        ) from None


def _summary_writer(out: Path, first_step: int) -> Any | None:
    """TensorBoard writer whose curves restart at ``first_step``, the first step this run logs.

    Why ``purge_step``: a run killed after its last checkpoint logged the steps after it, and the
    resumed run logs them again; TensorBoard then drew both, a curve folding back on itself.
    Purging hides the earlier events from ``first_step`` on, as ``drop_metrics_after`` trims
    metrics.jsonl.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra ("train")
        log.warning("tensorboard is not installed; logging to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=first_step)


__all__ = ["StageRunner", "TrainResult", "cosine_with_warmup", "list_checkpoints", "set_trainable", "train"]
