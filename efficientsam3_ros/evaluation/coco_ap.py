"""COCO mask AP per concept, computed by pycocotools' COCOeval (iouType "segm").

Why in memory: the frames, ground truth and predictions are already records; building
COCO objects directly avoids temporary files and keeps image ids tied to bag stamps.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from typing import Any

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from efficientsam3_ros.evaluation.records import (
    FrameRecord,
    normalise_label,
    rle_for_coco,
    unique_concepts,
)


def coco_from_dataset(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO object from an in-memory dataset dict (its index printout silenced)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def gt_annotation(
    ann_id: int, image_id: int, category_id: int, rle: dict, iscrowd: int = 0
) -> dict[str, Any]:
    """A COCO ground-truth annotation whose area and box come from its mask RLE."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": iscrowd,
    }


def segm_ap(
    coco_gt: COCO, dets: list[dict[str, Any]], cat_ids: list[int] | None = None
) -> dict[str, float | None]:
    """Mask AP, AP50 and AP75 of ``dets`` (COCO results) against ``coco_gt``; None where undefined."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": _stat(ev.stats[0]), "AP50": _stat(ev.stats[1]), "AP75": _stat(ev.stats[2])}


def coco_ap_per_concept(
    gt: dict[int, FrameRecord], pred: dict[int, FrameRecord], concepts: Iterable[str]
) -> dict[str, dict[str, float | int | None]]:
    """AP, AP50 and AP75 (mask) per concept over the frames present in both ``gt`` and ``pred``.

    Concepts are matched to ground-truth labels by normalised name. A concept without
    ground truth gets None (COCOeval's -1), one with ground truth but no predictions 0.0.
    Crowd regions go to COCOeval as ``iscrowd`` (ignored: a detection on one is neither a hit
    nor a false positive) and are not counted in ``gt_instances``.
    """
    concepts = unique_concepts(concepts)
    cat_ids = {normalise_label(c): i + 1 for i, c in enumerate(concepts)}
    stamps = sorted(set(gt) & set(pred))
    images, gt_anns, dets = [], [], []
    for image_id, stamp in enumerate(stamps, start=1):
        height, width = gt[stamp].image_size
        images.append({"id": image_id, "height": int(height), "width": int(width), "stamp_ns": stamp})
        for inst in gt[stamp].instances:
            cat = cat_ids.get(normalise_label(inst.label))
            if cat is None:
                continue
            gt_anns.append(
                gt_annotation(len(gt_anns) + 1, image_id, cat, rle_for_coco(inst.rle), int(inst.iscrowd))
            )
        for inst in pred[stamp].instances:
            cat = cat_ids.get(normalise_label(inst.label))
            if cat is not None:
                # No "bbox" key: loadRes would then take the box area as the mask area.
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": cat,
                        "segmentation": rle_for_coco(inst.rle),
                        "score": float(inst.score),
                    }
                )
    categories = [{"id": i, "name": name} for name, i in cat_ids.items()]
    coco_gt = coco_from_dataset({"images": images, "annotations": gt_anns, "categories": categories})

    out: dict[str, dict[str, float | int | None]] = {}
    for concept in concepts:
        cat = cat_ids[normalise_label(concept)]
        n_gt = sum(1 for a in gt_anns if a["category_id"] == cat and not a["iscrowd"])
        cat_dets = [dict(d) for d in dets if d["category_id"] == cat]
        result: dict[str, float | int | None] = {"gt_instances": n_gt, "detections": len(cat_dets)}
        if n_gt == 0:
            result.update({"AP": None, "AP50": None, "AP75": None})
        elif not cat_dets:
            result.update({"AP": 0.0, "AP50": 0.0, "AP75": 0.0})
        else:
            result.update(segm_ap(coco_gt, cat_dets, [cat]))
        out[concept] = result
    return out


def _stat(value: float) -> float | None:
    """COCOeval writes -1 where a metric is undefined; report that as None."""
    return None if value < 0 else float(value)
