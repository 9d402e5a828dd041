"""Camera encodings: what converting a frame to RGB costs, and what the encoding costs the demo model.

1. Conversion: one sensor_msgs/Image message -> RGB (``ros.convert.msg_to_rgb``, row extraction
   included) per encoding family, OpenCV and the numpy fallback timed side by side in one run.
2. ``--score``: the demo model (CPU, its own operating point) on one held-out world sequence
   written as rgb8 and as a camera would publish it (yuyv, nv12, bayer_rggb8): the same scenes,
   so the score differences are what chroma subsampling and demosaicing cost.

    python bench/encodings.py                      # conversion only, a few seconds
    python bench/encodings.py --score --frames 60  # + the demo model, ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from efficientsam3_ros.ros import convert, pixel_formats

from timing import median_ms

FAMILIES = ("rgb8", "yuyv", "nv12", "bayer_rggb8")
SIZES = {"VGA": (480, 640), "1080p": (1080, 1920)}
SCORE_SEED = 424242  # the first held-out sequence of the model card


def camera_message(encoding: str, height: int, width: int) -> SimpleNamespace:
    """A frame of natural-looking content (smooth ramps plus noise) in ``encoding``."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    ramps = np.stack([xx * 255 // width, yy * 255 // height, 255 - xx * 255 // width], axis=-1)
    rgb = np.clip(ramps + rng.integers(-8, 9, ramps.shape), 0, 255).astype(np.uint8)
    raw = convert.rgb_to_raw(rgb, encoding)
    return SimpleNamespace(**convert.array_to_image_fields(raw, encoding))


def time_conversions(repeats: int, sizes: list[str]) -> None:
    """Print ms per frame for each family with OpenCV and with numpy, and their ratio."""
    cv2 = pixel_formats.opencv()
    print("## sensor_msgs/Image -> RGB (ms per frame, median)")
    print(f"{'size':<7}{'encoding':<14}{'OpenCV':>9}{'numpy':>9}{'numpy / OpenCV':>16}")
    real_opencv = pixel_formats.opencv
    for size in sizes:
        height, width = SIZES[size]
        for encoding in FAMILIES:
            msg = camera_message(encoding, height, width)
            fast = median_ms(lambda m=msg: convert.msg_to_rgb(m), repeats) if cv2 else float("nan")
            pixel_formats.opencv = lambda: None
            try:
                slow = median_ms(lambda m=msg: convert.msg_to_rgb(m), repeats)
            finally:
                pixel_formats.opencv = real_opencv
            # rgb8 is a view of the message's buffer either way: no conversion to compare
            ratio = f"{slow / fast:.1f}x" if cv2 and encoding != "rgb8" else "-"
            print(f"{size:<7}{encoding:<14}{fast:>9.2f}{slow:>9.2f}{ratio:>16}")
    if cv2 is None:
        print("(OpenCV is not installed: only the numpy fallback was timed)")


def score_encodings(frames: int, work: Path) -> None:
    """eval-bag with the demo model on one sequence per encoding; print the overall scores."""
    from efficientsam3_ros.bag.run import EvalConfig, evaluate_bag
    from efficientsam3_ros.commands.demo import default_model
    from efficientsam3_ros.synthetic import DEFAULT_CONCEPTS
    from efficientsam3_ros.synthetic.writers import DEFAULT_TOPIC, write_rosbag

    model, checkpoint, _ = default_model()
    print(f"\n## demo model, held-out seed {SCORE_SEED}, {frames} frames, CPU")
    print(f"{'encoding':<14}{'mask IoU':>9}{'mask AP':>9}{'IDF1':>7}{'MOTA':>7}")
    for encoding in FAMILIES:
        bag, gt = write_rosbag(work / encoding, seed=SCORE_SEED, num_frames=frames, encoding=encoding)
        outcome = evaluate_bag(
            EvalConfig(
                bag=bag,
                image_topic=DEFAULT_TOPIC,
                concepts=list(DEFAULT_CONCEPTS),
                out_dir=work / f"{encoding}-eval",
                model=model,
                checkpoint=checkpoint,
                backend="torch-cpu",
                device="cpu",
                gt=gt,
                progress=False,
            )
        )
        if outcome.error:
            raise SystemExit(f"{encoding}: {outcome.error}")
        overall = outcome.report["scores"]["overall"]
        print(
            f"{encoding:<14}{overall['mask_iou']:>9.3f}{overall['mask_ap']:>9.3f}"
            f"{overall['idf1']:>7.3f}{overall['mota']:>7.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed conversions per encoding")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--score", action="store_true", help="also score the demo model per encoding")
    parser.add_argument("--frames", type=int, default=60, help="frames of the scored sequence")
    args = parser.parse_args(argv)
    time_conversions(args.repeats, args.sizes)
    if args.score:
        with tempfile.TemporaryDirectory() as work:
            score_encodings(args.frames, Path(work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
