"""Channels-last vs NCHW on the CPU: the demo recipe's training steps and the demo model's inference.

    python bench/memory_format.py              # every recipe stage + inference (~4 min, 2 cores)
    python bench/memory_format.py --steps 4    # quicker, noisier
    python bench/memory_format.py --only stage1-image inference

oneDNN runs CPU convolutions channels-last; a model in PyTorch's default NCHW layout pays a
reorder of each convolution's input and weight on every call, forwards and backwards.
``run.memory_format`` (training) and ``RuntimeOptions.memory_format`` (the torch backend) choose
the layout; ``auto`` picks channels-last on the CPU (modeling.memory_format).
This times, for each of the demo recipe's stages (its own config from training/demo/, on a small
synthetic world, random weights: time does not depend on them), whole optimizer steps of the
stage's real module in both layouts, the two alternating step by step so machine noise hits
both alike, and the demo student's image encoder and detector at inference the same way; it
prints the median of each and the NCHW / channels-last ratio (above 1: channels-last is faster).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.runtime import RuntimeOptions
from efficientsam3_ros.runtime.torch_backend import TorchBackend
from efficientsam3_ros.synthetic.writers import write_dataset
from efficientsam3_ros.training.config import load_config
from efficientsam3_ros.training.data import ResumableBatchSampler
from efficientsam3_ros.training.distributed import DistContext
from efficientsam3_ros.training.trainer import _group_keys, build_stage, optimizer_flags

RECIPE = Path(__file__).resolve().parents[1] / "training" / "demo"
# stage label: (recipe config, data format it reads, what the row is)
STAGES = {
    "teacher": ("teacher_stage3.yaml", "saco", "stage 3, the demo teacher"),
    "stage1-image": ("student_stage1_image.yaml", "saco", "stage 1, trunk distillation"),
    "stage3": ("student_stage3.yaml", "saco", "stage 3, demo-student at 168 px"),
    "stage3-224": ("student_stage3_hires.yaml", "saco", "stage 3, the 224 px finish"),
    "stage2": ("student_stage2.yaml", "sav", "stage 2, the Perceiver-memory tracker"),
}
LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def alternate(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each labelled callable, called in turn ``repeats`` times after one warm-up round."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for i in range(repeats + 1):
        for label, step in steps.items():
            t = time.perf_counter()
            step()
            if i:
                times[label].append((time.perf_counter() - t) * 1e3)
    return {label: statistics.median(values) for label, values in times.items()}


def stage_steps(name: str, data: dict[str, Path], out: Path) -> dict[str, Callable[[], object]]:
    """One optimizer step of the recipe stage ``name`` per call, one callable per layout."""
    config_file, data_format, _ = STAGES[name]
    overrides = [
        f"data.root={data[data_format]}",
        "model.student_checkpoint=null",
        "model.teacher_checkpoint=null",
        f"run.output_dir={out}",
    ]
    steps = {}
    for label, layout in LAYOUTS.items():
        torch.manual_seed(0)
        stage = build_stage(load_config(RECIPE / config_file, overrides), DistContext())
        module = stage.module.train().to(memory_format=layout)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, **optimizer_flags("auto", torch.device("cpu")))
        batches = _batches(stage)
        generator = torch.Generator().manual_seed(0)

        def step(module=module, optimizer=optimizer, batches=batches, generator=generator) -> None:
            loss, _ = module(next(batches), generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        steps[label] = step
    return steps


def _batches(stage):
    """The stage's batches as its trainer draws them (phrases of one image grouped where configured)."""
    per_image = stage.config.data.phrases_per_image
    sampler = ResumableBatchSampler(
        len(stage.dataset),
        stage.config.run.batch_size,
        seed=0,
        group_keys=_group_keys(stage.dataset, per_image),
        group_size=per_image,
    )
    while True:
        for refs in sampler:
            yield stage.collate([stage.dataset[ref] for ref in refs])


def inference_steps(concepts: int = 8) -> dict[str, dict[str, Callable[[], object]]]:
    """The demo student's image encoder and its detector on ``concepts`` phrases, in each layout."""
    torch.manual_seed(0)
    model = build_model("demo-student")
    size = model.config.image_size
    pixels = torch.rand(1, 3, size, size) * 2 - 1
    ids, mask = model.tokenize([f"phrase {i}" for i in range(concepts)])
    parts: dict[str, dict[str, Callable[[], object]]] = {"image encoder": {}, "detector": {}}
    for label, layout in LAYOUTS.items():
        name = "channels_last" if layout is torch.channels_last else "contiguous"
        backend = TorchBackend(copy.deepcopy(model), RuntimeOptions(memory_format=name))
        features, embeds = backend.encode_image(pixels), backend.encode_text(ids, mask)
        parts["image encoder"][label] = lambda b=backend: b.encode_image(pixels)
        parts["detector"][label] = lambda b=backend, f=features, e=embeds: b.detect(f, e, mask)
    return parts


def report(what: str, ms: dict[str, float]) -> None:
    ratio = ms["NCHW"] / ms["channels-last"]
    print(
        f"  {what:<44} NCHW {ms['NCHW']:7.1f} ms   channels-last {ms['channels-last']:7.1f} ms   {ratio:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per layout (default 12)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only", nargs="+", choices=[*STAGES, "inference"], help="these rows only (default: all)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("efficientsam3_ros").setLevel(logging.ERROR)  # "random weights" warnings: known here
    rows = args.only or [*STAGES, "inference"]
    print(f"{args.threads} threads; median of {args.steps} steps per layout, the layouts alternating")
    with tempfile.TemporaryDirectory() as tmp:
        data = {"saco": Path(tmp) / "saco", "sav": Path(tmp) / "sav"}
        write_dataset("saco", data["saco"], seed=1, num=60, negatives_per_image=3)  # as the recipe's data
        write_dataset("sav", data["sav"], seed=2, num=8, num_frames=24)
        for name in rows:
            if name == "inference":
                for part, steps in inference_steps().items():
                    report(f"inference, demo-student {part}", alternate(steps, args.steps * 3))
                continue
            report(STAGES[name][2], alternate(stage_steps(name, data, Path(tmp) / name), args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
