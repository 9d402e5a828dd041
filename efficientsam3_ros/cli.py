"""The ``efficientsam3`` command.

Each subcommand lives next to the layer it fronts and exposes ``add_arguments(parser)``
and ``run(args) -> int``; this file only lists them. Heavy imports happen inside ``run``
so that ``efficientsam3 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Collection, Sequence

# (name, help, module exposing add_arguments/run)
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("models", "the model zoo: list, info, download, verify", "efficientsam3_ros.commands.models"),
    (
        "segment",
        "segment text concepts in one image (overlay PNG + JSON)",
        "efficientsam3_ros.commands.segment",
    ),
    ("export", "export ONNX graphs / TensorRT engines with a parity check", "efficientsam3_ros.runtime.cli"),
    (
        "eval-images",
        "box-prompted mIoU / concept AP on a COCO or SA-Co dataset",
        "efficientsam3_ros.commands.eval_images",
    ),
    (
        "eval-bag",
        "replay a rosbag2 recording through the segmenter and score it",
        "efficientsam3_ros.bag.cli",
    ),
    (
        "sweep-thresholds",
        "choose score / new-track thresholds on bags with ground truth (one model pass per bag)",
        "efficientsam3_ros.bag.sweep_cli",
    ),
    (
        "demo",
        "run the whole system on a built-in synthetic world (main job)",
        "efficientsam3_ros.commands.demo",
    ),
    ("world", "write a synthetic concept-world dataset", "efficientsam3_ros.synthetic.cli"),
]


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def add_operating_point_arguments(parser: argparse.ArgumentParser, tracking: bool = True) -> None:
    """The thresholds every command that runs a model takes; each defaults to the model's own.

    A model carries its operating point (``ModelConfig.operating_point``: SAM3's 0.5 / 0.7 / 0.5
    unless it was trained to another, e.g. the demo model), so a flag left out runs it where it
    was measured. ``tracking`` adds ``--new-track-threshold`` (commands that track).
    """
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="drop instances scoring below this (default: the model's operating point, SAM3's 0.5 "
        "unless the model carries its own)",
    )
    if tracking:
        parser.add_argument(
            "--new-track-threshold",
            type=float,
            default=None,
            help="a detection starts a new track only at this score (default: the model's operating "
            "point, SAM3's new_det_thresh 0.7 unless the model carries its own)",
        )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="mask probability above which a pixel belongs to the instance (default: the model's "
        "operating point, SAM3's 0.5 unless the model carries its own)",
    )


def check_device(name: str) -> None:
    """Refuse a ``--device`` the model cannot be built on, before it loads.

    Otherwise the model loads first (seconds to minutes for a large checkpoint) and the first
    tensor put on the device ends the run in a torch traceback. The backends run on the CPU or
    on CUDA, so other torch devices (meta, mps, ...) are refused too.
    """
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CliError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise CliError(f"--device {name}: the backends run on cpu or cuda[:N], not {device.type}")
    count = torch.cuda.device_count()
    if count == 0:
        raise CliError(f"--device {name}: torch sees no CUDA device here; use --device cpu")
    if device.index is not None and device.index >= count:
        raise CliError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``load`` names the subcommands whose modules are imported.

    Each subcommand's module is imported to add its arguments, and some import torch and the
    model code (seconds). ``main`` loads only the subcommand on its command line, so
    ``efficientsam3 --help`` and ``efficientsam3 world ...`` do not pay for the others; the rest
    are listed with their one-line help. ``None`` loads every one (tests, the README check).
    """
    parser = argparse.ArgumentParser(
        prog="efficientsam3", description="EfficientSAM3 concept segmentation and tracking for robots."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text, module_name in SUBCOMMANDS:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if load is None or name in load:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on a command line: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def run_command(
    command: str, run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace
) -> int:
    """Run one subcommand; a CliError becomes one line on stderr and exit code 2.

    Shared by ``main`` and the stand-alone entry points (``python -m efficientsam3_ros.synthetic``)
    so a bad input reads the same, without a traceback, whichever door it came through.
    """
    try:
        return int(run(args) or 0)
    except CliError as err:
        print(f"efficientsam3 {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"efficientsam3 {command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    parser = build_parser(load=[command] if command else [])
    args = parser.parse_args(argv)
    return run_command(args.command, args._run, args)


if __name__ == "__main__":
    # Run the package's copy, not this __main__ module: CliError must be the class commands raise.
    from efficientsam3_ros.cli import main as package_main

    sys.exit(package_main())
