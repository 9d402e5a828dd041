"""Camera pixel layouts (packed and planar YUV, Bayer mosaics) <-> RGB, in numpy.

Why this exists: USB (UVC) cameras publish ``yuyv`` / ``uyvy`` straight from V4L2, Jetson
and Argus pipelines hand out ``nv12``, and machine-vision cameras publish the raw Bayer
mosaic to save bandwidth. Refusing those frames meant a robot had to run an extra
``image_proc`` / format-conversion node just to feed this package.

OpenCV (``python3-opencv``, an exec_depend in package.xml) does the conversion when it is
installed: 30 to 230 times faster than numpy on a 1080p frame (``bench/encodings.py``). The numpy versions are the fallback and the reference the tests hold
OpenCV to. Both follow cv_bridge: BT.601 limited-range YUV, nearest chroma (no chroma
interpolation), bilinear demosaicing.

The ``rgb_to_*`` directions exist so the synthetic world can write bags in a camera's
encoding (``efficientsam3 world rosbag --encoding yuyv``) and tests can round-trip.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

# sensor_msgs/image_encodings: "uyvy" and "yuyv" are the current names, "yuv422" (= UYVY byte
# order) and "yuv422_yuy2" (= YUYV) the deprecated ones cameras still publish.
PACKED_YUV422: dict[str, str] = {"uyvy": "uyvy", "yuv422": "uyvy", "yuyv": "yuyv", "yuv422_yuy2": "yuyv"}
# 4:2:0, a full-resolution Y plane, then a half-height plane of interleaved chroma pairs
# (U first in NV12, V first in NV21).
PLANAR_YUV420 = ("nv12", "nv21")
# bayer_<pattern><bits>: the 2x2 tile's colours in row-major order (rggb: R G / G B).
BAYER_PATTERNS = ("rggb", "bggr", "gbrg", "grbg")

# BT.601 limited range; the decoder coefficients are the ones OpenCV's fixed-point code uses, so
# the numpy fallback and OpenCV agree to within one grey level.
_Y_GAIN, _V_TO_R, _V_TO_G, _U_TO_G, _U_TO_B = 1.164, 1.596, -0.813, -0.391, 2.018
_RGB_TO_YUV = np.array(
    [[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]], dtype=np.float32
)
_YUV_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float32)

# OpenCV names a Bayer code by the second row's second and third pixels, so its "BG" is ROS's rggb.
_CV2_BAYER = {"rggb": "BG", "bggr": "RG", "gbrg": "GR", "grbg": "GB"}


def opencv() -> ModuleType | None:
    """OpenCV when it is installed (the fast path), else None (the numpy fallback)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


# --------------------------------------------------------------------------- YUV -> RGB


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Full-resolution Y, U, V planes (uint8, equal shapes) -> [H, W, 3] uint8 RGB.

    Luma under 16 (below limited range's black) counts as black, as in OpenCV and cv_bridge.
    """
    c = _Y_GAIN * np.maximum(y.astype(np.float32) - 16.0, 0.0)
    u = u.astype(np.float32) - 128.0
    v = v.astype(np.float32) - 128.0
    rgb = np.stack([c + _V_TO_R * v, c + _V_TO_G * v + _U_TO_G * u, c + _U_TO_B * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def packed_yuv422_to_rgb(pixels: np.ndarray, order: str) -> np.ndarray:
    """[H, W, 2] uint8 packed 4:2:2 (``order`` "uyvy" or "yuyv", W even) -> [H, W, 3] RGB.

    Each pair of pixels shares one U and one V sample.
    """
    cv2 = opencv()
    if cv2 is not None:
        code = cv2.COLOR_YUV2RGB_UYVY if order == "uyvy" else cv2.COLOR_YUV2RGB_YUY2
        return cv2.cvtColor(np.ascontiguousarray(pixels), code)
    y_index, chroma_index = (1, 0) if order == "uyvy" else (0, 1)
    y = pixels[:, :, y_index]
    chroma = pixels[:, :, chroma_index]  # U V U V ... along the row
    u = np.repeat(chroma[:, 0::2], 2, axis=1)
    v = np.repeat(chroma[:, 1::2], 2, axis=1)
    return yuv_to_rgb(y, u, v)


def planar_yuv420_to_rgb(planes: np.ndarray, layout: str) -> np.ndarray:
    """[3H/2, W] uint8 NV12 / NV21 (H, W even) -> [H, W, 3] RGB; each 2x2 block shares its chroma."""
    cv2 = opencv()
    if cv2 is not None:
        code = cv2.COLOR_YUV2RGB_NV12 if layout == "nv12" else cv2.COLOR_YUV2RGB_NV21
        return cv2.cvtColor(np.ascontiguousarray(planes), code)
    height = planes.shape[0] * 2 // 3
    y = planes[:height]
    chroma = planes[height:]  # [H/2, W]: pairs of (U, V) for NV12, (V, U) for NV21
    first, second = chroma[:, 0::2], chroma[:, 1::2]
    u, v = (first, second) if layout == "nv12" else (second, first)

    def full(plane: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(plane, 2, axis=0), 2, axis=1)

    return yuv_to_rgb(y, full(u), full(v))


# --------------------------------------------------------------------------- Bayer -> RGB


def _sum3x3(plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``plane`` correlated with a 3x3 ``kernel``, zero outside the image (9 shifted adds)."""
    height, width = plane.shape
    padded = np.pad(plane, 1)
    out = np.zeros_like(plane)
    for dy in range(3):
        for dx in range(3):
            if kernel[dy, dx]:
                out += kernel[dy, dx] * padded[dy : dy + height, dx : dx + width]
    return out


_GREEN_KERNEL = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32)
_RED_BLUE_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)


def channel_masks(shape: tuple[int, int], pattern: str) -> dict[str, np.ndarray]:
    """Where the mosaic ``pattern`` samples each of "r", "g", "b": a bool [H, W] mask per colour."""
    masks = {name: np.zeros(shape, bool) for name in "rgb"}
    for index, name in enumerate(pattern):
        masks[name][index // 2 :: 2, index % 2 :: 2] = True
    return masks


def demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """[H, W] uint8 Bayer mosaic -> [H, W, 3] uint8 RGB by bilinear interpolation.

    A missing colour is the mean of its nearest samples: green from the 4 direct neighbours,
    red / blue from the 2 (same row or column) or 4 (diagonal) nearest. The outermost rows and
    columns repeat their inner neighbours, as OpenCV's do, so both paths give one image (to one
    grey level). A mosaic under 3 pixels a side is interpolated from the samples it has.
    """
    cv2 = opencv()
    has_inner_pixels = min(raw.shape) >= 3
    if cv2 is not None and has_inner_pixels:
        code = getattr(cv2, f"COLOR_Bayer{_CV2_BAYER[pattern]}2RGB")
        return cv2.cvtColor(np.ascontiguousarray(raw), code)
    samples = raw.astype(np.float32)
    planes = []
    for name, mask in channel_masks(raw.shape, pattern).items():
        kernel = _GREEN_KERNEL if name == "g" else _RED_BLUE_KERNEL
        weight = mask.astype(np.float32)
        total = _sum3x3(samples * weight, kernel)
        count = _sum3x3(weight, kernel)
        interpolated = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        planes.append(np.where(mask, samples, interpolated))
    rgb = np.stack(planes, axis=-1)
    if has_inner_pixels:
        rgb[0], rgb[-1] = rgb[1], rgb[-2]
        rgb[:, 0], rgb[:, -1] = rgb[:, 1], rgb[:, -2]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- RGB -> camera layouts


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W, 3] float32 BT.601 limited-range Y, U, V (unrounded)."""
    return rgb.astype(np.float32) @ _RGB_TO_YUV.T + _YUV_OFFSET


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def rgb_to_packed_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """[H, W, 3] RGB (W even) -> [H, W, 2] packed 4:2:2; each pair's chroma is the pair's mean."""
    yuv = rgb_to_yuv(rgb)
    pair_mean = (yuv[:, 0::2] + yuv[:, 1::2]) / 2  # [H, W/2, 3]
    chroma = np.empty(yuv.shape[:2], np.float32)
    chroma[:, 0::2], chroma[:, 1::2] = pair_mean[..., 1], pair_mean[..., 2]
    first, second = (chroma, yuv[..., 0]) if order == "uyvy" else (yuv[..., 0], chroma)
    return _to_uint8(np.stack([first, second], axis=-1))


def rgb_to_planar_yuv420(rgb: np.ndarray, layout: str) -> np.ndarray:
    """[H, W, 3] RGB (H, W even) -> [3H/2, W] NV12 / NV21; each 2x2 block's chroma is its mean."""
    yuv = rgb_to_yuv(rgb)
    height, width = yuv.shape[:2]
    block_mean = yuv.reshape(height // 2, 2, width // 2, 2, 3).mean(axis=(1, 3))  # [H/2, W/2, 3]
    u, v = block_mean[..., 1], block_mean[..., 2]
    first, second = (u, v) if layout == "nv12" else (v, u)
    chroma = np.stack([first, second], axis=-1).reshape(height // 2, width)
    return _to_uint8(np.concatenate([yuv[..., 0], chroma], axis=0))


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """[H, W, 3] RGB -> [H, W] Bayer mosaic: each pixel keeps the one colour ``pattern`` samples there."""
    raw = np.empty(rgb.shape[:2], rgb.dtype)
    for channel, mask in enumerate(channel_masks(rgb.shape[:2], pattern).values()):
        raw[mask] = rgb[..., channel][mask]
    return raw
