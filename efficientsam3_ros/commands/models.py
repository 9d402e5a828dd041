"""``efficientsam3 models``: the registered model names and their sizes."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="list only the tiny test configs")


def run(args: argparse.Namespace) -> int:
    from ..modeling import count_parameters, get_config, list_models

    rows = []
    for name in list_models():
        if args.tiny and "tiny" not in name:
            continue
        cfg = get_config(name)
        counts = count_parameters(name)
        backbone = cfg.backbone if cfg.is_student else "SAM3 ViT"
        rows.append((name, backbone, cfg.text_encoder, counts["backbone"], counts["trunk"], counts["total"]))
    header = ("name", "backbone", "text", "backbone M", "trunk+adapter M", "total M")
    print(f"{header[0]:<24}{header[1]:<18}{header[2]:<12}{header[3]:>11}{header[4]:>17}{header[5]:>10}")
    for name, backbone, text, bb, trunk, total in rows:
        print(f"{name:<24}{backbone:<18}{text:<12}{bb / 1e6:>11.2f}{trunk / 1e6:>17.2f}{total / 1e6:>10.2f}")
    return 0
