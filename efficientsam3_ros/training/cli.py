"""``efficientsam3-train STAGE --config FILE [--resume auto|PATH | --start-over] [key=value ...]``.

Runs one training stage as a single process or under torchrun (every rank runs this
same command; see training/launch/). Exit codes: 0 done (or stopped at
``run.stop_at_step``), 2 bad config / data / checkpoint (the message says which key or
file), among them a fresh start in a ``run.output_dir`` holding checkpoints (``--resume
auto`` or ``--start-over``) and a resume under a changed config (``--allow-config-change
KEY[,KEY]`` names the optimizer settings it may change).
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from ..modeling.checkpoint_files import CheckpointError as WeightsError
from .checkpointing import CheckpointError
from .config import STAGES, ConfigError, load_config
from .data.common import DataError
from .feature_cache import CacheError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientsam3-train",
        description="Train EfficientSAM3: stage1-image (encoder distillation), stage1-text (MobileCLIP text), "
        "stage2 (Perceiver memory), stage3 (end-to-end concept fine-tuning).",
        epilog="example: efficientsam3-train stage1-image --config training/configs/stage1_image_es-ev-s.yaml "
        "run.output_dir=runs/ev-s optim.lr=3e-4 --resume auto",
    )
    parser.add_argument("stage", choices=STAGES, help="which stage to run")
    parser.add_argument("--config", required=True, help="YAML recipe (training/configs/*.yaml)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        default=None,
        help="'auto': continue from the newest checkpoint in run.output_dir (fresh start if none); or a checkpoint path",
    )
    start.add_argument(
        "--start-over",
        action="store_true",
        help="start at step 0 in a run.output_dir that holds an earlier run's checkpoints (refused without "
        "it): that run's checkpoints, metrics, tensorboard logs, export and config move to "
        "OUTPUT_DIR/abandoned/N/ first; nothing is deleted",
    )
    parser.add_argument(
        "--allow-config-change",
        action="append",
        default=[],
        metavar="KEY[,KEY]",
        help="with --resume: let these optimizer settings differ from the checkpoint's config and train "
        "with the new values from the resumed step (e.g. optim.lr after a rollback past a loss spike); "
        "other keys are refused, naming the ones allowed",
    )
    parser.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4"
    )
    return parser


def split_keys(values: list[str]) -> list[str]:
    """``--allow-config-change a,b --allow-config-change c`` -> [a, b, c]."""
    return [key.strip() for value in values for key in value.split(",") if key.strip()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config, args.overrides, stage=args.stage)
        if args.print_config:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        from .trainer import train

        result = train(
            config,
            resume=args.resume,
            start_over=args.start_over,
            allow_config_change=split_keys(args.allow_config_change),
        )
    # WeightsError: a start / teacher / tracker weights file that is corrupt or made for another model
    except (ConfigError, DataError, CheckpointError, WeightsError, CacheError, FileNotFoundError) as err:
        print(f"efficientsam3-train: error: {err}", file=sys.stderr)
        return 2
    if result.export_path is not None:
        print(f"done: step {result.step}, exported {result.export_path}")
    elif result.stopped_early:
        print(f"stopped at step {result.step} (run.stop_at_step); continue with --resume auto")
    return 0


if __name__ == "__main__":
    sys.exit(main())
