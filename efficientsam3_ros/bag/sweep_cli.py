"""``efficientsam3 sweep-thresholds``: score every (score, new-track) threshold pair on bags with ground truth.

The model runs once per bag (:mod:`efficientsam3_ros.bag.sweep`); each pair is the tracker
replayed over the stored detections. Writes OUTDIR/sweep.json, OUTDIR/sweep.md (a table, best
first) and OUTDIR/sweep.png (mask IoU and IDF1 against the score threshold), and prints the
best pairs. The model's own operating point is not changed: pass the chosen pair to eval-bag,
the node or demo, or write it into the model's config.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from efficientsam3_ros.bag.cli import add_model_arguments, runtime_arguments
from efficientsam3_ros.cli import CliError

SHOWN = 8  # rows printed; the files hold every pair


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected scores in [0, 1] (probabilities), got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from efficientsam3_ros.bag.sweep import DEFAULT_NEW_TRACK_THRESHOLDS, DEFAULT_SCORE_THRESHOLDS

    parser.add_argument(
        "--bag",
        nargs=2,
        action="append",
        required=True,
        dest="bags",
        metavar=("BAG", "GT"),
        help="a rosbag2 and its ground truth (COCO-style JSON keyed by stamp_ns, as eval-bag --gt "
        "takes); repeat for several sequences, scores are pooled over them",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="mask probability cut, fixed for the whole sweep (default: the model's own)",
    )
    for kind, default in (("score", DEFAULT_SCORE_THRESHOLDS), ("new-track", DEFAULT_NEW_TRACK_THRESHOLDS)):
        parser.add_argument(
            f"--{kind}-thresholds",
            type=_floats,
            default=list(default),
            metavar="S,S,...",
            help=f"{kind} thresholds to try (default: %(default)s)",
        )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")
    parser.add_argument("--out", required=True, type=Path, metavar="OUTDIR", help="output directory")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from efficientsam3_ros.bag.run import out_dir_problem
    from efficientsam3_ros.bag.source import BagError
    from efficientsam3_ros.bag.sweep import SweepBag, detect, sweep, threshold_pairs
    from efficientsam3_ros.config_utils import check_mask_threshold
    from efficientsam3_ros.evaluation.ground_truth import load_ground_truth

    bags = [SweepBag(Path(b), Path(g)) for b, g in args.bags]
    for bag in bags:  # before the model loads: a typo should not cost a model build
        for path, what in ((bag.bag, "bag"), (bag.gt_path, "ground truth")):
            if not path.exists():
                raise CliError(f"{what} {path} does not exist")
        try:
            bag.gt, bag.gt_labels = load_ground_truth(bag.gt_path)
        except ValueError as err:
            raise CliError(str(err)) from None
        check_image_topic(bag.bag, args.image_topic)
    if problem := out_dir_problem(args.out):
        raise CliError(problem)
    try:
        threshold_pairs(args.score_thresholds, args.new_track_thresholds)
        if args.mask_threshold is not None:
            check_mask_threshold(args.mask_threshold, "--mask-threshold")
    except ValueError as err:
        raise CliError(str(err)) from None
    args.out.mkdir(parents=True, exist_ok=True)

    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter
    from efficientsam3_ros.runtime import RuntimeOptions

    started = time.time()
    segmenter = ConceptSegmenter.from_name(
        args.model,
        checkpoint=args.checkpoint,
        backend=args.backend,
        device=args.device,
        input_size=args.input_size,
        options=RuntimeOptions(**runtime_arguments(args)),
        tracking=False,
        score_threshold=min(args.score_thresholds),
        mask_threshold=args.mask_threshold,
    )
    segmenter.set_concepts(list(args.concepts))
    point = segmenter.model.config.operating_point
    try:
        for bag in bags:
            detect(segmenter, bag, args.image_topic, progress=not args.no_progress)
    except BagError as err:  # unreadable bag, missing topic: named, with the bag's topics listed
        raise CliError(str(err)) from None
    detected = time.time()
    rows = sweep(bags, args.concepts, point, args.score_thresholds, args.new_track_thresholds)
    rows.sort(key=lambda r: -r["criterion"])
    summary: dict[str, Any] = {
        "model": args.model,
        "bags": [
            {
                "bag": str(b.bag),
                "gt": str(b.gt_path),
                "frames": len(b.frames),
                "failed": b.failed,
                "stamps_backwards": b.stamps_backwards,
            }
            for b in bags
        ],
        "concepts": list(args.concepts),
        "model_operating_point": {
            "score_threshold": point.score_threshold,
            "new_track_threshold": point.new_track_threshold,
        },
        "mask_threshold": segmenter.mask_threshold,
        "crop_masks_to_boxes": segmenter.crop_masks_to_boxes,
        "criterion": "mean of mask IoU and IDF1",
        "detect_s": round(detected - started, 1),
        "replay_s": round(time.time() - detected, 1),
        "pairs": rows,
    }
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=2))
    table = format_table(rows)
    (args.out / "sweep.md").write_text(table + "\n")
    _plot(rows, args.out / "sweep.png")
    own = (point.score_threshold, point.new_track_threshold)
    print("\n".join(table.splitlines()[: SHOWN + 2]))
    mine = [r for r in rows if (r["score_threshold"], r["new_track_threshold"]) == own]
    note = f"; the model's own pair {own[0]:g} / {own[1]:g} ranks {rows.index(mine[0]) + 1}" if mine else ""
    frames = sum(len(b.frames) for b in bags)
    print(
        f"sweep-thresholds: {len(rows)} pairs on {len(bags)} bag(s), {frames} frames "
        f"(model pass {summary['detect_s']} s, replays {summary['replay_s']} s); best "
        f"{rows[0]['score_threshold']:g} / {rows[0]['new_track_threshold']:g}{note}; "
        f"{args.out / 'sweep.md'}, sweep.json, sweep.png"
    )
    return 0


def check_image_topic(bag: Path, image_topic: str) -> None:
    """Open ``bag`` and check it has ``image_topic`` with messages on it, or raise CliError saying why
    (unreadable bag, missing topic with the bag's topics listed, empty topic): before the model loads."""
    from efficientsam3_ros.bag.source import BagError, BagSource

    try:
        with BagSource(bag) as source:
            conns = source.image_connections(image_topic)
            if not source.has_messages(conns):
                raise CliError(f"image topic {image_topic} has no messages in bag {bag}; nothing to sweep")
    except BagError as err:
        raise CliError(str(err)) from None


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, best first (rows come sorted)."""
    lines = [
        "| score | new track | mask IoU | mask AP | IDF1 | MOTA | mean(IoU, IDF1) | IDF1 / MOTA pooled by counts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        pooled = " / ".join(
            "-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("idf1_pooled", "mota_pooled")
        )
        lines.append(
            f"| {r['score_threshold']:g} | {r['new_track_threshold']:g} | {r['mask_iou']:.3f} | "
            f"{r['mask_ap']:.3f} | {r['idf1']:.3f} | {r['mota']:.3f} | {r['criterion']:.3f} | {pooled} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mask IoU and IDF1 against the score threshold, one line per new-track threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    for nt in sorted({r["new_track_threshold"] for r in rows}):
        line = sorted((r for r in rows if r["new_track_threshold"] == nt), key=lambda r: r["score_threshold"])
        xs = [r["score_threshold"] for r in line]
        for ax, key in zip(axes, ("mask_iou", "idf1")):
            ax.plot(xs, [r[key] for r in line], marker="o", label=f"new track {nt:g}")
    for ax, title in zip(axes, ("mask IoU", "IDF1")):
        ax.set_title(title)
        ax.set_xlabel("score threshold")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
