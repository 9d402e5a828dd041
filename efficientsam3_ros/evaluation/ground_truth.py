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

Everything is checked here, before the model runs, and a problem is a
:class:`GroundTruthError` naming the entry: scoring comes after the whole model pass, and
pycocotools trusts what it is given (a mask of another size scores 0 against everything,
RLE counts that do not add up to the image make its merge loop forever).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from efficientsam3_ros.evaluation.records import (
    FrameRecord,
    InstanceRecord,
    mask_to_record_rle,
    rle_for_coco,
    rle_to_json,
    segmentation_to_rle,
)


class GroundTruthError(ValueError):
    """The ground truth cannot be read, or is missing or mangles a field the evaluator needs."""


@contextmanager
def _entry(kind: str, entry: Any) -> Iterator[None]:
    """Turn a missing or malformed field of one entry into a GroundTruthError naming the entry
    (a bare KeyError names only the key, and would end the run as a crash, not a usage error)."""
    name = f"{kind} {entry.get('id')!r}" if isinstance(entry, dict) else f"{kind} {str(entry)[:60]!r}"
    try:
        yield
    except GroundTruthError:
        raise
    except KeyError as err:
        raise GroundTruthError(
            f"ground-truth {name} has no {err.args[0]!r} field (format: README, 'Ground truth')"
        ) from None
    except (TypeError, ValueError, AttributeError) as err:
        raise GroundTruthError(f"ground-truth {name}: {err}") from None


def check_rle(rle: dict[str, Any], height: int, width: int) -> None:
    """Raise ValueError unless ``rle`` is a valid mask of exactly ``height`` x ``width`` pixels.

    pycocotools' decode refuses counts that run past the image, but not counts that stop short
    (the rest of the mask is left unwritten), and both make merge and iou loop forever; so the
    mask is decoded and must re-encode to the same counts.
    """
    size = [int(v) for v in rle["size"]]
    if size != [height, width]:
        raise ValueError(
            f"segmentation size {size} differs from its image's [height, width] {[height, width]}"
        )
    try:
        mask = mask_utils.decode(rle_for_coco(rle))
    except ValueError as err:  # pycocotools: "Invalid RLE mask representation"
        raise ValueError(f"segmentation counts are not a valid COCO RLE ({err})") from None
    if mask_to_record_rle(mask)["counts"] != rle_to_json(rle)["counts"]:
        raise ValueError(
            f"segmentation counts do not cover the {height}x{width} image exactly (cut short, or not "
            "pycocotools' own run lengths); re-encode the mask with pycocotools.mask.encode"
        )


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
    if not isinstance(data, dict):
        raise GroundTruthError("ground truth must be a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise GroundTruthError(f"ground truth has no {key!r} list")
    names: dict[int, str] = {}
    for category in data["categories"]:
        with _entry("category", category):
            names[int(category["id"])] = str(category["name"])
    frames: dict[int, FrameRecord] = {}
    by_image: dict[Any, FrameRecord] = {}
    for image in data["images"]:
        with _entry("image", image):
            frame = _image_frame(image)
            if frame.stamp_ns in frames:
                raise GroundTruthError(f"two ground-truth images share stamp_ns {frame.stamp_ns}")
            frames[frame.stamp_ns] = frame
            by_image[image["id"]] = frame
    for ann in data["annotations"]:
        with _entry("annotation", ann):
            _add_annotation(ann, by_image, names)
    for image in data["images"]:
        _check_track_ids(image, by_image[image["id"]])
    return frames, list(names.values())


def _check_track_ids(image: dict[str, Any], frame: FrameRecord) -> None:
    """Raise unless each (category, track_id) names at most one instance of the image.

    Why: a track id is one object's identity; two instances sharing it in one frame make the
    tracking metrics meaningless (motmetrics raised KeyError on it, after the whole model pass).
    """
    seen: set[tuple[int, int]] = set()
    for inst in frame.instances:
        if inst.iscrowd or inst.track_id < 0:
            continue
        key = (inst.concept_id, inst.track_id)
        if key in seen:
            raise GroundTruthError(
                f"ground-truth image {image.get('id')!r} has two {inst.label!r} annotations with "
                f"track_id {inst.track_id}; a track_id is one object's identity (merge the two "
                "segmentations into one annotation, or leave track_id out to score without identities)"
            )
        seen.add(key)


def _image_frame(image: dict[str, Any]) -> FrameRecord:
    """An empty frame for one COCO image entry (its stamp and [height, width])."""
    height, width = int(image["height"]), int(image["width"])
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    return FrameRecord(stamp_ns=image_stamp_ns(image), image_size=(height, width))


def _add_annotation(ann: dict[str, Any], by_image: dict[Any, FrameRecord], names: dict[int, str]) -> None:
    """Add one COCO annotation to its frame (a crowd region flagged as one), its mask checked."""
    frame = by_image.get(ann["image_id"])
    if frame is None:
        raise GroundTruthError(f"annotation {ann.get('id')!r} refers to unknown image {ann['image_id']!r}")
    category = int(ann["category_id"])
    if category not in names:
        raise GroundTruthError(f"annotation {ann.get('id')!r} has unknown category_id {category}")
    height, width = frame.image_size
    rle = segmentation_to_rle(ann["segmentation"], height, width)
    check_rle(rle, height, width)
    frame.instances.append(
        InstanceRecord(
            label=names[category],
            rle=rle,
            score=1.0,
            track_id=int(ann.get("track_id", -1)),
            concept_id=category,
            iscrowd=bool(int(ann.get("iscrowd", 0))),  # kept for mask AP's ignore regions only
        )
    )


def load_ground_truth(path: str | Path) -> tuple[dict[int, FrameRecord], list[str]]:
    """Read a ground-truth JSON file (format in the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GroundTruthError(f"ground-truth file {path} does not exist") from None
    except OSError as err:  # a directory, no permission, an I/O error
        raise GroundTruthError(f"cannot read ground-truth file {path}: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GroundTruthError(f"ground-truth file {path} is not valid JSON: {err}") from None
    return ground_truth_from_coco(data)
