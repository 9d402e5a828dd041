"""Plain per-frame records that predictions and ground truth are both turned into.

Why a separate type from ``pipeline.results.FrameResult``: scoring must treat the
model's output, a COCO ground-truth file and a ConceptInstanceArray topic the same
way, and the report must outlive the frames. Masks therefore stay as COCO RLE
(a few hundred bytes) instead of full bool arrays, and frames are keyed by the
image's header stamp in integer nanoseconds, the one key all three sources share.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class InstanceRecord:
    """One instance (predicted or ground truth) of one concept in one frame."""

    label: str
    rle: dict[str, Any]  # COCO RLE, {"size": [h, w], "counts": str}
    score: float = 1.0
    track_id: int = -1  # -1: no track identity (untracked prediction)
    concept_id: int = -1
    # Ground truth only: a COCO crowd region, an area to ignore rather than an instance to find.
    # Mask AP passes it to COCOeval as such (a detection on it is neither a hit nor a false
    # positive); mask IoU and tracking leave it out, as motmetrics has no ignore regions.
    iscrowd: bool = False


@dataclass
class FrameRecord:
    """Every instance in one image, keyed by the image's header stamp."""

    stamp_ns: int
    image_size: tuple[int, int]  # (height, width)
    instances: list[InstanceRecord] = field(default_factory=list)


def normalise_label(label: str) -> str:
    """Concept names are matched case- and whitespace-insensitively ("Red  Mug" == "red mug")."""
    return " ".join(str(label).lower().split())


def unique_concepts(concepts: Iterable[str]) -> list[str]:
    """``concepts`` with later spellings of an already-listed concept dropped (first one kept).

    Why: concepts are matched by normalised name, so "red mug" and "Red Mug" select the same
    instances; listing both would score that concept twice and weight it twice in the overall numbers.
    """
    out: dict[str, str] = {}
    for concept in concepts:
        out.setdefault(normalise_label(concept), concept)
    return list(out.values())


def rle_for_coco(rle: dict[str, Any]) -> dict[str, Any]:
    """Return the RLE with bytes counts, the form pycocotools' C functions require."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """Return the RLE with str counts, the form JSON and ROS strings can hold."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Turn any COCO segmentation (polygons, uncompressed or compressed RLE) into compressed RLE."""
    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return rle_to_json(mask_utils.merge(rles))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return rle_to_json(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        return rle_to_json(segmentation)
    raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")


def mask_to_record_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a bool [H, W] mask as JSON-friendly RLE (used to build records from arrays)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle_to_json(rle)


def records_by_stamp(frames: list[FrameRecord]) -> dict[int, FrameRecord]:
    """Index frames by stamp; a later frame with an already-seen stamp is dropped (first wins)."""
    out: dict[int, FrameRecord] = {}
    for frame in frames:
        out.setdefault(int(frame.stamp_ns), frame)
    return out
