"""SA-1B reader: one JPEG + one JSON per image, class-agnostic masks with boxes and points.

Fields used, per ``sa_<n>.json``:
``image.file_name`` (JPEG beside the JSON), ``image.width``, ``image.height``;
per annotation ``segmentation`` (COCO RLE, ``{"size": [H, W], "counts": str}``),
``bbox`` (pixel ``[x, y, w, h]``), ``point_coords`` (``[[x, y]]``, a pixel inside the
mask). ``predicted_iou``, ``stability_score``, ``crop_box`` and any extra keys are
ignored. The record list is every ``*.json`` under ``data.root`` or the names in
``data.file_list`` (paths relative to the root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (
    BadRecords,
    RecordDataset,
    decode_segmentation,
    load_image,
    load_json,
    read_file_list,
    require_dir,
    resize_image,
)


class SA1BDataset(RecordDataset):
    """Images with every annotated object as a box, a point and (optionally) a mask at the model input."""

    name = "sa1b"

    def __init__(
        self,
        root: str | Path,
        input_size: int,
        file_list: str | Path | None = None,
        resize: str = "stretch",
        hflip: float = 0.0,
        decode_masks: bool = False,
        limit: int | None = None,
    ):
        self.root = require_dir(root, "SA-1B")
        self.input_size = input_size
        self.resize = resize
        self.hflip = hflip
        self.decode_masks = decode_masks
        names = read_file_list(file_list, self.root)
        paths = [self.root / n for n in names] if names is not None else sorted(self.root.rglob("*.json"))
        bad = BadRecords(self.name)
        records = []
        for path in paths:
            try:
                doc = load_json(path)
                image = doc["image"]
                image_path = path.parent / image["file_name"]
                size = (int(image["height"]), int(image["width"]))
                anns = [
                    a for a in doc["annotations"] if a.get("bbox") and a["bbox"][2] > 0 and a["bbox"][3] > 0
                ]
            except FileNotFoundError:
                bad.add("missing json", str(path))
                continue
            except (ValueError, KeyError, TypeError, IndexError):
                bad.add("bad json", str(path))
                continue
            if not image_path.is_file():
                bad.add("missing image", str(image_path))
                continue
            records.append({"json": path, "image": image_path, "size": size, "annotations": anns})
        super().__init__(records, bad, len(paths), limit)

    def record_name(self, record: Any) -> str:
        return str(record["json"])

    def key(self, index: int) -> str:
        return str(self.records[index]["json"].relative_to(self.root))

    def load(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = load_image(record["image"])
        if image.shape[:2] != record["size"]:
            raise ValueError(f"image is {image.shape[:2]}, JSON says {record['size']}")
        resized = resize_image(image, self.input_size, self.resize, flip=bool(rng.random() < self.hflip))
        anns = record["annotations"]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        points = np.array(
            [
                a["point_coords"][0] if a.get("point_coords") else [x + w / 2, y + h / 2]
                for a, (x, y, w, h) in zip(anns, xywh)
            ],
            dtype=np.float32,
        ).reshape(-1, 2)
        sample = {
            "key": str(record["json"].relative_to(self.root)),
            "pixels": resized.pixels,
            "valid": resized.valid,
            "boxes": resized.boxes(xyxy),
            "points": resized.points(points),
        }
        if self.decode_masks:
            h, w = record["size"]
            masks = (
                np.stack([decode_segmentation(a["segmentation"], h, w) for a in anns])
                if anns
                else np.zeros((0, h, w), bool)
            )
            sample["masks"] = resized.masks(masks)
        else:
            sample["masks"] = torch.zeros(0)
        return sample
