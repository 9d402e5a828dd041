"""Channels-last vs NCHW on the CPU: the demo recipe's training steps and the demo model's inference.

    python bench/memory_format.py              # every recipe stage + inference (~6 min, 2 cores)
    python bench/memory_format.py --steps 8    # what the README's table ran (~4 min)
    python bench/memory_format.py --steps 4 --rounds 1    # quicker, noisier
    python bench/memory_format.py --only stage1-image inference

oneDNN runs CPU convolutions channels-last; a model in PyTorch's default NCHW layout pays a
reorder of each convolution's input and weight on every call, forwards and backwards.
``run.memory_format`` (training) and ``RuntimeOptions.memory_format`` (the torch backend) choose
the layout; ``auto`` picks channels-last for a student on the CPU (modeling.memory_format).
This times, for each of the demo recipe's stages (its own config from training/demo/, on a small
synthetic world, random weights: time does not depend on them), whole optimizer steps of the
stage's real module in each layout, and the demo student's image encoder and detector at
inference. Each layout runs in a process of its own (two models in one process share oneDNN's
caches and the CPU's, which made an earlier in-process version of this bench call the teacher
faster in channels-last when whole training runs are 5 % slower), in the order NCHW,
channels-last, channels-last, NCHW (``--rounds 2``) so that drift hits both alike; it prints
the mean of each layout's medians and the NCHW / channels-last ratio (above 1: channels-last
is faster).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.runtime import RuntimeOptions
from efficientsam3_ros.runtime.torch_backend import TorchBackend
from efficientsam3_ros.synthetic.writers import write_dataset
from efficientsam3_ros.training.config import load_config
from efficientsam3_ros.training.distributed import DistContext
from efficientsam3_ros.training.trainer import build_stage, optimizer_flags, stage_sampler

from timing import median_ms

RECIPE = Path(__file__).resolve().parents[1] / "training" / "demo"
# stage label: (recipe config, data format it reads, what the row is)
STAGES = {
    "teacher": ("teacher_stage3.yaml", "saco", "stage 3, the demo teacher"),
    "stage1-image": ("student_stage1_image.yaml", "saco", "stage 1, trunk distillation"),
    "stage3": ("student_stage3.yaml", "saco", "stage 3, demo-student at 168 px"),
    "stage3-224": ("experiments/student_stage3_224.yaml", "saco", "stage 3, the 224 px finish"),
    "stage2": ("student_stage2.yaml", "sav", "stage 2, the Perceiver-memory tracker"),
}
LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def stage_step(name: str, layout: torch.memory_format, data: Path, out: Path) -> Callable[[], object]:
    """One optimizer step of the recipe stage ``name`` in ``layout`` per call."""
    config_file, data_format, _ = STAGES[name]
    overrides = [
        f"data.root={data / data_format}",
        "model.student_checkpoint=null",
        "model.teacher_checkpoint=null",
        f"run.output_dir={out}",
    ]
    torch.manual_seed(0)
    stage = build_stage(load_config(RECIPE / config_file, overrides), DistContext())
    module = stage.module.train().to(memory_format=layout)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, **optimizer_flags("auto", torch.device("cpu")))
    batches = _batches(stage)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        loss, _ = module(next(batches), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _batches(stage):
    """The stage's batches as its trainer draws them (phrases of one image grouped where configured)."""
    while True:
        for refs in stage_sampler(stage, DistContext()):
            yield stage.collate([stage.dataset[ref] for ref in refs])


def inference_steps(layout: torch.memory_format, concepts: int = 8) -> dict[str, Callable[[], object]]:
    """The demo student's image encoder and its detector on ``concepts`` phrases, in ``layout``."""
    torch.manual_seed(0)
    model = build_model("demo-student")
    size = model.config.image_size
    pixels = torch.rand(1, 3, size, size) * 2 - 1
    ids, mask = model.tokenize([f"phrase {i}" for i in range(concepts)])
    name = "channels_last" if layout is torch.channels_last else "contiguous"
    backend = TorchBackend(model, RuntimeOptions(memory_format=name))
    features, embeds = backend.encode_image(pixels), backend.encode_text(ids, mask)
    return {
        "image encoder": lambda: backend.encode_image(pixels),
        "detector": lambda: backend.detect(features, embeds, mask),
    }


def child(row: str, layout_name: str, steps: int, data: Path) -> dict[str, float]:
    """Median ms of ``row``'s step(s) in one layout: what one child process measures."""
    layout = LAYOUTS[layout_name]
    if row == "inference":
        return {part: median_ms(step, steps * 3, warmup=2) for part, step in inference_steps(layout).items()}
    return {STAGES[row][2]: median_ms(stage_step(row, layout, data, data / f"run-{row}"), steps, warmup=2)}


def in_own_processes(row: str, args: argparse.Namespace, data: Path) -> dict[str, dict[str, float]]:
    """``{what: {layout: ms}}`` for ``row``, each layout's runs in fresh processes, NCHW-first and
    channels-last-first rounds alternating; a layout's figure is the mean of its runs' medians."""
    runs: dict[str, dict[str, list[float]]] = {}
    for round_ in range(args.rounds):
        order = list(LAYOUTS) if round_ % 2 == 0 else list(LAYOUTS)[::-1]
        for layout in order:
            command = [sys.executable, __file__, "--child", row, layout, "--steps", str(args.steps)]
            command += ["--threads", str(args.threads), "--data", str(data)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{row} in {layout} failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for what, ms in result.items():
                runs.setdefault(what, {}).setdefault(layout, []).append(ms)
    return {what: {k: statistics.mean(v) for k, v in by_layout.items()} for what, by_layout in runs.items()}


def report(what: str, ms: dict[str, float]) -> None:
    ratio = ms["NCHW"] / ms["channels-last"]
    print(
        f"  {what:<44} NCHW {ms['NCHW']:7.1f} ms   channels-last {ms['channels-last']:7.1f} ms   {ratio:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=12, help="timed steps per run (inference: 3x; default 12)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs per layout, each in its own process (default 2)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only", nargs="+", choices=[*STAGES, "inference"], help="these rows only (default: all)"
    )
    parser.add_argument("--child", nargs=2, metavar=("ROW", "LAYOUT"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:  # a process of its own: its logging is its own too
        logging.getLogger("efficientsam3_ros").setLevel(logging.ERROR)  # "random weights": known here
        print(json.dumps(child(*args.child, args.steps, args.data)))
        return 0
    rows = args.only or [*STAGES, "inference"]
    print(
        f"{args.threads} threads; median of {args.steps} steps a run, {args.rounds} runs per layout, "
        "each in its own process"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        formats = {STAGES[name][1] for name in rows if name in STAGES}
        if "saco" in formats:
            write_dataset("saco", data / "saco", seed=1, num=60, negatives_per_image=3)  # as the recipe's
        if "sav" in formats:
            write_dataset("sav", data / "sav", seed=2, num=8, num_frames=24)
        for name in rows:
            for what, ms in in_own_processes(name, args, data).items():
                report(f"inference, demo-student {what}" if name == "inference" else what, ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
