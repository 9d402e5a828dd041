"""Pairwise mask IoU for association, fast enough for full-resolution camera masks.

Masks arrive at original image size (a 1280x720 frame is 0.9 Mpixel per mask), and association
needs every detection against every track of a concept each frame. Packing each mask to bits
(8 pixels per byte) and intersecting with ``np.bitwise_count`` does the N x M intersections on
1/8 of the memory traffic: about 6 ms for 10 x 10 masks at 1280x720 on one core, against about
70 ms for the float32 matrix product it replaces. numpy < 2.0 has no ``bitwise_count``; there
the float matrix product is the fallback (float64 past 2**24 pixels, where float32 stops
counting exactly).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_HAS_POPCOUNT = hasattr(np, "bitwise_count")


class PackedMasks:
    """A stack of binary masks in the form the IoU kernel wants, plus their pixel areas.

    Packing once per mask per frame lets the same masks be compared several times (association,
    duplicate check) without re-reading the full-resolution arrays.
    """

    __slots__ = ("data", "areas", "num_pixels")

    def __init__(self, masks: Sequence[np.ndarray], downsample: int = 1) -> None:
        """Pack ``masks`` (bool or integer [H, W], all one shape), keeping every ``downsample``-th pixel."""
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        flat = [_flatten(m, downsample) for m in masks]
        self.num_pixels = flat[0].size if flat else 0
        if any(f.size != self.num_pixels for f in flat):
            raise ValueError("all masks compared for IoU must have the same shape")
        if _HAS_POPCOUNT:
            self.data = (
                np.stack([np.packbits(f) for f in flat])
                if flat
                else np.zeros((0, (self.num_pixels + 7) // 8), np.uint8)
            )
            self.areas = np.bitwise_count(self.data).sum(axis=1, dtype=np.int64)
        else:  # pragma: no cover - exercised only on numpy < 2.0
            dtype = np.float32 if self.num_pixels < 2**24 else np.float64
            self.data = np.stack(flat).astype(dtype) if flat else np.zeros((0, self.num_pixels), dtype)
            self.areas = self.data.sum(axis=1).astype(np.int64)

    def __len__(self) -> int:
        """Number of masks in the stack."""
        return int(self.data.shape[0])


def _flatten(mask: np.ndarray, downsample: int) -> np.ndarray:
    """One mask as a contiguous 1-D bool vector, optionally reduced to one cell per n x n block."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"masks must be 2-D [H, W], got shape {mask.shape}")
    if mask.dtype != bool:
        mask = mask != 0
    if downsample > 1:
        mask = _any_per_block(mask, downsample)
    return np.ascontiguousarray(mask).reshape(-1)


def _any_per_block(mask: np.ndarray, n: int) -> np.ndarray:
    """[ceil(H/n), ceil(W/n)]: a cell is set when any pixel of its n x n block is.

    Why not every n-th pixel: an object narrower than n can fall between the sampled rows and
    columns, have area 0, match nothing and be born again on every frame. OR-ing the block keeps
    every object visible at about 0.3 ms per 1280x720 mask (n strided ORs along each axis).
    """
    rows = mask[0::n].copy()
    for k in range(1, n):
        part = mask[k::n]
        rows[: part.shape[0]] |= part
    cells = rows[:, 0::n].copy()
    for k in range(1, n):
        part = rows[:, k::n]
        cells[:, : part.shape[1]] |= part
    return cells


def packed_iou(a: PackedMasks, b: PackedMasks) -> np.ndarray:
    """IoU matrix [len(a), len(b)] (float64); a pair whose union is empty has IoU 0."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return np.zeros((n, m), np.float64)
    if a.num_pixels != b.num_pixels:
        raise ValueError(f"mask sizes differ: {a.num_pixels} vs {b.num_pixels} pixels")
    if _HAS_POPCOUNT:
        inter = np.empty((n, m), np.int64)
        # Loop over the shorter side: each step is one vectorised AND + popcount over a stack.
        if n >= m:
            for j in range(m):
                inter[:, j] = np.bitwise_count(a.data & b.data[j]).sum(axis=1, dtype=np.int64)
        else:
            for i in range(n):
                inter[i, :] = np.bitwise_count(b.data & a.data[i]).sum(axis=1, dtype=np.int64)
    else:  # pragma: no cover - exercised only on numpy < 2.0
        inter = np.rint(a.data @ b.data.T).astype(np.int64)
    union = a.areas[:, None] + b.areas[None, :] - inter
    return np.divide(inter, union, out=np.zeros((n, m), np.float64), where=union > 0)


def mask_iou_matrix(a: Sequence[np.ndarray], b: Sequence[np.ndarray], downsample: int = 1) -> np.ndarray:
    """IoU of every mask in ``a`` with every mask in ``b`` ([len(a), len(b)], float64).

    Convenience wrapper over :class:`PackedMasks` and :func:`packed_iou` for one-off comparisons.
    """
    return packed_iou(PackedMasks(a, downsample), PackedMasks(b, downsample))


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight float32 [x0, y0, x1, y1] box of a mask in pixel-edge coordinates; zeros when empty.

    Needed when a track is reported with a propagated mask, which has no detector box.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(4, np.float32)
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)
