"""``efficientsam3 segment IMAGE --concept ... --out OUT.png``: one image, text concepts in.

Writes the overlay PNG and, beside it, ``OUT.json`` with every instance (concept, score,
box in pixels, mask as COCO RLE).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..cli import add_operating_point_arguments, check_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="input image (PNG, JPEG, ...)")
    parser.add_argument("--concept", action="append", required=True, help="noun phrase; repeat for more")
    parser.add_argument("--model", default="es-ev-s", help="model name (see `efficientsam3 models`)")
    parser.add_argument("--checkpoint", default=None, help="weights file (.safetensors or released .pt)")
    parser.add_argument("--out", type=Path, required=True, help="overlay PNG to write; JSON goes next to it")
    parser.add_argument(
        "--input-size", type=int, default=None, help="model input side (default: the model's)"
    )
    add_operating_point_arguments(parser, tracking=False)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto | tensorrt | onnxruntime-cuda | torch-cuda | onnxruntime-cpu | torch-cpu",
    )


def load_rgb(path: Path) -> np.ndarray:
    """Read an image as RGB uint8, or raise CliError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    from ..cli import CliError

    if not path.is_file():
        raise CliError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise CliError(f"cannot read image {path}: {err}") from None


def check_overlay_path(path: Path) -> None:
    """Refuse an ``--out`` Pillow cannot write, before the model runs (it failed after, writing nothing)."""
    from PIL import Image

    from ..cli import CliError

    suffix = path.suffix.lower()
    if suffix == ".json":
        raise CliError(
            f"--out {path}: the JSON is written beside the overlay; name the overlay image, e.g. .png"
        )
    if not suffix:
        raise CliError(f"--out {path} has no image extension; use e.g. {path}.png")
    if Image.registered_extensions().get(suffix) not in Image.SAVE:
        raise CliError(f"--out {path}: Pillow writes no image format as {suffix}; use e.g. .png or .jpg")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..cli import CliError
    from ..config_utils import check_mask_threshold, check_score_threshold
    from ..modeling.checkpoint_files import CheckpointError
    from ..modeling.tokenizer import validate_phrase
    from ..pipeline import ConceptSegmenter
    from ..pipeline.overlay import draw_overlay
    from ..zoo import ZooError

    try:
        concepts = [validate_phrase(c) for c in args.concept]
        if args.mask_threshold is not None:  # before the model loads, named as the flag
            check_mask_threshold(args.mask_threshold, "--mask-threshold")
        if args.score_threshold is not None:
            check_score_threshold(args.score_threshold, "--score-threshold")
    except ValueError as err:
        raise CliError(str(err)) from None
    check_device(args.device)
    check_overlay_path(args.out)
    image = load_rgb(args.image)
    try:
        segmenter = ConceptSegmenter.from_name(
            args.model,
            args.checkpoint,
            backend=args.backend,
            device=args.device,
            input_size=args.input_size,
            score_threshold=args.score_threshold,
            mask_threshold=args.mask_threshold,
            tracking=False,
        )
    except (ZooError, CheckpointError, ValueError) as err:
        raise CliError(str(err)) from None
    segmenter.set_concepts(concepts)
    result = segmenter.process(image)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_overlay(image, result.instances)).save(args.out)
    json_path = args.out.with_suffix(".json")
    payload = {
        "image": str(args.image),
        "model": args.model,
        "image_size": list(result.image_size),
        "concepts": {str(k): v for k, v in result.concepts.items()},
        "timings_ms": result.timings_ms,
        "instances": [
            {
                "concept_id": inst.concept_id,
                "concept": inst.label,
                "score": round(inst.score, 5),
                "box_xyxy": [round(float(v), 2) for v in inst.box_xyxy],
                "mask_rle": inst.rle(),
            }
            for inst in result.instances
        ],
    }
    json_path.write_text(json.dumps(payload, indent=1))
    print(f"{len(result.instances)} instances of {len(concepts)} concept(s) -> {args.out}, {json_path}")
    return 0
