"""Stage 2: train the Perceiver memory (and its memory attention) with SAM3's dense-memory tracker as teacher.

On a clip, every chosen object is conditioned on its ground-truth mask in frame 0 in
both trackers; both then propagate through the remaining frames. The student (EdgeTAM
2D spatial Perceiver, 256 global + 256 window latents per memory frame) must predict
what the teacher (7 x 72 x 72 dense memory tokens) predicts: Dice + focal on the mask
logits, MSE between the predicted and the actual IoU of the student's mask (SAM's IoU
head loss), and BCE on the object-score logit. ``options.target: gt`` trains on the
clip's masks instead (no dense tracker is built then). Gradients flow back through the
memory bank across frames.

Only ``options.train`` parameters update (default: ``sam.memory_attention.*`` and
``memory_codec.*``); the image model, tracker neck, prompt encoder, mask decoder and
memory encoder stay SAM3's (copied from the teacher tracker). Where no SAM3 tracker
exists (the demo world's from-scratch models), ``options.train: ["*"]`` with
``target: gt`` trains the whole tracker on the clips' masks instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling import EfficientSam3Model
from ..modeling.memory import TrackMemory
from ..modeling.tracker import TrackerModel, TrackerOutput
from ..modeling.tracker_neck import TrackerFrame
from .config import TrainConfig, VideoStageOptions
from .data import build_dataset
from .distributed import DistContext
from .export import export_tracker, transfer_matching
from .losses import bce_loss, dice_loss, iou_prediction_loss, sigmoid_focal_loss, weighted_sum
from .models import StageModule, build_student, build_tracker, freeze
from .propagation import REPORT_CLIPS, masks_at, score_propagation
from .trainer import StageRunner, set_trainable

log = logging.getLogger(__name__)


def training_modules(root: nn.Module) -> list[nn.Module]:
    """The modules under ``root`` that should be in train mode when only some parameters train.

    A module with parameters trains when one of them (at any depth) requires grad; one without
    any takes its parent's mode.
    """
    training: dict[str, bool] = {}
    for name, module in root.named_modules():
        params = list(module.parameters())
        if params:
            training[name] = any(p.requires_grad for p in params)
        else:
            training[name] = training.get(name.rpartition(".")[0], False)
    return [m for name, m in root.named_modules() if training[name]]


class MemoryDistillModule(StageModule):
    def __init__(
        self,
        student: TrackerModel,
        teacher: TrackerModel | None,
        image_model: EfficientSam3Model,
        options: VideoStageOptions,
        trainable: list[str],
    ):
        super().__init__()
        self.student = student
        self._frozen = (teacher, image_model)
        self.options = options
        self.trainable = trainable

    def train(self, mode: bool = True) -> MemoryDistillModule:
        """Frozen SAM heads stay in eval mode; the parts that train run in train mode, dropout included.

        A module trains when any parameter under it trains; a module without parameters of its
        own under it (``nn.Dropout``, an attention wrapper whose weights sit in child layers)
        follows its parent. Deciding by a module's own parameters alone left every dropout in
        eval mode, so the configured memory-attention dropout never applied.
        """
        super().train(False)
        if mode:
            for sub in training_modules(self.student):
                sub.training = True
        self.training = mode
        return self

    def forward(self, batch: list[dict[str, Any]], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Mean loss over every clip's propagated frames; the clips of a batch run together.

        All clips' frames go through the image model and the tracker neck in one call, and
        each frame index of all clips' tracks is one ``propagate`` call: a step is a few large
        operations instead of many small ones (it was about 2,800 small matrix products a step
        run clip by clip). Losses are still taken per clip and frame, so a batch scores as the
        mean over its clips run one at a time.
        """
        teacher, image_model = self._frozen
        opts = self.options
        device = next(self.student.parameters()).device
        clips = [_ClipTracks.of(clip, device) for clip in batch]
        pixels = torch.cat([clip.pixels for clip in clips])
        frame_indices = [t for clip in clips for t in range(clip.length)]
        with torch.no_grad():
            tokens = image_model.encode_image(pixels).last_hidden_state
            t_frames = teacher.encode_frames(tokens, frame_indices) if teacher is not None else []
        # the student's neck runs with grad: it trains when options.train selects it
        s_frames = self.student.encode_frames(tokens, frame_indices)
        for clip, frames in zip(clips, _spans([clip.length for clip in clips])):
            clip.student_frames = s_frames[frames]
            clip.teacher_frames = t_frames[frames]
            clip.student_tracks = [self.student.new_track() for _ in range(clip.objects)]
            clip.teacher_tracks = (
                [teacher.new_track() for _ in range(clip.objects)] if teacher is not None else []
            )

        loss = torch.zeros((), device=device)
        first_masks = torch.cat([clip.masks[0] for clip in clips])
        conditioned = self.student.condition_tracks(*_tracks_on_frame(clips, 0, teacher=False), first_masks)
        if teacher is not None:
            with torch.no_grad():
                teacher.condition_tracks(*_tracks_on_frame(clips, 0, teacher=True), first_masks)
        if opts.condition_weight > 0:  # the decoder's answer to the mask prompt, against that mask
            for clip, cond in zip(clips, _per_clip(clips, conditioned)):
                terms = self._frame_losses(cond, self._resized(clip.masks[0], cond), clip.visible[0])
                loss = loss + opts.condition_weight * self._weighted(terms)

        totals = {"dice": 0.0, "focal": 0.0, "iou": 0.0, "object": 0.0}
        steps = 0
        for t in range(1, max(clip.length for clip in clips)):
            live = [clip for clip in clips if clip.length > t]
            outs = _per_clip(live, self.student.propagate(*_tracks_on_frame(live, t, teacher=False)))
            refs = [None] * len(live)
            if teacher is not None:
                with torch.no_grad():
                    refs = _per_clip(live, teacher.propagate(*_tracks_on_frame(live, t, teacher=True)))
            for clip, out, ref in zip(live, outs, refs):
                if ref is not None:
                    target = (ref.mask_logits > 0).float()
                    present = ref.object_score_logits > 0
                else:
                    target = self._resized(clip.masks[t], out)
                    present = clip.visible[t]
                terms = self._frame_losses(out, target, present)
                loss = loss + self._weighted(terms)
                for key, value in terms.items():
                    totals[key] += float(value.detach())
                steps += 1
        steps = max(steps, 1)
        return loss / steps, {k: v / steps for k, v in totals.items()}

    @staticmethod
    def _resized(masks: torch.Tensor, like: TrackerOutput) -> torch.Tensor:
        """Ground-truth masks [N, S, S] at the tracker's mask resolution, binary float."""
        return masks_at(masks, tuple(like.mask_logits.shape[-2:])).float()

    @staticmethod
    def _frame_losses(
        out: TrackerOutput, target: torch.Tensor, present: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """SAM's mask, IoU-prediction and object-score losses for one frame's tracks."""
        # an absent-scored track's mask is NO_OBJ_SCORE (-1024), a constant: clamp those rows so their
        # (gradient-free) loss stays O(1). Only those: a clamp passes no gradient outside its range,
        # so on every row it left a present track's pixels beyond +-32 that are wrong uncorrected
        absent = (out.object_score_logits <= 0)[:, None, None]
        logits = torch.where(absent, out.mask_logits.clamp(-32.0, 32.0), out.mask_logits)
        return {
            "dice": dice_loss(logits[present], target[present]),
            "focal": sigmoid_focal_loss(logits, target),
            "iou": iou_prediction_loss(out.iou_scores[present], logits[present], target[present]),
            "object": bce_loss(out.object_score_logits, present.float()),
        }

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        opts = self.options
        weights = {"dice": opts.dice_weight, "focal": opts.focal_weight, "iou": opts.iou_weight}
        return weighted_sum(terms, {**weights, "object": opts.object_weight})


class MemoryDistillStage(StageRunner):
    # An object can vanish for a whole clip, and then the memory paths that would read it get
    # no gradient on that step.
    leaves_parameters_unused = True

    def __init__(self, config: TrainConfig, ctx: DistContext):
        super().__init__(config, ctx)
        options: VideoStageOptions = config.options
        # the image model feeding both trackers: a stage-1 student (model.student + student_checkpoint)
        # the trainer moves the module to the device, its frozen models too (StageModule)
        image_model = freeze(build_student(config))
        student = build_tracker(image_model, "perceiver", config, options.tracker)
        teacher = None
        if options.target == "teacher":
            teacher = freeze(build_tracker(image_model, "dense", config))
            transfer_matching(teacher, student)  # shared SAM heads and memory encoder start as SAM3's
        trainable = set_trainable(student, options.train)
        if not trainable:
            raise ValueError(f"options.train patterns {options.train} match no tracker parameter")
        self.dataset = build_dataset(config, image_model.config.image_size)
        self.module = MemoryDistillModule(student, teacher, image_model, options, trainable)

    def export(self, path: Path) -> Path:
        """The tracker file, and next to it ``propagation.json``: does it follow its own objects?"""
        exported = export_tracker(self.module.student, path)
        tracker, (_, image_model) = self.module.student, self.module._frozen
        was_training = self.module.training
        self.module.eval()
        count = min(REPORT_CLIPS, len(self.dataset))
        clips = (self.dataset[(i, self.config.run.seed)] for i in range(count))  # training clips
        scores = score_propagation(image_model, tracker, ((c["pixels"], c["masks"]) for c in clips))
        self.module.train(was_training)
        (exported.parent / "propagation.json").write_text(json.dumps(scores.as_dict(), indent=1))
        log.info("stage2: %s", scores.summary())
        if not scores.follows_its_object:
            log.warning(
                "stage2: the tracker does not follow the object it is given (its masks match another "
                "object better than its own): more steps, or options.tracker: {prompt_previous_mask: "
                "true} for a tracker trained from scratch (models/demo/MODEL_CARD.md)"
            )
        return exported


@dataclass(eq=False)
class _ClipTracks:
    """One clip of a batch and what the step builds for it: its frames' features and its tracks."""

    pixels: torch.Tensor  # [T, 3, S, S]
    masks: torch.Tensor  # [T, N, S, S]
    visible: torch.Tensor  # [T, N]
    student_frames: list[TrackerFrame] = field(default_factory=list)
    teacher_frames: list[TrackerFrame] = field(default_factory=list)
    student_tracks: list[TrackMemory] = field(default_factory=list)
    teacher_tracks: list[TrackMemory] = field(default_factory=list)

    @classmethod
    def of(cls, clip: dict[str, Any], device: torch.device) -> _ClipTracks:
        return cls(clip["pixels"].to(device), clip["masks"].to(device), clip["visible"].to(device))

    @property
    def length(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def objects(self) -> int:
        return int(self.masks.shape[1])


def _tracks_on_frame(
    clips: list[_ClipTracks], t: int, *, teacher: bool
) -> tuple[list[TrackMemory], list[TrackerFrame]]:
    """Every track of ``clips`` (the teacher's or the student's), each with its own clip's frame ``t``."""
    tracks: list[TrackMemory] = []
    frames: list[TrackerFrame] = []
    for clip in clips:
        clip_tracks = clip.teacher_tracks if teacher else clip.student_tracks
        tracks += clip_tracks
        frames += [(clip.teacher_frames if teacher else clip.student_frames)[t]] * len(clip_tracks)
    return tracks, frames


def _per_clip(clips: list[_ClipTracks], out: TrackerOutput) -> list[TrackerOutput]:
    """A batched ``TrackerOutput`` (rows in ``_tracks_on_frame`` order) split back into one per clip."""
    return [
        TrackerOutput(out.mask_logits[rows], out.object_score_logits[rows], out.iou_scores[rows])
        for rows in _spans([clip.objects for clip in clips])
    ]


def _spans(counts: list[int]) -> list[slice]:
    """Where each clip's rows lie in a list or tensor that holds all clips' rows one clip after another."""
    ends = list(accumulate(counts))
    return [slice(end - count, end) for count, end in zip(counts, ends)]
