"""Stage-3 batches with and without the resized-image cache (``data.cache_mb``).

    python bench/data_loading.py                 # the demo's settings: 168 px, ungrouped and 4 phrases per image
    python bench/data_loading.py --size 336      # the 336 px finish's input
    python bench/data_loading.py --images 60 --batches 5   # quick

Loads whole batches of 12 datapoints from the real sampler over a synthetic SA-Co world, the way
the trainer does with ``data.num_workers: 0``: each sample decodes its JPEG, resizes and
normalises it, and decodes and resizes its masks. With the cache the first of these happens
once per (image, flip), so after one pass over the images only the masks are decoded. The
cached reader is warmed with one pass first (what the first few hundred steps of a demo run do),
then the two readers alternate batch by batch so that machine noise hits both alike; it prints
the median ms per batch of each and their ratio, and what the cache holds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from training_step import batches  # the stage-3 sampler's batches, as bench/training_step.py times them

from efficientsam3_ros.synthetic.writers import write_dataset
from efficientsam3_ros.training.data import ConceptDataset


def time_readers(root: Path, size: int, group: int, count: int, cache_mb: float) -> dict[str, float]:
    """Median ms per batch of the uncached and the cached reader, their batches interleaved."""
    cached = ConceptDataset(root, size, cache_mb=cache_mb)
    readers = {"no cache": ConceptDataset(root, size), f"cache_mb {cache_mb:g}": cached}
    for index in range(len(cached)):  # warm: every image once, as after the first pass of a run
        cached[index]
    streams = {label: batches(reader, 12, group, seed=1) for label, reader in readers.items()}
    times: dict[str, list[float]] = {label: [] for label in readers}
    for _ in range(count):
        for label, stream in streams.items():
            t = time.perf_counter()
            next(stream)
            times[label].append((time.perf_counter() - t) * 1e3)
    medians = {label: statistics.median(values) for label, values in times.items()}
    for label, ms in medians.items():
        print(f"  {label}: {ms:6.1f} ms/batch")
    cache = cached.resized_images
    print(f"  cache holds {cache.bytes / 2**20:.0f} MB ({len(cache)} images)")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="world images (default 300)")
    parser.add_argument("--size", type=int, default=168, help="model input (default 168, the demo's stage 3)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per reader (default 40)")
    parser.add_argument("--cache-mb", type=float, default=1200.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "saco"
        write_dataset(
            "saco", root, seed=1, num=args.images, negatives_per_image=3
        )  # as the demo recipe's data
        print(f"{args.images} images at {args.size} px; batch 12; median of {args.batches} batches")
        for group in (1, 4):
            print(f"phrases_per_image {group}")
            ms = time_readers(root, args.size, group, args.batches, args.cache_mb)
            plain, cached = ms.values()
            print(f"  -> cached batches load {plain / cached:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
