"""Tracker weight files: what stage 2 writes and what the pipeline's memory tracking loads.

A tracker file is safetensors whose metadata says ``format = efficientsam3_ros_tracker``
and carries the ``TrackerConfig`` it was built with and the ``ModelConfig`` of the image
model whose features it was trained on. Both matter: the tracker's sizes come from the
file (so a small demo tracker loads as what it is), and a tracker only makes sense on the
trunk it learned from, so a mismatch is refused before any weight is copied. A bare
state dict (no metadata) is accepted too, at the image model's default tracker sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint_files import CheckpointError, open_checkpoint
from .config import ModelConfig
from .tracker import TrackerModel
from .tracker_config import TrackerConfig, default_tracker_config

TRACKER_FORMAT = "efficientsam3_ros_tracker"


def load_tracker(path: str | Path, image_config: ModelConfig, memory: str | None = None) -> TrackerModel:
    """The tracker stored in ``path``, built for ``image_config``'s features, in eval mode.

    ``memory`` ("perceiver" / "dense"), when given, must be the file's memory kind. Raises
    ``CheckpointError`` for a file that is not a tracker of this image model.
    """
    ckpt = open_checkpoint(path, full_check=True)
    meta = ckpt.metadata
    if meta.get("format") == TRACKER_FORMAT:
        config = TrackerConfig.from_dict(json.loads(meta["config"]))
        _check_image_model(path, json.loads(meta.get("image_config", "null")), image_config)
    else:
        config = default_tracker_config(image_config, memory or "perceiver")
    if memory is not None and memory != config.memory:
        raise CheckpointError(
            f"{path} holds a {config.memory!r}-memory tracker, not {memory!r}: use memory={config.memory!r}"
        )
    if any(k.startswith(("detector.", "tracker.")) for k in ckpt.shapes):
        # SAM3's own tracker (tracker.*) is another network than this package's memory tracker
        raise CheckpointError(
            f"{path} is a released SAM3 / EfficientSAM3 image model (detector.* / tracker.* keys), not a "
            "tracker file: give it as the image model checkpoint, and as the tracker a file written by "
            "stage 2 (format efficientsam3_ros_tracker)"
        )
    tracker = TrackerModel(image_config, config)
    own = tracker.state_dict()
    state = {key: ckpt.get(key) for key in ckpt.shapes}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit a {config.memory} tracker for {image_config.name}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})"
        )
    tracker.load_state_dict(state, strict=True)
    return tracker.eval()


def _check_image_model(path: str | Path, trained_for: dict | None, image_config: ModelConfig) -> None:
    if not trained_for:
        return
    trained = ModelConfig.from_dict(trained_for)
    ours = (image_config.grid_size, image_config.trunk_dim, image_config.fpn_dim)
    theirs = (trained.grid_size, trained.trunk_dim, trained.fpn_dim)
    if ours != theirs:
        raise CheckpointError(
            f"{path} is a tracker for {trained.name} ({theirs[0]}x{theirs[0]} grid, {theirs[1]}-channel trunk); "
            f"the image model is {image_config.name} ({ours[0]}x{ours[0]}, {ours[1]}): use the tracker "
            "trained with this image model (stage 2 on its stage-1 export)"
        )
