"""Stage-3 training step: what putting several phrases of one image in a batch buys.

    python bench/training_step.py              # demo-student and demo-teacher, 12 steps each way (~20 s, 2 cores)
    python bench/training_step.py --steps 4    # quicker, noisier

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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.synthetic.writers import write_dataset
from efficientsam3_ros.training.config import ConceptStageOptions
from efficientsam3_ros.training.data import ConceptDataset, ResumableBatchSampler
from efficientsam3_ros.training.stage3 import ConceptModule


def batches(dataset: ConceptDataset, batch_size: int, group_size: int, seed: int):
    keys = [dataset.key(i) for i in range(len(dataset))]
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, seed=seed, group_keys=keys, group_size=group_size
    )
    for refs in sampler:
        yield [dataset[ref] for ref in refs]


def time_model(
    name: str, dataset: ConceptDataset, steps: int, batch_size: int, groups: list[int]
) -> dict[int, float]:
    torch.manual_seed(0)
    module = ConceptModule(build_model(name), None, ConceptStageOptions(focal_alpha=0.5))
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    streams = {g: batches(dataset, batch_size, g, seed=1) for g in groups}
    times: dict[int, list[float]] = {g: [] for g in groups}
    images: dict[int, list[int]] = {g: [] for g in groups}
    for step in range(steps + 1):  # step 0 warms up
        for g in groups:
            batch = next(streams[g])
            t = time.perf_counter()
            loss, _ = module(batch, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:
                times[g].append((time.perf_counter() - t) * 1e3)
                images[g].append(len({s["key"] for s in batch}))
    for g in groups:
        print(
            f"  phrases_per_image {g}: {statistics.median(times[g]):7.1f} ms/step "
            f"({statistics.mean(images[g]):.1f} images per batch of {batch_size})"
        )
    return {g: statistics.median(times[g]) for g in groups}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setting (default 12)")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["demo-student", "demo-teacher"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    groups = [1, 4]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "saco"
        write_dataset("saco", root, seed=1, num=60, negatives_per_image=3)  # as the demo recipe's data
        dataset = ConceptDataset(root, build_model(args.models[0]).config.image_size)
        print(
            f"{len(dataset)} datapoints over 60 images; {args.threads} threads; median of {args.steps} steps"
        )
        for name in args.models:
            print(name)
            ms = time_model(name, dataset, args.steps, args.batch_size, groups)
            print(f"  -> phrases_per_image 4 steps {ms[1] / ms[4]:.2f}x faster than 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
