"""HF ``config.json`` of SAM3 / SAM3-LiteText -> this package's ``ModelConfig``.

HF-format models (``facebook/sam3``, ``vil-uob/sam3-litetext-*``) describe their
architecture in transformers' config; building our ``EfficientSam3Model`` from the
same numbers lets their safetensors load by name (our detector *is* transformers'
``Sam3Model``), without instantiating a second full model through ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import FULL_CLIP_TEXT, FULL_DETECTOR, FULL_VIT, ModelConfig

SUPPORTED_MODEL_TYPES = ("sam3", "sam3_video", "sam3_lite_text", "sam3_lite_text_video")
_VIT_KEYS = tuple(FULL_VIT)
_CLIP_KEYS = tuple(FULL_CLIP_TEXT)
_MOBILECLIP_KEYS = (*FULL_CLIP_TEXT, "use_repmixer_blocks", "repmixer_kernel_size")


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ValueError(f"{directory}: no config.json (not an HF model directory)")
    return json.loads(path.read_text())


def is_hf_directory(directory: str | Path) -> bool:
    path = Path(directory) / "config.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("model_type") in SUPPORTED_MODEL_TYPES
    except (OSError, json.JSONDecodeError):
        return False


def config_from_hf(hf: dict[str, Any], name: str = "hf-model") -> ModelConfig:
    """Translate a SAM3 / SAM3-LiteText (or their video wrappers') config dict into a ModelConfig."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported HF model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if hf.get("detector_config"):  # Sam3VideoConfig wraps the image model
        hf = hf["detector_config"]
    lite = hf.get("model_type", model_type).startswith("sam3_lite_text")
    vision = hf.get("vision_config") or {}
    backbone = vision.get("backbone_config") or {}
    text = hf.get("text_config") or {}
    vit = {k: backbone.get(k, v) for k, v in FULL_VIT.items()}
    detector = {}
    for part, defaults in FULL_DETECTOR.items():
        given = hf.get(f"{part}_config") or {}
        detector[part] = {k: given.get(k, v) for k, v in defaults.items()}
    if lite:
        text_fields = {k: text[k] for k in _MOBILECLIP_KEYS if k in text}
        context = int(text.get("max_position_embeddings", 77))
    else:
        text_fields = {k: text.get(k, FULL_CLIP_TEXT[k]) for k in _CLIP_KEYS}
        context = int(text.get("max_position_embeddings", 32))
    return ModelConfig(
        name=name,
        family="sam3",
        vit=vit,
        image_size=int(backbone.get("image_size", 1008)),
        patch_size=int(backbone.get("patch_size", 14)),
        fpn_dim=int(vision.get("fpn_hidden_size", 256)),
        text_encoder="mobileclip" if lite else "clip",
        text=text_fields,
        context_length=context,
        detector=detector,
        description=f"HF-format {model_type} model",
    )
