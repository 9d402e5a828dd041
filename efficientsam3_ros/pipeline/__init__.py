"""The ConceptSegmenter pipeline: preprocessing, per-frame orchestration, results.

``ConceptSegmenter`` and ``make_tracker`` are imported lazily so that the plain result types (and the RLE helpers)
can be used without loading torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .results import FrameResult, Instance, TrackState, mask_to_rle, rle_to_mask

if TYPE_CHECKING:
    from .segmenter import ConceptSegmenter, make_tracker

__all__ = [
    "ConceptSegmenter",
    "FrameResult",
    "Instance",
    "TrackState",
    "make_tracker",
    "mask_to_rle",
    "rle_to_mask",
]


def __getattr__(name: str):
    if name in ("ConceptSegmenter", "make_tracker"):
        from . import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
