"""``eval-images``: any model on a COCO or SA-Co image dataset, box-prompted or concept-prompted.

- ``box``: every non-crowd instance is prompted with its ground-truth box through the
  detector's geometry encoder (text "visual", as SAM3 does for a visual-only prompt);
  the best-scoring query's mask is compared with the instance's mask. Reports the mean
  IoU over instances (the paper's stage-1 COCO number is this protocol with the
  instance predictor; modeling/instance.py can replace the detector path when it exists).
- ``concept``: each category name (COCO) or noun phrase (SA-Co ``text_input``) is prompted
  as text; reports mask AP / AP50 / AP75 (pycocotools) and the mean IoU of Hungarian-matched
  instances among detections scoring >= 0.5.
Works on whatever ``resolve_model`` returns, so every zoo model is evaluated the same way.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..modeling.efficientsam3 import ConceptFeatures, EfficientSam3Model
from ..pipeline.preprocess import masks_to_image, preprocess, probability_to_logit
from .coco_ap import coco_from_dataset, gt_annotation, segm_ap
from .masks import match

BOX_PROMPT_TEXT = "visual"
MATCH_SCORE = 0.5  # SAM3's operating threshold for counting a detection as an instance
BOX_BATCH = 16


class EvalImagesError(ValueError):
    """The dataset or its images cannot be evaluated; the message says which file and why."""


def load_dataset(ann: str | Path) -> dict[str, Any]:
    path = Path(ann)
    if not path.is_file():
        raise EvalImagesError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvalImagesError(f"{path}: not JSON ({err})") from None
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise EvalImagesError(f"{path}: not COCO format (no '{key}' list)")
    return data


def is_saco(data: dict[str, Any]) -> bool:
    """SA-Co style: one ``images`` entry per (image, noun phrase) pair, carrying ``text_input``."""
    return any("text_input" in im for im in data["images"])


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise EvalImagesError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise EvalImagesError(f"{path}: unreadable image ({err})") from None


def _gt_rle(ann: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def _encode(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle


def _iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(mask_utils.iou([a], [b], [0])[0][0])


def _progress(items: list, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="img")
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items


def _groups(data: dict[str, Any], limit: int | None) -> list[tuple[str, list[dict[str, Any]]]]:
    """Image entries grouped by file (an SA-Co image appears once per phrase), first ``limit`` files."""
    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for im in data["images"]:
        by_file[im["file_name"]].append(im)
    groups = list(by_file.items())
    return groups[:limit] if limit is not None else groups


@torch.no_grad()
def evaluate_images(
    model: EfficientSam3Model,
    ann: str | Path,
    images: str | Path,
    task: str = "box",
    limit: int | None = None,
    score_threshold: float = 0.0,
) -> dict[str, Any]:
    """Run ``task`` over the dataset and return a JSON-ready result dict (see ``format_table``)."""
    if task not in ("box", "concept"):
        raise EvalImagesError(f"task must be 'box' or 'concept', got {task!r}")
    data = load_dataset(ann)
    model.eval()
    groups = _groups(data, limit)
    anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for a in data["annotations"]:
        anns_by_image[a["image_id"]].append(a)
    start = time.perf_counter()
    if task == "box":
        result = _box_task(model, groups, anns_by_image, Path(images))
    else:
        result = _concept_task(model, data, groups, anns_by_image, Path(images), score_threshold)
    result.update(
        task=task,
        dataset=str(ann),
        format="sa-co" if is_saco(data) else "coco",
        images=len(groups),
        seconds=round(time.perf_counter() - start, 3),
        input_size=model.config.image_size,
    )
    return result


def _device(model: EfficientSam3Model) -> torch.device:
    return next(model.parameters()).device


def _features(model: EfficientSam3Model, image: np.ndarray):
    pixels = preprocess(image, model.config.image_size, device=_device(model))
    return model.encode_image(pixels)


def _box_task(model, groups, anns_by_image, root: Path) -> dict[str, Any]:
    visual = model.encode_concepts([BOX_PROMPT_TEXT])
    mask_logit = _mask_logit(model)
    ious: list[float] = []
    per_category: dict[int, list[float]] = defaultdict(list)
    for file_name, entries in _progress(groups, "eval-images box"):
        image = _read_rgb(root / file_name)
        height, width = image.shape[:2]
        seen: set[int] = set()
        instances = []
        for entry in entries:
            for a in anns_by_image.get(entry["id"], []):
                if a.get("iscrowd", 0) or a["id"] in seen:
                    continue
                seen.add(a["id"])
                instances.append(a)
        if not instances:
            continue
        features = _features(model, image)
        for i in range(0, len(instances), BOX_BATCH):
            batch = instances[i : i + BOX_BATCH]
            k = len(batch)
            concepts = ConceptFeatures(
                embeds=visual.embeds.expand(k, -1, -1),
                mask=visual.mask.expand(k, -1),
                labels=[BOX_PROMPT_TEXT] * k,
            )
            boxes = torch.tensor(
                [
                    [(x + w / 2) / width, (y + h / 2) / height, w / width, h / height]
                    for x, y, w, h in (a["bbox"] for a in batch)
                ],
                dtype=torch.float32,
                device=_device(model),
            )[:, None]
            labels = torch.ones(k, 1, dtype=torch.long, device=_device(model))
            out = model.detect(features, concepts, input_boxes=boxes, input_boxes_labels=labels)
            best = out.scores.argmax(dim=1)
            logits = out.pred_masks[torch.arange(k), best]
            masks = masks_to_image(logits, (height, width), mask_logit)
            for a, mask in zip(batch, masks):
                iou = _iou(_encode(mask), _gt_rle(a, height, width))
                ious.append(iou)
                per_category[a.get("category_id", 0)].append(iou)
    return {
        "instances": len(ious),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "per_category": {
            str(c): {"instances": len(v), "mean_iou": float(np.mean(v))}
            for c, v in sorted(per_category.items())
        },
    }


def _mask_logit(model: EfficientSam3Model) -> float:
    """Masks are read where the model's operating point cuts them (SAM3: logit 0; the demo model lower)."""
    return probability_to_logit(model.config.operating_point.mask_threshold)


def _concept_task(model, data, groups, anns_by_image, root: Path, score_threshold: float) -> dict[str, Any]:
    saco = is_saco(data)
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    if not saco and not categories:
        raise EvalImagesError("COCO concept evaluation needs 'categories' (their names are the prompts)")
    eval_images, gt_anns, dets = [], [], []
    matched_ious: list[float] = []
    n_gt = 0
    cache: dict[str, ConceptFeatures] = {}
    mask_logit = _mask_logit(model)

    def concepts_for(phrases: list[str]) -> ConceptFeatures:
        missing = [p for p in phrases if p not in cache]
        if missing:
            enc = model.encode_concepts(missing)
            for j, p in enumerate(missing):
                cache[p] = ConceptFeatures(enc.embeds[j : j + 1], enc.mask[j : j + 1], [p])
        return ConceptFeatures(
            torch.cat([cache[p].embeds for p in phrases]),
            torch.cat([cache[p].mask for p in phrases]),
            phrases,
        )

    for file_name, entries in _progress(groups, "eval-images concept"):
        image = _read_rgb(root / file_name)
        height, width = image.shape[:2]
        features = _features(model, image)
        if saco:  # one entry per phrase; class-agnostic per (image, phrase) pair
            prompts = [(e["id"], e["text_input"], 1) for e in entries]
        else:
            prompts = [(entries[0]["id"], name, cid) for cid, name in categories.items()]
        out = model.detect(features, concepts_for([p for _, p, _ in prompts]))
        scores = out.scores.float().cpu()
        for j, (image_id, _, cat) in enumerate(prompts):
            eval_id = len(eval_images) + 1 if saco else image_id
            if saco or j == 0:
                eval_images.append({"id": eval_id, "height": height, "width": width})
            gts = [a for a in anns_by_image.get(image_id, []) if saco or a.get("category_id") == cat]
            gt_rles = []
            for a in gts:
                rle = _gt_rle(a, height, width)
                gt_rles.append(rle)
                gt_anns.append(gt_annotation(len(gt_anns) + 1, eval_id, cat, rle, int(a.get("iscrowd", 0))))
            n_gt += sum(1 for a in gts if not a.get("iscrowd", 0))
            keep = (scores[j] >= score_threshold).nonzero().flatten().tolist()
            masks = masks_to_image(out.pred_masks[j, keep], (height, width), mask_logit) if keep else []
            pred_rles, pred_scores = [], []
            for q, mask in zip(keep, masks):
                rle = _encode(mask)
                pred_rles.append(rle)
                pred_scores.append(float(scores[j, q]))
                dets.append(
                    {
                        "image_id": eval_id,
                        "category_id": cat,
                        "segmentation": rle,
                        "score": float(scores[j, q]),
                    }
                )
            confident = [r for r, s in zip(pred_rles, pred_scores) if s >= MATCH_SCORE]
            if gt_rles and confident:
                ious = (
                    np.asarray(mask_utils.iou(confident, gt_rles, [0] * len(gt_rles)))
                    .reshape(len(confident), len(gt_rles))
                    .T
                )
                matched_ious += [iou for _, _, iou in match(ious)]
    ap = _coco_ap(eval_images, gt_anns, dets, [1] if saco else list(categories))
    return {
        "instances": n_gt,
        "detections": len(dets),
        "matched": len(matched_ious),
        "matched_mean_iou": float(np.mean(matched_ious)) if matched_ious else None,
        **ap,
    }


def _coco_ap(images, gt_anns, dets, cat_ids) -> dict[str, float | None]:
    if not gt_anns:
        return {"AP": None, "AP50": None, "AP75": None}
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    gt = coco_from_dataset(
        {"images": images, "annotations": gt_anns, "categories": [{"id": c} for c in cat_ids]}
    )
    return segm_ap(gt, dets)


def format_table(result: dict[str, Any]) -> str:
    """A short human summary of an ``evaluate_images`` result."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.2f}" if isinstance(v, float) else str(v)

    if result["task"] == "box":
        cols = [("images", "images"), ("instances", "instances"), ("mean_iou", "mIoU %")]
    else:
        cols = [
            ("images", "images"),
            ("instances", "GT"),
            ("detections", "dets"),
            ("AP", "mask AP"),
            ("AP50", "AP50"),
            ("AP75", "AP75"),
            ("matched_mean_iou", "matched mIoU %"),
        ]
    header = " | ".join(title for _, title in cols)
    values = " | ".join(fmt(result.get(key)).rjust(len(title)) for key, title in cols)
    return f"eval-images {result['task']} ({result['format']}, {result['seconds']:.1f}s)\n{header}\n{values}"
