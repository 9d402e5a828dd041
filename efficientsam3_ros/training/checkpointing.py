"""Training checkpoints: atomic writes, ``--resume auto``, and loads that never unpickle code.

A checkpoint is everything needed to continue a killed run bit-for-bit: model,
optimizer, scheduler and AMP-scaler states, the step, and every RNG state (Python,
NumPy, torch CPU and CUDA). RNG states are stored as tensors and lists so the file
loads with ``torch.load(weights_only=True)`` (no pickled code runs on load). Files are
written to a temporary name, fsynced and renamed, so a job killed mid-write leaves
the previous checkpoint intact and never a half-written one under a real name.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..modeling.checkpoint_files import CheckpointError as FileCheckError
from ..modeling.checkpoint_files import check_torch_zip

log = logging.getLogger(__name__)

FORMAT = "efficientsam3-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")
_TEMP_NAME = re.compile(r"^step-\d{8}\.pt\.tmp\.(\d+)$")
_REQUIRED = ("format", "version", "stage", "step", "model", "optimizer", "scheduler", "scaler", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message says which file and why."""


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors / lists / ints (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states_to_restore(state["cuda"], torch.cuda.device_count()))


def cuda_states_to_restore(states: list[torch.Tensor], visible: int) -> list[torch.Tensor]:
    """The saved CUDA RNG states this machine can take: the first ``visible`` ones.

    Why: a checkpoint keeps one state per GPU its process saw, and ``set_rng_state_all``
    raises IndexError for more states than visible devices, so a run checkpointed on a
    4-GPU node could not resume on 1 GPU. Each rank seeds its own device per step anyway
    (trainer ``_step_seed``), so the dropped states do not change what the run draws.
    """
    if len(states) > visible:
        log.info(
            "checkpoint holds %d CUDA RNG states, %d GPU(s) visible: restoring the first %d",
            len(states),
            visible,
            visible,
        )
    return list(states[:visible])


# ----------------------------------------------------------------------------- files
def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(output_dir) / f"step-{step:08d}.pt"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the finished checkpoints in a run folder, oldest first (temp files ignored)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(handle)`` to ``<path>.tmp.<pid>``, fsync, rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, written with :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text (a run's JSON side files), written with :func:`atomic_write`."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_checkpoint(output_dir: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``checkpoints/step-XXXXXXXX.pt`` atomically and prune to the newest ``keep`` (0 keeps all)."""
    payload = {"format": FORMAT, "version": VERSION, "step": step, "rng": capture_rng_state(), **state}
    path = checkpoint_path(output_dir, step)
    atomic_torch_save(payload, path)
    remove_stale_temp_files(output_dir)
    if keep > 0:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def remove_stale_temp_files(output_dir: str | Path) -> list[Path]:
    """Delete ``step-*.pt.tmp.<pid>`` files of other processes: writes a kill (SIGKILL, OOM) cut short.

    Why: :func:`atomic_write` removes its temp file on any exception, but a killed process runs no
    cleanup, and each left a partial checkpoint-sized file that nothing ever removed. Only rank 0
    writes checkpoints, so a temp file of another pid is never one still being written.
    """
    folder = checkpoint_dir(output_dir)
    removed = []
    for path in folder.iterdir() if folder.is_dir() else []:
        match = _TEMP_NAME.match(path.name)
        if match and int(match.group(1)) != os.getpid():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info(
            "removed %d temp file(s) left by an interrupted checkpoint write: %s",
            len(removed),
            ", ".join(p.name for p in sorted(removed)),
        )
    return removed


def abandon_checkpoints_after(output_dir: str | Path, step: int) -> list[Path]:
    """Rename the run's checkpoints after ``step`` to ``*.abandoned``; returns the new paths.

    Why: resuming an older checkpoint (``--resume PATH``, a rollback) left the abandoned run's
    later checkpoints under their real names, and the next ``--resume auto`` picked the newest of
    them, silently continuing the run that was rolled back. Renamed, not deleted: nothing is lost,
    and a second rollback past the same step takes the next free name (``.abandoned-2``, ...).
    """
    moved = []
    for found, path in list_checkpoints(output_dir):
        if found > step:
            target = path.with_name(f"{path.name}.abandoned")
            copy = 1
            while target.exists():
                copy += 1
                target = path.with_name(f"{path.name}.abandoned-{copy}")
            os.replace(path, target)
            moved.append(target)
    if moved:
        log.warning(
            "resumed at step %d: renamed %d later checkpoint(s) of the abandoned run to *.abandoned (%s)",
            step,
            len(moved),
            ", ".join(p.name for p in moved),
        )
    return moved


#: What a run writes into its ``run.output_dir``: what ``set_aside_run`` moves. Not a teacher
#: feature cache (``options.feature_cache``), which runs share and which stays where it is.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "export", "config.yaml", "environment.json")
ABANDONED_DIR = "abandoned"


def earlier_run_evidence(output_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``output_dir``, else a file of its ``export/``, else None.

    The export counts too: a run whose checkpoints were deleted to save space still has its
    trained model there, which a fresh start would overwrite at its end.
    """
    found = list_checkpoints(output_dir)
    if found:
        return found[-1][1]
    exported = sorted(p for p in (Path(output_dir) / "export").glob("*") if p.is_file())
    return exported[-1] if exported else None


def fresh_start_refusal(output_dir: str | Path, latest: Path | None) -> str:
    """Why a fresh start may not use ``output_dir`` (an earlier run is there), and the three ways on.

    ``latest`` is what this process found (:func:`earlier_run_evidence`); None on a rank that saw
    nothing while another rank did (a folder that is not shared between nodes).
    """
    seen = f"the latest: {latest}" if latest is not None else "seen by another rank"
    return (
        f"run.output_dir {output_dir} holds an earlier run ({seen}); a fresh start there would "
        "write its checkpoints among that run's and overwrite its export, and a later --resume auto "
        "could continue the earlier run instead. Either\n"
        "  continue that run: --resume auto\n"
        "  start this run in another folder: run.output_dir=OTHER_DIR\n"
        f"  start over in this folder: --start-over (moves the earlier run's {', '.join(RUN_OUTPUTS)} "
        f"into {Path(output_dir) / ABANDONED_DIR}/N/, deleting nothing, then starts at step 0)"
    )


def set_aside_run(output_dir: str | Path) -> Path | None:
    """Move an earlier run's outputs into ``OUTPUT_DIR/abandoned/N/`` (N = 1, 2, ...); None if none.

    Why (``--start-over``): a fresh start in a folder holding another run's checkpoints wrote its
    own among them and appended to its ``metrics.jsonl``, and a later ``--resume auto`` (a requeue)
    could continue the old run's newest checkpoint. Why a folder per earlier run, not ``*.abandoned``
    renames as a rollback makes (:func:`abandon_checkpoints_after`): the new run writes the same step
    names again, so a second start-over would rename onto the first one's files; moved whole, each
    earlier run keeps its checkpoints, metrics, tensorboard logs, export and config together.
    """
    out = Path(output_dir)
    present = [out / name for name in RUN_OUTPUTS if (out / name).exists()]
    if not present:
        return None
    parent = out / ABANDONED_DIR
    parent.mkdir(exist_ok=True)
    taken = [int(path.name) for path in parent.iterdir() if path.name.isdigit()]
    target = parent / str(max(taken, default=0) + 1)
    target.mkdir()
    for path in present:
        os.replace(path, target / path.name)
    log.warning("--start-over: moved the earlier run's %s to %s", ", ".join(p.name for p in present), target)
    return target


def load_checkpoint(path: str | Path, stage: str | None = None) -> dict[str, Any]:
    """Load and check a training checkpoint (weights only); a corrupt or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:  # torch.load reads the zip without checking its CRCs: flipped bytes (bad disk) would load
        check_torch_zip(path, full=True)
    except FileCheckError as err:
        detail = str(err).removeprefix(f"{path}: ").removesuffix(" (re-download it)")
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({detail}); delete it to resume from the previous one"
        ) from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, foreign object: all mean "cannot resume from this"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a training checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); delete it to resume from the previous one"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an efficientsam3 training checkpoint")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    if payload["version"] > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {payload['version']}; this code reads {VERSION}"
        )
    if stage is not None and payload["stage"] != stage:
        raise CheckpointError(f"checkpoint {path} is from stage {payload['stage']!r}, not {stage!r}")
    return payload


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None``: fresh run; ``auto``: the newest checkpoint in the run folder (None if there is none); else a path."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        if not found:
            log.info("--resume auto: no checkpoint in %s, starting from step 0", checkpoint_dir(output_dir))
            return None
        return found[-1][1]
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no such checkpoint file")
    return path
