"""Score predictions against ground truth: mask IoU, COCO AP and tracking metrics in one call.

Frames are paired by stamp. Only frames present on both sides are scored: a bag read
with ``--every N`` or stopped early leaves ground-truth frames unprocessed, and those
must not count as misses. How many frames were left out on each side is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from efficientsam3_ros.evaluation.coco_ap import coco_ap_per_concept
from efficientsam3_ros.evaluation.masks import mask_iou_scores
from efficientsam3_ros.evaluation.records import FrameRecord, normalise_label
from efficientsam3_ros.evaluation.tracking import tracking_metrics


def score(
    gt: dict[int, FrameRecord],
    pred: dict[int, FrameRecord],
    concepts: Iterable[str],
    source: str = "",
    gt_labels: Iterable[str] = (),
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Every ground-truth metric for the report's "scores" section.

    ``gt_labels`` (the ground truth's category names) only serves the report's
    ``concepts_without_gt`` list, so a misspelt ``--concept`` is easy to spot.
    """
    concepts = list(concepts)
    common = set(gt) & set(pred)
    known = {normalise_label(x) for x in gt_labels} | {
        normalise_label(i.label) for f in gt.values() for i in f.instances
    }
    return {
        "source": source,
        "frames_evaluated": len(common),
        "gt_frames_not_processed": len(set(gt) - common),
        "processed_frames_without_gt": len(set(pred) - common),
        "concepts_without_gt": [c for c in concepts if normalise_label(c) not in known],
        "mask_iou": mask_iou_scores(gt, pred, concepts),
        "coco": coco_ap_per_concept(gt, pred, concepts),
        "tracking": tracking_metrics(gt, pred, concepts, iou_threshold=iou_threshold),
    }
