"""SA-V reader: video frames + masklets (per-frame RLE), sampled as short clips for tracker training.

Fields used, per ``<video_id>_manual.json`` (frames in ``<root>/<video_id>/<frame:05d>.jpg``):
``video_id``, ``video_height``, ``video_width``, ``masklet`` (list over annotated frames
of a list over masklets of COCO RLE, ``null`` or an all-zero RLE where the object is not
visible), ``masklet_num``. ``annotated_frame_indices`` (the video frame of each
``masklet`` row) is used when present. The released ``*_manual.json`` files have no such
field: their masklets are annotated at 6 fps, so row i is video frame ``frame_stride * i``
(``data.frame_stride``, default 4 for SA-V's 24 fps videos), and SAM2's frame extraction
names each file by that video frame id (``00000.jpg, 00004.jpg, 00008.jpg ...``), as does
a folder holding all 24 fps frames. Reading row i as ``{i:05d}.jpg`` paired masks with
the wrong frames (or found no frames at all).
The record list is every ``*_manual.json`` under ``data.root`` or the video ids in
``data.file_list``.

A sample is a clip of ``clip_length`` consecutive annotated frames starting at a frame
where at least one masklet is visible, with up to ``max_objects`` of those masklets.
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


def _visible(rle: Any) -> bool:
    if rle is None:
        return False
    counts = rle.get("counts")
    if isinstance(counts, list):
        return any(counts[1::2])
    h, w = rle["size"]
    return bool(decode_segmentation(rle, h, w).any())


def _frame_ids(doc: dict[str, Any], num_rows: int, stride: int) -> list[int]:
    """The video frame of each masklet row: the file's own list, else every ``stride``-th frame."""
    if "annotated_frame_indices" in doc:
        return [int(i) for i in doc["annotated_frame_indices"]]
    return [stride * i for i in range(num_rows)]


class SAVDataset(RecordDataset):
    """Clips: frames [T, 3, S, S], masks [T, N, S, S] bool, visible [T, N] bool."""

    name = "sav"

    def __init__(
        self,
        root: str | Path,
        input_size: int,
        clip_length: int = 4,
        max_objects: int = 4,
        file_list: str | Path | None = None,
        resize: str = "stretch",
        hflip: float = 0.0,
        limit: int | None = None,
        frame_stride: int = 4,
    ):
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1 (video frames per masklet row), got {frame_stride}")
        self.root = require_dir(root, "SA-V")
        self.input_size = input_size
        self.clip_length = clip_length
        self.max_objects = max_objects
        self.resize = resize
        self.hflip = hflip
        names = read_file_list(file_list, self.root)
        if names is not None:
            paths = [self.root / (n if n.endswith(".json") else f"{n}_manual.json") for n in names]
        else:
            paths = sorted(self.root.rglob("*_manual.json"))
        bad = BadRecords(self.name)
        records = []
        for path in paths:
            try:
                doc = load_json(path)
                video_id = str(doc["video_id"])
                rows = doc["masklet"]
                size = (int(doc["video_height"]), int(doc["video_width"]))
                frames = _frame_ids(doc, len(rows), frame_stride)
                if len(frames) != len(rows):
                    raise ValueError("annotated_frame_indices and masklet differ in length")
                visible = np.array([[_visible(r) for r in row] for row in rows], dtype=bool).reshape(
                    len(rows), -1
                )
            except FileNotFoundError:
                bad.add("missing json", str(path))
                continue
            except (ValueError, KeyError, TypeError, IndexError):
                bad.add("bad json", str(path))
                continue
            folder = path.parent / video_id
            starts = [
                t
                for t in range(len(rows) - clip_length + 1)
                if visible[t].any()
                and all(frames[t + k + 1] - frames[t + k] > 0 for k in range(clip_length - 1))
            ]
            if not starts:
                bad.add(f"no clip of {clip_length} frames with a visible object", str(path))
                continue
            if not all((folder / f"{frames[t]:05d}.jpg").is_file() for t in range(len(rows))):
                bad.add("missing frames", str(folder))
                continue
            records.append(
                {
                    "json": path,
                    "folder": folder,
                    "size": size,
                    "frames": frames,
                    "rows": rows,
                    "visible": visible,
                    "starts": starts,
                }
            )
        super().__init__(records, bad, len(paths), limit)

    def record_name(self, record: Any) -> str:
        return str(record["json"])

    def load(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        start = record["starts"][int(rng.integers(len(record["starts"])))]
        candidates = np.flatnonzero(record["visible"][start])
        chosen = rng.permutation(candidates)[: self.max_objects]
        flip = bool(rng.random() < self.hflip)
        h, w = record["size"]
        pixels, masks, valid = [], [], None
        for t in range(start, start + self.clip_length):
            image = load_image(record["folder"] / f"{record['frames'][t]:05d}.jpg")
            if image.shape[:2] != (h, w):
                raise ValueError(f"frame {t} is {image.shape[:2]}, JSON says {(h, w)}")
            resized = resize_image(image, self.input_size, self.resize, flip=flip)
            row = record["rows"][t]
            frame_masks = np.stack(
                [
                    decode_segmentation(row[m], h, w) if row[m] is not None else np.zeros((h, w), bool)
                    for m in chosen
                ]
            )
            pixels.append(resized.pixels)
            masks.append(resized.masks(frame_masks))
            valid = resized.valid
        mask_tensor = torch.stack(masks)
        return {
            "key": f"{record['json'].name}:{start}",
            "pixels": torch.stack(pixels),
            "valid": valid,
            "masks": mask_tensor,
            "visible": mask_tensor.flatten(2).any(-1),
            "object_ids": torch.as_tensor(chosen, dtype=torch.int64),
        }
