"""Stage-2 training step: a batch's clips through the tracker together vs one clip at a time.

    python bench/tracker_training_step.py              # the demo recipe's stage 2, batch 2, 8 steps each way
    python bench/tracker_training_step.py --batch-size 4 --steps 4

A stage-2 step is many small operations: per clip, per frame, per object a memory attention
and a SAM mask decoder over a 12 x 12 grid. Stage 2 runs all clips of a batch together: one
image-encoder and tracker-neck call for every clip's frames, one ``condition_tracks`` for every
clip's objects and one ``propagate`` per frame index for every clip's tracks (each on its own
clip's frame). This times whole optimizer steps (forward, losses, backward, AdamW) of the demo
recipe's stage-2 module (``training/demo/student_stage2.yaml``: the whole tracker trained on
ground truth, previous-mask prompt) on SA-V-style clips of a small synthetic world, two ways:
"together" calls the module once on the batch; "one at a time" calls it on each clip and
back-propagates each clip's share of the loss (the same gradients: the test
``test_stage2_runs_a_batchs_clips_together_as_if_one_at_a_time`` checks that). "One at a time"
still batches each clip's own frames, objects and Perceiver windows, so this shows only the
part of the gain that batching across clips adds (README "Stage 2's clips, batched" has the
comparison with the code before). The two
alternate step by step so machine noise hits both alike; the median step time of each and
their ratio are printed. Weights are random (time does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from efficientsam3_ros.synthetic.writers import write_dataset
from efficientsam3_ros.training.config import load_config
from efficientsam3_ros.training.distributed import DistContext
from efficientsam3_ros.training.stage2 import MemoryDistillStage
from efficientsam3_ros.training.trainer import optimizer_flags, stage_sampler

RECIPE_STAGE2 = Path(__file__).resolve().parents[1] / "training" / "demo" / "student_stage2.yaml"


def build_stage(sav_root: Path, batch_size: int, out_dir: Path) -> MemoryDistillStage:
    """The recipe's stage 2 on a random-weight demo student (the recipe reads its stage-3 export)."""
    config = load_config(
        RECIPE_STAGE2,
        [
            f"data.root={sav_root}",
            "model.student_checkpoint=null",
            f"run.batch_size={batch_size}",
            f"run.output_dir={out_dir}",
        ],
    )
    torch.manual_seed(0)
    return MemoryDistillStage(config, DistContext())


def one_clip_at_a_time(module: torch.nn.Module):
    """The module on each clip alone, each clip's loss weighted by its share of the propagated frames."""

    def forward(batch: list[dict], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        frames = [clip["pixels"].shape[0] - 1 for clip in batch]
        total = 0.0
        for clip, n in zip(batch, frames):
            loss, _ = module([clip], generator)
            share = loss * (n / sum(frames))
            share.backward()  # one clip's graph at a time (the gradients add up as in one backward)
            total += float(share.detach())
        return torch.tensor(total), {}

    return forward


def time_steps(stage: MemoryDistillStage, steps: int) -> dict[str, float]:
    """Median ms per optimizer step of each way, the two ways' steps interleaved."""
    module = stage.module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, **optimizer_flags("auto", torch.device("cpu")))
    sampler = iter(stage_sampler(stage, DistContext()))  # the batches the recipe's run starts with
    ways = {"together": module, "one at a time": one_clip_at_a_time(module)}
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {label: [] for label in ways}
    for step in range(steps + 1):  # step 0 warms up
        batch = stage.collate([stage.dataset[ref] for ref in next(sampler)])  # both ways: the same clips
        for label, forward in ways.items():
            t = time.perf_counter()
            optimizer.zero_grad()
            loss, _ = forward(batch, generator)
            if loss.requires_grad:  # "one at a time" has back-propagated already
                loss.backward()
            optimizer.step()
            if step:
                times[label].append((time.perf_counter() - t) * 1e3)
    for label in ways:
        print(f"  {label}: {statistics.median(times[label]):7.1f} ms/step")
    return {label: statistics.median(times[label]) for label in ways}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per way (default 8)")
    parser.add_argument("--batch-size", type=int, default=2, help="clips per step (the recipe: 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=8, help="world videos to draw clips from")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sav"
        write_dataset("sav", root, seed=2, num=args.clips, num_frames=24)  # as the demo recipe's data
        stage = build_stage(root, args.batch_size, Path(tmp) / "run")
        data = stage.config.data
        print(
            f"demo-student tracker (recipe stage 2), {args.batch_size} clips of {data.clip_length} frames "
            f"and up to {data.max_objects} objects per step; {args.threads} threads; median of {args.steps} steps"
        )
        ms = time_steps(stage, args.steps)
        print(
            f"  -> together steps {ms['one at a time'] / ms['together']:.2f}x faster than one clip at a time"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
