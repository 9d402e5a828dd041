"""Loss functions shared by the stages (pure tensor functions, no model knowledge).

Feature distillation (MSE + cosine, masked on padding), mask losses (BCE, Dice,
sigmoid focal), box losses (L1, GIoU) and SAM's IoU-prediction loss. Each returns a
scalar mean so the stage can weight and sum them; ``reduction="none"`` gives one value per
item instead, for stages that average per datapoint over a whole batch at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss


def masked_feature_losses(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE, 1 - cosine) between [B, C, g, g] features, averaged over valid grid cells only.

    ``valid`` [B, g, g] is 1 where the cell shows image (0 on letterbox padding), so the
    student is not asked to reproduce what the teacher makes of grey padding.
    """
    student = student.float()
    teacher = teacher.float()
    if valid is None:
        valid = student.new_ones(student.shape[0], *student.shape[-2:])
    valid = valid.to(student.dtype)
    denom = valid.sum().clamp(min=1.0)
    mse = ((student - teacher) ** 2).mean(dim=1)  # [B, g, g]
    cos = F.cosine_similarity(student, teacher, dim=1, eps=1e-6)  # [B, g, g]
    return (mse * valid).sum() / denom, ((1.0 - cos) * valid).sum() / denom


def masked_token_losses(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE, 1 - cosine) between [K, L, D] token outputs over the real tokens (attention mask 1)."""
    student = student.float()
    teacher = teacher.float()
    weight = mask.to(student.dtype)
    denom = weight.sum().clamp(min=1.0)
    mse = ((student - teacher) ** 2).mean(dim=-1)
    cos = F.cosine_similarity(student, teacher, dim=-1, eps=1e-6)
    return (mse * weight).sum() / denom, ((1.0 - cos) * weight).sum() / denom


def dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """1 - Dice over the last two dims of [N, h, w] (targets in [0, 1]), averaged over N
    (``reduction="none"``: one value per mask, [N])."""
    if logits.numel() == 0:
        return logits.sum() * 0.0 if reduction == "mean" else logits.new_zeros(logits.shape[0])
    probs = logits.float().sigmoid().flatten(1)
    targets = targets.float().flatten(1)
    inter = (probs * targets).sum(-1)
    union = probs.sum(-1) + targets.sum(-1)
    return _reduce(1.0 - (2.0 * inter + eps) / (union + eps), reduction)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """RetinaNet's focal loss, mean over all elements (targets may be soft; ``reduction="none"``:
    per element)."""
    if logits.numel() == 0:
        return logits.sum() * 0.0 if reduction == "mean" else logits.float()
    logits = logits.float()
    targets = targets.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def soft_bce_loss(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """BCE against soft targets minus the targets' own entropy (= KL), so a perfect match scores 0.

    Same gradient as BCE; the offset only makes the value readable as "distance to the teacher".
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    p = target_probs.float().clamp(1e-6, 1 - 1e-6)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return (F.binary_cross_entropy_with_logits(logits.float(), p, reduction="none") - entropy).mean()


def box_losses(
    pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, GIoU loss) between matched [N, 4] normalised xyxy boxes, mean over N
    (``reduction="none"``: one value per pair, [N], the L1 averaged over the 4 coordinates)."""
    if pred_xyxy.numel() == 0:
        zero = pred_xyxy.sum() * 0.0 if reduction == "mean" else pred_xyxy.new_zeros(pred_xyxy.shape[0])
        return zero, zero
    pred = pred_xyxy.float()
    target = target_xyxy.float()
    # GIoU needs x2 >= x1; an untrained head can invert a box, which the L1 term then corrects
    fixed = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])], 1)
    l1 = (pred - target).abs().mean(-1)
    giou = generalized_box_iou_loss(fixed, target, reduction="none")
    return _reduce(l1, reduction), _reduce(giou, reduction)


def segment_mean(values: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """[num_segments] means of ``values`` [N] grouped by ``segments`` [N] (0 where a segment is empty).

    What lets a stage compute one loss per item for a whole batch at once and still average
    per datapoint, as the per-datapoint loop it replaces did.
    """
    sums = values.new_zeros(num_segments).index_add(0, segments, values)
    counts = torch.bincount(segments, minlength=num_segments).to(values.dtype)
    return sums / counts.clamp(min=1)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def pairwise_giou(a_xyxy: torch.Tensor, b_xyxy: torch.Tensor) -> torch.Tensor:
    """[N, M] GIoU (for matching costs): 1 - ``box_losses``' GIoU loss of every pair.

    The loss's GIoU (torchvision's, with an eps) and not ``generalized_box_iou``, whose 0 / 0 on two
    zero-area boxes (a box head whose width underflows; an annotation without mask or box, read as
    [0, 0, 0, 0]) put NaN into the cost matrix, which scipy's assignment refuses.
    """
    a = a_xyxy.float()
    a = torch.cat([torch.minimum(a[:, :2], a[:, 2:]), torch.maximum(a[:, :2], a[:, 2:])], 1)
    b = b_xyxy.float()
    n, m = a.shape[0], b.shape[0]
    pairs_a = a[:, None].expand(n, m, 4).reshape(-1, 4)
    pairs_b = b[None].expand(n, m, 4).reshape(-1, 4)
    return 1.0 - generalized_box_iou_loss(pairs_a, pairs_b, reduction="none").view(n, m)


def mask_iou(pred_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with binary targets, per mask of [N, h, w] (1 when both are empty)."""
    pred = (pred_logits > 0).flatten(1)
    gt = (targets > 0.5).flatten(1)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_prediction_loss(
    pred_iou: torch.Tensor, pred_logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """SAM's IoU head loss: MSE between the predicted IoU and the actual IoU of the predicted mask."""
    if pred_iou.numel() == 0:
        return pred_iou.sum() * 0.0
    actual = mask_iou(pred_logits.detach(), targets)
    return F.mse_loss(pred_iou.float(), actual)


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum(weights[k] * terms[k]) over the keys of ``weights``: one place for "loss = weighted parts"."""
    return sum((weight * terms[key] for key, weight in weights.items()), torch.zeros(()))
