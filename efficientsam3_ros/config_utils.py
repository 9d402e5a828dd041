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
