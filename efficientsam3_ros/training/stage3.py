"""Stage 3: end-to-end concept segmentation fine-tuning (SAM3's detector losses) on SA-Co / COCO.

Per (image, noun phrase) datapoint, queries are matched to the phrase's instances with
the Hungarian algorithm (scipy) on focal-class + L1 + GIoU costs. Losses: sigmoid focal
on the query logits (matched = 1) for datapoints where the concept is present, L1 +
GIoU on matched boxes, Dice + focal on matched masks (GT resized to the mask head's
1/4 resolution), and BCE on the presence logit (present vs negative datapoint), as in
SAM3 where the presence head carries recognition and queries carry localisation.

``options.distill_weight > 0`` adds distillation from the teacher's outputs on the same
input, query by query (soft BCE on logits, presence and masks, L1 on boxes); it assumes
the student's detector started as the teacher's (stage 1 copies it), so query i means
the same thing in both. ``options.train`` / ``options.freeze`` (fnmatch patterns on
parameter names) choose what trains, e.g. ``["detector.detr_decoder.*"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert
from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

from ..modeling import EfficientSam3Model
from ..modeling.efficientsam3 import map_image_features
from .config import ConceptStageOptions, TrainConfig
from .data import build_dataset
from .distributed import DistContext
from .export import export_model
from .losses import (
    bce_loss,
    box_losses,
    dice_loss,
    pairwise_giou,
    sigmoid_focal_loss,
    soft_bce_loss,
    weighted_sum,
)
from .models import build_student, build_teacher
from .trainer import StageRunner, set_trainable


class _Pooled:
    """Sam3Model reads precomputed text features from ``.pooler_output``."""

    def __init__(self, pooler_output: torch.Tensor):
        self.pooler_output = pooler_output


def run_detector(
    model: EfficientSam3Model,
    pixels: torch.Tensor,
    phrases: list[str],
    image_index: torch.Tensor | None = None,
) -> Any:
    """B datapoints (an image and one phrase each), batched through the detector (training path, with grad).

    ``pixels`` holds one row per datapoint, or, with ``image_index`` ([B], datapoint -> row), one row
    per distinct image: each image is then encoded once however many of its phrases the batch holds.
    """
    ids, mask = model.tokenize(phrases)
    ids, mask = ids.to(pixels.device), mask.to(pixels.device)
    vision = model.encode_image(pixels)
    if image_index is not None:
        index = image_index.to(pixels.device)
        vision = map_image_features(vision, lambda f: f.index_select(0, index))
    text = model.encode_tokens(ids, mask)
    return model.detector(vision_embeds=vision, text_embeds=_Pooled(text), attention_mask=mask)


def distinct_images(batch: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels [U, 3, S, S] of the batch's distinct images, index [B] of each datapoint's row).

    Datapoints of one image (same ``key``) share a row only when their pixels are identical: a
    flip augmentation drawn for one of them makes it an image of its own.
    """
    rows: list[torch.Tensor] = []
    by_key: dict[str | None, list[int]] = {}
    index = []
    for sample in batch:
        pixels = sample["pixels"]
        key = sample.get("key")
        same = next((r for r in by_key.get(key, []) if torch.equal(rows[r], pixels)), None)
        if same is None:
            same = len(rows)
            rows.append(pixels)
            by_key.setdefault(key, []).append(same)
        index.append(same)
    return torch.stack(rows), torch.tensor(index, dtype=torch.int64)


class DecoderTap:
    """Every DETR-decoder layer's logits, boxes and presence from one Sam3Model forward.

    transformers' Sam3Model returns the last layer only; the auxiliary losses need all of
    them. Forward hooks read what the model computes anyway (the decoder's per-layer states
    and the scoring head's per-layer logits); only the per-layer boxes are recomputed, the
    way Sam3Model computes the last one.
    """

    def __init__(self, model: EfficientSam3Model):
        detector = model.detector
        self._box_head = detector.detr_decoder.box_head
        self._captured: dict[str, Any] = {}
        self._handles = [
            detector.detr_decoder.register_forward_hook(self._keep("decoder")),
            detector.dot_product_scoring.register_forward_hook(self._keep("logits")),
        ]

    def _keep(self, key: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._captured[key] = output

        return hook

    def layers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [L, B, Q], boxes xyxy [L, B, Q, 4], presence logits [L, B]) of the last forward."""
        decoder, logits = self._captured["decoder"], self._captured["logits"]
        offsets = self._box_head(decoder.intermediate_hidden_states)
        boxes = box_convert((inverse_sigmoid(decoder.reference_boxes) + offsets).sigmoid(), "cxcywh", "xyxy")
        return logits.squeeze(-1), boxes, decoder.presence_logits[..., 0]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor, opts: ConceptStageOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query indices, target indices) minimising focal-class + L1 + GIoU cost for one datapoint."""
    prob = logits.float().sigmoid()
    alpha, gamma = opts.focal_alpha, opts.focal_gamma
    pos = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
    neg = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-8).log())
    cost_class = (pos - neg)[:, None].expand(-1, len(target_boxes))
    cost_bbox = torch.cdist(boxes.float(), target_boxes.float(), p=1)
    cost_giou = -pairwise_giou(boxes, target_boxes)
    cost = opts.cost_class * cost_class + opts.cost_bbox * cost_bbox + opts.cost_giou * cost_giou
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class ConceptModule(nn.Module):
    def __init__(
        self, student: EfficientSam3Model, teacher: EfficientSam3Model | None, options: ConceptStageOptions
    ):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)
        self.options = options

    def train(self, mode: bool = True) -> ConceptModule:
        """Frozen parts keep their BatchNorm statistics: modules without trainable parameters stay in eval."""
        super().train(mode)
        if mode:
            for sub in self.student.modules():
                params = list(sub.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    sub.eval()
        return self

    def forward(self, batch: list[dict[str, Any]], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        opts = self.options
        device = next(self.student.parameters()).device
        images, image_index = distinct_images(batch)
        images = images.to(device)
        phrases = [s["phrase"] for s in batch]
        tap = DecoderTap(self.student)
        try:
            out = run_detector(self.student, images, phrases, image_index)
            all_logits, all_boxes, all_presence = tap.layers()
        finally:
            tap.close()
        size = images.shape[-1]
        mask_size = out.pred_masks.shape[-2:]
        parts = {k: [] for k in ("class", "bbox", "giou", "mask_dice", "mask_focal", "aux")}
        present = torch.tensor([1.0 if len(s["boxes"]) else 0.0 for s in batch], device=device)
        for b, sample in enumerate(batch):
            gt_boxes = sample["boxes"].to(device) / size
            if not len(gt_boxes):
                continue
            rows, cols = self._query_losses(out.pred_logits[b], out.pred_boxes[b], gt_boxes, parts)
            pred_masks = out.pred_masks[b, rows]
            if opts.mask_loss_at_input:  # the masks as they are read: logits upsampled to the input
                gt_masks = sample["masks"].float().to(device)
                pred_masks = F.interpolate(
                    pred_masks[:, None], size=gt_masks.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
            else:
                gt_masks = F.interpolate(
                    sample["masks"].float()[None].to(device), size=mask_size, mode="bilinear"
                )[0]
                gt_masks = (gt_masks > 0.5).float()
            parts["mask_dice"].append(dice_loss(pred_masks, gt_masks[cols]))
            parts["mask_focal"].append(
                sigmoid_focal_loss(pred_masks, gt_masks[cols], opts.focal_alpha, opts.focal_gamma)
            )
            if opts.aux_weight > 0 and all_logits.shape[0] > 1:  # earlier layers, each matched on its own
                aux: dict[str, list[torch.Tensor]] = {"class": [], "bbox": [], "giou": []}
                for layer in range(all_logits.shape[0] - 1):
                    self._query_losses(all_logits[layer, b], all_boxes[layer, b], gt_boxes, aux)
                parts["aux"].append(self._weighted({k: sum(v) for k, v in aux.items()}))
        presence = bce_loss(out.presence_logits[:, 0], present)
        zero = out.pred_logits.sum() * 0.0
        # earlier layers' presence, summed over layers like their class/box terms (a batch-level
        # term: kept out of the per-datapoint mean so it is not diluted by the batch's positives)
        aux_presence = zero
        if opts.aux_weight > 0 and all_presence.shape[0] > 1:
            layers = all_presence.shape[0] - 1
            aux_presence = layers * bce_loss(all_presence[:-1], present.expand(layers, -1))
        mean = {k: torch.stack(v).mean() if v else zero for k, v in parts.items()}
        loss = (
            self._weighted(mean)
            + opts.mask_dice_weight * mean["mask_dice"]
            + opts.mask_focal_weight * mean["mask_focal"]
            + opts.presence_weight * presence
            + opts.aux_weight * (mean["aux"] + opts.presence_weight * aux_presence)
            + zero
        )
        logs = {k: float(v.detach()) for k, v in mean.items()}
        logs["presence"] = float(presence.detach())
        logs["aux_presence"] = float(aux_presence.detach())
        if opts.distill_weight > 0:
            distill = self._distill(out, images, phrases, image_index)
            loss = loss + opts.distill_weight * distill
            logs["distill"] = float(distill.detach())
        return loss, logs

    def _query_losses(
        self, logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor, parts: dict[str, list]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Match one decoder layer's queries to a datapoint's instances; append its class and box losses."""
        opts = self.options
        rows, cols = hungarian_match(logits, boxes, gt_boxes, opts)
        labels = torch.zeros_like(logits)
        labels[rows] = 1.0
        focal = sigmoid_focal_loss(logits, labels, opts.focal_alpha, opts.focal_gamma)
        parts["class"].append(focal * labels.numel() / max(len(cols), 1))
        l1, giou = box_losses(boxes[rows], gt_boxes[cols])
        parts["bbox"].append(l1)
        parts["giou"].append(giou)
        return rows, cols

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The class + box terms with their loss weights."""
        opts = self.options
        return weighted_sum(
            terms, {"class": opts.class_weight, "bbox": opts.bbox_weight, "giou": opts.giou_weight}
        )

    def _distill(
        self, out: Any, images: torch.Tensor, phrases: list[str], image_index: torch.Tensor
    ) -> torch.Tensor:
        teacher = self._teacher[0]
        with torch.no_grad():
            ref = run_detector(teacher, images, phrases, image_index)
        return (
            soft_bce_loss(out.pred_logits, ref.pred_logits.sigmoid())
            + soft_bce_loss(out.presence_logits, ref.presence_logits.sigmoid())
            + F.l1_loss(out.pred_boxes.float(), ref.pred_boxes.float())
            + soft_bce_loss(out.pred_masks, ref.pred_masks.sigmoid())
        )


class ConceptFinetuneStage(StageRunner):
    def __init__(self, config: TrainConfig, ctx: DistContext):
        super().__init__(config, ctx)
        options: ConceptStageOptions = config.options
        need_teacher = options.distill_weight > 0 or (
            config.model.init_from_teacher and not config.model.student_checkpoint
        )
        teacher = build_teacher(config) if need_teacher else None
        student = build_student(config, teacher, exclude=("detector.vision_encoder.backbone.",))
        trainable = set_trainable(student, options.train, options.freeze)
        if not trainable:
            raise ValueError(
                f"options.train={options.train} / options.freeze={options.freeze} leave nothing to train"
            )
        if options.distill_weight <= 0:
            teacher = None
        self.dataset = build_dataset(config, student.config.image_size, masks=True)
        self.module = ConceptModule(student, teacher.to(ctx.device) if teacher is not None else None, options)

    def export(self, path: Path) -> Path:
        return export_model(self.module.student, path)
