"""Model configs: every size of EfficientSAM3 (and the SAM3 teacher) is one of these.

A config is plain data (JSON-serialisable) so that it can travel next to a
safetensors checkpoint and rebuild exactly the same module tree. The detector
heads (FPN neck, DETR encoder/decoder, presence head, mask decoder, geometry
encoder) always come from transformers' SAM3; only the image trunk and the
text encoder change between variants.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config_utils import check_known_keys, check_mask_threshold, check_scalar_types, check_score_threshold

# SAM3's detector heads at full size (transformers' Sam3Config defaults, spelled out so a
# tiny config can override only what it shrinks).
FULL_DETECTOR: dict[str, dict[str, Any]] = {
    "geometry_encoder": {
        "hidden_size": 256,
        "num_layers": 3,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
    "detr_encoder": {
        "hidden_size": 256,
        "num_layers": 6,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
    "detr_decoder": {
        "hidden_size": 256,
        "num_layers": 6,
        "num_queries": 200,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
    "mask_decoder": {"hidden_size": 256, "num_attention_heads": 8},
}

# SAM3's ViT-H-like trunk (the teacher). Students replace it but keep its output grid and width.
FULL_VIT: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4736,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "window_size": 24,
    "global_attn_indexes": [7, 15, 23, 31],
    "pretrain_image_size": 336,
}

# SAM3's CLIP text encoder (24 layers, width 1024, context 32).
FULL_CLIP_TEXT: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 512,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
}

# SAM3-LiteText students (MobileCLIP text towers), as transformers' Sam3LiteTextTextConfig kwargs.
MOBILECLIP_TEXT: dict[str, dict[str, Any]] = {
    "mobileclip-s0": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "projection_dim": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "use_repmixer_blocks": True,
        "repmixer_kernel_size": 11,
    },
    "mobileclip-s1": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "projection_dim": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "use_repmixer_blocks": False,
    },
    "mobileclip2-l": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "use_repmixer_blocks": False,
    },
}


@dataclass(frozen=True)
class OperatingPoint:
    """Where a model's scores become published instances, carried with the model.

    SAM3's own values by default. A model trained to another calibration carries its own, so
    every front door (node, ``segment``, ``eval-bag``, ``demo``) runs it where it was measured
    unless the user says otherwise: the demo model, trained on hard negatives, scores its true
    detections 0.3-0.6, under SAM3's 0.5 / 0.7 (models/demo/MODEL_CARD.md).
    """

    score_threshold: float = 0.5
    """Instances scoring below are dropped (SAM3's ``score_threshold_detection``)."""

    new_track_threshold: float = 0.7
    """A detection starts a new track only at this score (SAM3 video's ``new_det_thresh``)."""

    crop_masks_to_boxes: bool = False
    """Zero each mask outside its own predicted box (plus a small margin). SAM3 does not: its
    masks are sharp. A small model's coarse mask head paints every same-concept object into
    each query's mask; its boxes stay per instance, so cropping separates the instances."""

    mask_threshold: float = 0.5
    """Mask probability above which a pixel belongs to the instance (SAM3: 0.5, logit 0). A
    small model's mask logits need not be calibrated there: the demo model's masks at 0.5 were
    too small, so it carries the threshold its validation sequences chose
    (models/demo/MODEL_CARD.md)."""

    memory_tracking: dict[str, Any] = field(default_factory=dict, hash=False)
    """``TrackingConfig`` fields this model was validated with when a memory tracker runs (none
    without one). SAM3's rules assume SAM3's calibration and a tracker trained at scale: with
    the demo model, whose detections score under SAM3's 0.8 re-conditioning threshold and
    whose small tracker propagates less sharply than its detector segments, they leave a
    memory conditioned on one frame for ever (models/demo/MODEL_CARD.md)."""

    def __post_init__(self) -> None:
        for name in ("score_threshold", "new_track_threshold"):
            check_score_threshold(getattr(self, name), f"operating_point.{name}")
        check_mask_threshold(self.mask_threshold, "operating_point.mask_threshold")
        from ..tracking.config import TrackingConfig  # a plain dataclass: no torch, no numpy work

        if not isinstance(self.memory_tracking, dict):
            raise ValueError(
                f"operating_point.memory_tracking must be a mapping, got {self.memory_tracking!r}"
            )
        if "new_det_threshold" in self.memory_tracking:
            raise ValueError(
                "operating_point.memory_tracking must not set new_det_threshold: new_track_threshold is "
                "the birth score, with or without memory"
            )
        try:
            TrackingConfig.from_dict(dict(self.memory_tracking))
        except (TypeError, ValueError) as err:
            raise ValueError(f"operating_point.memory_tracking: {err}") from None
        # a private copy: one point is shared by every config built from it, and it is frozen
        object.__setattr__(self, "memory_tracking", dict(self.memory_tracking))

    def tracking_rules(self, memory: bool) -> dict[str, Any]:
        """``TrackingConfig`` fields this point sets: the birth score, and with a memory tracker its rules."""
        return {"new_det_threshold": self.new_track_threshold, **(self.memory_tracking if memory else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        check_known_keys(cls, data, "operating_point keys")
        check_scalar_types(cls, data, "operating_point")  # a YAML/JSON "no" would switch cropping on
        return cls(**data)


#: ModelConfig.detr_level_scale values: SAM3's 1x level, or the 2x one (a finer detector grid)
DETR_LEVEL_SCALES = (1.0, 2.0)

#: ModelConfig.text_encoder values: SAM3's CLIP tower, or a SAM3-LiteText MobileCLIP one
TEXT_ENCODERS = ("clip", "mobileclip")

#: ModelConfig.family values: the teacher, and the three student families the paper distils into
FAMILIES = ("sam3", "repvit", "tinyvit", "efficientvit")

#: ModelConfig.init values (see the field)
INIT_SCHEMES = ("sam3", "fan_in")

#: keys of the nested dicts that a ModelConfig field sets: the nested copy would override it
#: (vit's image size) or clash with it (MobileCLIP's position table), so it is refused
_SET_BY_FIELD = {
    "vit": {"image_size": "image_size", "patch_size": "patch_size"},
    "text": {"max_position_embeddings": "context_length"},
}


def check_image_size(image_size: int, patch_size: int, what: str = "input size") -> None:
    """The trunk cuts the input into patch_size-pixel patches: anything else breaks its grid."""
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive (SAM3: 14), got {patch_size}")
    if image_size <= 0 or image_size % patch_size:
        raise ValueError(
            f"{what} {image_size} must be a positive multiple of the patch size {patch_size} "
            f"(e.g. {patch_size * max(1, round(image_size / patch_size))})"
        )


def _own_keywords(cls: type) -> set[str]:
    """The architecture keywords a transformers config class takes (PreTrainedConfig's own left out)."""
    from transformers import PreTrainedConfig

    def keywords(c: type) -> set[str]:
        params = inspect.signature(c.__init__).parameters.values()
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}

    return keywords(cls) - keywords(PreTrainedConfig)


def _nested_config_classes(text_encoder: str) -> dict[str, type]:
    """The transformers config each nested dict becomes (efficientsam3._to_sam3_config, EfficientSam3Model)."""
    from transformers import CLIPTextConfig
    from transformers.models.sam3 import configuration_sam3 as sam3
    from transformers.models.sam3_lite_text.configuration_sam3_lite_text import Sam3LiteTextTextConfig

    return {
        "vit": sam3.Sam3ViTConfig,
        "text": Sam3LiteTextTextConfig if text_encoder == "mobileclip" else CLIPTextConfig,
        "detector.geometry_encoder": sam3.Sam3GeometryEncoderConfig,
        "detector.detr_encoder": sam3.Sam3DETREncoderConfig,
        "detector.detr_decoder": sam3.Sam3DETRDecoderConfig,
        "detector.mask_decoder": sam3.Sam3MaskDecoderConfig,
    }


#: ``ModelConfig.box_scoring`` keys and their defaults (an empty mapping: no head).
BOX_SCORING_DEFAULTS = {"roi_size": 4, "samples": 2, "hidden_size": 128}


def box_scoring_settings(spec: dict[str, Any]) -> dict[str, int]:
    """``ModelConfig.box_scoring`` with its defaults filled in, checked."""
    unknown = sorted(set(spec) - set(BOX_SCORING_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown model config box_scoring keys {unknown}; known: {sorted(BOX_SCORING_DEFAULTS)}"
        )
    settings = {**BOX_SCORING_DEFAULTS, **spec}
    bad = [k for k, v in settings.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"model config box_scoring {bad} must be positive integers, got {settings}")
    return settings


def _check_nested_keys(config: ModelConfig) -> None:
    """Refuse a key of vit / text / detector.* that the transformers config it becomes does not take.

    transformers' configs keep an unknown keyword as a plain attribute, so a typo
    (``detector.detr_decoder.num_querys``) would build the default size without a word.
    """
    if not isinstance(config.detector, dict) or set(config.detector) != set(FULL_DETECTOR):
        parts = sorted(config.detector) if isinstance(config.detector, dict) else config.detector
        raise ValueError(f"model config detector must have the parts {sorted(FULL_DETECTOR)}, got {parts}")
    sections = {"vit": config.vit, "text": config.text}
    sections.update({f"detector.{part}": value for part, value in config.detector.items()})
    for name, cls in _nested_config_classes(config.text_encoder).items():
        section = sections[name]
        if not isinstance(section, dict):
            raise ValueError(f"model config {name} must be a mapping, got {section!r}")
        for key, owner in _SET_BY_FIELD.get(name, {}).items():
            if key in section:
                raise ValueError(f"model config {name}.{key} is set by the model config's {owner}: set that")
        known = _own_keywords(cls) - set(_SET_BY_FIELD.get(name, {}))
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(
                f"unknown model config {name} keys {unknown} ({cls.__name__}); known: {sorted(known)}"
            )


@dataclass
class ModelConfig:
    """Everything needed to build one EfficientSAM3 model.

    ``backbone`` is ``"sam3_vit"`` for the teacher or a timm model name for a student;
    ``text_encoder`` is ``"clip"`` (SAM3's own) or ``"mobileclip"`` (SAM3-LiteText).
    """

    name: str
    family: str  # sam3 | repvit | tinyvit | efficientvit
    backbone: str = "sam3_vit"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (tiny configs)
    vit: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(FULL_VIT))
    image_size: int = 1008
    patch_size: int = 14
    fpn_dim: int = 256
    text_encoder: str = "clip"
    text: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(FULL_CLIP_TEXT))
    context_length: int = 32
    detector: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(FULL_DETECTOR))
    #: how the SAM3 parts' random weights start: "sam3" = transformers' normal(0.02), the
    #: scheme SAM3 itself trained from at 256-1024 wide; "fan_in" = PyTorch's per-layer default
    #: (std ~ 1/sqrt(fan_in)). At 32-64 wide, 0.02 shrinks every projection ~10x, so a model
    #: trained from scratch starts blind to its image and its queries all alike; "fan_in" keeps
    #: activations at unit scale. Only matters when training from scratch.
    init: str = "sam3"
    #: TrackerConfig fields that differ from SAM3's tracker for this model (empty: SAM3's sizes).
    #: Small models need a small tracker: 256+256 Perceiver latents would outnumber a 12x12 grid.
    tracker: dict[str, Any] = field(default_factory=dict)
    #: the thresholds and mask clean-up this model is run at (files written before it existed: SAM3's)
    operating_point: OperatingPoint = field(default_factory=OperatingPoint)
    #: students only: add the trunk's stride-4 and stride-8 stage maps to the FPN levels the
    #: detector reads (zero-initialised 1x1 convs; SAM2 feeds its mask decoder the same way).
    #: SAM3's neck builds every level from the stride-14 grid alone, which leaves a small model's
    #: masks as blobs and its shapes hard to tell apart; a multi-stage student trunk computes finer
    #: maps anyway (modeling.student_encoder.HighResFusion). Off: the paper's student.
    high_res_features: bool = False
    #: the scale of the FPN level the DETR encoder reads (and so every box, score and presence
    #: logit), relative to the trunk grid: 1.0 is SAM3 (stride 14); 2.0 gives the detector a
    #: 2x finer grid (stride 7, 4x the tokens) for small models whose objects are only a few
    #: trunk cells wide. The mask decoder's finer levels (4x, 2x) are unchanged.
    detr_level_scale: float = 1.0
    #: a class-logit correction read from the 4x level inside each query's box
    #: (modeling.box_scoring; keys roi_size, samples, hidden_size). Empty: none, SAM3's scoring.
    #: A head for small models whose stride-14/16 grid is too coarse to tell shapes apart.
    box_scoring: dict[str, int] = field(default_factory=dict)
    description: str = ""

    @property
    def is_student(self) -> bool:
        return self.backbone != "sam3_vit"

    @property
    def trunk_dim(self) -> int:
        """Channels of the trunk feature the neck consumes (1024 for SAM3)."""
        return int(self.vit["hidden_size"])

    @property
    def fpn_level_scales(self) -> tuple[float, float, float]:
        """Scales of the three FPN levels the detector reads, finest first (the last feeds the DETR encoder)."""
        if isinstance(self.detr_level_scale, bool) or self.detr_level_scale not in DETR_LEVEL_SCALES:
            raise ValueError(
                f"{self.name}: detr_level_scale {self.detr_level_scale} is not one of {DETR_LEVEL_SCALES} "
                "(1.0: SAM3's trunk-grid level; 2.0: the 2x level, a finer detector grid)"
            )
        return (4.0, 2.0, float(self.detr_level_scale))

    @property
    def fpn_level_sides(self) -> tuple[int, int, int]:
        """Sides of those three levels at ``image_size`` (48, 24, 12 for the demo models)."""
        return tuple(int(self.grid_size * scale) for scale in self.fpn_level_scales)

    @property
    def grid_size(self) -> int:
        """Side of the trunk feature map: 72 at 1008 input with patch 14."""
        return self.image_size // self.patch_size

    def with_image_size(self, image_size: int) -> ModelConfig:
        """A copy at another input size (must be a multiple of the patch size)."""
        check_image_size(image_size, self.patch_size)
        cfg = copy.deepcopy(self)
        cfg.image_size = image_size
        return cfg

    def with_box_scoring(self, spec: dict[str, int]) -> ModelConfig:
        """A copy with the box-scoring head set to ``spec`` (an empty mapping removes it)."""
        cfg = copy.deepcopy(self)
        cfg.box_scoring = dict(spec)
        cfg._check()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A config read from a file (checkpoint metadata, sidecar, zoo overrides), checked before anything is built."""
        check_known_keys(cls, data, "model config keys")
        check_scalar_types(cls, data, "model config")
        data = copy.deepcopy(data)
        point = data.get("operating_point")
        if isinstance(point, dict):
            data["operating_point"] = OperatingPoint.from_dict(point)
        elif point is not None and not isinstance(point, OperatingPoint):
            raise ValueError(f"model config operating_point must be a mapping, got {point!r}")
        config = cls(**data)
        config._check()
        return config

    def _check(self) -> None:
        """Refuse what would build a model other than the one described, or fail only at build time."""
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"model config text_encoder {self.text_encoder!r} is not one of {TEXT_ENCODERS}")
        if self.family not in FAMILIES:
            raise ValueError(f"model config family {self.family!r} is not one of {FAMILIES}")
        if (self.family == "sam3") != (self.backbone == "sam3_vit"):
            # the family picks how released checkpoints are converted (modeling.convert_backbones)
            raise ValueError(
                f"model config family {self.family!r} does not go with backbone {self.backbone!r}: "
                "family 'sam3' is the ViT teacher (backbone 'sam3_vit'), the others are students"
            )
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"model config init {self.init!r} is not one of {INIT_SCHEMES}")
        if self.context_length < 1:
            raise ValueError(
                f"model config context_length must be at least 1 token, got {self.context_length}"
            )
        from .tracker_config import TrackerConfig  # imports this module

        check_known_keys(TrackerConfig, self.tracker, "model config tracker keys")
        check_image_size(self.image_size, self.patch_size, "model config image_size")
        self.fpn_level_scales  # noqa: B018 -- validates detr_level_scale
        if not isinstance(self.box_scoring, dict):
            raise ValueError(f"model config box_scoring must be a mapping, got {self.box_scoring!r}")
        if self.box_scoring:
            box_scoring_settings(self.box_scoring)
        _check_nested_keys(self)
