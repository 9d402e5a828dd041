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
from safetensors.torch import load_file
from torch import nn

from ..modeling import EfficientSam3Model, TrackerModel
from ..modeling.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from ..modeling.checkpoint_files import write_safetensors
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


def load_weights(model: nn.Module, path: str | Path, strict: bool = False) -> list[str]:
    """Load weights into ``model``; returns the model keys the file did not supply (non-strict).

    Image models go through ``modeling.checkpoint.load_checkpoint`` (our safetensors, the
    released SAM3 / EfficientSAM3 ``.pt`` files and HF directories). Other modules (the
    tracker) read a safetensors state dict. ``strict=False`` because stages load partial
    models on purpose (a stage-1 image export into a text student).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if isinstance(model, EfficientSam3Model):
        report = load_checkpoint(model, path, strict=strict)
        return sorted(set(model.state_dict()) - set(report.plan.assignments))
    state = load_file(str(path))
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {bad[:5]} (built for another model size?)")
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if strict and result.missing_keys:
        raise ValueError(f"{path} lacks {len(result.missing_keys)} weights, e.g. {result.missing_keys[:5]}")
    return list(result.missing_keys)


def transfer_matching(src: nn.Module, dst: nn.Module, exclude: tuple[str, ...] = ()) -> int:
    """Copy every ``src`` tensor whose name and shape exist in ``dst`` (except ``exclude`` prefixes).

    Why: students reuse SAM3's heads verbatim (neck, detector, tracker SAM heads), so the
    part that is not being distilled starts as the teacher's. Returns the number copied.
    """
    src_state = src.state_dict()
    dst_state = dst.state_dict()
    take = {
        k: v
        for k, v in src_state.items()
        if k in dst_state and dst_state[k].shape == v.shape and not k.startswith(exclude)
    }
    with torch.no_grad():
        dst.load_state_dict(take, strict=False)
    return len(take)
