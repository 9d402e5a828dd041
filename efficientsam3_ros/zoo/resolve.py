"""``resolve_model``: the one way the package turns "a model" into a loaded ``EfficientSam3Model``.

``segment``, ``export``, the ROS node and the evaluators all take the same spec, so a
user can hand any of them a zoo name, a registry name (+ checkpoint), a checkpoint file
or an HF directory. Files are checked (truncation, format) before a model is built.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..modeling.checkpoint import load_checkpoint, read_config, sidecar_path
from ..modeling.checkpoint_files import CheckpointError, open_checkpoint
from ..modeling.config import ModelConfig
from ..modeling.efficientsam3 import EfficientSam3Model
from ..modeling.hf_config import config_from_hf, is_hf_directory, read_hf_config
from ..modeling.registry import build_model, get_config, list_models
from .download import download
from .manifest import ZooEntry, load_zoo

log = logging.getLogger(__name__)


def resolve_model(
    spec: str,
    checkpoint: str | None = None,
    *,
    input_size: int | None = None,
    device: str | torch.device = "cpu",
) -> EfficientSam3Model:
    """A ready (eval-mode) model from ``spec``.

    ``spec`` is, in this order of precedence:
      - an existing path: an HF directory (``config.json`` with model_type sam3 / sam3_lite_text,
        + safetensors), or a checkpoint file (.safetensors / .pt / .pth) whose architecture comes
        from its safetensors metadata, a sidecar ``<file>.json``, or a zoo entry of the same file name;
      - a zoo name (``models/zoo.yaml``): weights from ``checkpoint`` if given, else the local copy
        or a download;
      - a registry name: weights from ``checkpoint``; without one, random weights (logged).
    """
    path = Path(spec).expanduser()
    weights = Path(checkpoint).expanduser() if checkpoint is not None else None  # ROS params keep "~"
    if path.exists():
        if checkpoint is not None:
            raise ValueError(
                f"{spec} is already a checkpoint path; pass a model *name* together with --checkpoint"
            )
        return _from_path(path, input_size, device)
    zoo = load_zoo()
    if spec in zoo:
        entry = zoo[spec]
        weights = weights if weights is not None else download(entry)
        return _load(
            as_stored(weights, entry_config(entry, weights), entry.architecture), weights, input_size, device
        )
    if spec in list_models():
        config = get_config(spec)
        if weights is None:
            log.warning("model %s has no weights given: using random initialisation", spec)
            return build_model(config, input_size=input_size, device=device)
        return _load(as_stored(weights, config), weights, input_size, device)
    raise ValueError(
        f"unknown model {spec!r}: not a file, an HF directory, a zoo name ({', '.join(zoo) or 'none'}) "
        f"or a registry name ({', '.join(list_models())})"
    )


def as_stored(weights: Path, config: ModelConfig, architecture: str | None = None) -> ModelConfig:
    """``config`` with what ``weights`` records for this architecture beyond the name's defaults.

    Public because `efficientsam3 models verify --model NAME` reads a name the same way.
    A name (registry or zoo) with a checkpoint takes its architecture from the name, but two settings travel with
    the file: the input size, a deployment choice (the demo student: registry 168 px, shipped at
    336; run at the name's size it loads without complaint and scores worse), and the
    box-scoring head a fine-tune added (``ModelConfig.box_scoring``; without it the strict load
    would refuse the file's extra tensors). An explicit ``input_size`` still wins. The file must be
    of this model: its stored name is ``config``'s or ``architecture`` (a zoo entry's registry model).
    """
    try:
        stored = read_config(weights)
    except (CheckpointError, ValueError, OSError):
        return config  # the load that follows names what is wrong with the file
    if stored is None or stored.name not in (config.name, architecture):
        return config  # another model's file: the strict load that follows refuses it
    if stored.image_size != config.image_size:
        log.info(
            "%s: input size %d px from %s (the name's is %d)",
            config.name,
            stored.image_size,
            weights.name,
            config.image_size,
        )
        config = config.with_image_size(stored.image_size)
    if stored.box_scoring and not config.box_scoring:
        log.info("%s: box-scoring head %s from %s", config.name, stored.box_scoring, weights.name)
        config = config.with_box_scoring(stored.box_scoring)
    return config


def config_for_path(path: Path) -> ModelConfig:
    """The architecture a checkpoint path holds, or a CheckpointError that says how to name it."""
    if path.is_dir():
        if not is_hf_directory(path):
            raise CheckpointError(
                f"{path}: a directory but not an HF SAM3 / SAM3-LiteText model (config.json)"
            )
        return config_from_hf(read_hf_config(path), name=path.name)
    config = read_config(path)
    if config is not None:
        return config
    for entry in load_zoo().values():
        if entry.format != "hf" and entry.file_name == path.name:
            return entry_config(entry, path)
    raise CheckpointError(
        f"cannot tell which architecture {path.name} holds: pass a model name with it "
        f"(--model es-ev-s --checkpoint {path}) or write its ModelConfig JSON to {sidecar_path(path)}"
    )


def _from_path(path: Path, input_size: int | None, device: str | torch.device) -> EfficientSam3Model:
    return _load(config_for_path(path), path, input_size, device)


def entry_config(entry: ZooEntry, weights: Path) -> ModelConfig:
    """The architecture a zoo entry builds (its HF config.json, or its registry name plus overrides).

    Public because `efficientsam3 models verify --model NAME` checks a file against it.
    """
    if entry.format == "hf":
        config = config_from_hf(read_hf_config(weights), name=entry.name)
    else:
        config = get_config(entry.architecture or entry.name)
    if entry.overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **entry.overrides})
    config.name = entry.name
    return config


def _load(
    config: ModelConfig, weights: Path, input_size: int | None, device: str | torch.device
) -> EfficientSam3Model:
    ckpt = open_checkpoint(weights)  # refuse a truncated / unsafe file before building anything
    model = build_model(config, input_size=input_size, device=device)
    report = load_checkpoint(model, ckpt, strict=True)
    log.info("%s", report.summary())
    return model.eval()
