"""Score predictions against ground truth: mask IoU, COCO AP and tracking metrics in one call.

Frames are paired by stamp. Only frames present on both sides are scored: a bag read
with ``--every N`` or stopped early leaves ground-truth frames unprocessed, and those
must not count as misses. How many frames were left out on each side is reported.
A pair whose image sizes differ (ground truth annotated on resized images) is left out
and counted too: its masks cannot overlap, so scoring it would report zeros as a result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from efficientsam3_ros.evaluation.coco_ap import coco_ap_per_concept
from efficientsam3_ros.evaluation.masks import mask_iou_scores
from efficientsam3_ros.evaluation.records import FrameRecord, normalise_label, unique_concepts
from efficientsam3_ros.evaluation.tracking import tracking_metrics

log = logging.getLogger(__name__)


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
    ``concepts_without_gt`` list, so a misspelt ``--concept`` is easy to spot. Two concepts that
    normalise alike ("red mug", "Red Mug") are one concept, scored once under the first spelling.
    """
    concepts = unique_concepts(concepts)
    gt, pred, mismatched = _drop_size_mismatches(gt, pred)
    common = set(gt) & set(pred)
    known = {normalise_label(x) for x in gt_labels} | {
        normalise_label(i.label) for f in gt.values() for i in f.instances
    }
    mask_iou = mask_iou_scores(gt, pred, concepts)
    coco = coco_ap_per_concept(gt, pred, concepts)
    tracking = tracking_metrics(gt, pred, concepts, iou_threshold=iou_threshold)
    return {
        "source": source,
        "frames_evaluated": len(common),
        "gt_frames_not_processed": len(set(gt) - common),
        "processed_frames_without_gt": len(set(pred) - common),
        "frames_size_mismatch": mismatched,
        "concepts_without_gt": [c for c in concepts if normalise_label(c) not in known],
        "mask_iou": mask_iou,
        "coco": coco,
        "tracking": tracking,
        "overall": overall_scores(mask_iou, coco, tracking),
    }


def _drop_size_mismatches(
    gt: dict[int, FrameRecord], pred: dict[int, FrameRecord]
) -> tuple[dict[int, FrameRecord], dict[int, FrameRecord], int]:
    """``gt`` and ``pred`` without the stamps whose two sides differ in image size, and how many those were."""
    bad = sorted(s for s in set(gt) & set(pred) if tuple(gt[s].image_size) != tuple(pred[s].image_size))
    if not bad:
        return gt, pred, 0
    first = bad[0]
    log.warning(
        "%d frame(s) left out of the scores: ground truth and processed image differ in size "
        "(first: stamp %d, ground truth %s, processed %s); was the ground truth made on resized images?",
        len(bad),
        first,
        list(gt[first].image_size),
        list(pred[first].image_size),
    )
    dropped = set(bad)
    return (
        {s: f for s, f in gt.items() if s not in dropped},
        {s: f for s, f in pred.items() if s not in dropped},
        len(bad),
    )


#: The counts IDF1 and MOTA are ratios of; summed over sequences they give the pooled scores.
TRACKING_COUNTS = ("idtp", "idfp", "idfn", "num_objects", "num_misses", "num_false_positives", "num_switches")


def overall_scores(
    mask_iou: dict[str, Any], coco: dict[str, Any], tracking: dict[str, Any]
) -> dict[str, Any]:
    """One number per metric for the whole run, the way the demo and the model card quote them.

    mask IoU is averaged over every ground-truth instance (each concept's ``mean_iou`` weighted
    by its instance count, so a rare concept does not swing it); mask AP is the mean over the
    concepts that have ground truth; IDF1 / MOTA are the tracker's overall values.
    """
    total = instances = 0.0
    aps = []
    for concept, per in mask_iou.items():
        n = per.get("gt_instances") or 0
        if not n:
            continue
        total += per["mean_iou"] * n
        instances += n
        ap = (coco.get(concept) or {}).get("AP")
        if ap is not None and ap >= 0:
            aps.append(ap)
    overall = tracking.get("overall") or {}
    return {
        "gt_instances": int(instances),
        "mask_iou": total / instances if instances else None,
        "mask_ap": sum(aps) / len(aps) if aps else None,
        "idf1": overall.get("idf1"),
        "mota": overall.get("mota"),
        "tracking_counts": {k: overall.get(k) for k in TRACKING_COUNTS},
    }


def _pooled_tracking(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The sequences' counts summed, and the IDF1 and MOTA they give, as MOTChallenge combines sequences.

    None where a run carries no counts (a report written before they were stored): pooling
    cannot be recovered from the ratios alone.
    """
    counts = [r.get("tracking_counts") or {} for r in runs]
    if any(c.get(k) is None for c in counts for k in TRACKING_COUNTS):
        missing = dict.fromkeys(TRACKING_COUNTS)
        return {"tracking_counts": missing, "idf1_pooled": None, "mota_pooled": None}
    total = {k: sum(c[k] for c in counts) for k in TRACKING_COUNTS}
    id_denominator = 2 * total["idtp"] + total["idfp"] + total["idfn"]
    errors = total["num_misses"] + total["num_false_positives"] + total["num_switches"]
    return {
        "tracking_counts": total,
        "idf1_pooled": 2 * total["idtp"] / id_denominator if id_denominator else None,
        "mota_pooled": 1 - errors / total["num_objects"] if total["num_objects"] else None,
    }


def pool_overall(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several sequences' :func:`overall_scores` as one row, the way the demo model's card pools them.

    Mask IoU over every ground-truth instance of every sequence (weighted by instances); mask
    AP, IDF1 and MOTA averaged over the sequences (each is a per-sequence quantity: a track id
    means nothing in another bag). A missing value counts 0, as a sequence without output scores 0.
    ``idf1_pooled`` / ``mota_pooled`` pool the sequences' counts instead (MOTChallenge's combined
    scores), which weights a long or crowded sequence by its size rather than as one of N.
    """
    if not runs:
        raise ValueError("pool_overall needs at least one sequence's scores")
    instances = sum(r["gt_instances"] for r in runs)
    mean = lambda key: sum(r[key] or 0.0 for r in runs) / len(runs)  # noqa: E731
    return {
        "sequences": len(runs),
        "gt_instances": instances,
        "mask_iou": sum((r["mask_iou"] or 0.0) * r["gt_instances"] for r in runs) / max(instances, 1),
        "mask_ap": mean("mask_ap"),
        "idf1": mean("idf1"),
        "mota": mean("mota"),
        **_pooled_tracking(runs),
    }
