"""Training configs: one dataclass schema, loaded from YAML and validated before anything is built.

A run is described by one YAML file (``training/configs/*.yaml``) plus ``key=value``
overrides from the command line. Every key is checked against the schema on load, so
a typo (``optim.lr_warmup``) fails in the first second with the bad key and the valid
ones named, instead of being silently ignored on a 64-GPU job. The stage-specific
section is ``options``; its schema depends on ``stage``.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config_utils import MEMORY_FORMATS

STAGES = ("stage1-image", "stage1-text", "stage2", "stage3")
DATA_FORMATS = ("sa1b", "sav", "saco", "coco", "text")
AMP_MODES = ("auto", "bf16", "fp16", "none")
OPTIMIZER_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
RESIZE_MODES = ("stretch", "letterbox")


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the offending key."""


# ----------------------------------------------------------------------------- sections
@dataclass
class ModelSection:
    """Which models take part. Names are ``efficientsam3_ros.modeling`` registry names."""

    student: str = "es-ev-tiny"  # the model being trained (stage 2: the image model feeding the tracker)
    teacher: str = "sam3-tiny"  # the frozen teacher (SAM3; "sam3-tiny" in tests)
    student_checkpoint: str | None = None  # start weights (a previous stage's safetensors export)
    teacher_checkpoint: str | None = None  # SAM3 weights (safetensors); random if unset (tests only)
    tracker_checkpoint: str | None = None  # SAM3 tracker weights (stage 2, prompt-in-the-loop)
    init_from_teacher: bool = True  # copy the teacher's weights into every student part that is not distilled
    input_size: int | None = None  # override the square input size (a multiple of 14)
    # the student's box-scoring head (ModelConfig.box_scoring, e.g. {roi_size: 4}); None: the
    # registry model's (or, from a start file that has one, an error naming this key)
    box_scoring: dict[str, int] | None = None


@dataclass
class DataSection:
    """Where samples come from; see ``efficientsam3_ros.training.data`` for the fields each format reads."""

    format: str = "sa1b"  # sa1b | sav | saco | coco | text
    root: str = ""  # dataset folder (images / frames relative to it)
    annotations: str | None = None  # COCO / SA-Co JSON (default: <root>/annotations.json)
    file_list: str | None = (
        None  # text file, one record per line (SA-1B json / SA-V video id); fatal if missing
    )
    prompts: str | None = None  # stage1-text: text file with one noun phrase per line
    resize: str = "stretch"  # stretch (SAM3: resize to the square) | letterbox (keep aspect, pad)
    hflip: float = 0.0  # probability of a horizontal flip
    clip_length: int = 4  # stage 2: frames per training clip
    # SA-V: video frames per masklet row when the JSON has no annotated_frame_indices (the released
    # files annotate at 6 fps of 24: row i is frame 4*i, file <4*i:05d>.jpg)
    frame_stride: int = 4
    max_objects: int = 4  # stage 2 objects per clip / stage1 prompts per image
    negatives_per_image: int = 1  # COCO -> concept pairs: absent category names per image
    # stage 3: batch up to this many of one image's phrases side by side; the image is encoded once
    # for all of them (SAM3 trains many phrases per image), so a step costs less; 1 = independent draws
    phrases_per_image: int = 1
    limit: int | None = None  # use only the first N records (debugging)
    num_workers: int = 0
    # saco / coco: keep up to this many MB of images decoded and resized to the input in RAM, per
    # loading process (each DataLoader worker keeps its own); 0 decodes every time. Pays when the
    # images fit and recur, as in the demo world (README "Caching resized images")
    cache_mb: float = 0.0


@dataclass
class OptimSection:
    """AdamW + cosine schedule with linear warm-up; clipping and accumulation per optimizer step."""

    lr: float = 1.0e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01  # final lr = lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step
    # how torch runs AdamW's update: auto (fused kernel on CPU and CUDA, 1.2x faster demo-student
    # steps on 2 CPU cores than the for-loop: bench/training_step.py --optimizer) | fused | foreach
    # | for-loop (torch's CPU default before; the same maths, different last bits)
    implementation: str = "auto"


@dataclass
class RunSection:
    """Loop, logging, checkpointing. ``batch_size`` is per rank and micro-batch."""

    output_dir: str = "runs/train"
    steps: int = 1000  # optimizer steps (the schedule's length)
    batch_size: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun sets the local GPU)
    amp: str = "auto"  # auto (bf16 on GPUs that have it, else fp16; none on CPU) | bf16 | fp16 | none
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # newest N step checkpoints kept (0 keeps all)
    stop_at_step: int | None = None  # stop here without the final export (time-boxed jobs, resume tests)
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on rank 0
    # DDP's find_unused_parameters. Unset (null): the stage's own answer, true for stages 2 and 3
    # (StageRunner.leaves_parameters_unused); false saves a graph walk per step where every
    # trainable parameter is known to get a gradient on every step
    find_unused_parameters: bool | None = None
    # layout of the models' 4-D weights and activations (modeling.memory_format): auto is
    # channels-last on the CPU for a student's stage that runs images (oneDNN's convolutions skip
    # a reorder per call; README "Channels-last on the CPU"), as is otherwise | channels_last |
    # contiguous
    memory_format: str = "auto"
    export_name: str = "model.safetensors"


@dataclass
class ImageStageOptions:
    """stage1-image: trunk distillation, optionally with prompt-in-the-loop mask distillation."""

    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    feature_cache: str | None = None  # folder for the teacher feature cache; unset: teacher runs every step
    cache_shard_size: int = 256  # samples per fp16 shard
    cache_batch_size: int = 8  # teacher batch while filling the cache
    prompt_in_loop: bool = False  # add BCE + Dice between masks decoded from student vs teacher features
    point_prob: float = 0.5  # share of sampled prompts that are points (the rest are boxes)
    mask_bce_weight: float = 1.0
    mask_dice_weight: float = 1.0


@dataclass
class TextStageOptions:
    """stage1-text: SAM3 text encoder -> MobileCLIP student, on the projected token outputs."""

    mse_weight: float = 1.0
    cosine_weight: float = 1.0


@dataclass
class VideoStageOptions:
    """stage2: Perceiver memory (+ memory attention) against the dense-memory tracker on clips."""

    target: str = "teacher"  # teacher (distillation) | gt (the clip's masks)
    #: TrackerConfig fields that override the image model's tracker for the one being trained,
    #: e.g. {prompt_previous_mask: true} or {memory: dense} (dense only with target gt: the
    #: dense tracker is what distillation copies); misspelt fields are refused
    tracker: dict[str, Any] = field(default_factory=dict)
    dice_weight: float = 1.0
    focal_weight: float = 20.0
    iou_weight: float = 1.0
    object_weight: float = 1.0  # BCE on the object-score logit (is the object visible)
    #: weight of the same losses on the conditioning frame (the decoder's answer to the mask
    #: prompt); 0 keeps SAM3's trained decoder out of it, > 0 helps a decoder trained from scratch
    condition_weight: float = 0.0
    train: list[str] = field(default_factory=lambda: ["sam.memory_attention.*", "memory_codec.*"])


@dataclass
class ConceptStageOptions:
    """stage3: end-to-end concept segmentation with Hungarian matching (DETR-style losses)."""

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    class_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    presence_weight: float = 1.0
    mask_dice_weight: float = 1.0
    mask_focal_weight: float = 5.0
    #: mask losses on the predicted logits upsampled (bilinear) to the input size against the
    #: full-resolution truth, i.e. on the masks as the pipeline reads them, instead of on the
    #: 4g x 4g head output against the truth resized to it. With the latter the demo model's
    #: logits came out lopsided (+7 inside, -42 just outside) and its masks read too small at 0.
    mask_loss_at_input: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    distill_weight: float = 0.0  # > 0: add distillation on the teacher's (query-aligned) outputs
    #: weight of the class/box/presence losses on every earlier decoder layer (DETR's auxiliary
    #: losses, which SAM3 trains with too); 0 = last layer only
    aux_weight: float = 1.0
    #: weight of a class loss on the last layer's queries of absent-phrase datapoints (focal, every
    #: label 0), relative to the present phrases' class loss: it enters as class_weight x this.
    #: SAM3 leaves "not in this image" to the presence logit alone (0 here); a head that must
    #: learn to say "not this shape" per query (ModelConfig.box_scoring) learns it from these.
    negative_class_weight: float = 0.0
    train: list[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns of parameters that train
    freeze: list[str] = field(default_factory=list)  # patterns frozen even if ``train`` matches them


STAGE_OPTIONS: dict[str, type] = {
    "stage1-image": ImageStageOptions,
    "stage1-text": TextStageOptions,
    "stage2": VideoStageOptions,
    "stage3": ConceptStageOptions,
}


@dataclass
class TrainConfig:
    """One training run. ``options`` holds the stage's own section (its type depends on ``stage``)."""

    stage: str
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    options: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- loading
def load_config(
    path: str | Path, overrides: list[str] | None = None, stage: str | None = None
) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate. ``stage`` must agree with the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    if stage is not None:
        if data.get("stage", stage) != stage:
            raise ConfigError(f"config {path} is for stage {data['stage']!r}, not {stage!r}")
        data["stage"] = stage
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """``optim.lr=3e-4`` -> data["optim"]["lr"] = 3e-4 (the value is parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict against the schema; errors name the key path and the valid keys."""
    data = copy.deepcopy(data)
    stage = data.get("stage")
    if stage not in STAGES:
        raise ConfigError(f"'stage' must be one of {list(STAGES)}; got {stage!r}")
    options = data.pop("options", None) or {}
    config = _build(TrainConfig, data, "")
    config.options = _build(STAGE_OPTIONS[stage], options, "options.")
    _check_values(config)
    return config


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys in "
            f"'{prefix.rstrip('.') or 'top level'}': {sorted(known)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"missing required config key '{prefix}{name}'")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check (and gently convert: int -> float, '1e-3' -> float) one value against its annotation."""
    if hint is Any:
        return value
    if is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"bad value for '{key}'")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"bad value for '{key}': expected a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"bad value for '{key}': expected a mapping, got {value!r}")
        return {_coerce(key_hint, k, key): _coerce(value_hint, v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for '{key}': expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for '{key}': expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"bad value for '{key}': expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"bad value for '{key}': expected a string, got {value!r}")
    raise ConfigError(f"'{key}': unsupported schema type {hint!r}")  # a schema bug, not a user error


def _check_values(config: TrainConfig) -> None:
    """Value-level checks (enumerations, ranges) that the type check cannot express."""

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"bad value for '{key}': {message}")

    need(config.data.format in DATA_FORMATS, "data.format", f"use one of {list(DATA_FORMATS)}")
    need(config.data.resize in RESIZE_MODES, "data.resize", f"use one of {list(RESIZE_MODES)}")
    need(config.run.amp in AMP_MODES, "run.amp", f"use one of {list(AMP_MODES)}")
    need(
        config.run.memory_format in MEMORY_FORMATS, "run.memory_format", f"use one of {list(MEMORY_FORMATS)}"
    )
    need(
        config.optim.implementation in OPTIMIZER_IMPLEMENTATIONS,
        "optim.implementation",
        f"use one of {list(OPTIMIZER_IMPLEMENTATIONS)}",
    )
    need(0.0 <= config.data.hflip <= 1.0, "data.hflip", "a probability in [0, 1]")
    need(config.data.clip_length >= 2, "data.clip_length", "at least 2 frames (1 prompt + 1 tracked)")
    need(config.data.max_objects >= 1, "data.max_objects", "at least 1")
    need(config.data.phrases_per_image >= 1, "data.phrases_per_image", "at least 1 (1: no grouping)")
    need(
        config.data.phrases_per_image == 1 or config.stage == "stage3",
        "data.phrases_per_image",
        "only stage3 encodes an image once for several phrases; leave it at 1",
    )
    need(config.data.frame_stride >= 1, "data.frame_stride", "at least 1 (video frames per masklet row)")
    need(config.data.limit is None or config.data.limit >= 1, "data.limit", "at least 1, or null for all")
    need(config.data.num_workers >= 0, "data.num_workers", "must be >= 0 (0 loads in the main process)")
    need(config.data.cache_mb >= 0, "data.cache_mb", "must be >= 0 (0 keeps no resized images)")
    need(
        config.data.cache_mb == 0 or config.data.format in ("saco", "coco"),
        "data.cache_mb",
        f"only the saco and coco readers cache resized images; set 0 for format {config.data.format!r}",
    )
    need(config.run.steps >= 1, "run.steps", "at least 1")
    need(config.run.batch_size >= 1, "run.batch_size", "at least 1")
    need(config.run.checkpoint_every >= 1, "run.checkpoint_every", "at least 1")
    need(config.run.log_every >= 1, "run.log_every", "at least 1")
    # numpy's and torch's seeders take [0, 2**32) everywhere; the per-step seeds mix it further
    need(0 <= config.run.seed < 2**32, "run.seed", "an integer in [0, 2**32), e.g. 0 or 20240101")
    need(config.optim.grad_accum >= 1, "optim.grad_accum", "at least 1")
    need(config.optim.lr > 0, "optim.lr", "must be positive")
    need(config.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(len(config.optim.betas) == 2, "optim.betas", "two numbers, e.g. [0.9, 0.999]")
    need(
        all(0.0 <= beta < 1.0 for beta in config.optim.betas),
        "optim.betas",
        "each in [0, 1), e.g. [0.9, 0.999]",
    )
    need(config.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0.0 <= config.optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "in [0, 1] (final lr / lr)")
    need(
        config.model.input_size is None or config.model.input_size > 0,
        "model.input_size",
        "a positive multiple of the patch size 14, or null for the model's own",
    )
    need(
        config.model.input_size is None or config.model.input_size % 14 == 0,
        "model.input_size",
        "a multiple of the patch size 14",
    )
    if config.model.box_scoring is not None:
        from ..modeling.config import box_scoring_settings

        try:  # before a teacher is loaded or a model built
            box_scoring_settings(config.model.box_scoring)
        except ValueError as err:
            need(False, "model.box_scoring", str(err))
    expected = {
        "stage1-image": ("sa1b", "coco", "saco"),
        "stage1-text": ("text",),
        "stage2": ("sav",),
        "stage3": ("saco", "coco"),
    }[config.stage]
    need(config.data.format in expected, "data.format", f"stage {config.stage} reads {list(expected)}")
    options = config.options
    if config.stage == "stage1-image":
        need(
            options.feature_cache is None or config.data.hflip == 0,
            "data.hflip",
            "must be 0 with options.feature_cache (the cache holds features of unflipped images)",
        )
        need(0.0 <= options.point_prob <= 1.0, "options.point_prob", "a probability in [0, 1]")
        need(options.cache_shard_size >= 1, "options.cache_shard_size", "at least 1 (samples per shard)")
        need(options.cache_batch_size >= 1, "options.cache_batch_size", "at least 1 (teacher batch)")
    if config.stage == "stage3":
        need(options.negative_class_weight >= 0, "options.negative_class_weight", "must be >= 0 (0: off)")
    if config.stage == "stage2":
        need(options.target in ("teacher", "gt"), "options.target", "use 'teacher' or 'gt'")
        from ..modeling.tracker_config import (
            TrackerConfig,  # transformers: only when a stage-2 config is read
        )

        try:  # names, kinds and ranges, before any model is built
            TrackerConfig.from_dict({**TrackerConfig().to_dict(), **options.tracker})
        except ValueError as err:
            need(False, "options.tracker", str(err))
        need(
            options.tracker.get("memory", "perceiver") == "perceiver" or options.target == "gt",
            "options.tracker.memory",
            "a dense tracker trains on the clip masks only (options.target: gt): the teacher is dense itself",
        )
