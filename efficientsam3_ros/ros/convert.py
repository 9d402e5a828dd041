"""sensor_msgs/Image and CompressedImage <-> numpy, without ROS.

Works on any object with the message's fields (rosbags message classes, rclpy
messages, simple namespaces), so the live node, the bag evaluator and the tests
share one conversion. A frame that cannot be converted raises a
:class:`FrameError` subclass, never anything else, so callers can drop and count it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import pixel_formats
from .pixel_formats import (
    BAYER_PATTERNS,
    PACKED_YUV422,
    PLANAR_YUV420,
    demosaic,
    mosaic,
    packed_yuv422_to_rgb,
    planar_yuv420_to_rgb,
    rgb_to_packed_yuv422,
    rgb_to_planar_yuv420,
)

# encoding -> (numpy dtype, values per pixel in a row); the encodings the model's input path accepts.
# NV12 / NV21 rows hold one value per pixel, and their message has 3/2 as many rows as the image.
RAW_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("uint8", 3),
    "bgr8": ("uint8", 3),
    "rgba8": ("uint8", 4),
    "bgra8": ("uint8", 4),
    "mono8": ("uint8", 1),
    "rgb16": ("uint16", 3),
    "bgr16": ("uint16", 3),
    "rgba16": ("uint16", 4),
    "bgra16": ("uint16", 4),
    "mono16": ("uint16", 1),
    **{name: ("uint8", 2) for name in PACKED_YUV422},
    **{name: ("uint8", 1) for name in PLANAR_YUV420},
    **{f"bayer_{pattern}8": ("uint8", 1) for pattern in BAYER_PATTERNS},
    **{f"bayer_{pattern}16": ("uint16", 1) for pattern in BAYER_PATTERNS},
}

# Largest side accepted; guards against a corrupt header asking for gigabytes.
MAX_SIDE = 16384


class FrameError(ValueError):
    """An input frame that cannot be turned into an RGB image; drop it and count it."""


class UnsupportedEncodingError(FrameError):
    """The image encoding (or compressed format) is not one this package converts."""


class BadFrameError(FrameError):
    """Header and data disagree: zero size, a step too small, or too little data."""


def is_compressed(msg: Any) -> bool:
    """True for a CompressedImage (it has ``format``), False for an Image."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def image_msg_to_array(msg: Any) -> np.ndarray:
    """Return the raw pixels of a sensor_msgs/Image as an [H, W] or [H, W, C] array, step padding removed.

    The dtype follows the encoding (uint8, or uint16 for the 16-bit ones) in native byte order.
    Packed YUV 4:2:2 comes back as [H, W, 2]; NV12 / NV21 as [3H/2, W], the Y plane on top of
    the chroma plane, as the message stores them.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in RAW_ENCODINGS:
        raise UnsupportedEncodingError(_unsupported_message(str(msg.encoding)))
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(height, width)
    _check_chroma_pairs(encoding, height, width)
    typestr, channels = RAW_ENCODINGS[encoding]
    rows = height * 3 // 2 if encoding in PLANAR_YUV420 else height
    dtype = np.dtype(typestr)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise BadFrameError(
            f"step {step} is smaller than a row of {width} {encoding} pixels ({row_bytes} bytes)"
        )
    data = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    # The last row needs no padding after it, so rows * step may exceed the data by (step - row_bytes).
    needed = (rows - 1) * step + row_bytes
    if data.size < needed:
        raise BadFrameError(
            f"image data has {data.size} bytes, {height}x{width} {encoding} step {step} needs {needed}"
        )
    if data.size < rows * step:
        data = np.concatenate([data[:needed], np.zeros(rows * step - needed, np.uint8)])
    packed_rows = data[: rows * step].reshape(rows, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(packed_rows).view(dtype)
    big_endian_data = bool(getattr(msg, "is_bigendian", False))
    if dtype.itemsize > 1 and big_endian_data != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    return pixels.reshape(rows, width, channels) if channels > 1 else pixels.reshape(rows, width)


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """Convert a sensor_msgs/Image to the pipeline's input: [H, W, 3] uint8 RGB, C-contiguous.

    16-bit encodings keep their high byte (mono16 scaled from the full 16-bit range, as
    cv_bridge does); alpha channels are dropped; YUV and Bayer frames are converted as
    :mod:`.pixel_formats` says.
    """
    pixels = image_msg_to_array(msg)
    return raw_to_rgb(pixels, str(msg.encoding).lower())


def raw_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Convert raw pixels in a RAW_ENCODINGS encoding (as image_msg_to_array lays them out) to RGB."""
    if encoding.endswith("16"):  # every 16-bit encoding's name ends in 16, its 8-bit twin's in 8
        pixels = (pixels >> 8).astype(np.uint8)
        encoding = encoding[:-2] + "8"
    if encoding == "mono8":
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    if encoding in ("rgb8", "rgba8"):
        return np.ascontiguousarray(pixels[:, :, :3])
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    if encoding in PACKED_YUV422:
        return packed_yuv422_to_rgb(pixels, PACKED_YUV422[encoding])
    if encoding in PLANAR_YUV420:
        return planar_yuv420_to_rgb(pixels, encoding)
    if encoding.startswith("bayer_") and encoding[6:10] in BAYER_PATTERNS:
        return demosaic(pixels, encoding[6:10])
    raise UnsupportedEncodingError(_unsupported_message(encoding))


def _unsupported_message(encoding: str) -> str:
    """Why ``encoding`` is refused and what to publish instead."""
    hint = ""
    if encoding[:1].isdigit():  # 8UC3, 32FC1, ...: OpenCV matrix types without a colour order
        hint = " (a generic OpenCV type says nothing about colour order; publish rgb8 or bgr8)"
    elif encoding.lower() == "nv24":
        hint = " (publish nv12 or nv21, or convert with image_proc)"
    return f"unsupported image encoding {encoding!r}{hint}; use one of {', '.join(RAW_ENCODINGS)}"


def _check_chroma_pairs(encoding: str, height: int, width: int) -> None:
    """YUV 4:2:2 shares chroma between two columns, 4:2:0 over 2x2 blocks: those sides must be even."""
    if encoding in PACKED_YUV422 and width % 2:
        raise BadFrameError(f"{encoding} image has an odd width ({width}); 4:2:2 pixels come in pairs")
    if encoding in PLANAR_YUV420 and (width % 2 or height % 2):
        raise BadFrameError(f"{encoding} image is {height}x{width}; 4:2:0 needs an even width and height")


def _check_size(height: int, width: int) -> None:
    """Refuse empty frames and frames too large to be a camera's (before their pixels are allocated)."""
    if height <= 0 or width <= 0:
        raise BadFrameError(f"image has zero size ({height}x{width})")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise BadFrameError(f"image size {height}x{width} exceeds {MAX_SIDE} pixels per side")


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG, PNG, ...) to [H, W, 3] uint8 RGB.

    OpenCV decodes when it is installed (fast, the format image_transport writes);
    Pillow, a core dependency, otherwise. Either way the size in the image's header is
    checked first (Pillow reads only the header when it opens an image), so a small file
    claiming a huge image is refused before any pixel memory is allocated.
    """
    buffer = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    if buffer.size == 0:
        raise BadFrameError("compressed image has no data")
    fmt = str(getattr(msg, "format", "")).lower()
    if "compresseddepth" in fmt:
        raise UnsupportedEncodingError(f"compressedDepth images are not colour input (format {fmt!r})")
    _check_header_size(buffer)
    mosaic = _stored_mosaic(fmt)
    image = _decode_mosaic(buffer, mosaic) if mosaic is not None else _decode(buffer)
    if image is None or image.size == 0:
        raise BadFrameError(f"could not decode compressed image (format {fmt!r}, {buffer.size} bytes)")
    _check_size(*image.shape[:2])
    return image


def msg_to_rgb(msg: Any) -> np.ndarray:
    """Convert an Image or CompressedImage message to [H, W, 3] uint8 RGB (the pipeline's input)."""
    return compressed_msg_to_rgb(msg) if is_compressed(msg) else image_msg_to_rgb(msg)


def array_to_image_fields(image: np.ndarray, encoding: str) -> dict[str, Any]:
    """Return Image fields (height, width, encoding, is_bigendian, step, data) for a numpy image.

    ``image`` must already be laid out as ``encoding`` says (e.g. [H, W, 3] uint8 for
    rgb8, [H, W] uint16 for mono16, [H, W] int32 for 32SC1, [3H/2, W] for nv12; see
    :func:`rgb_to_raw`). Data is native byte order.
    """
    image = np.ascontiguousarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be a non-empty [H, W] or [H, W, C] array, got shape {image.shape}")
    height, width = image.shape[:2]
    if encoding.lower() in PLANAR_YUV420:  # the chroma plane's rows are not image rows
        height = height * 2 // 3
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": sys.byteorder == "big",
        "step": int(image.strides[0]),
        "data": image.reshape(-1).view(np.uint8),
    }


def check_layout(encoding: str, height: int, width: int) -> None:
    """Refuse an encoding this package does not convert, or a size its chroma pairs cannot tile.

    For a writer to check its frame size once, before it writes anything (FrameError).
    """
    encoding = encoding.lower()
    if encoding not in RAW_ENCODINGS:
        raise UnsupportedEncodingError(_unsupported_message(encoding))
    _check_chroma_pairs(encoding, height, width)


def rgb_to_raw(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB laid out as ``encoding`` (the inverse of :func:`raw_to_rgb`, lossy for
    mono, YUV chroma and Bayer): for writing bags as a given camera would, and for tests.

    16-bit encodings spread the 8-bit range over the full 16 bits (x 257); alpha is opaque.
    """
    encoding = encoding.lower()
    check_layout(encoding, *rgb.shape[:2])
    base = encoding[:-2] + "8" if encoding.endswith("16") else encoding
    if base in ("rgb8", "bgr8", "rgba8", "bgra8"):
        colour = rgb if base.startswith("rgb") else rgb[..., ::-1]
        opaque = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
        raw = np.concatenate([colour, opaque], axis=-1) if base.endswith("a8") else colour
    elif base == "mono8":
        raw = np.clip(np.rint(rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])), 0, 255)
    elif base in PACKED_YUV422:
        raw = rgb_to_packed_yuv422(rgb, PACKED_YUV422[base])
    elif base in PLANAR_YUV420:
        raw = rgb_to_planar_yuv420(rgb, base)
    else:  # bayer_<pattern>8
        raw = mosaic(rgb, base[6:10])
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    return raw.astype(np.uint16) * 257 if encoding != base else raw


def _as_bytes(data: Any) -> bytes | memoryview | np.ndarray:
    """Return message data in a form np.frombuffer accepts (rclpy gives array.array or lists)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if hasattr(data, "tobytes"):
        return data.tobytes()
    return bytes(data)


def _check_header_size(buffer: np.ndarray) -> None:
    """Check the width and height a compressed image's header declares, without decoding its pixels.

    A format Pillow cannot identify is left to the decoder (and checked after decoding).
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as img:  # lazy: parses the header only
            height, width = img.height, img.width
    except Image.DecompressionBombError as err:  # Pillow's own limit, checked in open()
        raise BadFrameError(f"compressed image refused before decoding: {err}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return
    _check_size(height, width)


def _stored_mosaic(fmt: str) -> str | None:
    """The Bayer pattern (e.g. "rggb") when a CompressedImage stores the raw mosaic, else None.

    compressed_image_transport writes a Bayer image's PNG (or TIFF) unconverted, a 1-channel
    mosaic, and says so in ``format``: ``"bayer_rggb8; png compressed "``. Its JPEG is converted
    to grey first (``"bayer_rggb8; jpeg compressed mono8"``): that one is no mosaic.
    """
    encoding, _, rest = fmt.partition(";")
    encoding = encoding.strip()
    if not encoding.startswith("bayer_") or encoding not in RAW_ENCODINGS:
        return None
    stored_as = rest.partition("compressed")[2].strip()
    return encoding[6:10] if stored_as in ("", encoding) else None


def _decode_mosaic(buffer: np.ndarray, pattern: str) -> np.ndarray:
    """Decode a stored Bayer mosaic as it is (8 or 16 bits, one channel), then demosaic it.

    Decoded as colour, as every other compressed image is, the mosaic became a grey image with
    the colour filter's checkerboard in it.
    """
    raw = _decode(buffer, as_stored=True)
    if raw is None or raw.ndim != 2:
        shape = None if raw is None else raw.shape
        raise BadFrameError(f"a bayer_{pattern} compressed image must decode to one channel, got {shape}")
    bits = 16 if raw.dtype.itemsize > 1 else 8
    return raw_to_rgb(raw.astype(np.uint16 if bits == 16 else np.uint8), f"bayer_{pattern}{bits}")


def _decode(buffer: np.ndarray, as_stored: bool = False) -> np.ndarray | None:
    """OpenCV when it is installed, Pillow otherwise: RGB, or ``as_stored`` the channels and depth the file holds."""
    try:
        return _decode_cv2(buffer, as_stored)
    except ImportError:
        return _decode_pil(buffer, as_stored)


def _decode_cv2(buffer: np.ndarray, as_stored: bool = False) -> np.ndarray | None:
    cv2 = pixel_formats.opencv()
    if cv2 is None:
        raise ImportError("OpenCV is not installed")
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED if as_stored else cv2.IMREAD_COLOR)
    except cv2.error as err:  # e.g. a header claiming more than CV_IO_MAX_IMAGE_PIXELS: not a ValueError
        raise BadFrameError(f"compressed image refused by OpenCV: {str(err).strip()}") from err
    if image is None or as_stored:
        return image
    return np.ascontiguousarray(image[:, :, ::-1])


def _decode_pil(buffer: np.ndarray, as_stored: bool = False) -> np.ndarray | None:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as img:
            _check_size(img.height, img.width)  # from the header, before the pixels are decoded
            if as_stored:
                return np.asarray(img).copy()
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Image.DecompressionBombError as err:  # not an OSError: it would escape the caller's except
        raise BadFrameError(f"compressed image refused by Pillow: {err}") from err
    except (UnidentifiedImageError, OSError):
        return None
