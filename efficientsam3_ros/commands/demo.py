"""``efficientsam3 demo``: the whole system on a built-in world, no camera, ROS or download.

It writes a held-out synthetic-world rosbag2 (with exact ground truth), replays it through
``eval-bag`` with the demo model on the CPU, and turns the overlay topic of the results bag
into an animated GIF. Everything it shows comes from the same code paths a robot uses.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..cli import add_operating_point_arguments

DEMO_SEED = 90210  # held out: the demo model's training recipe never uses this seed


def demo_dir() -> Path:
    """The shipped demo model's folder: ``models/demo`` of the source tree, or the colcon-installed copy."""
    from ..zoo.manifest import shipped_path

    return shipped_path("demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("efficientsam3_demo"), help="output folder")
    parser.add_argument("--frames", type=int, default=60, help="frames in the held-out world sequence")
    parser.add_argument(
        "--model", default=None, help="model name or checkpoint (default: the shipped demo model)"
    )
    parser.add_argument("--checkpoint", default=None, help="weights for --model")
    parser.add_argument(
        "--memory",
        choices=("none", "perceiver"),
        default="none",
        help="track through the Perceiver memory tracker (default %(default)s: tracks follow their last "
        "mask); the shipped demo tracker is used unless --memory-checkpoint names another",
    )
    parser.add_argument("--memory-checkpoint", default=None, help="tracker weights for --memory perceiver")
    add_operating_point_arguments(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the world/ and eval/ folders in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_model() -> tuple[str, str | None, str]:
    """(model, checkpoint, note): the shipped demo model if present, else the tiny random one."""
    weights = demo_dir() / "model.safetensors"
    if weights.is_file():
        return str(weights), None, f"demo model {weights}"
    return (
        "es-ev-tiny",
        None,
        "no trained demo model found: using RANDOM tiny weights (scores will be near zero)",
    )


def run(args: argparse.Namespace) -> int:
    from ..bag.run import EvalConfig, evaluate_bag
    from ..cli import CliError
    from ..synthetic import DEFAULT_CONCEPTS, WorldConfig
    from ..synthetic.writers import DEFAULT_TOPIC, write_rosbag

    if args.frames < 2:
        raise CliError(f"--frames must be at least 2, got {args.frames}")
    world_dir, eval_dir = args.out / "world", args.out / "eval"
    for folder in (world_dir, eval_dir):
        if folder.exists():
            if not args.overwrite:
                raise CliError(f"{folder} already exists; pass --overwrite or choose another --out")
            shutil.rmtree(folder)
    if args.model:
        model, checkpoint, note = args.model, args.checkpoint, f"model {args.model}"
    else:
        model, checkpoint, note = default_model()
    memory_checkpoint = args.memory_checkpoint
    if args.memory != "none" and memory_checkpoint is None:
        tracker = demo_dir() / "tracker.safetensors"
        if args.model or not tracker.is_file():
            raise CliError(
                f"--memory {args.memory} needs trained tracker weights: pass --memory-checkpoint "
                "(a stage-2 export for this model)"
            )
        memory_checkpoint = str(tracker)
    print(f"[demo] {note}" + (f"; memory tracker {memory_checkpoint}" if memory_checkpoint else ""))
    print(f"[demo] writing a held-out world sequence ({args.frames} frames, seed {DEMO_SEED}) ...")
    bag_dir, gt_json = write_rosbag(world_dir, seed=DEMO_SEED, num_frames=args.frames, config=WorldConfig())
    config = EvalConfig(
        bag=bag_dir,
        image_topic=DEFAULT_TOPIC,
        concepts=list(DEFAULT_CONCEPTS),
        out_dir=eval_dir,
        model=model,
        checkpoint=checkpoint,
        backend="torch-cpu",
        device="cpu",
        memory=args.memory,
        memory_checkpoint=memory_checkpoint,
        score_threshold=args.score_threshold,
        new_track_threshold=args.new_track_threshold,
        mask_threshold=args.mask_threshold,
        gt=gt_json,
        overlay=True,
        progress=not args.no_progress,
    )
    outcome = evaluate_bag(config)
    if outcome.error:
        raise CliError(outcome.error)
    gif = args.out / "overlay.gif"
    frames = overlay_gif(outcome.results_bag, f"{DEFAULT_TOPIC}/overlay", gif, sheet=args.out / "overlay.png")
    print_summary(outcome.report, gif, frames, outcome)
    return outcome.exit_code


def overlay_gif(
    results_bag: Path, topic: str, out: Path, fps: float = 10.0, sheet: Path | None = None, tiles: int = 4
) -> int:
    """Animated GIF of the overlay images in the results bag; returns the frame count.

    ``sheet``: also a still PNG of ``tiles`` evenly spaced frames side by side (2 x 2), for
    places a GIF does not go (issue trackers, the README's picture).
    """
    from PIL import Image
    from rosbags.highlevel import AnyReader

    from ..ros import messages

    images = []
    with AnyReader([Path(results_bag)], default_typestore=messages.get_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for conn, _, raw in reader.messages(connections=conns):
            images.append(Image.fromarray(messages.msg_to_rgb(reader.deserialize(raw, conn.msgtype))))
    if images:
        images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        if sheet is not None:
            contact_sheet(images, tiles).save(sheet)
    return len(images)


def contact_sheet(images: list, tiles: int = 4, columns: int = 2):
    """``tiles`` evenly spaced images (the last one included) on a grid, ``columns`` wide."""
    from PIL import Image

    count = min(tiles, len(images))
    picks = [images[round(i * (len(images) - 1) / max(count - 1, 1))] for i in range(count)]
    width, height = picks[0].size
    rows = -(-count // columns)
    sheet = Image.new("RGB", (width * min(columns, count), height * rows))
    for i, image in enumerate(picks):
        sheet.paste(image, ((i % columns) * width, (i // columns) * height))
    return sheet


def print_summary(report: dict, gif: Path, gif_frames: int, outcome) -> None:
    frames = report.get("frames", {})
    print("\n[demo] summary")
    print(f"  frames processed     {frames.get('processed', '?')} (failed {frames.get('failed', 0)})")
    backend = report.get("backend", {})
    print(f"  backend              {backend.get('backend', '?')}")
    run = report.get("run", {})
    print(f"  track memory         {run.get('memory', 'none')}")
    crop = ", masks cropped to their boxes" if run.get("crop_masks_to_boxes") else ""
    print(
        f"  thresholds           score {run.get('score_threshold')}, new track {run.get('new_track_threshold')}, "
        f"mask {run.get('mask_threshold')}" + crop
    )
    scores = report.get("scores") or {}
    ious, coco, tracking = scores.get("mask_iou", {}), scores.get("coco", {}), scores.get("tracking", {})
    print(f"  {'concept':<16}{'GT inst':>8}{'mean IoU':>10}{'mask AP':>9}{'IDF1':>7}{'MOTA':>7}")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for concept, iou in ious.items():
        if not iou.get("gt_instances"):
            continue
        ap = coco.get(concept, {}).get("AP")
        trk = tracking.get(concept, {})
        print(
            f"  {concept:<16}{iou['gt_instances']:>8}{fmt(iou.get('mean_iou')):>10}{fmt(ap):>9}"
            f"{fmt(trk.get('idf1')):>7}{fmt(trk.get('mota')):>7}"
        )
    overall = scores.get("overall") or {}
    if overall.get("gt_instances"):
        print(
            f"  {'all concepts':<16}{overall['gt_instances']:>8}{fmt(overall.get('mask_iou')):>10}"
            f"{fmt(overall.get('mask_ap')):>9}{fmt(overall.get('idf1')):>7}{fmt(overall.get('mota')):>7}"
        )
    print(f"  report               {outcome.report_html}")
    print(f"  results bag          {outcome.results_bag}")
    print(f"  overlay animation    {gif} ({gif_frames} frames; still: {gif.with_suffix('.png')})")
