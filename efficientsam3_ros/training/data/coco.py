"""SA-Co and COCO instance readers: (image, noun phrase) -> every instance of that phrase.

Fields used from the COCO-style JSON (``data.annotations``, default
``<root>/annotations.json``):
``images[].id``, ``images[].file_name`` (relative to ``data.root``), ``images[].height``,
``images[].width``; ``annotations[].image_id``, ``annotations[].segmentation`` (RLE with
string or list counts, or polygons), ``annotations[].bbox`` (used only when a mask is
empty), ``annotations[].iscrowd`` (crowd regions are not instances, but their category
counts as present: a crowd of people is no negative example of "person");
``categories[].id`` / ``categories[].name``.

* **SA-Co** (``format: saco``; SA-Co/Gold is the benchmark): each ``images`` entry is one
  (image, phrase) datapoint with the phrase in ``images[].text_input``; its annotations
  are exactly the phrase's instances, and an entry without annotations is a negative
  (the concept is absent). Several entries may share a ``file_name``.
* **COCO** (``format: coco``): the category name is the phrase; every category present
  in an image is a positive datapoint, plus ``data.negatives_per_image`` absent
  categories (chosen per sample from the seed) as negatives.

Boxes are taken from the decoded masks (exact, and independent of whether a dataset
stores pixel or normalised ``bbox``); a mask-less annotation falls back to ``bbox``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    BadRecords,
    DataError,
    RecentImages,
    RecordDataset,
    Resized,
    ResizedImages,
    decode_segmentation,
    load_json,
    mask_boxes,
    require_dir,
    resize_image,
)

log = logging.getLogger(__name__)


class ConceptDataset(RecordDataset):
    """SA-Co / COCO datapoints as samples: pixels, phrase, masks [N, S, S], boxes xyxy in input pixels."""

    def __init__(
        self,
        root: str | Path,
        input_size: int,
        annotations: str | Path | None = None,
        style: str = "saco",
        resize: str = "stretch",
        hflip: float = 0.0,
        negatives_per_image: int = 1,
        limit: int | None = None,
        decode_masks: bool = True,
        unique_images: bool = False,
        cache_mb: float = 0.0,
    ):
        if style not in ("saco", "coco"):
            raise ValueError(f"style must be 'saco' or 'coco', got {style!r}")
        self.name = style
        self.root = require_dir(root, style)
        self.input_size = input_size
        self.resize = resize
        self.hflip = hflip
        self.decode_masks = decode_masks
        self.negatives_per_image = negatives_per_image
        ann_path = Path(annotations) if annotations else self.root / "annotations.json"
        if not ann_path.is_file():
            raise DataError(f"{style}: annotation file {ann_path} does not exist; set data.annotations")
        try:
            doc = load_json(ann_path)
            images, anns = doc["images"], doc.get("annotations", [])
            self.categories = {int(c["id"]): str(c["name"]) for c in doc.get("categories", [])}
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{style}: {ann_path} is not a COCO-style file ({err})") from None
        by_image: dict[Any, list[dict]] = defaultdict(list)  # instances (no crowd regions)
        crowds: dict[Any, list[dict]] = defaultdict(list)  # crowd regions: present, not instances
        for ann in anns:
            if "image_id" in ann:
                (crowds if ann.get("iscrowd", 0) else by_image)[ann["image_id"]].append(ann)
        _check_image_ids(style, ann_path, images, anns)
        bad = BadRecords(style)
        records: list[dict[str, Any]] = []
        seen: set[Path] = set()
        for entry in images:
            try:
                path = self.root / entry["file_name"]
                size = (int(entry["height"]), int(entry["width"]))
                image_anns = by_image.get(entry["id"], [])
                if style == "saco":
                    phrase = str(entry["text_input"]).strip()
                    if not phrase:
                        raise ValueError("empty text_input")
                    phrases = None
                else:
                    phrase = None
                    phrases = sorted({self.categories[int(a["category_id"])] for a in image_anns})
                    present = set(phrases) | {
                        self.categories[int(a["category_id"])] for a in crowds.get(entry["id"], [])
                    }
            except (KeyError, ValueError, TypeError):
                bad.add(
                    "bad image entry", str(entry.get("id", entry)) if isinstance(entry, dict) else str(entry)
                )
                continue
            if not path.is_file():
                bad.add("missing image", str(path))
                continue
            base = {"image": path, "size": size, "id": entry["id"]}
            if unique_images:  # stage 1: images, not datapoints (SA-Co repeats a file per phrase)
                if path not in seen:
                    seen.add(path)
                    records.append({**base, "phrase": "", "annotations": image_anns})
            elif style == "saco":
                records.append({**base, "phrase": phrase, "annotations": image_anns})
            else:
                for name in phrases:
                    chosen = [a for a in image_anns if self.categories[int(a["category_id"])] == name]
                    records.append({**base, "phrase": name, "annotations": chosen})
                for _ in range(negatives_per_image):
                    records.append({**base, "phrase": None, "present": present, "annotations": []})
        super().__init__(records, bad, len(images), limit)
        self._recent_images = RecentImages()
        self.resized_images = ResizedImages(int(cache_mb * 2**20))  # data.cache_mb

    def record_name(self, record: Any) -> str:
        return f"{record['image']} / {record['phrase']!r}"

    def key(self, index: int) -> str:
        return str(self.records[index]["image"].relative_to(self.root))

    def load(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        phrase = record["phrase"]
        if phrase is None:  # a COCO negative: an absent category, drawn from the sample's seed
            absent = sorted(set(self.categories.values()) - record["present"])
            if not absent:
                raise ValueError("every category is present; no negative phrase to draw")
            phrase = absent[int(rng.integers(len(absent)))]
        h, w = record["size"]
        flip = bool(rng.random() < self.hflip)

        def fresh() -> Resized:  # decoded only when the cache does not hold it
            image = self._recent_images(record["image"])
            if image.shape[:2] != (h, w):
                raise ValueError(f"image is {image.shape[:2]}, JSON says {(h, w)}")
            return resize_image(image, self.input_size, self.resize, flip=flip)

        resized = self.resized_images.resized(record["image"], flip, fresh)
        anns = record["annotations"]
        masks = np.zeros((len(anns), h, w), dtype=bool)
        if self.decode_masks:
            for i, ann in enumerate(anns):
                if ann.get("segmentation"):
                    masks[i] = decode_segmentation(ann["segmentation"], h, w)
        boxes = mask_boxes(masks)
        for i, ann in enumerate(anns):
            if not boxes[i].any() and ann.get("bbox"):
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                if max(x, y, bw, bh) <= 1.0:  # normalised (real SA-Co)
                    x, y, bw, bh = x * w, y * h, bw * w, bh * h
                boxes[i] = [x, y, x + bw, y + bh]
        return {
            "key": str(record["image"].relative_to(self.root)),
            "phrase": phrase,
            "pixels": resized.pixels,
            "valid": resized.valid,
            "masks": resized.masks(masks),
            "boxes": resized.boxes(boxes),
        }


def _check_image_ids(style: str, ann_path: Path, images: list[Any], anns: list[Any]) -> None:
    """Annotations whose ``image_id`` names no ``images[].id``: none matching is an error, some a warning.

    Why: such annotations were dropped silently, so a JSON whose exporter wrote the ids as strings
    on one side and ints on the other trained every datapoint as a "concept absent" negative.
    """
    ids = {entry["id"] for entry in images if isinstance(entry, dict) and "id" in entry}
    linked = [ann["image_id"] for ann in anns if isinstance(ann, dict) and "image_id" in ann]
    orphans = [image_id for image_id in linked if image_id not in ids]
    if not orphans:
        return
    example = orphans[0]
    known = next(iter(ids), None)
    detail = (
        f"e.g. image_id {example!r} ({type(example).__name__}); images[].id are like {known!r} "
        f"({type(known).__name__}): an int/str id mismatch?"
    )
    if len(orphans) == len(linked):
        raise DataError(
            f"{style}: none of the {len(linked)} annotations in {ann_path} refers to an images[].id "
            f"({detail}); fix the ids so annotations[].image_id matches images[].id"
        )
    log.warning(
        "%s: %d of %d annotations in %s refer to no images[].id and are ignored (%s)",
        style,
        len(orphans),
        len(linked),
        ann_path,
        detail,
    )
