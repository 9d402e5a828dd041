"""Building the models a stage needs: teacher and student from the registry, start weights, trackers.

Why here and not in the stages: every stage builds "a registry model at the run's input
size, with these weights, frozen or not" and the same rules apply (a teacher without
weights is only acceptable for the tiny test models; students inherit the teacher's
heads), so they live in one place.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling import EfficientSam3Model, build_model, get_config
from ..modeling.checkpoint import FORMAT_NAME, plan_checkpoint, read_config
from ..modeling.checkpoint_files import CheckpointError, OpenCheckpoint, open_checkpoint
from ..modeling.config import ModelConfig, box_scoring_settings
from ..modeling.tracker import TrackerModel
from ..modeling.tracker_config import TrackerConfig, default_tracker_config
from .config import TrainConfig
from .export import load_weights, matching_names, transfer_matching

log = logging.getLogger(__name__)

#: Student parts that start at zero, so a file without them loads as the model it was made
#: from (README "Finer features for small students"): a stage-1 export of a plain student
#: into one with ``high_res_features``, or a student export into one with ``box_scoring``
#: (whose output layer starts at zero, modeling.box_scoring).
ZERO_START_PREFIXES = ("detector.vision_encoder.high_res_fusion.", "box_scoring.")
#: ModelConfig fields that decide the image side's weights. A start file exported for other
#: values is another architecture. Not the input size (a model carries over to another one),
#: the text tower (stage 1 text replaces it on purpose; its keys are checked by name) or
#: ``high_res_features`` (zero-started, above).
IMAGE_ARCHITECTURE = (
    "family",
    "backbone",
    "backbone_kwargs",
    "vit",
    "patch_size",
    "fpn_dim",
    "detector",
    "detr_level_scale",
)
#: What a dense SAM3 tracker file cannot fill in a Perceiver tracker: its memory path, which
#: stage 2 trains (``options.train``'s default); every other tracker tensor must come from it.
PERCEIVER_MEMORY_PREFIXES = ("memory_codec.", "sam.memory_attention.")


class StageModule(nn.Module):
    """A stage's module: what it trains as submodules, the frozen models it reads in ``_frozen``.

    Why a tuple: it keeps the frozen models (teachers, the image model a tracker reads) out of
    ``state_dict``, the optimizer and DDP. Why this class: ``.to()`` still reaches them, so a
    device move or the trainer's memory layout (``run.memory_format``) applies to every model
    a step runs, not only to the trained one.
    """

    _frozen: tuple[nn.Module | None, ...] = ()

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (torch's private signature)
        super()._apply(fn, recurse)
        for model in self._frozen:
            if model is not None:
                model._apply(fn, recurse)
        return self


def freeze(module: nn.Module) -> nn.Module:
    """Frozen and in eval mode (BatchNorm statistics and dropout fixed)."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


def build_teacher(config: TrainConfig) -> EfficientSam3Model:
    """The frozen SAM3 teacher with its weights (random only for the tiny test configs, with a warning)."""
    model = build_model(config.model.teacher, input_size=config.model.input_size)
    if config.model.teacher_checkpoint:
        load_weights(model, config.model.teacher_checkpoint, strict=True)
    elif not config.model.teacher.endswith("-tiny"):
        log.warning("model.teacher_checkpoint is unset: distilling from a RANDOM %s", config.model.teacher)
    return freeze(model)


def build_student(
    config: TrainConfig,
    teacher: EfficientSam3Model | None = None,
    exclude: tuple[str, ...] = (),
    may_lack: tuple[str, ...] = (),
) -> EfficientSam3Model:
    """The student: the teacher's weights where shapes agree (minus ``exclude``), then its own start weights.

    ``may_lack``: name prefixes of the part this stage trains from its own start (stage 1
    text's tower), which ``model.student_checkpoint`` need not fill; every other tensor
    must come from the teacher or from the file (:func:`check_student_weights`).
    """
    student_config = get_config(config.model.student)
    if config.model.box_scoring is not None:
        student_config = student_config.with_box_scoring(config.model.box_scoring)
    model = build_model(student_config, input_size=config.model.input_size)
    from_teacher: set[str] = set()
    if teacher is not None and config.model.init_from_teacher:
        from_teacher = matching_names(teacher, model, exclude)
        copied = transfer_matching(teacher, model, exclude)
        log.info("student %s: %d tensors initialised from the teacher", config.model.student, copied)
    if config.model.student_checkpoint:
        ckpt = open_checkpoint(config.model.student_checkpoint)
        _check_box_scoring_kept(config, ckpt.path)
        check_student_weights(model, ckpt, from_teacher, may_lack)
        missing = load_weights(model, ckpt)
        log.info(
            "student weights from %s (%d tensors not in the file)",
            config.model.student_checkpoint,
            len(missing),
        )
    return model


def check_student_weights(
    model: EfficientSam3Model,
    ckpt: OpenCheckpoint,
    from_teacher: set[str],
    may_lack: tuple[str, ...] = (),
) -> None:
    """Refuse a ``model.student_checkpoint`` made for another model, before a tensor is copied.

    Why: the load is partial on purpose (a stage-1 image export into a text student, an
    export without the detector when the teacher supplies it), and a file exported for
    another trunk used to load as far as names matched, leaving a mix of its weights and
    random ones behind a warning. Now the file must fill every tensor the teacher did not,
    except ``may_lack`` and the zero-started parts, with the right shapes, and a config in
    its metadata must name the same image architecture.
    """
    path = ckpt.path
    _check_architecture(model.config, _file_config(path), path)
    _, plan = plan_checkpoint(model, ckpt)
    optional = may_lack + ZERO_START_PREFIXES
    needed = [k for k in model.state_dict() if k not in from_teacher and not k.startswith(optional)]
    lacking = [k for k in needed if k not in plan.assignments]
    wrong = [
        f"{t} (model {list(m)}, file {list(c)})"
        for t, _, m, c in plan.mismatched
        if not t.startswith(may_lack)
    ]
    if lacking or wrong:
        raise CheckpointError(
            f"model.student_checkpoint {path} does not fit {model.config.name}: "
            f"{_problems(lacking, wrong, 'tensors that nothing else fills are not in the file')}. "
            f"Point it at an export of {model.config.name} (a previous stage's "
            "export/model.safetensors), or set model.student to the model the file was made for"
        )


def _check_box_scoring_kept(config: TrainConfig, path: Path) -> None:
    """Refuse to drop a start file's box-scoring head without being told to.

    Why: a partial load ignores the file's tensors the model lacks, so fine-tuning from an export
    with the head (the demo student's) under a registry model without it would silently train
    and export a model without it. ``model.box_scoring: {}`` drops it on purpose.
    """
    stored = _file_config(path)
    if stored is None or not stored.box_scoring:
        return
    asked = config.model.box_scoring
    if asked is None:
        raise CheckpointError(
            f"model.student_checkpoint {path} has a box-scoring head ({stored.box_scoring}) that "
            f"model.student {config.model.student} lacks: set model.box_scoring: {stored.box_scoring} "
            "to keep training it, or model.box_scoring: {} to drop it"
        )
    if asked and box_scoring_settings(asked) != box_scoring_settings(stored.box_scoring):
        raise CheckpointError(
            f"model.student_checkpoint {path} has a box-scoring head {stored.box_scoring}, "
            f"model.box_scoring asks for {asked}: set it to the file's to keep training that head, "
            "or to {} to drop it"
        )


def _problems(lacking: list[str], wrong: list[str], lacking_text: str) -> str:
    """``"12 <lacking_text> (e.g. ...); 1 has another shape (e.g. ...)"``, naming the first keys."""
    parts = [f"{len(lacking)} {lacking_text} (e.g. {lacking[:3]})"] if lacking else []
    if wrong:
        parts.append(f"{len(wrong)} {'has' if len(wrong) == 1 else 'have'} another shape (e.g. {wrong[:3]})")
    return "; ".join(parts)


def _file_config(path: Path) -> ModelConfig | None:
    """The ModelConfig a checkpoint carries (metadata or sidecar), if any; an unreadable one is refused."""
    try:
        return read_config(path)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(
            f"{path}: its config (metadata or sidecar .json) is unreadable: {err}"
        ) from None


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _check_architecture(model: ModelConfig, stored: ModelConfig | None, path: Path) -> None:
    if stored is None:
        return
    # compared as JSON: a file's config was read back from JSON (lists where the registry has tuples)
    differ = [f for f in IMAGE_ARCHITECTURE if _as_json(getattr(stored, f)) != _as_json(getattr(model, f))]
    if differ:
        shown = ", ".join(f"{f} {getattr(stored, f)!r} vs {getattr(model, f)!r}" for f in differ[:2])
        raise CheckpointError(
            f"model.student_checkpoint {path} was exported for {stored.name}, another image architecture "
            f"than model.student {model.name} ({shown}). Point it at an export of {model.name}, or set "
            f"model.student: {stored.name}"
        )


def build_tracker(
    image_model: EfficientSam3Model,
    memory: str,
    config: TrainConfig,
    overrides: dict[str, Any] | None = None,
) -> TrackerModel:
    """A tracker sized for ``image_model`` with SAM3's tracker weights (``model.tracker_checkpoint``).

    ``overrides``: TrackerConfig fields that replace the image model's defaults (stage 2's
    ``options.tracker``); ``memory`` there wins over the argument.

    Its random start is drawn from ``run.seed`` alone, on a forked RNG: otherwise it would
    depend on how many random numbers building the image model drew first, and any change to
    the image architecture would silently re-draw a tracker trained from scratch.
    """
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: the tracker is built there
        torch.default_generator.manual_seed(config.run.seed)
        tracker_config = default_tracker_config(image_model.config, memory)
        if overrides:
            tracker_config = TrackerConfig.from_dict({**asdict(tracker_config), **overrides})
        tracker = TrackerModel(image_model.config, tracker_config)
    if config.model.tracker_checkpoint:
        load_tracker_weights(tracker, config.model.tracker_checkpoint, image_model.config.name)
    elif not image_model.config.name.endswith("-tiny"):
        log.warning("model.tracker_checkpoint is unset: the tracker's SAM heads are RANDOM")
    return tracker


def load_tracker_weights(tracker: TrackerModel, path: str | Path, image_model: str) -> None:
    """``model.tracker_checkpoint`` into ``tracker``: every tensor but a Perceiver's memory path.

    Why the check: the load used to be silently partial, so a file of another model (an
    image-model export, say) matched none of the names and the tracker stayed random.
    The file must be a dense ``TrackerModel`` state dict for this image model: it fills a
    dense tracker whole, and a Perceiver one but for ``PERCEIVER_MEMORY_PREFIXES``.
    """
    ckpt = open_checkpoint(path)
    own = tracker.state_dict()
    optional = PERCEIVER_MEMORY_PREFIXES if tracker.config.memory == "perceiver" else ()
    lacking = [k for k in own if k not in ckpt.shapes and not k.startswith(optional)]
    wrong = [k for k, shape in ckpt.shapes.items() if k in own and tuple(own[k].shape) != shape]
    if lacking or wrong:
        what = " It is an image-model checkpoint." if ckpt.metadata.get("format") == FORMAT_NAME else ""
        raise CheckpointError(
            f"model.tracker_checkpoint {path} does not fit the {tracker.config.memory} tracker of "
            f"{image_model}: {_problems(lacking, wrong, f'of its {len(own)} tensors are not in the file')}."
            f"{what} It must be a dense TrackerModel state dict sized for {image_model} (SAM3's "
            "tracker), or unset it"
        )
    load_weights(tracker, ckpt)


TRUNK_PREFIX = "detector.vision_encoder.backbone."
TEXT_PREFIXES = ("detector.text_encoder.", "detector.text_projection.")
