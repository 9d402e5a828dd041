"""``efficientsam3 models [list|info NAME|download NAME|verify PATH|set-point PATH]``: the model zoo.

The work lives in ``efficientsam3_ros.zoo`` and ``modeling.checkpoint``; heavy imports happen
inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli import add_operating_point_arguments

if TYPE_CHECKING:
    from ..modeling.config import ModelConfig


def _cli_error(message: str) -> Exception:
    from ..cli import CliError

    return CliError(message)


# ----------------------------------------------------------------------------------- models
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="list only the tiny test configs")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    p = sub.add_parser("list", help="zoo models and registered architectures with parameter counts")
    p.add_argument("--tiny", action="store_true", help="list only the tiny test configs")
    p = sub.add_parser("info", help="source, format, size, digest and licence of one model")
    p.add_argument("name")
    p = sub.add_parser("download", help="download a zoo model into the Hugging Face cache (with progress)")
    p.add_argument("name")
    p = sub.add_parser(
        "verify", help="check a checkpoint file or HF directory: integrity, sha256, key mapping"
    )
    p.add_argument("path", type=Path)
    p.add_argument("--model", default=None, help="architecture to check against (default: from the file)")
    p.add_argument("--quick", action="store_true", help="skip the full CRC pass over torch zip files")
    p = sub.add_parser(
        "set-point",
        help="write a copy of a model file with another operating point (e.g. one sweep-thresholds chose)",
    )
    p.add_argument("path", type=Path, help="a model file this package wrote (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="where to write it (may be PATH itself)")
    add_operating_point_arguments(p)
    p.add_argument(
        "--crop-masks-to-boxes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clear each mask outside its own box (default: unchanged)",
    )


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "models_command", None) or "list"
    from ..modeling.checkpoint_files import CheckpointError
    from ..zoo import ZooError

    try:
        if action == "list":
            return _list(tiny=bool(getattr(args, "tiny", False)))
        if action == "info":
            return _info(args.name)
        if action == "download":
            return _download(args.name)
        if action == "verify":
            return _verify(args.path, args.model, full=not args.quick)
        if action == "set-point":
            return _set_point(args)
    except (ZooError, CheckpointError, ValueError) as err:
        raise _cli_error(str(err)) from None
    raise _cli_error(f"unknown action {action!r}")


def _list(tiny: bool) -> int:
    from ..modeling import count_parameters, get_config, list_models
    from ..zoo import find_local, load_zoo

    if not tiny:
        zoo = load_zoo()
        print(f"{'zoo model':<20}{'format':<10}{'params M':>9}  {'local':<6}source")
        for entry in zoo.values():
            params = f"{entry.params / 1e6:.1f}" if entry.params else "-"
            local = "yes" if find_local(entry) is not None else "no"
            print(f"{entry.name:<20}{entry.format:<10}{params:>9}  {local:<6}{entry.source_text}")
        print()
    header = ("architecture", "backbone", "text", "backbone M", "trunk+adapter M", "total M")
    print(f"{header[0]:<24}{header[1]:<18}{header[2]:<12}{header[3]:>11}{header[4]:>17}{header[5]:>10}")
    for name in list_models():
        if tiny and "tiny" not in name:
            continue
        cfg = get_config(name)
        counts = count_parameters(name)
        backbone = cfg.backbone if cfg.is_student else "SAM3 ViT"
        print(
            f"{name:<24}{backbone:<18}{cfg.text_encoder:<12}{counts['backbone'] / 1e6:>11.2f}"
            f"{counts['trunk'] / 1e6:>17.2f}{counts['total'] / 1e6:>10.2f}"
        )
    return 0


def _info(name: str) -> int:
    from ..modeling import get_config, list_models
    from ..zoo import find_local, load_zoo, manual_path

    zoo = load_zoo()
    if name in zoo:
        e = zoo[name]
        local = find_local(e)
        rows = [
            ("name", e.name),
            ("description", e.description),
            ("format", e.format),
            ("source", f"huggingface.co/{e.source_text}" if e.hub_repo else e.source_text),
            ("revision", e.revision or "main"),
            ("architecture", e.architecture or "from the repo's config.json"),
            ("overrides", json.dumps(e.overrides) if e.overrides else "-"),
            ("params", f"{e.params:,}" if e.params else "-"),
            ("size", e.size or "-"),
            ("sha256", e.sha256 or "not recorded"),
            ("gated", "yes" if e.gated else "no"),
            ("license", e.license),
            ("local copy", str(local) if local else "none"),
            ("place by hand at", str(manual_path(e))),
        ]
        for key, value in rows:
            print(f"{key + ':':<18}{value}")
        return 0
    if name in list_models():
        print(json.dumps(get_config(name).to_dict(), indent=2))
        return 0
    raise _cli_error(f"unknown model {name!r}; see `efficientsam3 models list`")


def _download(name: str) -> int:
    from ..zoo import download, get_entry, sha256_file

    entry = get_entry(name)
    path = download(entry)
    print(path)
    if path.is_file():
        # download() has checked a recorded digest (or remembered that it passed): no second hash
        digest = entry.sha256 or sha256_file(path)
        status = "matches the zoo" if entry.sha256 else "not recorded in the zoo yet"
        print(f"sha256 {digest} ({status})")
    return 0


def _verify(path: Path, model_name: str | None, full: bool) -> int:
    import torch

    from ..modeling.checkpoint import plan_checkpoint
    from ..modeling.checkpoint_files import open_checkpoint
    from ..modeling.efficientsam3 import EfficientSam3Model
    from ..zoo import load_zoo, sha256_file

    ckpt = open_checkpoint(path, full_check=full)  # raises on truncation / corruption / unsafe pickle
    print(f"{path}: readable {ckpt.kind} checkpoint, {len(ckpt.shapes)} tensors")
    if path.is_file():
        digest = sha256_file(path)
        known = [e.name for e in load_zoo().values() if e.sha256 == digest]
        print(f"sha256 {digest}" + (f" (zoo: {', '.join(known)})" if known else ""))
        same_name = [e for e in load_zoo().values() if e.file_name == path.name and e.sha256]
        if same_name and not known:
            raise _cli_error(
                f"{path.name}: sha256 differs from the zoo's {same_name[0].sha256} ({same_name[0].name})"
            )
    config = _architecture(path, model_name)
    with torch.device("meta"):  # names and shapes only: no weights allocated
        model = EfficientSam3Model(config)
    fmt, plan = plan_checkpoint(model, ckpt)
    print(
        f"format {fmt}; architecture {config.name}: {len(plan.assignments)} entries mapped, {len(plan.unused)} keys intentionally unused"
    )
    reasons: dict[str, int] = {}
    for reason in plan.unused.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        print(f"  unused x{count}: {reason}")
    if not plan.ok:
        print(plan.problems(), file=sys.stderr)
        return 1
    print("OK: the checkpoint fills every parameter and buffer")
    return 0


_POINT_FIELDS = ("score_threshold", "new_track_threshold", "mask_threshold", "crop_masks_to_boxes")


def _set_point(args: argparse.Namespace) -> int:
    from ..modeling.checkpoint import set_operating_point

    changes = {name: getattr(args, name) for name in _POINT_FIELDS if getattr(args, name) is not None}
    if not changes:
        raise _cli_error(
            "nothing to change: give at least one of --score-threshold, --new-track-threshold, "
            "--mask-threshold, --[no-]crop-masks-to-boxes"
        )
    old, new = set_operating_point(args.path, args.out, **changes)
    for name in _POINT_FIELDS:
        before, after = getattr(old.operating_point, name), getattr(new.operating_point, name)
        print(f"{name:<22}{before}" + (f" -> {after}" if before != after else ""))
    print(f"wrote {args.out} (weights unchanged)")
    return 0


def _architecture(path: Path, model_name: str | None) -> ModelConfig:
    """The config ``path`` is checked against: ``--model`` as resolve_model reads a name, else the file's own.

    A zoo name comes first (its architecture plus overrides, or an HF directory's config.json),
    then a registry name, so every name ``segment`` takes can be verified.
    """
    from ..modeling.checkpoint import sidecar_path
    from ..modeling.registry import get_config, list_models
    from ..zoo import config_for_path, load_zoo
    from ..zoo.resolve import as_stored, entry_config

    if model_name is None:
        try:
            return config_for_path(path)
        except ValueError as err:  # stored config: not JSON, or not a ModelConfig
            raise _cli_error(
                f"{path}: its stored model config (safetensors metadata or {sidecar_path(path).name}) "
                f"is invalid: {err}; fix it, or name the architecture with --model"
            ) from None
    zoo = load_zoo()
    if model_name in zoo:
        entry = zoo[model_name]
        if entry.format == "hf" and not path.is_dir():  # its architecture is the directory's config.json
            raise _cli_error(
                f"{model_name} is an HF-format model: verify its directory (config.json + *.safetensors), "
                f"not the file {path}"
            )
        return as_stored(path, entry_config(entry, path), entry.architecture)
    try:
        return as_stored(path, get_config(model_name))
    except KeyError:
        raise _cli_error(
            f"unknown model {model_name!r}: not a zoo name ({', '.join(zoo) or 'none'}) "
            f"or a registry name ({', '.join(list_models())}); see `efficientsam3 models list`"
        ) from None
