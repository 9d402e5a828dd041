"""Runtime benchmark: where a CPU frame's time goes, and what the backends and batching buy.

    python bench/runtime.py            # es-ev-s, es-rv-s, es-tv-s at 1008 and 504 (~10 min, 2 cores)
    python bench/runtime.py --quick    # es-ev-s only, fewer repeats (~3 min)

Prints, in one run:
1. image encoder + neck latency, torch-cpu vs onnxruntime-cpu, median of repeats, and the ratio;
2. each student's trunk (+ adapter) FLOPs as a fraction of the SAM3 teacher's ViT trunk
   (torch.utils.flop_counter on the meta device: no weights allocated);
3. detector latency for 4 concepts batched in one call vs 4 separate calls (at 504);
4. whole-frame latency (image encoder + 4-concept detector, onnxruntime-cpu) at 504 vs 1008;
5. what the exported graphs skip compared with the model API (same results, less work).
Weights are random (latency does not depend on them). Numbers are ratios to read, not tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.runtime.export import export_graph
from efficientsam3_ros.runtime.graphs import get_graph

from timing import median_ms

STUDENTS = ("es-ev-s", "es-rv-s", "es-tv-s")
SIZES = (1008, 504)
CONCEPTS = ["person", "red mug", "chair", "door handle"]


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def trunk_gmacs(name: str, size: int) -> float:
    """Multiply-accumulates of the trunk (+ student adapter), counted on the meta device."""
    model = build_model(name, input_size=size, device="meta")
    pixels = torch.zeros(1, 3, size, size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model.trunk_features(pixels)
    return counter.get_total_flops() / 2e9


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n## {title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |")
    sys.stdout.flush()


def bench_image_encoders(students: tuple[str, ...], repeats: int, tmp: Path, threads: int) -> list[list[str]]:
    rows = []
    for name in students:
        for size in SIZES:
            torch.manual_seed(0)
            model = build_model(name, input_size=size)
            graph = get_graph("image_encoder").build(model).eval()
            pixels = torch.rand(1, 3, size, size) * 2 - 1
            with torch.inference_mode():
                t_torch = median_ms(lambda g=graph, p=pixels: g(p), repeats)
            path = export_graph(get_graph("image_encoder"), model, tmp / f"{name}-{size}-image.onnx")
            sess = session(path, threads)
            feed = {"pixels": pixels.numpy()}
            t_ort = median_ms(lambda s=sess, f=feed: s.run(None, f), repeats)
            rows.append([name, str(size), f"{t_torch:.0f}", f"{t_ort:.0f}", f"{t_torch / t_ort:.2f}"])
            print(f"  {name} @ {size}: torch {t_torch:.0f} ms, onnxruntime {t_ort:.0f} ms", file=sys.stderr)
            del model, graph, sess
    return rows


def bench_flops(students: tuple[str, ...]) -> list[list[str]]:
    teacher = trunk_gmacs("sam3", 1008)
    rows = [["sam3 (teacher ViT)", f"{teacher:.0f}", "100 %"]]
    for name in students:
        g = trunk_gmacs(name, 1008)
        rows.append([name, f"{g:.1f}", f"{100 * g / teacher:.2f} %"])
    return rows


def bench_detector(size: int, repeats: int, tmp: Path, threads: int) -> tuple[list, list, float]:
    """4 concepts batched vs separate on es-ev-s (the detector heads are the same for every student).

    Also returns the onnxruntime whole-frame time at this size (sessions are already open).
    """
    torch.manual_seed(0)
    model = build_model("es-ev-s", input_size=size)
    pixels = torch.rand(1, 3, size, size) * 2 - 1
    ids, mask = model.tokenize(CONCEPTS)
    image = get_graph("image_encoder").build(model).eval()
    detector = get_graph("detector").build(model).eval()
    det_rows, skip_rows = [], []
    with torch.inference_mode():
        fpn = image(pixels)[:3]  # fpn_0..2; the 4th output is the trunk (memory tracker input)
        embeds = model.encode_tokens(ids, mask)
        t_b = median_ms(lambda: detector(*fpn, embeds, mask), repeats)
        t_s = median_ms(
            lambda: [detector(*fpn, embeds[i : i + 1], mask[i : i + 1]) for i in range(4)], repeats
        )
        det_rows.append(["torch-cpu", str(size), f"{t_b:.0f}", f"{t_s:.0f}", f"{t_s / t_b:.2f}"])
        # The graphs vs the model API: same outputs, less work.
        feats = model.encode_image(pixels)
        concepts = model.encode_concepts(CONCEPTS)
        t_api_img = median_ms(lambda: model.encode_image(pixels), repeats)
        t_graph_img = median_ms(lambda: image(pixels), repeats)
        t_api_det = median_ms(lambda: model.detect(feats, concepts), repeats)
    skip_rows += [
        [
            "image encoder: 4 FPN levels + 4 pos. encodings -> 3 levels",
            str(size),
            f"{t_api_img:.0f}",
            f"{t_graph_img:.0f}",
        ],
        [
            "detector x4: all-layer scoring + semantic head -> last layer",
            str(size),
            f"{t_api_det:.0f}",
            f"{t_b:.0f}",
        ],
    ]
    print(f"  detector torch @ {size}: batched {t_b:.0f} ms, 4 calls {t_s:.0f} ms", file=sys.stderr)
    s_img, s_det, feed_img = _frame_sessions(model, pixels, tmp, threads)
    f_np = s_img.run(None, feed_img)
    feeds = [
        {
            "fpn_0": f_np[0],
            "fpn_1": f_np[1],
            "fpn_2": f_np[2],
            "text_embeds": e.numpy(),
            "text_mask": m.numpy(),
        }
        for e, m in [(embeds, mask)] + [(embeds[i : i + 1], mask[i : i + 1]) for i in range(4)]
    ]
    t_b = median_ms(lambda: s_det.run(None, feeds[0]), repeats)
    t_s = median_ms(lambda: [s_det.run(None, f) for f in feeds[1:]], repeats)
    det_rows.append(["onnxruntime-cpu", str(size), f"{t_b:.0f}", f"{t_s:.0f}", f"{t_s / t_b:.2f}"])
    print(f"  detector onnxruntime @ {size}: batched {t_b:.0f} ms, 4 calls {t_s:.0f} ms", file=sys.stderr)
    return det_rows, skip_rows, _frame_ms(s_img, s_det, feed_img, feeds[0], repeats)


def _frame_sessions(model, pixels: torch.Tensor, tmp: Path, threads: int):
    size = pixels.shape[-1]
    img_path = export_graph(get_graph("image_encoder"), model, tmp / f"frame-{size}-image.onnx")
    det_path = export_graph(get_graph("detector"), model, tmp / f"frame-{size}-detector.onnx")
    return session(img_path, threads), session(det_path, threads), {"pixels": pixels.numpy()}


def _frame_ms(s_img, s_det, feed_img: dict, det_feed: dict, repeats: int, warmup: int = 1) -> float:
    def frame() -> None:
        f = s_img.run(None, feed_img)
        s_det.run(None, {**det_feed, "fpn_0": f[0], "fpn_1": f[1], "fpn_2": f[2]})

    return median_ms(frame, repeats, warmup)


def bench_frame(size: int, repeats: int, tmp: Path, threads: int) -> float:
    """Image encoder + 4-concept detector on onnxruntime-cpu, es-ev-s."""
    torch.manual_seed(0)
    model = build_model("es-ev-s", input_size=size)
    pixels = torch.rand(1, 3, size, size) * 2 - 1
    ids, mask = model.tokenize(CONCEPTS)
    with torch.inference_mode():
        embeds = model.encode_tokens(ids, mask)
    s_img, s_det, feed_img = _frame_sessions(model, pixels, tmp, threads)
    feed = {"text_embeds": embeds.numpy(), "text_mask": mask.numpy()}
    # No warm-up at 1008: one run is ~40 s on 2 cores and the first-run overhead is < 1 % of it.
    return _frame_ms(s_img, s_det, feed_img, feed, repeats, warmup=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="es-ev-s only, 2 repeats")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    students = STUDENTS[:1] if args.quick else STUDENTS
    repeats = args.repeats or (2 if args.quick else 3)
    t0 = time.perf_counter()
    print(
        f"# runtime bench: torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, "
        f"median of {repeats} runs after 1 warm-up, random weights"
    )
    print_table(
        "trunk FLOPs at 1008 (GMACs, FlopCounterMode on meta)",
        ["trunk", "GMACs", "of teacher"],
        bench_flops(STUDENTS),
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_image_encoders(students, repeats, Path(tmp), args.threads)
        print_table(
            "image encoder + neck, batch 1 (ms)",
            ["model", "input", "torch-cpu", "onnxruntime-cpu", "torch/ort"],
            rows,
        )
        det, skip, frame_504 = bench_detector(504, repeats, Path(tmp), args.threads)
        print_table(
            "detector, 4 concepts (ms): one batched call vs 4 calls of 1",
            ["backend", "input", "batched", "4 separate", "separate/batched"],
            det,
        )
        print(f"  frame onnxruntime @ 504: {frame_504:.0f} ms", file=sys.stderr)
        frame_1008 = bench_frame(1008, max(1, repeats - 1), Path(tmp), args.threads)
    print_table(
        "whole frame, es-ev-s: image encoder + detector with 4 concepts, onnxruntime-cpu (ms)",
        ["input", "frame", "vs 1008"],
        [["504", f"{frame_504:.0f}", f"{frame_504 / frame_1008:.2f}"], ["1008", f"{frame_1008:.0f}", "1.00"]],
    )
    print_table(
        "graphs vs model API, torch-cpu (ms, identical outputs)",
        ["part", "input", "model API", "graph"],
        skip,
    )
    print(f"\ntotal bench time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
