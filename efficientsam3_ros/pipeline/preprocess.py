"""SAM3 preprocessing and its inverse.

SAM3 resizes the whole image to the square model input (no letterbox padding) and
normalises with mean = std = 0.5. Postprocessing maps the outputs back to the
original image size, so callers never see model coordinates.
"""

from __future__ import annotations

import functools
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


#: How far a mask may reach past its own box when cropped (fraction of the box side; plus
#: BOX_CROP_PIXELS), so a slightly tight box does not shave the object's edge.
BOX_CROP_MARGIN = 0.1
BOX_CROP_PIXELS = 2.0


def _box_spans(boxes_xyxy: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """[N, 4] int (row0, row1, col0, col1), half-open: the pixels whose centre lies in each grown box.

    Pixel (x, y) covers [x, x + 1). The test is made per pixel centre in float32, as the crop has
    always been made, and is monotone, so what passes is one contiguous run of rows and of columns.
    """
    height, width = image_size
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    grow_x = BOX_CROP_MARGIN * (boxes[:, 2] - boxes[:, 0]) + BOX_CROP_PIXELS
    grow_y = BOX_CROP_MARGIN * (boxes[:, 3] - boxes[:, 1]) + BOX_CROP_PIXELS
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    cols = (xs >= (boxes[:, :1] - grow_x[:, None])) & (xs <= (boxes[:, 2:3] + grow_x[:, None]))  # [N, W]
    rows = (ys >= (boxes[:, 1:2] - grow_y[:, None])) & (ys <= (boxes[:, 3:4] + grow_y[:, None]))  # [N, H]
    spans = np.zeros((len(boxes), 4), dtype=np.int64)
    for axis, inside in ((0, rows), (2, cols)):
        first = inside.argmax(axis=1)
        spans[:, axis] = first
        spans[:, axis + 1] = first + inside.sum(axis=1)  # an empty run gives first == last
    return spans


def _check_one_box_per_mask(boxes_xyxy: np.ndarray, masks: int) -> None:
    if len(boxes_xyxy) != masks:
        raise ValueError(f"{len(boxes_xyxy)} boxes for {masks} masks: pass one box per mask")


def crop_masks_to_boxes(masks: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Bool masks [N, H, W] with everything outside each one's pixel box [N, 4] (grown a little) cleared.

    Pixel (x, y) covers [x, x + 1): it stays when its centre lies inside the grown box.
    """
    _check_one_box_per_mask(boxes_xyxy, len(masks))
    if len(masks) == 0:
        return masks
    out = np.zeros_like(masks)
    for i, (r0, r1, c0, c1) in enumerate(_box_spans(boxes_xyxy, masks.shape[1:])):
        out[i, r0:r1, c0:c1] = masks[i, r0:r1, c0:c1]
    return out


class _BilinearTaps:
    """Bilinear upsampling (align_corners=False) along one axis, as a sparse [out, in] matrix.

    Built with the rule PyTorch's kernel uses (float32 ratio in / out, the source index
    ``ratio * (i + 0.5) - 0.5`` rounded once, as the kernel's fused multiply-add does, clamped at
    0; the second tap of the last row repeats it): the weights are bit for bit the kernel's, so a
    window computed from them holds what ``F.interpolate`` puts there up to the order of the sums.
    As a matrix, a small window of the upsampled mask is two small matrix products.
    """

    def __init__(self, out_size: int, in_size: int, device: torch.device) -> None:
        ratio = torch.tensor(in_size, dtype=torch.float32) / out_size
        exact = ratio.double() * (torch.arange(out_size, dtype=torch.float64) + 0.5) - 0.5
        src = exact.float().clamp_min(0.0)
        first = src.floor().long().clamp_max(in_size - 1)
        weight_second = (src - first).clamp(0.0, 1.0)
        second = torch.where(first < in_size - 1, first + 1, first)
        rows = torch.arange(out_size)
        matrix = torch.zeros(out_size, in_size)
        matrix.index_put_((rows, first), 1.0 - weight_second, accumulate=True)
        matrix.index_put_((rows, second), weight_second, accumulate=True)
        #: source index of each output row's first and second tap (non-decreasing)
        self.first, self.second = first.numpy(), second.numpy()
        self.matrix = matrix.to(device)

    def span(self, above: np.ndarray) -> tuple[int, int]:
        """Output rows [lo, hi) that read at least one source row where ``above`` is True.

        Bilinear interpolation is a weighted mean of its taps, so an output pixel whose taps all
        sit at or below the threshold stays at or below it: outside this span all is False.
        """
        rows = np.flatnonzero(above)
        if len(rows) == 0:
            return 0, 0
        lo = int(np.searchsorted(self.second, rows[0], side="left"))
        hi = int(np.searchsorted(self.first, rows[-1], side="right"))
        return lo, max(lo, hi)

    def window(self, lo: int, hi: int) -> tuple[torch.Tensor, slice]:
        """The matrix rows of output rows [lo, hi), cut to the source rows they read."""
        source = slice(int(self.first[lo]), int(self.second[hi - 1]) + 1)
        return self.matrix[lo:hi, source], source

    def source_rows(self, lo: int, hi: int) -> int:
        """How many source rows output rows [lo, hi) read."""
        return int(self.second[hi - 1]) + 1 - int(self.first[lo])


#: Multiply-adds of a window's matrix products per pixel of the whole frame above which the
#: mask is upsampled whole instead: F.interpolate spends about this per output pixel.
MATMUL_PER_PIXEL = 8


@functools.lru_cache(maxsize=8)
def _taps(out_size: int, in_size: int, device: torch.device) -> _BilinearTaps:
    """A camera's frame size and the model's mask size rarely change: build their taps once."""
    return _BilinearTaps(out_size, in_size, device)


def _upsampled(logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """[N, h, w] -> [N, H, W]: every pixel of the frame, by F.interpolate (what the windows reproduce)."""
    return F.interpolate(logits[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]


def masks_to_image(
    mask_logits: torch.Tensor,
    image_size: tuple[int, int],
    logit_threshold: float = 0.0,
    boxes_xyxy: np.ndarray | None = None,
    whole_frame: bool = False,
) -> np.ndarray:
    """[N, h, w] logits at model resolution -> bool [N, H, W] at the original image size.

    With ``boxes_xyxy`` (pixel boxes [N, 4]) each mask is also cut to its own grown box, as
    :func:`crop_masks_to_boxes` does. Why windows: upsampling every mask to a 1280x720 frame and
    then clearing most of it was most of a small model's postprocessing on the CPU. Only the rows
    and columns that can be True are computed: those inside the box, and those whose bilinear
    taps reach a logit above the threshold; the rest is False by construction. A window whose
    matrix products would cost more than upsampling the whole frame (a large object from a
    fine mask), or a mask holding a non-finite logit (a product would spread its NaN over the
    window), is upsampled whole by ``F.interpolate`` and cut to its window.
    ``whole_frame=True`` upsamples every mask whole, as was done before (``bench/frame.py``
    times both); the two agree up to float rounding at pixels that tie the threshold.
    """
    height, width = image_size
    n = mask_logits.shape[0]
    if boxes_xyxy is not None:
        _check_one_box_per_mask(boxes_xyxy, n)
    if n == 0:
        return np.zeros((0, height, width), dtype=bool)
    logits = mask_logits.float()
    if whole_frame:
        masks = (_upsampled(logits, image_size) > logit_threshold).cpu().numpy()
        return crop_masks_to_boxes(masks, boxes_xyxy) if boxes_xyxy is not None else masks
    above = logits > logit_threshold
    summary = torch.cat(
        [above.any(dim=2), above.any(dim=1), torch.isfinite(logits).flatten(1).all(1)[:, None]], 1
    )
    summary = summary.cpu().numpy()  # one copy from the device: [N, h + w + 1]
    rows_above, cols_above = summary[:, : logits.shape[1]], summary[:, logits.shape[1] : -1]
    finite = summary[:, -1]
    along_y = _taps(height, logits.shape[1], logits.device)
    along_x = _taps(width, logits.shape[2], logits.device)
    spans = _box_spans(boxes_xyxy, image_size) if boxes_xyxy is not None else None
    out = np.zeros((n, height, width), dtype=bool)
    windows: list[tuple[int, int, int, int, int]] = []
    pieces: list[torch.Tensor] = []
    for i in range(n):
        r0, r1 = along_y.span(rows_above[i])
        c0, c1 = along_x.span(cols_above[i])
        if spans is not None:
            r0, r1 = max(r0, int(spans[i, 0])), min(r1, int(spans[i, 1]))
            c0, c1 = max(c0, int(spans[i, 2])), min(c1, int(spans[i, 3]))
        if r1 <= r0 or c1 <= c0:
            continue
        sub_rows, sub_cols = along_y.source_rows(r0, r1), along_x.source_rows(c0, c1)
        products = (r1 - r0) * (c1 - c0) * sub_rows + sub_rows * sub_cols * (c1 - c0)
        if not finite[i] or products > MATMUL_PER_PIXEL * height * width:
            whole = _upsampled(logits[i : i + 1], image_size)[0]
            out[i, r0:r1, c0:c1] = (whole[r0:r1, c0:c1] > logit_threshold).cpu().numpy()
            continue
        rows, source_rows = along_y.window(r0, r1)
        cols, source_cols = along_x.window(c0, c1)
        with torch.autocast(logits.device.type, enabled=False):  # float32, as F.interpolate here
            value = rows @ (logits[i, source_rows, source_cols] @ cols.T)  # along x, then y
        windows.append((i, r0, r1, c0, c1))
        pieces.append((value > logit_threshold).flatten())
    if pieces:
        flat = torch.cat(pieces).cpu().numpy()  # one copy from the device for all small windows
        start = 0
        for i, r0, r1, c0, c1 in windows:
            size = (r1 - r0) * (c1 - c0)
            out[i, r0:r1, c0:c1] = flat[start : start + size].reshape(r1 - r0, c1 - c0)
            start += size
    return out


def boxes_to_image(boxes_xyxy_norm: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """[N, 4] normalised xyxy -> float32 pixel xyxy clipped to the image."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes_xyxy_norm.device)
    boxes = (boxes_xyxy_norm.float() * scale).cpu().numpy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes.astype(np.float32)
