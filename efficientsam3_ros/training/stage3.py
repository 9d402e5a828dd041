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
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert
from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

from ..modeling import EfficientSam3Model
from ..modeling.efficientsam3 import TextEmbeds, map_image_features
from .config import ConceptStageOptions, TrainConfig
from .data import build_dataset
from .distributed import DistContext
from .export import export_model
from .losses import (
    bce_loss,
    box_losses,
    dice_loss,
    pairwise_giou,
    segment_mean,
    sigmoid_focal_loss,
    soft_bce_loss,
    weighted_sum,
)
from .models import StageModule, build_student, build_teacher
from .trainer import StageRunner, set_trainable


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
    out = model.detector(vision_embeds=vision, text_embeds=TextEmbeds(text), attention_mask=mask)
    out.pred_logits = model.rescore(out.pred_logits, out.pred_boxes, vision.fpn_hidden_states[0], text, mask)
    return out


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


class BatchDetection(NamedTuple):
    """One training forward of a batch: its distinct images, what ``run_detector`` returned, and
    every decoder layer's logits [L, B, Q], boxes [L, B, Q, 4] and presence logits [L, B]."""

    images: torch.Tensor
    image_index: torch.Tensor
    phrases: list[str]
    out: Any
    all_logits: torch.Tensor
    all_boxes: torch.Tensor
    all_presence: torch.Tensor


def detect_batch(model: EfficientSam3Model, batch: list[dict[str, Any]]) -> BatchDetection:
    """The detector on a batch of datapoints, each distinct image encoded once, every layer tapped."""
    device = next(model.parameters()).device
    images, image_index = distinct_images(batch)
    images = images.to(device)
    phrases = [s["phrase"] for s in batch]
    tap = DecoderTap(model)
    try:
        out = run_detector(model, images, phrases, image_index)
        layers = tap.layers()
    finally:
        tap.close()
    return BatchDetection(images, image_index, phrases, out, *layers)


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor, opts: ConceptStageOptions
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per decoder layer of one datapoint, (query indices, target indices) minimising focal-class +
    L1 + GIoU cost. ``logits`` [L, Q], ``boxes`` [L, Q, 4]; the costs of all L layers are
    computed in one go, only the assignment itself (scipy) runs per layer."""
    layers, queries = logits.shape
    prob = logits.float().sigmoid()
    alpha, gamma = opts.focal_alpha, opts.focal_gamma
    pos = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
    neg = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-8).log())
    targets = target_boxes.float()
    cost_class = (pos - neg)[..., None]
    cost_bbox = torch.cdist(boxes.float(), targets.expand(layers, -1, -1), p=1)
    cost_giou = -pairwise_giou(boxes.reshape(-1, 4), targets).reshape(layers, queries, -1)
    cost = opts.cost_class * cost_class + opts.cost_bbox * cost_bbox + opts.cost_giou * cost_giou
    return [linear_sum_assignment(layer) for layer in cost.cpu().numpy()]


class _Matches:
    """Every (decoder layer, datapoint, query) -> target pair of a batch, as flat index arrays."""

    def __init__(self) -> None:
        self.layer: list[np.ndarray] = []
        self.datapoint: list[np.ndarray] = []
        self.query: list[np.ndarray] = []
        self.target_boxes: list[torch.Tensor] = []

    def add(self, layer: int, datapoint: int, rows: np.ndarray, target_boxes: torch.Tensor) -> None:
        """One layer's match of one datapoint: query ``rows`` and their targets' boxes [len(rows), 4]."""
        self.layer.append(np.full(len(rows), layer))
        self.datapoint.append(np.full(len(rows), datapoint))
        self.query.append(rows)
        self.target_boxes.append(target_boxes)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(layer, datapoint, query) indices [P] and the matched target boxes [P, 4]."""
        index = [
            torch.from_numpy(np.concatenate(a)).to(device) for a in (self.layer, self.datapoint, self.query)
        ]
        return (*index, torch.cat(self.target_boxes))


class ConceptModule(StageModule):
    def __init__(
        self, student: EfficientSam3Model, teacher: EfficientSam3Model | None, options: ConceptStageOptions
    ):
        super().__init__()
        self.student = student
        self._frozen = (teacher,)
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
        images, image_index, phrases, out, all_logits, all_boxes, all_presence = detect_batch(
            self.student, batch
        )
        device = images.device
        present = torch.tensor([1.0 if len(s["boxes"]) else 0.0 for s in batch], device=device)
        zero = out.pred_logits.sum() * 0.0
        positives = present.nonzero()[:, 0]
        mean = dict.fromkeys(("class", "bbox", "giou", "mask_dice", "mask_focal", "aux"), zero)
        if len(positives):
            mean.update(self._matched_losses(batch, out, all_logits, all_boxes, images.shape[-1], positives))
        presence = bce_loss(out.presence_logits[:, 0], present)
        negative_class = zero
        negatives = (present == 0).nonzero()[:, 0]
        if opts.negative_class_weight > 0 and len(negatives):
            logits = out.pred_logits[negatives]
            focal = sigmoid_focal_loss(
                logits, torch.zeros_like(logits), opts.focal_alpha, opts.focal_gamma, reduction="none"
            )
            negative_class = focal.sum(-1).mean()  # summed over queries, as the positives' (1 instance)
        # earlier layers' presence, summed over layers like their class/box terms (a batch-level
        # term: kept out of the per-datapoint mean so it is not diluted by the batch's positives)
        aux_presence = zero
        if opts.aux_weight > 0 and all_presence.shape[0] > 1:
            layers = all_presence.shape[0] - 1
            aux_presence = layers * bce_loss(all_presence[:-1], present.expand(layers, -1))
        loss = (
            self._weighted(mean)
            + opts.mask_dice_weight * mean["mask_dice"]
            + opts.mask_focal_weight * mean["mask_focal"]
            + opts.presence_weight * presence
            + opts.class_weight * opts.negative_class_weight * negative_class
            + opts.aux_weight * (mean["aux"] + opts.presence_weight * aux_presence)
            + zero
        )
        logs = {k: float(v.detach()) for k, v in mean.items()}
        logs["presence"] = float(presence.detach())
        logs["aux_presence"] = float(aux_presence.detach())
        if opts.negative_class_weight > 0:
            logs["negative_class"] = float(negative_class.detach())
        if opts.distill_weight > 0:
            distill = self._distill(out, images, phrases, image_index)
            loss = loss + opts.distill_weight * distill
            logs["distill"] = float(distill.detach())
        return loss, logs

    def _matched_losses(
        self,
        batch: list[dict[str, Any]],
        out: Any,
        all_logits: torch.Tensor,
        all_boxes: torch.Tensor,
        size: int,
        positives: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Class, box and mask losses of the datapoints whose phrase is present, each averaged
        per datapoint and then over them; ``aux``: the earlier decoder layers' class and box
        terms, each layer matched on its own, weighted and summed over layers.

        One Hungarian match per (layer, datapoint); every loss after it runs once on the whole
        batch (per-item losses averaged per datapoint with ``segment_mean``): a loop of small
        ops per datapoint and layer cost the teacher's step a quarter of its time.
        """
        opts = self.options
        device = out.pred_logits.device
        aux = opts.aux_weight > 0 and all_logits.shape[0] > 1
        # the last layer as the model returns it; the earlier ones as DecoderTap recomputed them
        logits, boxes = out.pred_logits[None], out.pred_boxes[None]
        if aux:
            logits, boxes = torch.cat([all_logits[:-1], logits]), torch.cat([all_boxes[:-1], boxes])
        layers, batch_size, _ = logits.shape
        last = layers - 1
        matches = _Matches()
        target_masks = []  # the last layer's matches', for the mask losses
        for b in positives.tolist():
            gt_boxes = batch[b]["boxes"].to(device) / size
            found = hungarian_match(logits[:, b], boxes[:, b], gt_boxes, opts)
            for layer, (rows, cols) in enumerate(found):
                matches.add(layer, b, rows, gt_boxes[cols])
            target_masks.append(batch[b]["masks"][found[last][1]])
        layer, datapoint, query, target_boxes = matches.tensors(device)
        per_datapoint = layer * batch_size + datapoint  # segment of each pair, [layers * B]
        num_segments = layers * batch_size

        labels = torch.zeros_like(logits, dtype=torch.float32)
        labels[layer, datapoint, query] = 1.0
        counts = labels.sum(-1).clamp(min=1.0)  # instances per (layer, datapoint)
        # focal mean over the queries x queries / instances = summed over queries / instances
        focal = sigmoid_focal_loss(logits, labels, opts.focal_alpha, opts.focal_gamma, reduction="none")
        per_layer = {"class": focal.sum(-1) / counts}
        l1, giou = box_losses(boxes[layer, datapoint, query], target_boxes, reduction="none")
        for key, values in (("bbox", l1), ("giou", giou)):
            per_layer[key] = segment_mean(values, per_datapoint, num_segments).view(layers, batch_size)
        means = {k: v[last, positives].mean() for k, v in per_layer.items()}
        if aux:
            earlier = {k: v[:last, positives].sum(0) for k, v in per_layer.items()}
            means["aux"] = self._weighted(earlier).mean()

        in_last = layer == last
        pred_masks = out.pred_masks[datapoint[in_last], query[in_last]]
        gt_masks = torch.cat(target_masks).float().to(device)
        if opts.mask_loss_at_input:  # the masks as they are read: logits upsampled to the input
            pred_masks = F.interpolate(
                pred_masks[:, None], size=gt_masks.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
        else:
            gt_masks = F.interpolate(gt_masks[None], size=pred_masks.shape[-2:], mode="bilinear")[0]
            gt_masks = (gt_masks > 0.5).float()
        mask_datapoint = datapoint[in_last]
        dice = dice_loss(pred_masks, gt_masks, reduction="none")
        focal_masks = sigmoid_focal_loss(
            pred_masks, gt_masks, opts.focal_alpha, opts.focal_gamma, reduction="none"
        ).mean((-2, -1))
        for key, values in (("mask_dice", dice), ("mask_focal", focal_masks)):
            means[key] = segment_mean(values, mask_datapoint, batch_size)[positives].mean()
        return means

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The class + box terms with their loss weights."""
        opts = self.options
        return weighted_sum(
            terms, {"class": opts.class_weight, "bbox": opts.bbox_weight, "giou": opts.giou_weight}
        )

    def _distill(
        self, out: Any, images: torch.Tensor, phrases: list[str], image_index: torch.Tensor
    ) -> torch.Tensor:
        teacher = self._frozen[0]
        with torch.no_grad():
            ref = run_detector(teacher, images, phrases, image_index)
        return (
            soft_bce_loss(out.pred_logits, ref.pred_logits.sigmoid())
            + soft_bce_loss(out.presence_logits, ref.presence_logits.sigmoid())
            + F.l1_loss(out.pred_boxes.float(), ref.pred_boxes.float())
            + soft_bce_loss(out.pred_masks, ref.pred_masks.sigmoid())
        )


class ConceptFinetuneStage(StageRunner):
    # Prompted by text alone, the detector never reaches its geometric-prompt encoder, its
    # semantic-segmentation head, the last level of the neck and of the pixel decoder, or CLIP's
    # pooled projection (53 tensors of demo-student), which options.train = ["*"] leaves trainable.
    # And a batch without a present phrase has no matched losses: its step reaches no mask head.
    leaves_parameters_unused = True

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
        self.module = ConceptModule(student, teacher, options)  # the trainer moves it, teacher too

    def export(self, path: Path) -> Path:
        return export_model(self.module.student, path)
