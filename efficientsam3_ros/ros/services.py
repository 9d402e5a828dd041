"""Validation of service requests, kept ROS-free so every bad input is testable.

A bad request must come back as ``success: false`` with a message, never as an
exception in the node (an exception would kill the service callback). Each
validator raises :class:`ServiceInputError`, which the core turns into that answer.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


class ServiceInputError(ValueError):
    """A service request that cannot be honoured; the message goes back to the caller."""


@dataclass
class ServiceResult:
    """The fields every service response carries, plus the optional id/label lists."""

    success: bool
    message: str
    concept_ids: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    @classmethod
    def fail(cls, message: str) -> ServiceResult:
        """A failed answer with ``message``."""
        return cls(False, message)


def _first_invisible_character(phrase: str) -> tuple[int, str] | None:
    """The first control or format character (Unicode Cc / Cf) and its position, if any.

    Why: these print as nothing (zero-width spaces, bidi overrides, a BOM pasted from a file) or
    break logs (newlines, NUL), so "red\u200bmug" would be a second concept that reads as
    "red mug" in every log line and listing.
    """
    for pos, char in enumerate(phrase):
        if unicodedata.category(char) in ("Cc", "Cf"):
            return pos, char
    return None


def validate_phrases(
    labels: Sequence[str],
    current: Sequence[str],
    append: bool,
    max_concepts: int,
    max_phrase_length: int,
) -> list[str]:
    """Return the normalised phrases, or raise when one is empty/too long/duplicated or there would be too many.

    Each phrase is normalised by the pipeline's own ``validate_phrase`` (surrounding
    whitespace removed, inner runs of whitespace, non-breaking spaces included, collapsed to
    one space), so phrases that differ only in whitespace are the same concept: given twice
    they are refused, and appending one that is active is refused. ``current`` are the
    active labels, as the pipeline holds them (normalised). The length limit applies to the
    phrase as sent (stripped), before inner whitespace is collapsed, so the message counts
    the characters the caller sent and a phrase can never reach the tokenizer's own limit.
    """
    from ..modeling.tokenizer import validate_phrase  # lazily: it pulls in torch (loaded with any model)

    stripped = [str(label).strip() for label in labels]
    if not stripped:
        raise ServiceInputError("no concepts given (send at least one phrase)")
    phrases = []
    for i, phrase in enumerate(stripped):
        if not phrase:
            raise ServiceInputError(f"phrase {i} is empty")
        if len(phrase) > max_phrase_length:
            raise ServiceInputError(
                f"phrase {i} has {len(phrase)} characters, more than max_phrase_length={max_phrase_length}"
            )
        # before normalising, which would turn \n \t into spaces
        invisible = _first_invisible_character(phrase)
        if invisible is not None:
            pos, char = invisible
            name = unicodedata.name(char, "a control character")
            raise ServiceInputError(
                f"phrase {i} contains control character U+{ord(char):04X} ({name}) at position {pos}; "
                "send plain text"
            )
        try:
            phrases.append(validate_phrase(phrase))
        except ValueError as err:
            raise ServiceInputError(f"phrase {i}: {err}") from None
    first: dict[str, int] = {}
    for i, phrase in enumerate(phrases):
        if phrase in first:
            raise ServiceInputError(
                f"the same phrase is given twice: phrases {first[phrase]} and {i} are both {phrase!r} "
                "once whitespace is collapsed"
            )
        first[phrase] = i
    if append and set(phrases) & set(current):
        raise ServiceInputError(f"already active: {sorted(set(phrases) & set(current))}")
    total = len(phrases) + (len(current) if append else 0)
    if total > max_concepts:
        raise ServiceInputError(f"{total} concepts would exceed max_concepts={max_concepts}")
    return phrases


def validate_concept_ids(ids: Iterable[int], known: Iterable[int]) -> list[int]:
    """Return the ids as ints, each once in request order; raise when the list is empty or names an unknown concept."""
    wanted = list(dict.fromkeys(int(i) for i in ids))  # [1, 1] removes concept 1 once
    if not wanted:
        raise ServiceInputError("no concept ids given")
    unknown = sorted(set(wanted) - set(int(k) for k in known))
    if unknown:
        raise ServiceInputError(f"unknown concept ids {unknown}")
    return wanted


def validate_boxes(
    boxes_flat: Sequence[float],
    positive: Sequence[bool],
    image_size: tuple[int, int] | None,
    max_boxes: int,
    held: int = 0,
) -> tuple[np.ndarray, list[bool]]:
    """Return boxes as float32 [N, 4] (x_min, y_min, x_max, y_max) and the positive flags.

    Raises when no frame was processed yet, the flat list is not a multiple of 4, the
    flags do not match, a box is degenerate, not finite, or outside the image, or when the
    concept's ``held`` boxes plus these would exceed ``max_boxes``: a concept's exemplars
    accumulate over calls and every one of them runs through the detector on every frame.
    """
    if image_size is None:
        raise ServiceInputError(
            "no frame has been processed yet for this camera; exemplars refer to the latest frame"
        )
    values = np.asarray(list(boxes_flat), dtype=np.float64)
    if values.size == 0:
        raise ServiceInputError("no boxes given")
    if values.size % 4:
        raise ServiceInputError(f"boxes_xyxy has {values.size} values, not a multiple of 4")
    boxes = values.reshape(-1, 4)
    if held + len(boxes) > max_boxes:
        already = f"the concept already holds {held}, " if held else ""
        raise ServiceInputError(
            f"{len(boxes)} boxes exceed max_exemplar_boxes={max_boxes} ({already}a concept's boxes over "
            "all calls count); to start its exemplars over, remove the concept and set it again"
        )
    flags = [bool(p) for p in positive]
    if len(flags) != len(boxes):
        raise ServiceInputError(f"{len(flags)} positive flags for {len(boxes)} boxes")
    if not np.all(np.isfinite(boxes)):
        raise ServiceInputError("boxes contain NaN or infinity")
    height, width = image_size
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not (x1 > x0 and y1 > y0):
            raise ServiceInputError(f"box {i} is empty or inverted (need x_min < x_max, y_min < y_max)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ServiceInputError(
                f"box {i} {[float(v) for v in (x0, y0, x1, y1)]} is outside the {width}x{height} image"
            )
    return boxes.astype(np.float32), flags


def select_cameras(camera: str, cameras: Sequence[str], allow_all: bool) -> list[str]:
    """Resolve a request's camera field: a name, or "" for the only camera (or every camera if allowed)."""
    name = camera.strip("/")
    if not name:
        if allow_all or len(cameras) == 1:
            return list(cameras)
        raise ServiceInputError(f"several cameras are served; name one of {list(cameras)}")
    if name not in cameras:
        shown = [c or "(default)" for c in cameras]
        raise ServiceInputError(f"unknown camera {name!r}; cameras are {shown}")
    return [name]
