"""Image message -> RGB conversion for every supported encoding, step padding, and bad frames."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from efficientsam3_ros.ros import convert, messages

RNG = np.random.default_rng(1)
H, W = 5, 7
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _image(encoding: str, pixels: np.ndarray, pad: int = 0, bigendian: bool | None = None):
    """Build a rosbags Image with ``pad`` bytes of padding at the end of every row."""
    pixels = np.ascontiguousarray(pixels)
    if bigendian is None:
        bigendian = sys.byteorder == "big"
    if pixels.dtype.itemsize > 1 and bigendian != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    ts = messages.get_typestore()
    return ts.types[messages.IMAGE](
        header=messages.make_header(0, "cam"),
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=padded.shape[1],
        data=padded.reshape(-1).copy(),
    )


CASES = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], RGB),
    "rgba8": (np.dstack([RGB, np.full((H, W), 9, np.uint8)]), RGB),
    "bgra8": (np.dstack([RGB[:, :, ::-1], np.full((H, W), 9, np.uint8)]), RGB),
    "mono8": (RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2)),
    "mono16": (RGB[:, :, 0].astype(np.uint16) * 257, np.repeat(RGB[:, :, :1], 3, axis=2)),
}


@pytest.mark.parametrize("pad", [0, 3, 64])
@pytest.mark.parametrize("encoding", sorted(CASES))
def test_every_encoding_with_step_padding(encoding, pad):
    pixels, want = CASES[encoding]
    got = convert.msg_to_rgb(_image(encoding, pixels, pad))
    assert got.dtype == np.uint8 and got.shape == (H, W, 3) and got.flags.c_contiguous
    assert np.array_equal(got, want)


def test_mono16_big_endian():
    pixels = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1500).astype(np.uint16)
    msg = _image("mono16", pixels, pad=2, bigendian=True)
    assert np.array_equal(convert.image_msg_to_array(msg), pixels)


def test_encoding_is_case_insensitive():
    assert np.array_equal(convert.msg_to_rgb(_image("RGB8", RGB)), RGB)


def test_data_without_trailing_padding_on_last_row_is_accepted():
    msg = _image("rgb8", RGB, pad=4)
    msg.data = msg.data[:-4]
    assert np.array_equal(convert.msg_to_rgb(msg), RGB)


def test_data_as_bytes_and_lists():
    msg = _image("rgb8", RGB)
    msg.data = bytes(msg.data)
    assert np.array_equal(convert.msg_to_rgb(msg), RGB)
    msg.data = list(RGB.reshape(-1))
    assert np.array_equal(convert.msg_to_rgb(msg), RGB)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda m: setattr(m, "encoding", "yuv422"), convert.UnsupportedEncodingError),
        (lambda m: setattr(m, "encoding", "32FC1"), convert.UnsupportedEncodingError),
        (lambda m: setattr(m, "height", 0), convert.BadFrameError),
        (lambda m: setattr(m, "width", 0), convert.BadFrameError),
        (lambda m: setattr(m, "step", W * 3 - 1), convert.BadFrameError),
        (lambda m: setattr(m, "data", m.data[: W * 3]), convert.BadFrameError),
        (lambda m: setattr(m, "data", np.zeros(0, np.uint8)), convert.BadFrameError),
        (lambda m: setattr(m, "height", 10**6), convert.BadFrameError),
    ],
    ids=[
        "encoding",
        "generic-encoding",
        "zero-height",
        "zero-width",
        "short-step",
        "short-data",
        "no-data",
        "huge",
    ],
)
def test_bad_frames_raise_frame_error(mutate, error):
    msg = _image("rgb8", RGB)
    mutate(msg)
    with pytest.raises(error):
        convert.msg_to_rgb(msg)
    assert issubclass(error, convert.FrameError)


def _compressed(data: bytes, fmt: str):
    ts = messages.get_typestore()
    return ts.types[messages.COMPRESSED_IMAGE](
        header=messages.make_header(0, "cam"), format=fmt, data=np.frombuffer(data, np.uint8).copy()
    )


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_compressed_png_is_lossless_rgb():
    got = convert.msg_to_rgb(_compressed(_png(RGB), "rgb8; png compressed bgr8"))
    assert np.array_equal(got, RGB)


def test_compressed_jpeg_from_opencv_keeps_colour_order():
    cv2 = pytest.importorskip("cv2", reason="OpenCV writes the JPEG that image_transport would")
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    ok, jpg = cv2.imencode(".jpg", red[:, :, ::-1])
    assert ok
    got = convert.msg_to_rgb(_compressed(jpg.tobytes(), "bgr8; jpeg compressed bgr8"))
    assert got.shape == (16, 16, 3)
    assert got[..., 0].mean() > 200 and got[..., 2].mean() < 50


def test_compressed_pillow_fallback(monkeypatch):
    def no_cv2(_buffer):
        raise ImportError("cv2 hidden for this test")

    monkeypatch.setattr(convert, "_decode_cv2", no_cv2)
    assert np.array_equal(convert.msg_to_rgb(_compressed(_png(RGB), "png")), RGB)
    with pytest.raises(convert.BadFrameError):
        convert.msg_to_rgb(_compressed(b"not an image", "jpeg"))


@pytest.mark.parametrize(
    ("data", "fmt", "error"),
    [
        (b"", "jpeg", convert.BadFrameError),
        (b"garbage bytes", "jpeg", convert.BadFrameError),
        (b"\x89PNG....", "16UC1; compressedDepth png", convert.UnsupportedEncodingError),
    ],
)
def test_bad_compressed_frames(data, fmt, error):
    with pytest.raises(error):
        convert.msg_to_rgb(_compressed(data, fmt))


def test_a_png_claiming_a_huge_size_is_a_bad_frame_with_opencv(png_bomb, monkeypatch):
    """OpenCV raises cv2.error (not a ValueError) past CV_IO_MAX_IMAGE_PIXELS; callers catch FrameError.
    (The header check refuses this PNG before OpenCV sees it; skipped here, as for a format Pillow
    cannot read, to reach OpenCV's own refusal.)"""
    pytest.importorskip("cv2", reason="the OpenCV decode path")
    monkeypatch.setattr(convert, "_check_header_size", lambda buffer: None)
    with pytest.raises(convert.BadFrameError, match="refused by OpenCV"):
        convert.msg_to_rgb(_compressed(png_bomb, "png"))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros, width x height, compressed to a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(b"\0" * ((width + 1) * height), 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize("cv2_installed", [True, False], ids=["opencv", "pillow"])
@pytest.mark.parametrize("image", ["over-max-side", "decompression-bomb"])
def test_a_compressed_image_over_the_size_limit_is_refused_before_decoding(
    request, monkeypatch, image, cv2_installed
):
    """The header's size is checked before any decoder allocates the pixels (a 0.4 MB 20000 x 20000
    PNG used to take 2.5 GB in OpenCV before the size check refused it)."""

    def no_cv2(buffer):
        if not cv2_installed:
            raise ImportError("cv2 hidden for this test")
        raise AssertionError("OpenCV decoded the image before its size was checked")

    def no_pillow(buffer):
        raise AssertionError("Pillow decoded the image before its size was checked")

    monkeypatch.setattr(convert, "_decode_cv2", no_cv2)
    monkeypatch.setattr(convert, "_decode_pil", no_pillow)
    if image == "over-max-side":  # 20000 x 1: under Pillow's pixel limit, over MAX_SIDE
        data, match = _png_header_only(20000, 1), "20000 exceeds 16384 pixels per side"
    else:  # 40000 x 40000 claimed over a few bytes: over Pillow's limit too
        data, match = request.getfixturevalue("png_bomb"), "refused before decoding"
    with pytest.raises(convert.BadFrameError, match=match):
        convert.msg_to_rgb(_compressed(data, "png"))


def test_array_to_image_fields_rejects_empty():
    with pytest.raises(ValueError):
        convert.array_to_image_fields(np.zeros((0, 3), np.uint8), "mono8")


def test_real_rosbag2_mono8_frames_convert(shared_path):
    """Frames written by ROS 2's own rosbag2 (2x2 mono8, stamps not normalised) convert without error."""
    from rosbags.highlevel import AnyReader

    bag = shared_path / "realbags" / "images_mono8_sqlite3"
    ts = messages.get_typestore()
    with AnyReader([bag], default_typestore=ts) as reader:
        frames = [reader.deserialize(raw, conn.msgtype) for conn, _, raw in reader.messages()]
    assert len(frames) == 3
    for frame in frames:
        rgb = convert.msg_to_rgb(frame)
        assert rgb.shape == (2, 2, 3)
        assert np.array_equal(rgb[..., 0], convert.image_msg_to_array(frame))
