"""Helpers shared by the package's dataclass configs (model, tracker, tracking)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def check_known_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise ValueError naming every key of ``data`` that ``cls`` does not have, and the valid ones.

    Configs come from YAML files, ROS parameters and checkpoint metadata: a typo must fail loudly
    instead of silently falling back to a default.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {sorted(known)}")


#: how a model's 4-D tensors are laid out (modeling.memory_format): ``auto`` (channels-last for a
#: student on the CPU, a model left as it is otherwise) | ``channels_last`` | ``contiguous``
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def check_memory_format(choice: str, key: str = "memory_format") -> str:
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"bad value for '{key}': {choice!r}; use one of {list(MEMORY_FORMATS)}")
    return choice


_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}


def fits_kind(value: Any, kind: type) -> bool:
    """``value`` fits a bool / int / float / str field: a bool is no number, an int is a float."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def check_scalar_types(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise ValueError for a value whose kind does not match its field's scalar annotation.

    YAML and JSON hand over strings and numbers as written: ``"false"`` for a bool field would
    otherwise switch it on, and ``True`` for a number would count as 1. Fields of other types
    are left to the config's own checks.
    """
    for f in fields(cls):
        if f.name not in data:
            continue
        kind, value = _SCALARS.get(str(f.type)), data[f.name]
        if kind is not None and not fits_kind(value, kind):
            raise ValueError(f"{what} {f.name} must be of type {f.type}, got {value!r}")


def check_score_threshold(value: float, name: str = "score_threshold") -> float:
    """A score cut is a probability in [0, 1]: above 1 keeps nothing and below 0 everything, silently."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (scores are probabilities), got {value}")
    return float(value)


def check_mask_threshold(value: float, name: str = "mask_threshold") -> float:
    """A mask cut is a probability strictly between 0 and 1 (SAM3: 0.5, i.e. logit 0).

    0 or 1 would keep every pixel or none; and a caller still passing a logit (0.0, the cut
    before it became a probability) is told so instead of getting whole-image masks.
    """
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"{name} is a mask probability strictly between 0 and 1 (SAM3: 0.5, i.e. logit 0), got {value}"
        )
    return float(value)
