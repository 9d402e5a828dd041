"""Shared fixtures: tiny random models, small images, the shared/ folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """../shared beside the repository (CI) or /work/shared (developer machines)."""
    for candidate in (REPO_ROOT.parent / "shared", Path("/work/shared")):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_path() -> Path:
    path = shared_dir()
    if path is None:
        pytest.skip("shared/ (reference manifests, real bags) is not beside the repository")
    return path


@pytest.fixture(autouse=True, scope="session")
def _offline_and_single_threaded():
    """Tests never touch a model hub, and keep to the 2 cores CI has."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def one_thread():
    """Tiny models run faster on one intra-op thread than with two threads fighting for 2 shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random EfficientViT student (112 px input); shared, so treat it as read-only."""
    from efficientsam3_ros.modeling import build_model

    torch.manual_seed(0)
    return build_model("es-ev-tiny")


@pytest.fixture
def high_res_tiny():
    """Builds the tiny student with ``high_res_features`` (+ other ModelConfig fields), seeded, in eval mode."""
    import dataclasses

    from efficientsam3_ros.modeling import build_model, get_config

    def build(**overrides: object):
        torch.manual_seed(0)
        return build_model(dataclasses.replace(get_config("es-ev-tiny"), high_res_features=True, **overrides))

    return build


@pytest.fixture
def box_scoring_tiny():
    """Builds the tiny student, seeded, in eval mode, with a box-scoring head of the given
    settings (``None``: without one; the rest of its weights are the same either way)."""
    from efficientsam3_ros.modeling import build_model, get_config

    def build(settings: dict[str, int] | None = None):
        config = get_config("es-ev-tiny")
        if settings is not None:
            config = config.with_box_scoring(settings)
        torch.manual_seed(0)
        return build_model(config)

    return build


@pytest.fixture
def rgb_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def png_bomb() -> bytes:
    """A PNG whose header (IHDR with a valid CRC) claims 40000 x 40000 pixels over a few bytes of data:
    OpenCV refuses it with cv2.error (over CV_IO_MAX_IMAGE_PIXELS), Pillow as a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def predictor():
    """A tiny-model InstancePredictor (random weights, seeded), one per test module: it caches an image."""
    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.modeling.instance import InstancePredictor
    from efficientsam3_ros.modeling.tracker import TrackerModel
    from efficientsam3_ros.modeling.tracker_config import TrackerConfig

    torch.manual_seed(0)
    image_model = build_model("es-ev-tiny")
    tracker = TrackerModel(image_model.config, TrackerConfig.tiny("perceiver")).eval()
    return InstancePredictor(image_model, tracker)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """One normalised 112 px input image for the tiny models."""
    return torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(1))
