"""Building the models a stage needs: teacher and student from the registry, start weights, trackers.

Why here and not in the stages: every stage builds "a registry model at the run's input
size, with these weights, frozen or not" and the same rules apply (a teacher without
weights is only acceptable for the tiny test models; students inherit the teacher's
heads), so they live in one place.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from ..modeling import EfficientSam3Model, build_model
from ..modeling.tracker import TrackerModel
from ..modeling.tracker_config import TrackerConfig, default_tracker_config
from .config import TrainConfig
from .export import load_weights, transfer_matching

log = logging.getLogger(__name__)


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
    config: TrainConfig, teacher: EfficientSam3Model | None = None, exclude: tuple[str, ...] = ()
) -> EfficientSam3Model:
    """The student: the teacher's weights where shapes agree (minus ``exclude``), then its own start weights."""
    model = build_model(config.model.student, input_size=config.model.input_size)
    if teacher is not None and config.model.init_from_teacher:
        copied = transfer_matching(teacher, model, exclude)
        log.info("student %s: %d tensors initialised from the teacher", config.model.student, copied)
    if config.model.student_checkpoint:
        missing = load_weights(model, config.model.student_checkpoint)
        log.info(
            "student weights from %s (%d tensors not in the file)",
            config.model.student_checkpoint,
            len(missing),
        )
    return model


def build_tracker(
    image_model: EfficientSam3Model,
    memory: str,
    config: TrainConfig,
    overrides: dict[str, Any] | None = None,
) -> TrackerModel:
    """A tracker sized for ``image_model`` with SAM3's tracker weights where they fit (``model.tracker_checkpoint``).

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
        load_weights(tracker, config.model.tracker_checkpoint)
    elif not image_model.config.name.endswith("-tiny"):
        log.warning("model.tracker_checkpoint is unset: the tracker's SAM heads are RANDOM")
    return tracker


TRUNK_PREFIX = "detector.vision_encoder.backbone."
TEXT_PREFIXES = ("detector.text_encoder.", "detector.text_projection.")
