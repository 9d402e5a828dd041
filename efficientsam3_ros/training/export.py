"""Final exports and start weights: safetensors + config, the format inference loads.

A finished stage writes its model as ``<output_dir>/export/model.safetensors`` with the
model config beside it (``config.json``, and the same JSON in the safetensors
metadata under ``"config"``), so ``efficientsam3 segment --checkpoint``, ``export`` and
the ROS node can rebuild the module tree and load the weights without pickle. When
``efficientsam3_ros.modeling.checkpoint`` is available its ``save_checkpoint`` /
``load_checkpoint`` are used, so training and inference share one format; the
fallback below writes the same two pieces directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _modeling_checkpoint() -> Any | None:
    if importlib.util.find_spec("efficientsam3_ros.modeling.checkpoint") is None:
        return None
    from ..modeling import checkpoint

    return checkpoint


def export_model(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights as safetensors + its config as JSON (atomically; tied weights cloned)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modeling = _modeling_checkpoint()
    if modeling is not None and hasattr(modeling, "save_checkpoint") and extra is None:
        modeling.save_checkpoint(model, path)
        return path
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    meta = {"config": config, **(extra or {})}
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    save_file(state, str(tmp), metadata={"format": "pt", "efficientsam3": json.dumps(meta)})
    os.replace(tmp, path)
    config_path = path.with_name("config.json")
    tmp_config = config_path.with_name(f"config.json.tmp.{os.getpid()}")
    tmp_config.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_config, config_path)
    return path


def load_weights(model: nn.Module, path: str | Path, strict: bool = False) -> list[str]:
    """Load safetensors weights into ``model``; returns the model keys the file did not supply.

    ``strict=False`` by default because stages load partial models on purpose (a stage-1
    image export into a stage-1 text student, SAM3's tracker weights into the Perceiver
    tracker); shape mismatches are still errors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    modeling = _modeling_checkpoint()
    if strict and modeling is not None and hasattr(modeling, "load_checkpoint"):
        modeling.load_checkpoint(model, path)
        return []
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
