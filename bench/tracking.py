"""What one ``ConceptTracker.update`` costs at camera resolution, exact and with ``iou_downsample``.

Ten objects of one concept drift across a frame for ``--frames`` frames; each setting tracks the
same frames in the same process, side by side, and the ratio to the exact IoU is printed. Also
reported: how many distinct ids each setting gave, which must equal the number of objects (a
downsampled IoU that loses an object gives it a new id).

    python bench/tracking.py                    # 1280x720, 10 objects, ~10 s
    python bench/tracking.py --size 1920x1080 --objects 20
"""

from __future__ import annotations

import argparse

import numpy as np

from efficientsam3_ros.pipeline.results import Instance
from efficientsam3_ros.tracking import ConceptTracker, TrackingConfig

from timing import median_ms


def drifting_objects(height: int, width: int, objects: int, frames: int, side: int) -> list[list[Instance]]:
    """``frames`` frames of ``objects`` squares of ``side`` pixels, each moving 2 px a frame."""
    rng = np.random.default_rng(0)
    starts = rng.integers(0, [height - side, width - side - 2 * frames], size=(objects, 2))
    sequence = []
    for t in range(frames):
        frame = []
        for y, x in starts:
            mask = np.zeros((height, width), bool)
            mask[y : y + side, x + 2 * t : x + 2 * t + side] = True
            box = np.array([x + 2 * t, y, x + 2 * t + side, y + side], np.float32)
            frame.append(Instance(concept_id=0, label="object", score=0.9, box_xyxy=box, mask=mask))
        sequence.append(frame)
    return sequence


def time_update(sequence: list[list[Instance]], downsample: int) -> tuple[float, int]:
    """Median ms of an update over the sequence (after its first frame), and the ids it gave."""
    tracker = ConceptTracker(TrackingConfig(iou_downsample=downsample))
    ids: set[int] = set()
    frames = iter(sequence)

    def step() -> None:
        ids.update(i.track_id for i in tracker.update(next(frames)).instances)

    step()  # births: not what a steady frame costs
    ms = median_ms(step, repeats=len(sequence) - 1, warmup=0)
    return ms, len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the masks")
    parser.add_argument("--objects", type=int, default=10)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--side", type=int, default=60, help="object side in pixels")
    parser.add_argument("--downsample", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    sequence = drifting_objects(height, width, args.objects, args.frames, args.side)
    print(
        f"## ConceptTracker.update, {args.objects} objects at {width}x{height} (ms, median of {args.frames - 1})"
    )
    print(f"{'iou_downsample':<16}{'ms':>8}{'vs exact':>10}{'ids':>6}")
    exact = None
    for n in args.downsample:
        ms, ids = time_update(sequence, n)
        exact = ms if exact is None else exact
        print(f"{n:<16}{ms:>8.2f}{exact / ms:>9.2f}x{ids:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
