"""Stage-3 training step: what putting several phrases of one image in a batch buys.

    python bench/training_step.py              # demo-student and demo-teacher, 12 steps each way (~20 s, 2 cores)
    python bench/training_step.py --steps 4    # quicker, noisier
    python bench/training_step.py --detr-levels   # demo-student: DETR encoder on the 1x vs the 2x level
    python bench/training_step.py --optimizer     # AdamW's for-loop vs foreach vs fused update (optim.implementation)
    python bench/training_step.py --amp           # float32 vs bf16 autocast on the CPU (run.amp: bf16)
    python bench/training_step.py --losses        # the whole step vs the detector alone: what the losses cost

SA-Co lists each image once per noun phrase. With ``data.phrases_per_image: 1`` a batch of 12
datapoints is 12 independent draws, so about 12 different images go through the image encoder;
with 4, runs of up to 4 phrases of one image sit together and the encoder sees about 4 images.
This times whole optimizer steps (forward, Hungarian matching, losses, backward, AdamW) of the
real stage-3 module on batches from the real sampler over a small synthetic world, the two
settings alternating step by step so that machine noise hits both alike, and prints the median
step time of each and their ratio. Weights are random (time does not depend on them).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from efficientsam3_ros.modeling import EfficientSam3Model, build_model, get_config
from efficientsam3_ros.synthetic.writers import write_dataset
from efficientsam3_ros.training.config import ConceptStageOptions
from efficientsam3_ros.training.data import ConceptDataset, ResumableBatchSampler
from efficientsam3_ros.training.stage3 import ConceptModule, detect_batch
from efficientsam3_ros.training.trainer import optimizer_flags


def batches(dataset: ConceptDataset, batch_size: int, group_size: int, seed: int):
    keys = [dataset.key(i) for i in range(len(dataset))]
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, seed=seed, group_keys=keys, group_size=group_size
    )
    for refs in sampler:
        yield [dataset[ref] for ref in refs]


class Variant(NamedTuple):
    """One setting of the timed step; every flag but the one a comparison varies keeps its default."""

    model: EfficientSam3Model
    phrases_per_image: int = 4
    implementation: str = "for-loop"  # optim.implementation
    bf16: bool = False  # autocast to bfloat16 (run.amp: bf16) instead of float32
    losses: bool = True  # False: backward from a plain sum of the detector's outputs (no matching, no losses)


def time_steps(
    variants: dict[str, Variant], dataset: ConceptDataset, steps: int, batch_size: int
) -> dict[str, float]:
    """Median ms per optimizer step of each ``label: Variant``, the variants' steps interleaved."""
    runs = {}
    for label, (model, group, implementation, bf16, losses) in variants.items():
        module = ConceptModule(model, None, ConceptStageOptions(focal_alpha=0.5)).train()
        flags = optimizer_flags(implementation, torch.device("cpu"))
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, **flags)
        forward = module if losses else _detector_only(model)
        runs[label] = (forward, optimizer, batches(dataset, batch_size, group, seed=1), bf16)
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {label: [] for label in variants}
    images: dict[str, list[int]] = {label: [] for label in variants}
    for step in range(steps + 1):  # step 0 warms up
        for label, (forward, optimizer, stream, bf16) in runs.items():
            batch = next(stream)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as the trainer does
                loss, _ = forward(batch, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:
                times[label].append((time.perf_counter() - t) * 1e3)
                images[label].append(len({s["key"] for s in batch}))
    for label in variants:
        print(
            f"  {label}: {statistics.median(times[label]):7.1f} ms/step "
            f"({statistics.mean(images[label]):.1f} images per batch of {batch_size})"
        )
    return {label: statistics.median(times[label]) for label in variants}


def _detector_only(model: EfficientSam3Model):
    """Stage 3's forward up to the outputs its losses read (every decoder layer's, as the
    losses tap them), summed instead of matched and scored: the step without its losses."""

    def forward(batch: list[dict], _generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        found = detect_batch(model, batch)
        out = found.out
        outputs = (out.pred_logits, out.pred_boxes, out.pred_masks, out.presence_logits)
        outputs += (found.all_logits, found.all_boxes, found.all_presence)
        return sum(t.float().sum() for t in outputs), {}

    return forward


def _each_model(
    args: argparse.Namespace,
    dataset: ConceptDataset,
    header: str,
    settings: dict[str, dict[str, object]],
    summary: Callable[[dict[str, float]], str],
) -> None:
    """For each of ``args.models``: time its step under each ``label: Variant fields`` setting, print the summary."""
    for name in args.models:
        print(f"{name}, {header}" if header else name)
        variants = {label: Variant(_model(name), **fields) for label, fields in settings.items()}
        print(f"  -> {summary(time_steps(variants, dataset, args.steps, args.batch_size))}")


def _model(name: str, **overrides: object) -> EfficientSam3Model:
    torch.manual_seed(0)
    return build_model(dataclasses.replace(get_config(name), **overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setting (default 12)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["demo-student", "demo-teacher"])
    parser.add_argument(
        "--detr-levels",
        action="store_true",
        help="instead: demo-student with the DETR encoder on the 1x vs the 2x level (ModelConfig.detr_level_scale)",
    )
    parser.add_argument(
        "--optimizer",
        action="store_true",
        help="instead: each model's step with AdamW's for-loop, foreach and fused update (optim.implementation)",
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="instead: each model's step in float32 and under bf16 autocast on the CPU (run.amp: bf16)",
    )
    parser.add_argument(
        "--losses",
        action="store_true",
        help="instead: each model's whole step against its detector alone (outputs summed, no matching or losses)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "saco"
        write_dataset("saco", root, seed=1, num=60, negatives_per_image=3)  # as the demo recipe's data
        first = "demo-student" if args.detr_levels else args.models[0]
        dataset = ConceptDataset(root, get_config(first).image_size)
        print(
            f"{len(dataset)} datapoints over 60 images; {args.threads} threads; median of {args.steps} steps"
        )
        if args.detr_levels:
            print("demo-student, phrases_per_image 4")
            variants = {
                f"detr_level_scale {s}": Variant(_model("demo-student", detr_level_scale=s))
                for s in (1.0, 2.0)
            }
            ms = time_steps(variants, dataset, args.steps, args.batch_size)
            print(
                f"  -> the 2x level's steps take {ms['detr_level_scale 2.0'] / ms['detr_level_scale 1.0']:.2f}x as long"
            )
            return 0
        if args.optimizer:
            kinds = ("for-loop", "foreach", "fused")
            _each_model(
                args,
                dataset,
                "phrases_per_image 4",
                {k: {"implementation": k} for k in kinds},
                lambda ms: (
                    ", ".join(f"{k} {ms['for-loop'] / ms[k]:.2f}x" for k in kinds[1:])
                    + " faster than for-loop"
                ),
            )
        elif args.amp:
            _each_model(
                args,
                dataset,
                "phrases_per_image 4, fused AdamW",
                {"float32": {"implementation": "fused"}, "bf16": {"implementation": "fused", "bf16": True}},
                lambda ms: f"bf16 autocast steps take {ms['bf16'] / ms['float32']:.2f}x as long as float32",
            )
        elif args.losses:
            _each_model(
                args,
                dataset,
                "phrases_per_image 4, fused AdamW",
                {
                    "whole step": {"implementation": "fused"},
                    "detector alone": {"implementation": "fused", "losses": False},
                },
                lambda ms: (
                    f"matching and losses take {1 - ms['detector alone'] / ms['whole step']:.0%} of the step"
                ),
            )
        else:
            _each_model(
                args,
                dataset,
                "",
                {f"phrases_per_image {g}": {"phrases_per_image": g} for g in (1, 4)},
                lambda ms: (
                    f"phrases_per_image 4 steps {ms['phrases_per_image 1'] / ms['phrases_per_image 4']:.2f}x faster than 1"
                ),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
