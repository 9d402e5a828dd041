"""Final exports and start weights: safetensors + config, the format inference loads.

A finished image/text/concept stage writes its ``EfficientSam3Model`` with
``efficientsam3_ros.modeling.checkpoint.save_checkpoint`` (safetensors whose metadata
holds the ``ModelConfig``, plus the ``<name>.json`` sidecar), so ``efficientsam3 segment
--checkpoint``, ``export`` and the ROS node load it like any other checkpoint. It is
written under a temporary name and renamed, so a job killed while exporting leaves no
half file. Stage 2 exports a ``TrackerModel``, which has no ModelConfig: its
safetensors carry ``format = efficientsam3_ros_tracker`` with the tracker and image
configs as JSON metadata (and the same sidecar).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling import EfficientSam3Model, TrackerModel
from ..modeling.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from ..modeling.checkpoint_files import CheckpointError, OpenCheckpoint, open_checkpoint, write_safetensors
from ..modeling.tracker_checkpoint import TRACKER_FORMAT


def export_model(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors + config sidecar, atomically (temp names, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.safetensors")
    if isinstance(model, EfficientSam3Model) and extra is None:
        save_checkpoint(model, tmp)
    else:
        meta = {"config": model.config.to_dict(), **(extra or {})}
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        write_safetensors(
            state, tmp, metadata={"format": TRACKER_FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
        )
        sidecar_path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(sidecar_path(tmp), sidecar_path(path))
    os.replace(tmp, path)
    return path


def export_tracker(tracker: TrackerModel, path: str | Path) -> Path:
    """A stage-2 tracker file: its weights, its TrackerConfig and the image model it reads
    (``modeling.tracker_checkpoint.load_tracker`` checks that one against the model it joins)."""
    return export_model(
        tracker, path, extra={"image_config": tracker.image_config.to_dict(), "kind": "tracker"}
    )


def load_weights(model: nn.Module, path: str | Path | OpenCheckpoint, strict: bool = False) -> list[str]:
    """Load weights into ``model``; returns the model keys the file did not supply (non-strict).

    Image models go through ``modeling.checkpoint.load_checkpoint`` (our safetensors, the
    released SAM3 / EfficientSAM3 ``.pt`` files and HF directories). Other modules (the
    tracker) read a state dict by name. ``strict=False`` because stages load partial
    models on purpose (a stage-1 image export into a text student); which parts a start
    file must fill is checked by the callers (``training.models``). A file that does not
    fit raises ``CheckpointError`` (the CLI's exit code 2), never a bare ValueError.
    """
    if not isinstance(path, OpenCheckpoint) and not Path(path).exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    ckpt = path if isinstance(path, OpenCheckpoint) else open_checkpoint(path)
    if isinstance(model, EfficientSam3Model):
        report = load_checkpoint(model, ckpt, strict=strict)
        if not report.loaded:
            raise _nothing_loaded(model, ckpt)
        return sorted(set(model.state_dict()) - set(report.plan.assignments))
    own = model.state_dict()
    if not any(k in own for k in ckpt.shapes):
        raise _nothing_loaded(model, ckpt)
    bad = [k for k, shape in ckpt.shapes.items() if k in own and tuple(own[k].shape) != shape]
    if bad:
        raise CheckpointError(
            f"{ckpt.path}: shape mismatch for {bad[:5]} (built for another model size?); "
            f"use weights of this {type(model).__name__}"
        )
    missing = [k for k in own if k not in ckpt.shapes]
    if strict and missing:
        raise CheckpointError(f"{ckpt.path} lacks {len(missing)} weights, e.g. {missing[:5]}")
    model.load_state_dict({k: ckpt.get(k) for k in ckpt.shapes if k in own}, strict=False)
    return missing


def _nothing_loaded(model: nn.Module, ckpt: OpenCheckpoint) -> CheckpointError:
    """A partial load is sometimes meant; one that copies nothing never is (a file of another model)."""
    config = getattr(model, "config", None)
    name = getattr(config, "name", None) or type(model).__name__
    return CheckpointError(
        f"{ckpt.path}: none of its {len(ckpt.shapes)} tensors is a weight of {name} "
        f"(first keys: {list(ckpt.shapes)[:3]}); it holds another model: pass that model's weights"
    )


def transfer_matching(src: nn.Module, dst: nn.Module, exclude: tuple[str, ...] = ()) -> int:
    """Copy every ``src`` tensor whose name and shape exist in ``dst`` (except ``exclude`` prefixes).

    Why: students reuse SAM3's heads verbatim (neck, detector, tracker SAM heads), so the
    part that is not being distilled starts as the teacher's. Returns the number copied.
    """
    take = _matching(src, dst, exclude)
    with torch.no_grad():
        dst.load_state_dict(take, strict=False)
    return len(take)


def matching_names(src: nn.Module, dst: nn.Module, exclude: tuple[str, ...] = ()) -> set[str]:
    """The names :func:`transfer_matching` copies from ``src`` into ``dst``."""
    return set(_matching(src, dst, exclude))


def _matching(src: nn.Module, dst: nn.Module, exclude: tuple[str, ...]) -> dict[str, torch.Tensor]:
    dst_state = dst.state_dict()
    return {
        k: v
        for k, v in src.state_dict().items()
        if k in dst_state and dst_state[k].shape == v.shape and not k.startswith(exclude)
    }
