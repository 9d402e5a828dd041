"""Load ground truth for a bag from a COCO-style JSON file keyed by bag timestamps.

The format (documented in the README, "Ground truth"):

    {"images": [{"id": 1, "stamp_ns": 1700000000000000000, "height": 240, "width": 320}, ...],
     "categories": [{"id": 1, "name": "red circle"}, ...],
     "annotations": [{"image_id": 1, "category_id": 1, "track_id": 3,
                      "segmentation": {"size": [240, 320], "counts": "..."}}, ...]}

Why stamps and not file names: an image in a bag has no file name; its header stamp
(``sec * 1e9 + nanosec``, not normalised by the recorder in some bags) is the one key the
image, the prediction and the annotation share. ``stamp`` as ``{"sec", "nanosec"}`` is
accepted too. Segmentations may be compressed RLE (str or bytes counts), uncompressed
RLE or polygons; ``track_id`` may be omitted (then tracking metrics are not meaningful).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from efficientsam3_ros.evaluation.records import FrameRecord, InstanceRecord, segmentation_to_rle


class GroundTruthError(ValueError):
    """The ground-truth file is missing a field the evaluator needs."""


def image_stamp_ns(image: dict[str, Any]) -> int:
    """Integer-nanosecond stamp of a COCO image entry (``stamp_ns`` or ``stamp: {sec, nanosec}``)."""
    if "stamp_ns" in image:
        return int(image["stamp_ns"])
    stamp = image.get("stamp")
    if isinstance(stamp, dict) and "sec" in stamp:
        return int(stamp["sec"]) * 1_000_000_000 + int(stamp.get("nanosec", 0))
    raise GroundTruthError(f"image {image.get('id')!r} has no 'stamp_ns' (bag header stamp in ns)")


def ground_truth_from_coco(data: dict[str, Any]) -> tuple[dict[int, FrameRecord], list[str]]:
    """Turn a parsed COCO-style dict into frames keyed by stamp, plus the category names."""
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise GroundTruthError(f"ground truth has no {key!r} list")
    names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    frames: dict[int, FrameRecord] = {}
    by_image: dict[Any, FrameRecord] = {}
    for image in data["images"]:
        stamp = image_stamp_ns(image)
        if stamp in frames:
            raise GroundTruthError(f"two ground-truth images share stamp_ns {stamp}")
        frame = FrameRecord(stamp_ns=stamp, image_size=(int(image["height"]), int(image["width"])))
        frames[stamp] = frame
        by_image[image["id"]] = frame
    for ann in data["annotations"]:
        frame = by_image.get(ann["image_id"])
        if frame is None:
            raise GroundTruthError(
                f"annotation {ann.get('id')!r} refers to unknown image {ann['image_id']!r}"
            )
        if int(ann.get("iscrowd", 0)):
            continue  # crowd regions are not instances to find or track
        category = int(ann["category_id"])
        if category not in names:
            raise GroundTruthError(f"annotation {ann.get('id')!r} has unknown category_id {category}")
        height, width = frame.image_size
        frame.instances.append(
            InstanceRecord(
                label=names[category],
                rle=segmentation_to_rle(ann["segmentation"], height, width),
                score=1.0,
                track_id=int(ann.get("track_id", -1)),
                concept_id=category,
            )
        )
    return frames, list(names.values())


def load_ground_truth(path: str | Path) -> tuple[dict[int, FrameRecord], list[str]]:
    """Read a ground-truth JSON file (format in the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GroundTruthError(f"ground-truth file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise GroundTruthError(f"ground-truth file {path} is not valid JSON: {err}") from None
    return ground_truth_from_coco(data)
