"""Whole-frame latency through ``ConceptSegmenter.process``: what the node spends on one camera frame.

Preprocessing (resize + normalise), image encoder + neck, the batched detector over K concepts,
postprocessing of masks to the frame's size, and the tracker's association, for each input size,
precision and concept count, side by side in one process; the ratios are what to read. Random
weights (latency does not depend on them) and a fixed random 1280x720 frame; the score threshold
is set so that a fixed number of instances per concept survive postprocessing whatever the
weights score (``--instances``), since mask upsampling to the frame costs per instance.

    python bench/frame.py                                           # CPU, es-ev-s at 504, 1 and 4 concepts
    python bench/frame.py --device cuda --sizes 504 1008 --precision fp32 fp16 --concepts 1 4 16
    python bench/frame.py --device cuda --sizes 1008 --concepts 4 16 --host-masks   # + every mask to the host

``--host-masks`` also times each setting with every query's mask copied to the host before
postprocessing, as every backend did until 2026-12-04, and prints what keeping them on the GPU buys.

``--whole-frame-masks`` also times each setting with every kept mask upsampled to the whole frame
(then cropped), as the segmenter did until 2026-12-04, against upsampling only each mask's window
(its box when cropping, and the rows and columns its logits can reach). Random weights paint
masks anywhere, so their windows say little; ``--world`` runs the shipped demo model, at its
own operating point, on a synthetic-world video at 1280x720 instead, where masks are objects:

    python bench/frame.py --world --whole-frame-masks
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import numpy as np
import torch

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.pipeline import segmenter as segmenter_module
from efficientsam3_ros.pipeline.preprocess import masks_to_image
from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter, make_tracker
from efficientsam3_ros.runtime import RuntimeOptions, select_backend

from timing import median_ms

PHRASES = [f"object {i}" for i in range(64)]


def build(model_name: str, device: str, size: int, precision: str) -> ConceptSegmenter:
    """A segmenter as from_name builds it, on a registry model with random weights (no download)."""
    model = build_model(model_name, input_size=size).to(device)
    backend = "torch-cuda" if device.startswith("cuda") else "torch-cpu"
    chain = select_backend(backend, model, RuntimeOptions(precision=precision))
    # every kept detection starts a track, so the tracker's work follows --instances as well
    point = dataclasses.replace(model.config.operating_point, new_track_threshold=0.0)
    return ConceptSegmenter(model, backend=chain, tracker=make_tracker(True, point))


def copy_masks_to_host(seg: ConceptSegmenter) -> None:
    """Make ``seg``'s backend hand every query's mask to the host, as backends did before."""
    detect = seg.backend.detect

    def detect_then_copy(*args: object, **kwargs: object) -> object:
        out = detect(*args, **kwargs)
        return dataclasses.replace(out, pred_masks=out.pred_masks.cpu())

    seg.backend.detect = detect_then_copy  # type: ignore[method-assign]


@contextlib.contextmanager
def whole_frame_masks(on: bool = True) -> Iterator[None]:
    """Inside: every segmenter upsamples each kept mask to the whole frame, as before 2026-12-04."""
    if on:
        segmenter_module.masks_to_image = functools.partial(masks_to_image, whole_frame=True)
    try:
        yield
    finally:
        segmenter_module.masks_to_image = masks_to_image


def world_frames(count: int) -> list[np.ndarray]:
    """A held-out synthetic-world video at 1280x720 (the demo's seed; objects scale with the frame)."""
    from efficientsam3_ros.commands.demo import DEMO_SEED
    from efficientsam3_ros.synthetic import WorldConfig, render_video

    return [f.image for f in render_video(DEMO_SEED, count, WorldConfig(width=1280, height=720))]


def time_world(args: argparse.Namespace) -> None:
    """The shipped demo model through a world video: median ms a frame, windows against whole frames."""
    from efficientsam3_ros.commands.demo import demo_dir
    from efficientsam3_ros.synthetic import DEFAULT_CONCEPTS

    seg = ConceptSegmenter.from_name(
        str(demo_dir() / "model.safetensors"), backend="torch", device=args.device
    )
    seg.set_concepts(list(DEFAULT_CONCEPTS))
    frames = world_frames(args.frames)
    total: dict[str, list[float]] = {"windows": [], "whole frame": []}
    post: dict[str, list[float]] = {"windows": [], "whole frame": []}
    published = 0
    for _ in range(args.repeats):  # alternate, so a slow spell of the machine hits both
        for name, whole in (("windows", False), ("whole frame", True)):
            seg.reset()
            with whole_frame_masks(whole):
                for frame in frames:
                    result = seg.process(frame)
                    total[name].append(result.timings_ms["total"])
                    post[name].append(result.timings_ms["post"])
            published = len(result.instances)
    print(
        f"## demo model on a world video, 1280x720, {len(DEFAULT_CONCEPTS)} concepts, "
        f"{args.frames} frames x {args.repeats} rounds, {args.device} (median ms per frame)"
    )
    print(f"{'masks':<14}{'frame ms':>10}{'fps':>8}{'post ms':>10}")
    for name in total:
        ms = float(np.median(total[name]))
        print(f"{name:<14}{ms:>10.1f}{1e3 / ms:>8.1f}{float(np.median(post[name])):>10.1f}")
    ratios = [float(np.median(d["whole frame"]) / np.median(d["windows"])) for d in (total, post)]
    print(
        f"whole frame / windows: frame {ratios[0]:.2f}x, post {ratios[1]:.2f}x ({published} instances on the last frame)"
    )


def keep_instances(seg: ConceptSegmenter, frame: np.ndarray, per_concept: int) -> None:
    """Set the score threshold just under each concept's ``per_concept``-th best score on ``frame``."""
    tracker, seg.tracker, seg.score_threshold = seg.tracker, None, 0.0  # every query, untracked
    scores: dict[int, list[float]] = {}
    for inst in seg.process(frame).instances:
        scores.setdefault(inst.concept_id, []).append(inst.score)
    cut = min(sorted(s, reverse=True)[min(per_concept, len(s)) - 1] for s in scores.values())
    seg.score_threshold, seg.tracker = max(0.0, float(np.nextafter(cut, 0))), tracker


def time_frame(seg: ConceptSegmenter, frame: np.ndarray, repeats: int) -> tuple[float, int]:
    """Median ms per processed frame, and the instances the last frame published."""
    published = [0]

    def step() -> None:
        published[0] = len(seg.process(frame).instances)
        if seg.model_device.type == "cuda":
            torch.cuda.synchronize(seg.model_device)

    return median_ms(step, repeats=repeats, warmup=2), published[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="es-ev-s")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--sizes", type=int, nargs="+", default=[504])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16"])
    parser.add_argument("--concepts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--instances", type=int, default=2, help="instances kept per concept")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--host-masks", action="store_true", help="also time with every mask copied to the host"
    )
    parser.add_argument(
        "--whole-frame-masks",
        action="store_true",
        help="also time with every kept mask upsampled to the whole frame (not in windows)",
    )
    parser.add_argument(
        "--crop",
        action="store_true",
        help="crop masks to their boxes (as the demo's point does; default: the model's point)",
    )
    parser.add_argument(
        "--world",
        action="store_true",
        help="the shipped demo model on a 1280x720 world video instead, windows against whole-frame "
        "masks (only --device, --repeats and --frames apply)",
    )
    parser.add_argument("--frames", type=int, default=30, help="frames of the --world video")
    args = parser.parse_args(argv)
    if args.world:
        time_world(args)
        return 0
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    where = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    print(
        f"## ConceptSegmenter.process, {args.model}, 1280x720 frame, {where} (ms per frame, median of {args.repeats})"
    )
    header = (
        f"{'input':<7}{'precision':<11}{'concepts':>9}{'instances':>11}{'ms':>10}{'fps':>8}{'vs fp32':>9}"
    )
    extra = f"{'host masks ms':>15}{'host / device':>15}" if args.host_masks else ""
    extra += f"{'whole-frame ms':>16}{'whole / windows':>17}" if args.whole_frame_masks else ""
    print(header + extra)
    for size in args.sizes:
        for k in args.concepts:
            fp32_ms = None
            for precision in args.precision:
                seg = build(args.model, args.device, size, precision)
                seg.crop_masks_to_boxes = args.crop or seg.crop_masks_to_boxes
                seg.set_concepts(PHRASES[:k])
                keep_instances(seg, frame, args.instances)
                ms, published = time_frame(seg, frame, args.repeats)
                fp32_ms = ms if precision == "fp32" else fp32_ms
                ratio = f"{fp32_ms / ms:.2f}x" if fp32_ms else "-"
                row = f"{size:<7}{precision:<11}{k:>9}{published:>11}{ms:>10.1f}{1e3 / ms:>8.1f}{ratio:>9}"
                if args.whole_frame_masks:  # before --host-masks changes the backend for good
                    with whole_frame_masks():
                        whole_ms, _ = time_frame(seg, frame, args.repeats)
                    extra = f"{whole_ms:>16.1f}{whole_ms / ms:>16.2f}x"
                else:
                    extra = ""
                if args.host_masks:
                    copy_masks_to_host(seg)
                    host_ms, _ = time_frame(seg, frame, args.repeats)
                    row += f"{host_ms:>15.1f}{host_ms / ms:>14.2f}x"
                row += extra
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
