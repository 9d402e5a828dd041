"""``efficientsam3 eval-images``: box-prompted mIoU or concept AP of any model on COCO / SA-Co.

The work lives in ``evaluation.images``; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cli_error(message: str) -> Exception:
    from ..cli import CliError

    return CliError(message)


# ------------------------------------------------------------------------------ eval-images
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="zoo name, registry name, checkpoint file or HF directory"
    )
    parser.add_argument("--checkpoint", default=None, help="weights for a registry/zoo --model name")
    parser.add_argument("--ann", type=Path, required=True, help="COCO / SA-Co instances JSON")
    parser.add_argument(
        "--images", type=Path, required=True, help="directory the file_name entries are relative to"
    )
    parser.add_argument(
        "--task", choices=("box", "concept"), required=True, help="box: GT-box prompts; concept: text"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON report (default: eval_images_<task>.json)"
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="model input side (default: the model's)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--score-threshold", type=float, default=0.0, help="concept task: drop detections below"
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse what would load the model and then mislead: a cut outside [0, 1], no images, no device."""
    from ..cli import check_device
    from ..config_utils import check_score_threshold

    try:
        check_score_threshold(args.score_threshold, "--score-threshold")
    except ValueError as err:
        raise _cli_error(str(err)) from None
    if args.limit is not None and args.limit < 1:  # a negative one sliced the last images off
        raise _cli_error(f"--limit must be >= 1 (images to evaluate), got {args.limit}; leave it out for all")
    check_device(args.device)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.images import EvalImagesError, evaluate_images, format_table
    from ..modeling.checkpoint_files import CheckpointError
    from ..modeling.memory_format import lay_out
    from ..zoo import ZooError, resolve_model

    check_arguments(args)
    try:
        model = resolve_model(args.model, args.checkpoint, input_size=args.input_size, device=args.device)
        lay_out(model, model.config, args.device)  # channels-last for a student on the CPU
        result = evaluate_images(
            model,
            args.ann,
            args.images,
            task=args.task,
            limit=args.limit,
            score_threshold=args.score_threshold,
        )
    except (ZooError, CheckpointError, EvalImagesError, ValueError) as err:
        raise _cli_error(str(err)) from None
    result["model"] = args.model
    out = args.out or Path(f"eval_images_{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"wrote {out}")
    return 0
