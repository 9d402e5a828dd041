"""What a training run ran on, written next to its config (``OUTPUT_DIR/environment.json``).

On CPU a run is bit-repeatable for one code version, one thread count and one set of package
versions; the packages are not pinned (a library cannot pin its users), so a fresh machine may
install newer ones and train a different model from the same recipe. Recording them is what
makes "why does my rerun differ" answerable, and a resume under other versions is logged.
"""

from __future__ import annotations

import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .checkpointing import atomic_write_text
from .distributed import DistContext

log = logging.getLogger(__name__)

#: distributions whose versions change a run's numbers (the model code and its numerics)
NUMERIC_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "timm",
    "open_clip_torch",
    "numpy",
    "scipy",
    "pillow",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_environment(ctx: DistContext) -> dict[str, Any]:
    """This process's versions, threads and devices, JSON-ready."""
    return {
        "efficientsam3_ros": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in NUMERIC_PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "device": str(ctx.device),
        "world_size": ctx.world_size,
    }


def _numerics(env: dict[str, Any]) -> dict[str, Any]:
    """The entries that change a run's numbers, flat (the platform string names the kernel too)."""
    flat = {key: value for key, value in env.items() if key not in ("packages", "platform")}
    return {**flat, **env.get("packages", {})}


def record_environment(out: Path, ctx: DistContext, resumed: bool) -> dict[str, Any]:
    """Write this start to ``out/environment.json``: a fresh run starts the list, a resume appends
    to it and warns when it differs from the run's first start."""
    path = out / "environment.json"
    now = describe_environment(ctx)
    starts: list[dict[str, Any]] = []
    if resumed and path.exists():
        starts = json.loads(path.read_text())["starts"]
    if starts:
        before, after = _numerics(starts[0]), _numerics(now)
        changed = [
            f"{key} {before.get(key)} -> {value}" for key, value in after.items() if before.get(key) != value
        ]
        if changed:
            log.warning(
                "resuming %s in another environment than it started in (%s): the result will not be "
                "bit-identical to an uninterrupted run",
                out,
                ", ".join(changed),
            )
    starts.append(now)
    # atomically, as the checkpoints: a job killed mid-write kept half a file, and every later
    # resume then failed to read it
    atomic_write_text(path, json.dumps({"starts": starts}, indent=2) + "\n")
    return now
