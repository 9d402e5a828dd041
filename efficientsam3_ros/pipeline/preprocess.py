"""SAM3 preprocessing and its inverse.

SAM3 resizes the whole image to the square model input (no letterbox padding) and
normalises with mean = std = 0.5. Postprocessing maps the outputs back to the
original image size, so callers never see model coordinates.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def validate_image(image: np.ndarray) -> np.ndarray:
    """Refuse what is not an RGB uint8 image, with a message that says what to pass instead."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has zero size {image.shape[:2]}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    return image


def preprocess(image: np.ndarray, input_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 RGB -> [1, 3, S, S] float32 in [-1, 1] (resize happens on ``device``)."""
    image = validate_image(image)
    if not image.flags.writeable or not image.flags.c_contiguous:
        image = np.array(image, copy=True, order="C")  # torch refuses to wrap read-only arrays
    pixels = torch.from_numpy(image).to(device)
    pixels = pixels.permute(2, 0, 1)[None].float().div_(255.0)
    if pixels.shape[-2:] != (input_size, input_size):
        pixels = F.interpolate(
            pixels, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True
        )
    return (pixels - PIXEL_MEAN) / PIXEL_STD


def probability_to_logit(probability: float) -> float:
    """A mask probability threshold as the logit the model's mask outputs are compared with.

    Thresholds are set as probabilities (what users reason in; SAM3's 0.5 is logit 0); 0 and 1
    are clamped so that they stay finite.
    """
    p = min(max(float(probability), 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


def masks_to_image(
    mask_logits: torch.Tensor, image_size: tuple[int, int], logit_threshold: float = 0.0
) -> np.ndarray:
    """[N, h, w] logits at model resolution -> bool [N, H, W] at the original image size."""
    if mask_logits.shape[0] == 0:
        return np.zeros((0, *image_size), dtype=bool)
    up = F.interpolate(mask_logits[:, None].float(), size=image_size, mode="bilinear", align_corners=False)
    return (up[:, 0] > logit_threshold).cpu().numpy()


#: How far a mask may reach past its own box when cropped (fraction of the box side; plus
#: BOX_CROP_PIXELS), so a slightly tight box does not shave the object's edge.
BOX_CROP_MARGIN = 0.1
BOX_CROP_PIXELS = 2.0


def crop_masks_to_boxes(masks: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Bool masks [N, H, W] with everything outside each one's pixel box [N, 4] (grown a little) cleared.

    Pixel (x, y) covers [x, x + 1): it stays when its centre lies inside the grown box.
    """
    if len(masks) == 0:
        return masks
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    grow_x = BOX_CROP_MARGIN * (boxes[:, 2] - boxes[:, 0]) + BOX_CROP_PIXELS
    grow_y = BOX_CROP_MARGIN * (boxes[:, 3] - boxes[:, 1]) + BOX_CROP_PIXELS
    xs = np.arange(masks.shape[2], dtype=np.float32) + 0.5
    ys = np.arange(masks.shape[1], dtype=np.float32) + 0.5
    cols = (xs >= (boxes[:, :1] - grow_x[:, None])) & (xs <= (boxes[:, 2:3] + grow_x[:, None]))  # [N, W]
    rows = (ys >= (boxes[:, 1:2] - grow_y[:, None])) & (ys <= (boxes[:, 3:4] + grow_y[:, None]))  # [N, H]
    return masks & rows[:, :, None] & cols[:, None, :]


def boxes_to_image(boxes_xyxy_norm: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """[N, 4] normalised xyxy -> float32 pixel xyxy clipped to the image."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes_xyxy_norm.device)
    boxes = (boxes_xyxy_norm.float() * scale).cpu().numpy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes.astype(np.float32)
