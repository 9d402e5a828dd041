"""Loading weights into ``EfficientSam3Model`` from every format this package meets, and saving its own.

Formats (detected from the file, not the file name):
  - ``efficientsam3_ros``: our safetensors, keys = ``model.state_dict()`` names, the
    ``ModelConfig`` JSON in the safetensors metadata (``save_checkpoint``);
  - ``original``: released SAM3 / EfficientSAM3 ``.pt`` files, ``{"model": {detector.*, tracker.*}}``,
    or an upstream ``Sam3Image.state_dict()`` without those prefixes (mapped by ``convert_sam3``);
  - ``hf``: HF-format SAM3 / SAM3-LiteText directories (transformers' names).
Loading is strict by default: missing, unexpected and mis-shaped keys are reported by
name and nothing is copied; keys the package deliberately ignores are listed with the
reason (``LoadReport.unused``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint_files import (
    CheckpointError,
    OpenCheckpoint,
    dtype_name,
    open_checkpoint,
    write_safetensors,
)
from .config import ModelConfig
from .convert_common import (
    ConversionPlan,
    KeyMapper,
    Target,
    check_dtype_kinds,
    materialise,
    plan_conversion,
)
from .convert_sam3 import (
    IMAGE_MODEL_ROOTS,
    PREDICTOR_PREFIX,
    hf_key_mapper,
    released_contents_hint,
    released_key_mapper,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "efficientsam3_ros"
FORMAT_VERSION = "1"
_OURS_PREFIXES = ("detector.vision_encoder.", "detector.detr_encoder.", "detector.detr_decoder.")
_HF_PREFIXES = ("vision_encoder.", "detector_model.", "detr_encoder.", "text_encoder.", "mask_decoder.")
_ORIGINAL_PREFIXES = ("detector.", "tracker.", PREDICTOR_PREFIX, *IMAGE_MODEL_ROOTS)
# The raw stage-1 trainer output: EfficientSAM3's ImageStudentEncoder alone (trunk + adapter head)
_STUDENT_ONLY_PREFIXES = ("backbone.model.", "head.", "student_trunk.", "module.backbone.model.")


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fill the model exactly; the message names every offending key."""


@dataclass
class LoadReport:
    """What a load did: the plan (assignments, unused keys with reasons, problems) and the detected format."""

    path: Path
    format: str
    plan: ConversionPlan

    @property
    def loaded(self) -> int:
        return len(self.plan.assignments)

    @property
    def unused(self) -> dict[str, str]:
        return self.plan.unused

    def summary(self) -> str:
        text = f"{self.path}: format {self.format}, {self.loaded} entries loaded, {len(self.unused)} keys intentionally unused"
        problems = self.plan.problems()
        return f"{text}\n{problems}" if problems else text


def detect_format(ckpt: OpenCheckpoint) -> str:
    """``efficientsam3_ros`` | ``original`` | ``hf`` from metadata and key names."""
    if ckpt.metadata.get("format") == FORMAT_NAME:
        return FORMAT_NAME
    keys = list(ckpt.keys())
    if ckpt.kind == "hf-dir" or any(k.startswith(_HF_PREFIXES) for k in keys):
        return "hf"
    if any(k.startswith(_OURS_PREFIXES) for k in keys):
        return FORMAT_NAME
    if any(k.startswith(_ORIGINAL_PREFIXES) for k in keys):
        return "original"
    sample = ", ".join(keys[:3])
    if keys and all(k.startswith(_STUDENT_ONLY_PREFIXES) for k in keys):
        raise CheckpointError(
            f"{ckpt.path}: a stage-1 student image encoder alone (first keys: {sample}), not a whole model: "
            "merge it with Meta's sam3.pt first (EfficientSAM3's stage1/convert_image_encoder_weights_stage1.py "
            "--student-ckpt FILE --sam3-ckpt sam3.pt), then load the merged file"
        )
    raise CheckpointError(
        f"{ckpt.path}: unrecognised key naming (first keys: {sample}); expected detector.* / tracker.* or HF names"
    )


def _identity_mapper(key: str) -> list[Target]:
    return [Target(key)]


def mapper_for(fmt: str, model: nn.Module, ckpt: OpenCheckpoint) -> KeyMapper:
    if fmt == FORMAT_NAME:
        return _identity_mapper
    if fmt == "hf":
        return hf_key_mapper()
    config: ModelConfig = model.config  # type: ignore[assignment]
    children = [name for name, _ in model.image_trunk.backbone.named_children()] if config.is_student else []
    return released_key_mapper(config, ckpt.keys(), children)


def plan_checkpoint(model: nn.Module, ckpt: OpenCheckpoint) -> tuple[str, ConversionPlan]:
    """Names, shapes and dtypes only: works on a meta-device model and costs no tensor reads."""
    fmt = detect_format(ckpt)
    state = model.state_dict()
    plan = plan_conversion(
        ckpt.shapes, {k: tuple(v.shape) for k, v in state.items()}, mapper_for(fmt, model, ckpt)
    )
    check_dtype_kinds(plan, ckpt.dtypes, {k: dtype_name(v.dtype) for k, v in state.items()})
    if fmt == "original" and not plan.ok:
        trunk = "detector.vision_encoder.backbone."
        trunk_problem = any(k.startswith(trunk) for k in plan.missing) or any(
            t.startswith(trunk) for t, *_ in plan.mismatched
        )
        plan.hint = released_contents_hint(model.config, ckpt.keys(), trunk_problem)  # type: ignore[arg-type]
    return fmt, plan


def load_checkpoint(model: nn.Module, path: str | Path | OpenCheckpoint, strict: bool = True) -> LoadReport:
    """Fill ``model`` from ``path`` (file, HF directory, or an already opened checkpoint).

    Strict (default): any missing, unexpected or mis-shaped key raises CheckpointMismatchError
    naming them, before anything is copied. Non-strict: loads what fits and reports the rest.
    """
    ckpt = path if isinstance(path, OpenCheckpoint) else open_checkpoint(path)
    path = ckpt.path
    fmt, plan = plan_checkpoint(model, ckpt)
    report = LoadReport(Path(path), fmt, plan)
    if not plan.ok:
        if strict:
            raise CheckpointMismatchError(
                f"{path} does not fit {_model_name(model)} ({fmt} format):\n{plan.problems()}"
            )
        log.warning("non-strict load of %s:\n%s", path, plan.problems())
    tensors = materialise(plan, ckpt.get)
    result = model.load_state_dict(tensors, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):  # the plan should have caught these
        raise CheckpointMismatchError(f"{path}: load_state_dict disagrees with the plan: {result}")
    return report


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "name", type(model).__name__)


def save_checkpoint(model: nn.Module, path: str | Path, sidecar: bool = True) -> Path:
    """Write this package's format: safetensors of ``model.state_dict()`` with the ModelConfig in its metadata.

    ``sidecar`` also writes ``<path without suffix>.json`` (the same config, human-readable).
    Tensors that share storage are cloned (safetensors refuses aliases).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint writes safetensors; name the file *.safetensors, got {path.name}")
    config = model.config.to_dict()  # type: ignore[union-attr]
    seen: set[tuple[int, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        ident = (
            (value.untyped_storage().data_ptr(), value.storage_offset()) if value.numel() else (0, id(value))
        )
        tensors[key] = value.clone().contiguous() if ident in seen else value.contiguous()
        seen.add(ident)
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": json.dumps(config)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, path, metadata)
    if sidecar:
        write_sidecar(path, config)
    return path


def set_operating_point(src: str | Path, dst: str | Path, **changes: Any) -> tuple[ModelConfig, ModelConfig]:
    """Write ``src`` to ``dst`` with its operating point changed; returns (old config, new config).

    Why: a point chosen on the user's own recordings (``sweep-thresholds``) belongs in the model
    file, so that every front door runs it there without flags or node parameters, as the model
    it was trained as does. Only the config in the metadata (and the sidecar JSON) changes: the
    tensors are written back as they were read, so the weights are byte for byte the same.
    ``changes`` are ``OperatingPoint`` fields; ``dst`` may be ``src`` (replaced atomically).
    """
    import dataclasses
    import os

    from safetensors.torch import load_file

    from .checkpoint_files import check_safetensors

    src, dst = Path(src), Path(dst)
    if src.suffix != ".safetensors" or not src.is_file():
        raise CheckpointError(
            f"{src}: not a .safetensors file; only this package's safetensors carry an operating point"
        )
    if dst.suffix != ".safetensors":
        raise ValueError(
            f"set_operating_point writes safetensors; name the output *.safetensors, got {dst.name}"
        )
    header, _ = check_safetensors(src)
    metadata: dict[str, str] = dict(header.get("__metadata__") or {})
    if metadata.get("format") != FORMAT_NAME or "config" not in metadata:
        raise CheckpointError(
            f"{src} is not an {FORMAT_NAME} image-model checkpoint (format {metadata.get('format') or 'none'}; "
            "no ModelConfig in its metadata), so it carries no "
            "operating point: pass the thresholds at run time instead (--score-threshold, the node's parameters)"
        )
    old = ModelConfig.from_dict(json.loads(metadata["config"]))
    new = ModelConfig.from_dict(old.to_dict())
    new.operating_point = dataclasses.replace(old.operating_point, **changes)  # validates every field
    metadata["config"] = json.dumps(new.to_dict())
    tensors = load_file(str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        write_safetensors(tensors, tmp, metadata)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    write_sidecar(dst, new.to_dict())
    return old, new


def sidecar_path(path: str | Path) -> Path:
    """``ckpt.pt`` -> ``ckpt.json``: where a checkpoint's ModelConfig may live beside it."""
    return Path(path).with_suffix(".json")


def write_sidecar(path: str | Path, config: dict[str, Any]) -> None:
    """The human-readable copy of a checkpoint's ModelConfig, beside it (``read_config``'s fallback)."""
    sidecar_path(path).write_text(json.dumps(config, indent=2) + "\n")


def read_config(path: str | Path) -> ModelConfig | None:
    """The ModelConfig stored with a checkpoint file: safetensors metadata, else a sidecar JSON; None if neither."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from .checkpoint_files import check_safetensors

        header, _ = check_safetensors(path)
        meta: dict[str, Any] = header.get("__metadata__") or {}
        if meta.get("format") == FORMAT_NAME and "config" in meta:
            return ModelConfig.from_dict(json.loads(meta["config"]))
    for candidate in (sidecar_path(path), Path(str(path) + ".json")):
        if candidate.is_file() and candidate != path:
            data = json.loads(candidate.read_text())
            return ModelConfig.from_dict(data.get("config", data))
    return None
