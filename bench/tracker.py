"""Tracker benchmark: Perceiver vs dense memory, per-track memory and step latency at 1/8/32 tracks.

Full-size tracker dims (SAM3: 256 wide, 4 memory-attention layers, 7 memory frames,
16 pointers; Perceiver 256+256 latents, 2 layers) with random weights, on CPU. The step
is ``TrackerModel.propagate`` with every track's memory already full (steady state):
memory attention + mask decoder + memory encoder (+ Perceiver), batched over tracks.
The input size defaults to 504 px (36 x 36 grid) because a dense step at 1008 px costs
~0.5 TMAC per track, minutes on a 2-core CPU; memory sizes are printed for 1008 too.

    python bench/tracker.py --quick           # ~3 min on 2 idle-ish cores (5.5 min under heavy load)
    python bench/tracker.py --input-size 1008 --tracks 1 8
    python bench/tracker.py --device cuda --input-size 1008 --tracks 1 8 32   # on a GPU (synchronised timings)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from efficientsam3_ros.modeling.registry import get_config
from efficientsam3_ros.modeling.tracker import TrackerModel
from efficientsam3_ros.modeling.tracker_config import TrackerConfig
from efficientsam3_ros.modeling.tracker_neck import TrackerFrame

KINDS = ("perceiver", "dense")


def full_track(model: TrackerModel, frame_idx: int, gen: torch.Generator) -> object:
    """A track whose memory is full (1 conditioning frame, all recent frames and pointers), random content.

    Drawn on the CPU (one generator, the same content on every device), then moved to the model's device.
    """
    cfg = model.config
    device = next(model.parameters()).device
    track = model.new_track()
    tokens, dm, c = model.tokens_per_memory_frame, cfg.memory_dim, cfg.hidden_size

    def feats() -> torch.Tensor:
        return torch.randn(tokens, dm, generator=gen).to(device, model.memory_dtype)

    def pointer() -> torch.Tensor:
        return torch.randn(c, generator=gen).to(device)

    track.add_conditioning(frame_idx - cfg.max_object_pointers, feats(), pointer())
    for idx in range(frame_idx - cfg.max_object_pointers + 1, frame_idx):
        track.add_tracked(idx, feats(), pointer())
    return track


def random_frame(model: TrackerModel, frame_idx: int, gen: torch.Generator) -> TrackerFrame:
    c, g = model.config.hidden_size, model.grid_size
    device = next(model.parameters()).device

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    return TrackerFrame(
        feat=draw(1, c, g, g),
        pos=draw(1, c, g, g),
        s0=draw(1, c // 8, 4 * g, 4 * g),
        s1=draw(1, c // 4, 2 * g, 2 * g),
        frame_idx=frame_idx,
    )


def synchronize(model: TrackerModel) -> None:
    """Wait for the GPU's queued work, so a timing ends when the step does (a no-op on the CPU)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(model: TrackerModel, num_tracks: int, reps: int, warmup: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of one propagate() over ``num_tracks`` full-memory tracks.

    CPU time is reported too because on a shared machine wall time mostly measures other jobs' load.
    """
    gen = torch.Generator().manual_seed(0)
    frame_idx = 100
    tracks = [full_track(model, frame_idx, gen) for _ in range(num_tracks)]
    frame = random_frame(model, frame_idx, gen)
    times, cpu_times = [], []
    with torch.inference_mode():
        for i in range(warmup + reps):
            # the step appends to memory; re-fill so every rep sees the same steady-state layout
            fresh = [full_track(model, frame_idx, gen) for _ in range(num_tracks)] if i else tracks
            synchronize(model)
            start, cpu_start = time.perf_counter(), time.process_time()
            model.propagate(fresh, frame)
            synchronize(model)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    return statistics.median(times), statistics.median(cpu_times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input-size", type=int, default=504, help="model input (multiple of 14); 504 -> 36x36 grid"
    )
    parser.add_argument("--tracks", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 reps (1 at 32+ tracks), 1 warm-up at 1 track")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (float32 weights and compute)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    image = get_config("es-ev-s").with_image_size(args.input_size)
    grid = image.grid_size
    print(
        f"# tracker bench: full-size tracker, random weights, "
        f"{_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'}, "
        f"input {args.input_size} px (grid {grid}x{grid}); step = propagate() with full memory"
    )

    print("\n## memory per track (storage dtype bfloat16, as SAM3; + fp32 object pointers)")
    print("| memory | input | tokens/frame | frames held (max) | tokens/track | MiB/track |")
    print("| --- | --- | --- | --- | --- | --- |")
    sizes: dict[tuple[str, int], int] = {}
    for size in sorted({args.input_size, 1008}):
        g = size // image.patch_size
        for kind in KINDS:
            cfg = TrackerConfig(memory=kind)
            tokens = cfg.tokens_per_memory_frame(g)
            nbytes = cfg.memory_bytes_per_track(g)
            sizes[(kind, size)] = nbytes
            print(
                f"| {kind} | {size} | {tokens} | {cfg.max_memory_frames()} | {tokens * cfg.max_memory_frames()} "
                f"| {nbytes / 2**20:.2f} |"
            )
        print(
            f"| dense / perceiver | {size} | | | | {sizes[('dense', size)] / sizes[('perceiver', size)]:.1f}x |"
        )

    print(
        "\n## keys each query attends to per track in memory attention (steady state, 1 conditioning frame)"
    )
    print("| memory | input | memory frames x tokens + pointer tokens | keys/track |")
    print("| --- | --- | --- | --- |")
    for size in sorted({args.input_size, 1008}):
        g = size // image.patch_size
        for kind in KINDS:
            cfg = TrackerConfig(memory=kind)
            frames, tokens = cfg.num_maskmem, cfg.tokens_per_memory_frame(g)
            pointer_tokens = cfg.max_object_pointers * (cfg.hidden_size // cfg.memory_dim)
            print(
                f"| {kind} | {size} | {frames} x {tokens} + {pointer_tokens} | {frames * tokens + pointer_tokens} |"
            )

    print(f"\n## tracker step latency at {args.input_size} px (median seconds; dense / perceiver ratio)")
    torch.manual_seed(0)
    models = {kind: TrackerModel(image, TrackerConfig(memory=kind)).eval().to(device) for kind in KINDS}
    print(
        "| live tracks | perceiver s | dense s | dense / perceiver | perceiver ms/track | dense ms/track "
        "| perceiver CPU s | dense CPU s | CPU ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.tracks:
        if args.quick:
            reps, warmup = (3 if n < 32 else 1), (1 if n == args.tracks[0] else 0)
        else:
            reps, warmup = args.reps, 1
        t = {kind: time_step(models[kind], n, reps, warmup) for kind in KINDS}
        (pw, pc), (dw, dc) = t["perceiver"], t["dense"]
        print(
            f"| {n} | {pw:.3f} | {dw:.3f} | {dw / pw:.2f}x | {1e3 * pw / n:.0f} | {1e3 * dw / n:.0f} "
            f"| {pc:.3f} | {dc:.3f} | {dc / pc:.2f}x |",
            flush=True,
        )


def _device_name(device: torch.device) -> str:
    return f"{torch.cuda.get_device_name(device)} (fp32)"


if __name__ == "__main__":
    main()
