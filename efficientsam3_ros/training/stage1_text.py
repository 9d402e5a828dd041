"""Stage 1 (text): distil SAM3's text encoder into a MobileCLIP text tower (SAM3-LiteText).

Teacher: SAM3's CLIP text encoder + its projection to the detector width (256), i.e.
``encode_tokens``' [K, L, 256] token outputs that the detector attends to. Student: a
MobileCLIP S0 / S1 / 2-L tower with its own linear projection to 256. Loss: MSE +
(1 - cosine) per token, masked by the attention mask (padding tokens carry nothing the
detector uses). Only the student's text tower and projection train; its image side is
the teacher's (or a stage-1 image export via ``model.student_checkpoint``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..modeling import EfficientSam3Model
from .config import TextStageOptions, TrainConfig
from .data import build_dataset
from .distributed import DistContext
from .export import export_model
from .losses import masked_token_losses
from .models import TEXT_PREFIXES, StageModule, build_student, build_teacher
from .trainer import StageRunner, set_trainable

POOLED_TEXT_PROJECTION = "detector.text_encoder.projection.*"


class TextDistillModule(StageModule):
    def __init__(self, student: EfficientSam3Model, teacher: EfficientSam3Model, options: TextStageOptions):
        super().__init__()
        if student.config.context_length != teacher.config.context_length:
            raise ValueError(
                "student and teacher text encoders must share the context length (token-wise loss)"
            )
        self.student = student
        self._frozen = (teacher,)
        self.options = options

    def forward(self, batch: list[dict[str, Any]], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        device = next(self.student.parameters()).device
        ids, mask = self.student.tokenize([s["phrase"] for s in batch])
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            target = self._frozen[0].encode_tokens(ids, mask)
        tokens = self.student.encode_tokens(ids, mask)
        mse, cos = masked_token_losses(tokens, target, mask)
        loss = self.options.mse_weight * mse + self.options.cosine_weight * cos
        return loss, {"mse": float(mse.detach()), "cosine": float(cos.detach())}


class TextDistillStage(StageRunner):
    convolves_images = False  # only the text towers run (no image reaches the trunk)

    def __init__(self, config: TrainConfig, ctx: DistContext):
        super().__init__(config, ctx)
        teacher = build_teacher(config)
        student = build_student(config, teacher, exclude=TEXT_PREFIXES, may_lack=TEXT_PREFIXES)
        if student.config.text_encoder != "mobileclip":
            raise ValueError(
                f"stage1-text trains a MobileCLIP text tower; model.student={config.model.student!r} has "
                f"text_encoder={student.config.text_encoder!r} (use e.g. es-ev-m-mobileclip-s0)"
            )
        teacher.detector.vision_encoder = None  # the 446M ViT is not needed for text features
        # MobileCLIP's pooled projection stays as it is: SAM3 reads the tower's token outputs
        # (through text_projection), never its pooled embedding, so it would get no gradient,
        # and under DDP a trainable parameter without one stops the run at its second step.
        set_trainable(student, [p + "*" for p in TEXT_PREFIXES], freeze=[POOLED_TEXT_PROJECTION])
        self.dataset = build_dataset(config, student.config.image_size)
        self.module = TextDistillModule(student, teacher, config.options)  # the trainer moves it, teacher too

    def export(self, path: Path) -> Path:
        return export_model(self.module.student, path)
