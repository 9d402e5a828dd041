"""Draw instances on an image: masks, boxes, concept labels and track ids.

Used by ``efficientsam3 segment``, the node's overlay topic, the bag evaluator and the demo,
so every front door shows the same picture.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .preprocess import validate_image
from .results import Instance


def color_for(key: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per track id (or concept id when untracked)."""
    hue = (key * 0.61803398875) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_overlay(image: np.ndarray, instances: list[Instance], alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with translucent masks, boxes and ``label score #track`` captions.

    ``image`` is what ``ConceptSegmenter.process`` takes: HxWx3 RGB or HxW gray, uint8.
    """
    canvas = validate_image(image).astype(np.float32)  # a new array: the caller's image is left as it is
    for inst in instances:
        color = np.array(
            color_for(inst.track_id if inst.track_id >= 0 else inst.concept_id), dtype=np.float32
        )
        if inst.mask.shape == canvas.shape[:2] and inst.mask.any():
            canvas[inst.mask] = canvas[inst.mask] * (1 - alpha) + color * alpha
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for inst in instances:
        color = color_for(inst.track_id if inst.track_id >= 0 else inst.concept_id)
        x0, y0, x1, y1 = (float(v) for v in inst.box_xyxy)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
        caption = f"{inst.label} {inst.score:.2f}" + (f" #{inst.track_id}" if inst.track_id >= 0 else "")
        tx, ty = x0 + 2, max(0.0, y0 - 12)
        draw.rectangle([tx - 1, ty - 1, tx + 6 * len(caption) + 1, ty + 11], fill=(0, 0, 0))
        draw.text((tx, ty), caption, fill=color, font=font)
    return np.asarray(out)
