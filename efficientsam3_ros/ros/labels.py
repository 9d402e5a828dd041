"""Instance label image: 0 for background, the track id (or 1-based index) on each instance's pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..pipeline.results import Instance

MONO16_MAX = 65535


def label_image(
    instances: Sequence[Instance], image_size: tuple[int, int], encoding: str = "mono16"
) -> np.ndarray:
    """Render the label image for ``instances`` over ``image_size`` (height, width).

    Pixels get the instance's track id, or its 1-based position when it has none
    (track_id < 0). Where masks overlap the higher-scoring instance wins, so the
    image agrees with what a viewer would call "on top". ``mono16`` wraps ids above
    65535 into 1..65535 (never 0, which means background); ``32SC1`` keeps them.
    """
    if encoding not in ("mono16", "32SC1"):
        raise ValueError(f"label image encoding must be mono16 or 32SC1, got {encoding!r}")
    dtype = np.uint16 if encoding == "mono16" else np.int32
    height, width = (int(v) for v in image_size)
    out = np.zeros((height, width), dtype=dtype)
    order = sorted(range(len(instances)), key=lambda i: instances[i].score)
    for i in order:
        inst = instances[i]
        label = int(inst.track_id) if inst.track_id >= 0 else i + 1
        if encoding == "mono16" and label > MONO16_MAX:
            label = (label - 1) % MONO16_MAX + 1
        mask = np.asarray(inst.mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask shape {mask.shape} does not match image size {(height, width)}")
        out[mask] = label
    return out
