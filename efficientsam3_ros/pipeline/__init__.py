"""The ConceptSegmenter pipeline: preprocessing, per-frame orchestration, results.

``ConceptSegmenter`` is imported lazily so that the plain result types (and the RLE helpers)
can be used without loading torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .results import FrameResult, Instance, TrackState, mask_to_rle, rle_to_mask

if TYPE_CHECKING:
    from .segmenter import ConceptSegmenter

__all__ = ["ConceptSegmenter", "FrameResult", "Instance", "TrackState", "mask_to_rle", "rle_to_mask"]


def __getattr__(name: str):
    if name == "ConceptSegmenter":
        from .segmenter import ConceptSegmenter

        return ConceptSegmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
