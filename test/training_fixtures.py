"""Helpers for the training tests: small synthetic datasets in the real formats, tracker weights, margins.

Plain functions (the test modules wrap them in fixtures): test/conftest.py belongs to the lead.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from safetensors.torch import save_file

from efficientsam3_ros.synthetic import CONCEPTS, WorldConfig, write_coco, write_sa1b, write_saco, write_sav

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
WORLD = WorldConfig(width=128, height=96)


def write_datasets(root: Path) -> dict[str, Path]:
    """SA-1B (8 images), SA-V (2 videos x 8 frames), SA-Co (6 images), COCO (3 images), a prompt list."""
    write_sa1b(root / "sa1b", seed=1, num_images=8, config=WORLD)
    write_sav(root / "sav", seed=2, num_videos=2, num_frames=8, config=WORLD)
    write_saco(root / "saco", seed=3, num_images=6, config=WORLD)
    write_coco(root / "coco", seed=4, num_images=3, config=WORLD, per_phrase=False)
    (root / "prompts.txt").write_text("# concepts\n" + "\n".join(CONCEPTS) + "\n\n")
    return {
        "sa1b": root / "sa1b",
        "sav": root / "sav",
        "saco": root / "saco",
        "coco": root / "coco",
        "prompts": root / "prompts.txt",
    }


def write_tracker_checkpoint(path: Path) -> Path:
    """Tiny SAM3 tracker weights with O(1) outputs.

    transformers' default init leaves the tiny random tracker's mask logits at ~1e-3 (every
    mask is "0.5 everywhere"), which gives mask distillation nothing to learn; real SAM3
    weights are trained. Fan-in scaled normal weights stand in for them.
    """
    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.modeling.tracker import TrackerModel
    from efficientsam3_ros.modeling.tracker_config import TrackerConfig

    torch.manual_seed(0)
    tracker = TrackerModel(build_model("es-ev-tiny").config, TrackerConfig.tiny("dense"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in tracker.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel()))
    save_file({k: v.contiguous().clone() for k, v in tracker.state_dict().items()}, str(path))
    return path


def drop_ratio(losses: list[float], window: int = 10) -> float:
    """mean of the last ``window`` losses / mean of the first ``window``."""
    return statistics.mean(losses[-window:]) / statistics.mean(losses[:window])


def fill_tiny_feature_cache(sa1b_root: Path, folder: Path) -> tuple:
    """A sam3-tiny feature cache of the SA-1B test images in ``folder``, 3 samples a shard.

    Returns (dataset, keys, teacher, fill_cache keyword arguments), to fill it again the same way.
    """
    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.training.data import SA1BDataset
    from efficientsam3_ros.training.distributed import DistContext
    from efficientsam3_ros.training.feature_cache import fill_cache

    teacher = build_model("sam3-tiny")
    ds = SA1BDataset(sa1b_root, 112)
    keys = [ds.key(i) for i in range(len(ds))]
    kwargs = {"teacher_name": "sam3-tiny", "input_size": 112, "resize": "stretch", "shard_size": 3}
    fill_cache(folder, ds, keys, teacher, DistContext(), **kwargs)
    return ds, keys, teacher, kwargs


def tiny_concept_setup(root: Path, num_images: int):
    """A seeded es-ev-tiny with a 3-layer DETR decoder (so the auxiliary losses have layers to
    match) and a ConceptDataset of ``num_images`` world images written under ``root``."""
    from efficientsam3_ros.modeling import build_model, get_config
    from efficientsam3_ros.training.data import ConceptDataset

    write_saco(root / "saco", seed=3, num_images=num_images, config=WORLD)
    config = get_config("es-ev-tiny")
    config.detector["detr_decoder"] = {**config.detector["detr_decoder"], "num_layers": 3}
    torch.manual_seed(0)
    model = build_model(config)
    return model, ConceptDataset(root / "saco", model.config.image_size)
