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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling import EfficientSam3Model
from ..modeling.tracker import TrackerModel, TrackerOutput
from .config import TrainConfig, VideoStageOptions
from .data import build_dataset
from .distributed import DistContext
from .export import export_tracker, transfer_matching
from .losses import bce_loss, dice_loss, iou_prediction_loss, sigmoid_focal_loss, weighted_sum
from .models import build_student, build_tracker, freeze
from .propagation import REPORT_CLIPS, masks_at, score_propagation
from .trainer import StageRunner, set_trainable

log = logging.getLogger(__name__)


class MemoryDistillModule(nn.Module):
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
        """Frozen SAM heads stay in eval mode; only modules that own trainable parameters train."""
        super().train(False)
        if mode:
            for sub in self.student.modules():
                if any(p.requires_grad for p in sub.parameters(recurse=False)):
                    sub.train(True)
        self.training = mode
        return self

    def forward(self, batch: list[dict[str, Any]], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        teacher, image_model = self._frozen
        opts = self.options
        totals = {"dice": 0.0, "focal": 0.0, "iou": 0.0, "object": 0.0}
        loss = torch.zeros((), device=next(self.student.parameters()).device)
        steps = 0
        for clip in batch:
            device = loss.device
            frames = clip["pixels"].to(device)
            gt = clip["masks"].to(device)  # [T, N, S, S]
            with torch.no_grad():
                tokens = image_model.encode_image(frames).last_hidden_state
                t_frames = (
                    [teacher.encode_frame(tokens[t : t + 1], t) for t in range(len(frames))]
                    if teacher is not None
                    else []
                )
            # the student's neck runs with grad: it trains when options.train selects it
            s_frames = [self.student.encode_frame(tokens[t : t + 1], t) for t in range(len(frames))]
            n = gt.shape[1]
            s_tracks = [self.student.new_track() for _ in range(n)]
            t_tracks = [teacher.new_track() for _ in range(n)] if teacher is not None else []
            conditioned = []
            for i in range(n):
                conditioned.append(self.student.condition(s_tracks[i], s_frames[0], gt[0, i]))
                if teacher is not None:
                    with torch.no_grad():
                        teacher.condition(t_tracks[i], t_frames[0], gt[0, i])
            if opts.condition_weight > 0:  # the decoder's answer to the mask prompt, against that mask
                cond = TrackerOutput(
                    torch.cat([c.mask_logits for c in conditioned]),
                    torch.cat([c.object_score_logits for c in conditioned]),
                    torch.cat([c.iou_scores for c in conditioned]),
                )
                terms = self._frame_losses(cond, self._resized(gt[0], cond), clip["visible"][0].to(device))
                loss = loss + opts.condition_weight * self._weighted(terms)
            for t in range(1, len(frames)):
                out = self.student.propagate(s_tracks, s_frames[t])
                if teacher is not None:
                    with torch.no_grad():
                        ref = teacher.propagate(t_tracks, t_frames[t])
                    target = (ref.mask_logits > 0).float()
                    present = ref.object_score_logits > 0
                else:
                    target = self._resized(gt[t], out)
                    present = clip["visible"][t].to(device)
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
        # an absent-scored track's mask is NO_OBJ_SCORE (-1024): clamp so its (constant) loss stays O(1)
        logits = out.mask_logits.clamp(-32.0, 32.0)
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
        image_model = freeze(build_student(config)).to(ctx.device)
        student = build_tracker(image_model, "perceiver", config, options.tracker)
        teacher = None
        if options.target == "teacher":
            teacher = freeze(build_tracker(image_model, "dense", config)).to(ctx.device)
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
