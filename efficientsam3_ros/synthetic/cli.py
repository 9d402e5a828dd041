"""``efficientsam3 world ...``: write a synthetic concept-world dataset from the command line.

Kept as an ``add_arguments(parser)`` / ``run(args)`` pair so the main CLI can register it as
a subcommand; ``python -m efficientsam3_ros.synthetic`` runs it on its own.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from efficientsam3_ros.cli import CliError, run_command
from efficientsam3_ros.ros.convert import RAW_ENCODINGS, FrameError
from efficientsam3_ros.synthetic.world import CONCEPTS, WorldConfig
from efficientsam3_ros.synthetic.writers import DEFAULT_TOPIC, KINDS, MAX_ROSBAG_FPS, write_dataset


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    return w, h


def _int_from(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``minimum``, so a seed numpy refuses or zero frames fail at parse time."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_count = _int_from(0)
_positive = _int_from(1)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _frame_rate(text: str) -> float:
    """A frame rate: 0 would divide by zero in the writers' timestamps, and above MAX_ROSBAG_FPS
    frames would share a nanosecond stamp (the evaluator keys frames by stamp)."""
    value = _finite_float(text)
    if not 0 < value <= MAX_ROSBAG_FPS:
        raise argparse.ArgumentTypeError(f"must be in (0, 1e9] frames per second, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    """A speed is a magnitude (the heading is drawn apart): a negative one sends entering objects away."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _concepts(text: str) -> tuple[str, ...]:
    items = tuple(c.strip() for c in text.split(",") if c.strip())
    if not items:
        raise argparse.ArgumentTypeError("no concept given; name at least one, e.g. 'red circle'")
    unknown = [c for c in items if c not in CONCEPTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown concepts {unknown}; known: {', '.join(CONCEPTS)}")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``world`` options to ``parser``."""
    parser.add_argument(
        "kind", choices=KINDS, help="dataset format: sa1b, sav, saco (SA-Co/COCO), coco, rosbag"
    )
    parser.add_argument("out_dir", help="output folder (a rosbag kind writes OUT/bag and OUT/gt.json)")
    parser.add_argument(
        "--seed", type=_count, default=0, help="world seed; the same seed gives identical files"
    )
    parser.add_argument(
        "--num", type=_positive, default=None, help="images (sa1b, saco, coco) or videos (sav)"
    )
    parser.add_argument("--frames", type=_positive, default=None, help="frames per video (sav, rosbag)")
    parser.add_argument(
        "--size", type=_size, default=(320, 240), metavar="WxH", help="image size, default 320x240"
    )
    parser.add_argument(
        "--concepts",
        type=_concepts,
        default=None,
        help="comma-separated target noun phrases (default: 8 concepts)",
    )
    parser.add_argument(
        "--objects", type=int, nargs=2, default=None, metavar=("MIN", "MAX"), help="target objects"
    )
    parser.add_argument(
        "--distractors", type=int, nargs=2, default=None, metavar=("MIN", "MAX"), help="distractor objects"
    )
    parser.add_argument(
        "--speed",
        type=_non_negative_float,
        default=None,
        help="mean speed, fraction of the short side per frame",
    )
    parser.add_argument("--p-enter", type=float, default=None, help="per-frame chance an object enters")
    parser.add_argument("--p-leave", type=float, default=None, help="per-frame, per-object chance it leaves")
    parser.add_argument(
        "--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="rosbag2 storage plugin"
    )
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="rosbag image topic")
    parser.add_argument(
        "--encoding",
        choices=tuple(RAW_ENCODINGS),
        default="rgb8",
        metavar="ENCODING",
        help="rosbag: sensor_msgs/Image encoding, as a camera would publish it (yuyv, nv12, "
        "bayer_rggb8, ...; default %(default)s)",
    )
    parser.add_argument(
        "--fps", type=_frame_rate, default=None, help="frame rate (rosbag stamps, SA-V duration)"
    )
    parser.add_argument(
        "--annotate-every", type=_positive, default=1, help="sav: annotate every k-th frame (SA-V uses 4)"
    )
    parser.add_argument(
        "--negatives",
        type=_count,
        default=1,
        metavar="N",
        help="saco: absent noun phrases per image, hardest first (same colour or shape as a present "
        "object; default %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> WorldConfig:
    """The WorldConfig the parsed options describe; CliError (one line, exit 2) if WorldConfig refuses them.

    WorldConfig checks the combinations argparse types cannot (an objects range with MIN > MAX,
    a size under 16 px, a probability over 1), so its ValueError is the user's error, not a bug.
    """
    try:
        return _world_config(args)
    except ValueError as err:
        raise CliError(f"bad world options: {err}") from None


def _world_config(args: argparse.Namespace) -> WorldConfig:
    cfg = WorldConfig().with_size(*args.size)
    changes = {}
    if args.concepts:
        changes["concepts"] = args.concepts
    if args.objects:
        changes["num_objects"] = tuple(args.objects)
    if args.distractors:
        changes["num_distractors"] = tuple(args.distractors)
    for name in ("speed", "p_enter", "p_leave"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return replace(cfg, **changes) if changes else cfg


def _check_bag_path(bag_dir: Path, storage: str) -> None:
    """Refuse a bag rosbags would refuse (it exists) or misread (sqlite URI characters), before writing.

    Why here: write_rosbag raises these as FileExistsError / ValueError; from the command line
    they are the user's to fix, so one line and exit code 2, not a traceback.
    """
    from efficientsam3_ros.ros.messages import sqlite_path_problem, sqlite_uri_chars_text  # ~0.3 s: lazy

    if bag_dir.exists():
        raise CliError(f"{bag_dir} exists already (a bag is never overwritten); choose another OUT_DIR")
    if storage == "sqlite3" and (problem := sqlite_path_problem(bag_dir)):
        raise CliError(
            f"cannot write a sqlite3 bag at {bag_dir}: {problem}; choose an OUT_DIR without "
            f"{sqlite_uri_chars_text()}, or pass --storage mcap"
        )


def run(args: argparse.Namespace) -> int:
    """Write the dataset the options describe; print what was written. Returns an exit status."""
    cfg = config_from_args(args)
    extra: dict = {}
    if args.kind == "rosbag":
        _check_bag_path(Path(args.out_dir) / "bag", args.storage)
        extra.update(storage=args.storage, topic=args.topic, encoding=args.encoding)
        if args.fps is not None:
            extra["fps"] = args.fps
    elif args.kind == "saco":
        extra["negatives_per_image"] = args.negatives
    elif args.kind == "sav":
        extra["annotate_every"] = args.annotate_every
        if args.fps is not None:
            extra["fps"] = args.fps
    try:
        paths = write_dataset(
            args.kind, args.out_dir, seed=args.seed, num=args.num, num_frames=args.frames, config=cfg, **extra
        )
    except FrameError as err:  # write_rosbag checks the encoding against the size before writing
        raise CliError(
            f"--encoding {args.encoding} does not fit --size {cfg.width}x{cfg.height}: {err}"
        ) from None
    except OSError as err:  # OUT_DIR is a file, not writable, the disk is full: the user's to fix
        raise CliError(f"cannot write {args.out_dir}: {err}") from None
    for p in paths:
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m efficientsam3_ros.synthetic``)."""
    parser = argparse.ArgumentParser(prog="efficientsam3 world", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_command("world", run, parser.parse_args(argv))
