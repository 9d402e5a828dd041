"""Image message -> RGB conversion for every supported encoding, step padding, and bad frames."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from efficientsam3_ros.ros import convert, messages, pixel_formats

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
        (lambda m: setattr(m, "encoding", "nv24"), convert.UnsupportedEncodingError),
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
    def no_cv2(_buffer, as_stored=False):
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

    def no_cv2(buffer, as_stored=False):
        if not cv2_installed:
            raise ImportError("cv2 hidden for this test")
        raise AssertionError("OpenCV decoded the image before its size was checked")

    def no_pillow(buffer, as_stored=False):
        raise AssertionError("Pillow decoded the image before its size was checked")

    monkeypatch.setattr(convert, "_decode_cv2", no_cv2)
    monkeypatch.setattr(convert, "_decode_pil", no_pillow)
    if image == "over-max-side":  # 20000 x 1: under Pillow's pixel limit, over MAX_SIDE
        data, match = _png_header_only(20000, 1), "20000 exceeds 16384 pixels per side"
    else:  # 40000 x 40000 claimed over a few bytes: over Pillow's limit too
        data, match = request.getfixturevalue("png_bomb"), "refused before decoding"
    with pytest.raises(convert.BadFrameError, match=match):
        convert.msg_to_rgb(_compressed(data, "png"))


# ----------------------------------------------------------------- camera encodings (YUV, Bayer)

CAMERA_ENCODINGS = [
    name for name in convert.RAW_ENCODINGS if name not in CASES and name not in ("mono8", "mono16")
]


@pytest.fixture(params=["opencv", "numpy"])
def converter(request, monkeypatch):
    """Run a test once with OpenCV doing the conversion and once with the numpy fallback."""
    if request.param == "opencv":
        pytest.importorskip("cv2", reason="the OpenCV conversion path")
    else:
        monkeypatch.setattr(pixel_formats, "opencv", lambda: None)
    return request.param


def _smooth_rgb(height: int = 24, width: int = 32) -> np.ndarray:
    """Colour ramps (red along x, green along y, blue falling along x): every channel differs,
    so a swapped R/B or a shifted mosaic shows, and bilinear interpolation of a ramp is exact."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([20 + 6 * xx, 40 + 5 * yy, 230 - 5 * xx], axis=-1).astype(np.uint8)


def _message(raw: np.ndarray, encoding: str, pad: int = 0):
    """An Image message for ``raw`` (laid out as rgb_to_raw does), ``pad`` bytes after every row."""
    msg = _image(encoding, raw, pad)
    msg.height = convert.array_to_image_fields(raw, encoding)["height"]  # nv12: 2/3 of the rows
    return msg


def test_every_sensor_msgs_colour_encoding_is_accepted():
    """The colour, mono and Bayer names of sensor_msgs/image_encodings.hpp (ROS 2 Jazzy), except
    nv24, whose layout the header leaves ambiguous (2 channels at height scale 1)."""
    wanted = {"rgb8", "rgba8", "rgb16", "rgba16", "bgr8", "bgra8", "bgr16", "bgra16", "mono8", "mono16"}
    wanted |= {f"bayer_{p}{bits}" for p in ("rggb", "bggr", "gbrg", "grbg") for bits in (8, 16)}
    wanted |= {"uyvy", "yuv422", "yuyv", "yuv422_yuy2", "nv12", "nv21"}
    assert wanted == set(convert.RAW_ENCODINGS)


@pytest.mark.parametrize("pad", [0, 6])
@pytest.mark.parametrize("encoding", CAMERA_ENCODINGS)
def test_camera_encodings_round_trip_to_the_same_colours(encoding, pad, converter):
    """RGB -> a camera's layout -> message (row padding included) -> RGB gives the colours back:
    within 2 grey levels for YUV (8-bit limited range; the image's colour is constant over the
    2x2 blocks that share chroma), exactly inside the frame for Bayer (bilinear interpolation
    of a ramp is exact)."""
    rgb = _smooth_rgb()
    if not encoding.startswith("bayer_"):
        rgb = np.repeat(np.repeat(rgb[::2, ::2], 2, axis=0), 2, axis=1)
    got = convert.msg_to_rgb(_message(convert.rgb_to_raw(rgb, encoding), encoding, pad))
    assert got.dtype == np.uint8 and got.shape == rgb.shape and got.flags.c_contiguous
    error = np.abs(got.astype(int) - rgb)
    if encoding.startswith("bayer_"):
        assert error[1:-1, 1:-1].max() == 0
        assert error.max() <= 6  # the border repeats its inner neighbour: one ramp step
    else:
        assert error.max() <= 2


@pytest.mark.parametrize("encoding", [e for e in CAMERA_ENCODINGS if not e.endswith("16")])
def test_opencv_and_numpy_agree_on_any_input(encoding, monkeypatch):
    """Random bytes (out-of-gamut YUV, luma under 16, noisy mosaics, odd Bayer sizes): the numpy
    fallback and OpenCV differ by at most one grey level anywhere, borders included."""
    pytest.importorskip("cv2", reason="OpenCV is the reference for the numpy fallback")
    rng = np.random.default_rng(7)
    height, width = (14, 20) if not encoding.startswith("bayer_") else (13, 17)
    rows = height * 3 // 2 if encoding in ("nv12", "nv21") else height
    shape = (rows, width, 2) if encoding in pixel_formats.PACKED_YUV422 else (rows, width)
    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    with_opencv = convert.raw_to_rgb(raw, encoding)
    monkeypatch.setattr(pixel_formats, "opencv", lambda: None)
    with_numpy = convert.raw_to_rgb(raw, encoding)
    assert np.abs(with_opencv.astype(int) - with_numpy).max() <= 1


def test_yuv_decodes_known_colours(converter):
    """BT.601 limited range, as cv_bridge: (16,128,128) black, (235,128,128) white,
    (81,90,240) red, (145,54,34) green, (41,240,110) blue; luma under 16 is black."""
    y = np.array([16, 235, 81, 145, 41, 3], np.uint8)
    u = np.array([128, 128, 90, 54, 240, 128], np.uint8)
    v = np.array([128, 128, 240, 34, 110, 128], np.uint8)
    packed = np.stack([np.repeat(u, 2).reshape(-1, 2) * [1, 0] + np.repeat(v, 2).reshape(-1, 2) * [0, 1]])
    packed = np.stack([packed.reshape(1, -1), np.repeat(y, 2)[None]], axis=-1).astype(np.uint8)  # UYVY
    got = convert.raw_to_rgb(packed, "uyvy")[0, 0::2].astype(int)
    want = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]])
    assert np.abs(got - want).max() <= 2


@pytest.mark.parametrize(
    ("encoding", "height", "width", "match"),
    [
        ("yuyv", 4, 7, "odd width"),
        ("uyvy", 4, 7, "odd width"),
        ("nv12", 5, 8, "even width and height"),
        ("nv21", 4, 9, "even width and height"),
    ],
)
def test_yuv_frames_with_unpaired_pixels_are_bad_frames(encoding, height, width, match):
    msg = _image("mono8", np.zeros((height * 2, width * 2), np.uint8))
    msg.encoding, msg.height, msg.width = encoding, height, width
    with pytest.raises(convert.BadFrameError, match=match):
        convert.msg_to_rgb(msg)


def test_nv12_without_its_chroma_plane_is_a_bad_frame():
    """A publisher that sends only the Y plane (height * step bytes) is refused, not read past."""
    raw = convert.rgb_to_raw(_smooth_rgb(), "nv12")
    msg = _message(raw, "nv12")
    msg.data = msg.data[: 24 * 32]
    with pytest.raises(convert.BadFrameError, match="needs"):
        convert.msg_to_rgb(msg)


@pytest.mark.parametrize("encoding", ["rgb16", "bgra16", "bayer_grbg16"])
def test_16_bit_colour_and_bayer_in_either_byte_order(encoding):
    rgb = _smooth_rgb()
    raw = convert.rgb_to_raw(rgb, encoding)
    for bigendian in (False, True):
        msg = _image(encoding, raw, pad=4, bigendian=bigendian)
        got = convert.msg_to_rgb(msg)
        assert np.abs(got[1:-1, 1:-1].astype(int) - rgb[1:-1, 1:-1]).max() == 0


def test_unsupported_encodings_say_what_to_publish():
    msg = _image("rgb8", RGB)
    msg.encoding = "8UC3"
    with pytest.raises(convert.UnsupportedEncodingError, match="generic OpenCV type.*rgb8 or bgr8"):
        convert.msg_to_rgb(msg)
    msg.encoding = "nv24"
    with pytest.raises(convert.UnsupportedEncodingError, match="nv12 or nv21"):
        convert.msg_to_rgb(msg)


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_gbrg16"])
def test_a_bayer_png_from_image_transport_is_demosaiced(encoding, converter):
    """compressed_image_transport stores a Bayer image's PNG as the raw 1-channel mosaic, with
    format "bayer_rggb8; png compressed "; decoded as colour it was grey with a checkerboard."""
    from PIL import Image

    rgb = _smooth_rgb()
    buffer = io.BytesIO()
    Image.fromarray(convert.rgb_to_raw(rgb, encoding)).save(buffer, format="PNG")
    got = convert.msg_to_rgb(_compressed(buffer.getvalue(), f"{encoding}; png compressed "))
    assert got.shape == rgb.shape and got.dtype == np.uint8
    assert np.abs(got[1:-1, 1:-1].astype(int) - rgb[1:-1, 1:-1]).max() == 0


def test_a_bayer_jpeg_from_image_transport_is_grey_as_stored():
    """Its JPEG was made grey by the publisher ("...; jpeg compressed mono8"): no mosaic to undo."""
    grey = np.full((16, 16), 90, np.uint8)
    got = convert.msg_to_rgb(_compressed(_png(np.dstack([grey] * 3)), "bayer_rggb8; jpeg compressed mono8"))
    assert np.array_equal(got, np.dstack([grey] * 3))


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
