"""``efficientsam3 eval-bag``: run the segmenter over a rosbag2 and report speed and accuracy.

The lead's ``efficientsam3`` command registers :func:`add_arguments` / :func:`run` as a
sub-command; :func:`main` is the standalone entry point (the ROS ``eval_bag`` executable).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from efficientsam3_ros.bag.run import EvalConfig, evaluate_bag
from efficientsam3_ros.bag.sink import STORAGES
from efficientsam3_ros.cli import add_operating_point_arguments

DESCRIPTION = (
    "Run EfficientSAM3 over an image topic of a rosbag2 (sqlite3 or mcap) and write OUTDIR/results "
    "(a rosbag2 of ConceptInstanceArray on <image-topic>/instances), OUTDIR/report.json and "
    "OUTDIR/report.html; with --gt or --gt-topic the report adds mask IoU, COCO AP and tracking metrics."
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The image topic, the concepts and the model: what every command that runs a model over a bag takes."""
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument(
        "--concept",
        action="append",
        required=True,
        dest="concepts",
        metavar="PHRASE",
        help='text concept to segment, e.g. "red mug"; repeat for several',
    )
    parser.add_argument(
        "--model",
        default="es-ev-s",
        help="zoo or registry name, checkpoint file or HF directory (default: %(default)s)",
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default: the model's own)")
    parser.add_argument("--backend", default="auto", help="tensorrt, onnxruntime, torch or auto (default)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: best available)")
    parser.add_argument("--input-size", type=int, default=None, help="model input side in pixels")
    parser.add_argument(
        "--precision",
        choices=("fp16", "fp32"),
        default="fp16",
        help="GPU backends' precision (default: %(default)s)",
    )
    parser.add_argument(
        "--onnx-dir",
        type=Path,
        default=None,
        help="folder written by `efficientsam3 export` to run (what the node's onnx_dir runs); default: "
        "export into the cache",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="exported graphs and engines (default: ~/.cache/efficientsam3_ros)",
    )


def runtime_arguments(args: argparse.Namespace) -> dict[str, object]:
    """The options above that reach the backends (``RuntimeOptions`` fields), by name."""
    return {"precision": args.precision, "onnx_dir": args.onnx_dir, "cache_dir": args.cache_dir}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the eval-bag options to ``parser`` (a sub-command parser or a standalone one)."""
    parser.add_argument("bag", type=Path, help="rosbag2 directory, a single .db3/.mcap file, or a ROS 1 .bag")
    add_model_arguments(parser)
    parser.add_argument(
        "--memory",
        choices=("none", "perceiver", "dense"),
        default="none",
        help="propagate tracks through a memory tracker (default %(default)s; give its weights "
        "with --memory-checkpoint, else they are random)",
    )
    parser.add_argument(
        "--memory-checkpoint",
        default=None,
        metavar="FILE",
        help="trained tracker for --memory (a stage-2 export, e.g. models/demo/tracker.safetensors)",
    )
    add_operating_point_arguments(parser)
    parser.add_argument(
        "--every", type=int, default=1, metavar="N", help="process every N-th image (default 1)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, metavar="N", help="stop after N processed frames"
    )
    gt = parser.add_mutually_exclusive_group()
    gt.add_argument("--gt", type=Path, default=None, help="ground truth: COCO-style JSON keyed by stamp_ns")
    gt.add_argument("--gt-topic", default=None, help="ground truth: a ConceptInstanceArray topic in the bag")
    parser.add_argument(
        "--storage",
        choices=sorted(STORAGES),
        default=None,
        help="results bag storage (default: as the input; sqlite3 for a ROS 1 .bag)",
    )
    parser.add_argument(
        "--overlay", action="store_true", help="also write overlay images on <image-topic>/overlay"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    parser.add_argument(
        "--out", required=True, type=Path, dest="out", metavar="OUTDIR", help="output directory"
    )


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The run configuration the parsed options describe."""
    return EvalConfig(
        bag=args.bag,
        image_topic=args.image_topic,
        concepts=list(args.concepts),
        out_dir=args.out,
        model=args.model,
        checkpoint=args.checkpoint,
        backend=args.backend,
        device=args.device,
        input_size=args.input_size,
        **runtime_arguments(args),
        memory=args.memory,
        memory_checkpoint=args.memory_checkpoint,
        score_threshold=args.score_threshold,
        new_track_threshold=args.new_track_threshold,
        mask_threshold=args.mask_threshold,
        every=args.every,
        max_frames=args.max_frames,
        gt=args.gt,
        gt_topic=args.gt_topic,
        storage=args.storage,
        overlay=args.overlay,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """Run eval-bag for parsed options; returns the process exit code (0 ok, 1 stopped early, 2 usage, 130 Ctrl-C)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    outcome = evaluate_bag(config_from_args(args))
    if outcome.report_json is not None:
        frames = outcome.report.get("frames", {})
        stop = outcome.report.get("stop", {})
        print(
            f"eval-bag: {stop.get('reason')}; processed {frames.get('processed')}, skipped {frames.get('skipped')}, "
            f"failed {frames.get('failed')}; report: {outcome.report_json} and {outcome.report_html}"
            + (f"; results bag: {outcome.results_bag}" if outcome.results_bag else "")
        )
    if outcome.error:
        print(f"eval-bag: error: {outcome.error}", file=sys.stderr)
    return outcome.exit_code


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``eval_bag BAG --image-topic T --concept C --out OUTDIR``."""
    parser = argparse.ArgumentParser(prog="eval_bag", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
