"""Plain result types shared by every front door (CLI, node, bag evaluator, benchmarks).

They hold numpy arrays in original-image pixel coordinates, so nothing downstream
needs to know the model's input size or padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from pycocotools import mask as mask_utils


class TrackState(IntEnum):
    """Where an instance is in its track's life. Values match ConceptInstance.msg."""

    UNTRACKED = 0  # single-image inference: no tracker ran
    NEW = 1  # first frame of a new track
    TRACKED = 2  # matched to a detection this frame
    PREDICTED = 3  # not detected this frame; mask propagated from memory (occluded or missed)


@dataclass
class Instance:
    """One segmented instance of one concept in one frame."""

    concept_id: int
    label: str
    score: float
    box_xyxy: np.ndarray  # float32 [4], pixels of the original image
    mask: np.ndarray  # bool [H, W], original image size
    track_id: int = -1  # -1 when no tracker ran
    state: TrackState = TrackState.UNTRACKED

    def rle(self) -> dict:
        """COCO run-length encoding of the mask (counts as str), as pycocotools writes it."""
        return mask_to_rle(self.mask)


@dataclass
class FrameResult:
    """Everything the pipeline produced for one frame."""

    instances: list[Instance]
    image_size: tuple[int, int]  # (height, width) of the original image
    concepts: dict[int, str]  # active concepts, id -> label
    timings_ms: dict[str, float] = field(
        default_factory=dict
    )  # per stage: preprocess, encode, detect, track, post


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode a bool [H, W] mask as COCO RLE with string counts (JSON and ROS friendly)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode COCO RLE (string or bytes counts) back to a bool [H, W] mask."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return mask_utils.decode({"size": list(rle["size"]), "counts": counts}).astype(bool)
