"""Mask IoU between instance sets, and per-concept mask IoU scores.

IoU is computed by pycocotools on RLEs (no mask decoding, the same numbers COCOeval
uses); one-to-one matching is scipy's Hungarian solver. Neither is re-implemented here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from efficientsam3_ros.evaluation.records import (
    FrameRecord,
    InstanceRecord,
    normalise_label,
    rle_for_coco,
    unique_concepts,
)


def iou_matrix(gt: list[InstanceRecord], pred: list[InstanceRecord]) -> np.ndarray:
    """Pairwise mask IoU, shape [len(gt), len(pred)] (rows ground truth, columns predictions)."""
    if not gt or not pred:
        return np.zeros((len(gt), len(pred)), dtype=np.float64)
    g = [rle_for_coco(x.rle) for x in gt]
    p = [rle_for_coco(x.rle) for x in pred]
    # pycocotools.iou(detections, ground_truth, iscrowd) returns [len(detections), len(gt)].
    ious = mask_utils.iou(p, g, [0] * len(g))
    return np.asarray(ious, dtype=np.float64).reshape(len(p), len(g)).T


def match(ious: np.ndarray, min_iou: float = 0.0) -> list[tuple[int, int, float]]:
    """One-to-one matching that maximises total IoU; pairs at or below ``min_iou`` are dropped."""
    if ious.size == 0:
        return []
    rows, cols = linear_sum_assignment(-ious)
    return [(int(r), int(c), float(ious[r, c])) for r, c in zip(rows, cols) if ious[r, c] > min_iou]


def _union(instances: list[InstanceRecord], size: tuple[int, int]) -> dict:
    if not instances:
        return mask_utils.encode(np.zeros(size, dtype=np.uint8, order="F"))
    return mask_utils.merge([rle_for_coco(x.rle) for x in instances], intersect=0)


def mask_iou_scores(
    gt: dict[int, FrameRecord], pred: dict[int, FrameRecord], concepts: Iterable[str]
) -> dict[str, dict[str, float | int | None]]:
    """Mask IoU per concept over the frames present in both ``gt`` and ``pred``.

    For each concept:
      - ``mean_iou``: mean over ground-truth instances of the IoU with their Hungarian-matched
        prediction, 0 for a missed instance (so misses lower it; extra predictions do not);
      - ``matched_mean_iou``: the same over matched instances only (mask quality once found);
      - ``semantic_iou``: intersection over union of the per-frame union masks, summed over
        frames (false positives lower this one).
    None where the concept has no ground truth. Crowd regions are left out (they are COCO ignore
    areas for mask AP, not instances to find).
    """
    stamps = sorted(set(gt) & set(pred))
    out: dict[str, dict[str, float | int | None]] = {}
    for concept in unique_concepts(concepts):
        key = normalise_label(concept)
        matched_ious: list[float] = []
        n_gt = n_pred = 0
        inter = union = 0.0
        for stamp in stamps:
            g = [x for x in gt[stamp].instances if normalise_label(x.label) == key and not x.iscrowd]
            p = [x for x in pred[stamp].instances if normalise_label(x.label) == key]
            n_gt += len(g)
            n_pred += len(p)
            matched_ious += [iou for _, _, iou in match(iou_matrix(g, p))]
            if g or p:
                size = gt[stamp].image_size
                ug, up = _union(g, size), _union(p, size)
                both = mask_utils.merge([ug, up], intersect=1)
                either = mask_utils.merge([ug, up], intersect=0)
                inter += float(mask_utils.area(both))
                union += float(mask_utils.area(either))
        out[concept] = {
            "mean_iou": float(sum(matched_ious) / n_gt) if n_gt else None,
            "matched_mean_iou": float(np.mean(matched_ious)) if matched_ious else None,
            "semantic_iou": float(inter / union) if n_gt and union > 0 else None,
            "gt_instances": n_gt,
            "pred_instances": n_pred,
            "matched": len(matched_ious),
        }
    return out
