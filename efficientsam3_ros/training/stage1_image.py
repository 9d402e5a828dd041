"""Stage 1 (image): distil SAM3's ViT trunk into a student trunk, optionally with prompts in the loop.

The target is the teacher's trunk feature ([B, 1024, 72, 72] at 1008 px); the loss is
MSE + (1 - cosine) per grid cell, masked on letterbox padding. Only the student's trunk
(timm backbone + adapter) trains; everything after it is SAM3's and is copied from the
teacher, so the export is a complete model. With ``options.feature_cache`` the teacher
runs once over the dataset (``feature_cache``) instead of every step.

Prompt-in-the-loop fine-tuning (``options.prompt_in_loop``): boxes and points sampled
from the annotations go through SAM3's frozen tracker neck, prompt encoder and mask
decoder once on the student's feature and once on the teacher's; BCE + Dice between
the two masks make the student's feature good for what SAM3 decodes from it, not only
close in L2. (COCO/SA-Co images have no point annotations: their points are box centres.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..modeling import EfficientSam3Model
from ..modeling.tracker import TrackerModel
from ..modeling.tracker_graphs import run_sam_heads
from .config import ImageStageOptions, TrainConfig
from .data import build_dataset, valid_grid
from .distributed import DistContext
from .export import export_model
from .feature_cache import CachedFeatures, FeatureCache, fill_cache, fingerprint, weights_identity
from .losses import dice_loss, masked_feature_losses, soft_bce_loss
from .models import TRUNK_PREFIX, StageModule, build_student, build_teacher, build_tracker, freeze
from .trainer import StageRunner, set_trainable


class ImageDistillModule(StageModule):
    """Trainable part = ``student`` (only its trunk requires grad); teacher and SAM heads ride along unregistered."""

    def __init__(
        self,
        student: EfficientSam3Model,
        teacher: EfficientSam3Model | None,
        heads: TrackerModel | None,
        options: ImageStageOptions,
        max_prompts: int,
    ):
        super().__init__()
        self.student = student
        self._frozen = (teacher, heads)
        self.options = options
        self.max_prompts = max_prompts
        self.grid = student.config.grid_size

    @property
    def teacher(self) -> EfficientSam3Model | None:
        return self._frozen[0]

    def drop_teacher(self) -> None:
        """Free the teacher once its features are cached."""
        self._frozen = (None, self._frozen[1])

    def forward(self, batch: list[dict[str, Any]], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        device = next(self.student.parameters()).device
        pixels = torch.stack([s["pixels"] for s in batch]).to(device)
        valid = valid_grid(torch.stack([s["valid"] for s in batch]), self.grid).to(device)
        if "teacher" in batch[0]:
            target = torch.stack([s["teacher"] for s in batch]).to(device).float()
        else:
            with torch.no_grad():
                target = self.teacher.trunk_features(pixels).float()
        student = self.student.trunk_features(pixels)
        mse, cos = masked_feature_losses(student, target, valid)
        opts = self.options
        loss = opts.mse_weight * mse + opts.cosine_weight * cos
        logs = {"mse": float(mse.detach()), "cosine": float(cos.detach())}
        if opts.prompt_in_loop:
            bce, dice = self._prompt_losses(student, target, batch, generator)
            loss = loss + opts.mask_bce_weight * bce + opts.mask_dice_weight * dice
            logs.update(mask_bce=float(bce.detach()), mask_dice=float(dice.detach()))
        return loss, logs

    # ------------------------------------------------------------------ prompts
    def _decode(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM3's tracker neck on a [B, C, g, g] trunk feature -> (embeddings, s0, s1) as ``predict_inst`` uses."""
        heads = self._frozen[1]
        tokens = feature.flatten(2).transpose(1, 2)
        levels, _ = heads.tracker_neck(tokens)
        embeddings = levels[2] + heads.sam.no_memory_embedding.view(1, -1, 1, 1)
        return (
            embeddings,
            heads.sam.mask_decoder.conv_s0(levels[0]),
            heads.sam.mask_decoder.conv_s1(levels[1]),
        )

    def _prompt_losses(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        batch: list[dict[str, Any]],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self._frozen[1]
        device = student.device
        s_emb, s_s0, s_s1 = self._decode(student)
        with torch.no_grad():
            t_emb, t_s0, t_s1 = self._decode(teacher.to(student.dtype))
        student_masks, teacher_masks = [], []
        for b, sample in enumerate(batch):
            boxes = sample["boxes"]
            if len(boxes) == 0:
                continue
            chosen = torch.randperm(len(boxes), generator=generator)[: self.max_prompts]
            as_point = torch.rand(len(chosen), generator=generator) < self.options.point_prob
            points = sample.get("points")
            if points is None or len(points) != len(boxes):
                points = (boxes[:, :2] + boxes[:, 2:]) / 2
            groups = []
            if as_point.any():
                pts = points[chosen[as_point]].to(device)
                groups.append({"points": pts[None, :, None, :]})
            if (~as_point).any():
                groups.append({"boxes": boxes[chosen[~as_point]].to(device)[None]})
            for prompt in groups:
                s_out = run_sam_heads(
                    heads.sam,
                    s_emb[b : b + 1],
                    s_s0[b : b + 1],
                    s_s1[b : b + 1],
                    **prompt,
                    multimask_output=False,
                )
                with torch.no_grad():
                    t_out = run_sam_heads(
                        heads.sam,
                        t_emb[b : b + 1],
                        t_s0[b : b + 1],
                        t_s1[b : b + 1],
                        **prompt,
                        multimask_output=False,
                    )
                student_masks.append(s_out[0][0, :, 0])
                teacher_masks.append(t_out[0][0, :, 0])
        if not student_masks:  # no annotation in the whole batch: keep the graph connected for DDP
            zero = student.sum() * 0.0
            return zero, zero
        s_logits = torch.cat(student_masks)
        t_prob = torch.cat(teacher_masks).sigmoid()
        return soft_bce_loss(s_logits, t_prob), dice_loss(s_logits, t_prob)


class ImageDistillStage(StageRunner):
    def __init__(self, config: TrainConfig, ctx: DistContext):
        super().__init__(config, ctx)
        options: ImageStageOptions = config.options
        # on the device now, not when the trainer moves the module: prepare() runs it to fill the feature cache
        teacher = build_teacher(config).to(ctx.device)
        student = build_student(config, teacher, exclude=(TRUNK_PREFIX,))
        set_trainable(student, [TRUNK_PREFIX + "*"])
        heads = None
        if options.prompt_in_loop:
            heads = freeze(build_tracker(teacher, "dense", config)).to(ctx.device)
        self.input_size = student.config.image_size
        self.base = build_dataset(config, self.input_size, masks=False)
        self.dataset = self.base
        self.module = ImageDistillModule(student, teacher, heads, options, config.data.max_objects)

    def prepare(self) -> None:
        options: ImageStageOptions = self.config.options
        if not options.feature_cache:
            return
        keys = [self.base.key(i) for i in range(len(self.base))]
        if len(set(keys)) != len(keys):
            raise ValueError("the feature cache needs unique sample keys; the dataset lists an image twice")
        identity = {
            "teacher_weights": weights_identity(self.config.model.teacher_checkpoint, self.config.run.seed),
            "data_root": str(Path(self.config.data.root).resolve()),
        }
        fill_cache(
            options.feature_cache,
            self.base,
            keys,
            self.module.teacher,
            self.ctx,
            teacher_name=self.config.model.teacher,
            input_size=self.input_size,
            resize=self.config.data.resize,
            shard_size=options.cache_shard_size,
            batch_size=options.cache_batch_size,
            **identity,
        )
        expected = fingerprint(
            keys, self.config.model.teacher, self.input_size, self.config.data.resize, **identity
        )
        self.dataset = CachedFeatures(self.base, FeatureCache(options.feature_cache, expected))
        self.module.drop_teacher()

    def export(self, path: Path) -> Path:
        return export_model(self.module.student, path)
