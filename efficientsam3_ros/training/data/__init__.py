"""Dataset readers for the real formats (SA-1B, SA-V, SA-Co, COCO, prompt lists) and the sampler.

``build_dataset(config, input_size)`` picks the reader for ``data.format``; each module's
docstring lists exactly the fields it reads.
"""

from __future__ import annotations

from ..config import TrainConfig
from .coco import ConceptDataset
from .common import (
    BadRecords,
    DataError,
    RecordDataset,
    ResizedImages,
    collate_list,
    resize_image,
    valid_grid,
)
from .sa1b import SA1BDataset
from .sampler import ResumableBatchSampler
from .sav import SAVDataset
from .text import PromptDataset

__all__ = [
    "BadRecords",
    "ConceptDataset",
    "DataError",
    "PromptDataset",
    "RecordDataset",
    "ResizedImages",
    "ResumableBatchSampler",
    "SA1BDataset",
    "SAVDataset",
    "build_dataset",
    "collate_list",
    "resize_image",
    "valid_grid",
]


def build_dataset(config: TrainConfig, input_size: int, *, masks: bool = False) -> RecordDataset:
    """The reader ``config.data`` describes, at ``input_size``; ``masks``: decode instance masks too."""
    data = config.data
    if data.format == "sa1b":
        return SA1BDataset(
            data.root,
            input_size,
            data.file_list,
            data.resize,
            data.hflip,
            decode_masks=masks,
            limit=data.limit,
        )
    if data.format in ("saco", "coco"):
        return ConceptDataset(
            data.root,
            input_size,
            data.annotations,
            style=data.format,
            resize=data.resize,
            hflip=data.hflip,
            negatives_per_image=data.negatives_per_image,
            limit=data.limit,
            decode_masks=masks,
            unique_images=config.stage == "stage1-image",
            cache_mb=data.cache_mb,
        )
    if data.format == "sav":
        return SAVDataset(
            data.root,
            input_size,
            data.clip_length,
            data.max_objects,
            data.file_list,
            data.resize,
            data.hflip,
            data.limit,
            frame_stride=data.frame_stride,
        )
    if data.format == "text":
        if not data.prompts:
            raise DataError("data.format=text needs data.prompts (a text file, one phrase per line)")
        return PromptDataset(data.prompts, data.limit)
    raise DataError(f"unknown data.format {data.format!r}")
