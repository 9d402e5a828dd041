"""The model registry: one small function per model name (timm style).

Each function returns a ``ModelConfig``; ``build_model(name)`` turns it into modules.
Names: ``sam3`` (the teacher), ``es-{rv,tv,ev}-{s,m,l}`` (the nine EfficientSAM3 students:
RepViT M0.9/M1.1/M2.3, TinyViT 5M/11M/21M, EfficientViT B0/B1/B2), and ``*-tiny`` configs
of the teacher and of each student family for tests (random weights, 112 px input), and
``demo-teacher`` / ``demo-student``: the small pair the shipped demo model is trained as
(training/demo/recipe.sh).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import FULL_VIT, MOBILECLIP_TEXT, ModelConfig, OperatingPoint
from .efficientsam3 import EfficientSam3Model

_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}


@dataclass(frozen=True)
class StudentSpec:
    family: str
    timm_name: str
    paper_name: str


# The nine stage-1 students of EfficientSAM3 (paper Table 1).
STUDENTS: dict[str, StudentSpec] = {
    "es-rv-s": StudentSpec("repvit", "repvit_m0_9", "RepViT-M0.9"),
    "es-rv-m": StudentSpec("repvit", "repvit_m1_1", "RepViT-M1.1"),
    "es-rv-l": StudentSpec("repvit", "repvit_m2_3", "RepViT-M2.3"),
    "es-tv-s": StudentSpec("tinyvit", "tiny_vit_5m_224", "TinyViT-5M"),
    "es-tv-m": StudentSpec("tinyvit", "tiny_vit_11m_224", "TinyViT-11M"),
    "es-tv-l": StudentSpec("tinyvit", "tiny_vit_21m_224", "TinyViT-21M"),
    "es-ev-s": StudentSpec("efficientvit", "efficientvit_b0", "EfficientViT-B0"),
    "es-ev-m": StudentSpec("efficientvit", "efficientvit_b1", "EfficientViT-B1"),
    "es-ev-l": StudentSpec("efficientvit", "efficientvit_b2", "EfficientViT-B2"),
}

# Shrunken timm kwargs per family, for the tiny test configs.
_TINY_BACKBONES: dict[str, tuple[str, dict]] = {
    "repvit": ("repvit_m0_9", {"embed_dim": (16, 24, 32, 48), "depth": (1, 1, 1, 1)}),
    "tinyvit": (
        "tiny_vit_5m_224",
        {
            "embed_dims": (16, 24, 32, 48),
            "depths": (1, 1, 1, 1),
            "num_heads": (1, 1, 2, 2),
            "window_sizes": (4, 4, 4, 4),
        },
    ),
    "efficientvit": (
        "efficientvit_b0",
        {"widths": (8, 16, 24, 32, 48), "depths": (1, 1, 1, 1, 1), "head_dim": 8},
    ),
}
_FAMILY_ABBREV = {"repvit": "rv", "tinyvit": "tv", "efficientvit": "ev"}


def register_model(name: str) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    def wrap(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The config registered under ``name``; a clear error lists the known names."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}") from None
    return fn()


def build_model(
    name_or_config: str | ModelConfig, *, input_size: int | None = None, device: str | torch.device = "cpu"
) -> EfficientSam3Model:
    """Build a model with random weights (load weights with ``efficientsam3_ros.modeling.checkpoint``)."""
    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if input_size is not None:
        config = config.with_image_size(input_size)
    with torch.device(device):
        model = EfficientSam3Model(config)
    return model.eval()


def count_parameters(name: str) -> dict[str, int]:
    """Parameter counts per part, without allocating weights (built on the meta device)."""
    config = get_config(name)
    with torch.device("meta"):
        model = EfficientSam3Model(config)
    det = model.detector

    def n(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    trunk = model.image_trunk
    backbone = n(trunk.backbone) if config.is_student else n(trunk)
    return {
        "total": n(model),
        "trunk": n(trunk),
        "backbone": backbone,
        "text": n(det.text_encoder) + n(det.text_projection),
        "detector": n(model) - n(trunk) - n(det.text_encoder) - n(det.text_projection),
    }


# ----------------------------------------------------------------------------- teacher
@register_model("sam3")
def sam3() -> ModelConfig:
    return ModelConfig(name="sam3", family="sam3", description="SAM3 teacher: ViT trunk (446M) + CLIP text")


@register_model("sam3-tiny")
def sam3_tiny() -> ModelConfig:
    vit = {**copy.deepcopy(FULL_VIT), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    vit.update(num_attention_heads=2, window_size=4, global_attn_indexes=[1], pretrain_image_size=112)
    return _tiny(
        ModelConfig(name="sam3-tiny", family="sam3", vit=vit, description="tiny random SAM3 for tests")
    )


# ---------------------------------------------------------------------------- students
def _student(name: str) -> ModelConfig:
    spec = STUDENTS[name]
    return ModelConfig(
        name=name,
        family=spec.family,
        backbone=spec.timm_name,
        description=f"EfficientSAM3 student: {spec.paper_name} trunk + SAM3 CLIP text",
    )


for _name in STUDENTS:
    register_model(_name)(lambda _n=_name: _student(_n))


def _small_text(width: int = 32, projection: int = 32, layers: int = 2, **extra: object) -> dict:
    """A shrunken text tower (CLIP or MobileCLIP kwargs) for test and demo configs."""
    return {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "projection_dim": projection,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        **extra,
    }


def _small_detector(width: int, heads: int, decoder_layers: int, queries: int) -> dict:
    """SAM3's detector heads at toy width: one geometry and one DETR-encoder layer."""
    layer = {"hidden_size": width, "num_attention_heads": heads, "intermediate_size": 2 * width}
    return {
        "geometry_encoder": {**layer, "num_layers": 1},
        "detr_encoder": {**layer, "num_layers": 1},
        "detr_decoder": {**layer, "num_layers": decoder_layers, "num_queries": queries},
        "mask_decoder": {"hidden_size": width, "num_attention_heads": heads},
    }


def _tiny(config: ModelConfig) -> ModelConfig:
    """Shrink everything but the architecture: 112 px input, 32-wide heads, 2-layer text."""
    config.image_size = 112
    config.fpn_dim = 32
    config.vit["hidden_size"] = config.vit.get("hidden_size", 32) if config.family == "sam3" else 32
    config.text = _small_text()
    config.detector = _small_detector(width=32, heads=2, decoder_layers=2, queries=16)
    return config


def _tiny_student(family: str) -> ModelConfig:
    timm_name, kwargs = _TINY_BACKBONES[family]
    name = f"es-{_FAMILY_ABBREV[family]}-tiny"
    config = ModelConfig(
        name=name,
        family=family,
        backbone=timm_name,
        backbone_kwargs=copy.deepcopy(kwargs),
        description=f"tiny random {family} student for tests",
    )
    return _tiny(config)


for _family in _TINY_BACKBONES:
    register_model(f"es-{_FAMILY_ABBREV[_family]}-tiny")(lambda _f=_family: _tiny_student(_f))


# ------------------------------------------------------------- SAM3-LiteText text students
@register_model("es-ev-tiny-mobileclip")
def es_ev_tiny_mobileclip() -> ModelConfig:
    config = _tiny_student("efficientvit")
    config.name = "es-ev-tiny-mobileclip"
    config.text_encoder = "mobileclip"
    config.text = _small_text(use_repmixer_blocks=True, repmixer_kernel_size=3)
    config.description = "tiny random EfficientViT student with a MobileCLIP (SAM3-LiteText) text tower"
    return config


for _variant, _kwargs in MOBILECLIP_TEXT.items():

    def _litetext(_v: str = _variant, _kw: dict = _kwargs) -> ModelConfig:
        config = _student("es-ev-m")
        config.name = f"es-ev-m-{_v}"
        config.text_encoder = "mobileclip"
        config.text = copy.deepcopy(_kw)
        config.description = f"EfficientViT-B1 student + SAM3-LiteText {_v} text tower"
        return config

    register_model(f"es-ev-m-{_variant}")(_litetext)


# ------------------------------------------------------------------ the demo model (issue 8)
def _demo(config: ModelConfig, queries: int = 16) -> ModelConfig:
    """Small enough to learn the synthetic colour+shape world on 2 CPU cores (168 px, 48-64 wide)."""
    config = _tiny(config)
    config.image_size = 168  # 12x12 trunk grid, 48x48 masks: the world's shapes span 3-7 mask cells
    config.fpn_dim = 48
    config.text = _small_text(projection=48, layers=1)
    config.context_length = 8
    config.detector = _small_detector(width=48, heads=4, decoder_layers=3, queries=queries)
    config.init = "fan_in"  # trained from scratch at 48-64 wide (see ModelConfig.init)
    config.tracker = dict(DEMO_TRACKER)
    config.operating_point = DEMO_OPERATING_POINT
    return config


#: The demo student's operating point, chosen on validation sequences (world seeds 5-12; not
#: held-out ones; models/demo/MODEL_CARD.md). Trained on hard negatives, its true detections
#: often score 0.05-0.6, under SAM3's 0.5 / 0.7, while absent look-alikes mostly stay under 0.4:
#: a detection is reported from 0.05 (keeping a track alive through a low-score frame) but starts
#: a track only from 0.4, the hysteresis ByteTrack-style trackers use. (0.1 / 0.35 until session
#: 29, chosen at 168 px on seeds 5-7; swept again for the 336 px student on seeds 5-12.) Its masks
#: spill onto same-concept neighbours, which their boxes cut away; its mask logits are lopsided
#: (about +7 inside an object, -42 just outside), so logit 0 of the upsampled masks lies inside the
#: object's edge: a pixel belongs to it from probability 0.01. With the memory tracker (chosen on
#: seed 5): re-condition a track on every detection it matches at score 0.35 or more, report
#: and match on the detection's mask (the tracker's propagation is rougher), drop a young track
#: at its first miss, and coast a mature one on memory for 5 frames.
DEMO_OPERATING_POINT = OperatingPoint(
    score_threshold=0.05,
    new_track_threshold=0.4,
    crop_masks_to_boxes=True,
    mask_threshold=0.01,
    memory_tracking={
        "recondition_score": 0.35,
        "recondition_every": 1,
        "recondition_iou": 0.5,
        "associate_last_mask": True,
        "use_propagated_masks": False,
        "young_track_max_missed": 0,
        "max_missed_frames": 5,
    },
)


#: The demo models' tracker: 64 wide like their trunk, 16 + 16 Perceiver latents per memory
#: frame (a 12x12 grid at 168 px holds only 144 tokens, 21x21 at the shipped 336 px 441; SAM3's 256 + 256
#: would not compress the smaller grids at all).
DEMO_TRACKER: dict[str, object] = {
    "hidden_size": 64,
    "memory_attention_layers": 2,
    "memory_attention_mlp": 128,
    "mask_decoder_heads": 4,
    "mask_decoder_mlp": 128,
    "iou_head_hidden": 64,
    "memory_fuser_intermediate": 128,
    "num_latents_1d": 16,
    "num_latents_2d": 16,
    "perceiver_layers": 1,
    "perceiver_mlp": 64,
    # trained from scratch in minutes, its memory alone did not tell objects apart (model card)
    "prompt_previous_mask": True,
}


@register_model("demo-teacher")
def demo_teacher() -> ModelConfig:
    vit = {**copy.deepcopy(FULL_VIT), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4}
    vit.update(num_attention_heads=4, window_size=4, global_attn_indexes=[1, 3], pretrain_image_size=168)
    config = ModelConfig(
        name="demo-teacher",
        family="sam3",
        vit=vit,
        description="small SAM3 teacher for the synthetic demo world",
    )
    config = _demo(config)
    config.vit["hidden_size"] = 64
    # its mask logits are less lopsided than the student's: on the validation sequences (seeds
    # 5-7) its masks read best from probability 0.047 (0.01: mask IoU 0.550, 0.047: 0.579, 0.5: 0.545);
    # it keeps the thresholds 0.25 / 0.35 it was chosen and scored at (the student's were swept on
    # the student only)
    config.operating_point = dataclasses.replace(
        DEMO_OPERATING_POINT, score_threshold=0.25, new_track_threshold=0.35, mask_threshold=0.047
    )
    return config


@register_model("demo-student")
def demo_student() -> ModelConfig:
    config = ModelConfig(
        name="demo-student",
        family="efficientvit",
        backbone="efficientvit_b0",
        # stride-16 output (timm feature index 2; the stride-32 stage is dropped): at 168 px the
        # last stage would leave a 5x5 map for a 12x12 grid, too coarse for the world's shapes
        backbone_kwargs={
            "widths": (8, 16, 32, 64, 64),
            "depths": (1, 1, 2, 4, 1),
            "head_dim": 16,
            "out_indices": (2,),
        },
        description="slim stride-16 EfficientViT-B0 student, the demo model (synthetic colour+shape world)",
    )
    config = _demo(config)
    config.vit["hidden_size"] = 64  # the trunk width the neck consumes = the teacher's
    # the trunk's stride-4/8 maps (42 and 21 px at 168) join the FPN levels: the world's shapes
    # are 2-4 trunk cells wide, too coarse to keep a square's corners, which are what tells it
    # from a circle of the same colour (most of the student's false positives) and what its
    # masks lose
    config.high_res_features = True
    # trained at 168 px (stages 1 and 3), then finished at 336 px with a box-scoring head
    # (student_stage3_336.yaml; the shipped student had a 224 px finish in between,
    # experiments/student_stage3_224.yaml): the shipped export's model.json says 336 and carries
    # the head, and that is what it runs at
    return config
