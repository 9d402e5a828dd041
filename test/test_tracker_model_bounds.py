"""A long run keeps every track's memory bounded: 1000 frames, tensors held measured directly."""

from __future__ import annotations

import pytest
import torch

from efficientsam3_ros.modeling.registry import get_config
from efficientsam3_ros.modeling.tracker import TrackerModel
from efficientsam3_ros.modeling.tracker_config import TrackerConfig
from efficientsam3_ros.modeling.tracker_neck import TrackerFrame

pytestmark = pytest.mark.usefixtures("one_thread")


def _frame(cfg: TrackerConfig, grid: int, idx: int, gen: torch.Generator) -> TrackerFrame:
    c = cfg.hidden_size
    return TrackerFrame(
        feat=torch.randn(1, c, grid, grid, generator=gen),
        pos=torch.randn(1, c, grid, grid, generator=gen),
        s0=torch.randn(1, c // 8, 4 * grid, 4 * grid, generator=gen),
        s1=torch.randn(1, c // 4, 2 * grid, 2 * grid, generator=gen),
        frame_idx=idx,
    )


@pytest.mark.parametrize(
    ("memory", "num_frames", "prompt"),
    [("perceiver", 1000, False), ("dense", 250, False), ("perceiver", 300, True)],
)
def test_long_run_memory_is_bounded(memory: str, num_frames: int, prompt: bool) -> None:
    """Bytes, tensor count and memory layout stop growing once the memory is full, re-conditioning included.

    1000 frames for the Perceiver (the shipping config); the dense teacher gets 250, which
    already saturates every deque (conditioning frames fill by frame 150). A tracker that prompts
    with its previous mask also keeps one [4g, 4g] mask, which the bound must count.
    """
    cfg = TrackerConfig.tiny(memory)
    cfg.prompt_previous_mask = prompt
    cfg.memory_attention_layers = 1  # the bound is about bookkeeping; one layer keeps the run fast
    torch.manual_seed(0)
    model = TrackerModel(get_config("es-ev-tiny"), cfg).eval()
    gen = torch.Generator().manual_seed(0)
    size = model.image_config.image_size
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[20:70, 30:90] = True
    full_bytes = model.memory_bytes()  # the bound for one track with a full memory
    history: list[tuple[int, int, int]] = []
    with torch.inference_mode():
        track = model.new_track()
        model.condition(track, _frame(cfg, model.grid_size, 0, gen), mask)
        for idx in range(1, num_frames):
            frame = _frame(cfg, model.grid_size, idx, gen)
            if idx % 50 == 0:  # periodic re-conditioning from a detection
                model.condition(track, frame, mask)
            else:
                out = model.propagate([track], frame)
                assert torch.isfinite(out.mask_logits).all()
            history.append((track.nbytes(), len(track.tensors()), len(track)))
    assert max(b for b, _, _ in history) <= full_bytes
    saturated = history[cfg.max_cond_frames * 50 + cfg.max_object_pointers :]
    assert len(set(saturated)) == 1, "memory kept changing size after every deque was full"
    assert saturated[0] == (
        full_bytes,
        2 * cfg.max_cond_frames + cfg.num_maskmem - 1 + cfg.max_object_pointers - 1 + int(prompt),
        cfg.max_memory_frames(),
    )
    assert len(track.cond) == cfg.max_cond_frames
    layout = track.gather(num_frames)
    assert layout.features.shape[0] == cfg.max_memory_frames()
    assert layout.pointers.shape[0] == cfg.max_cond_frames + cfg.max_object_pointers - 1
    # only the latest max_cond_frames conditioning frames survive (every 50th frame)
    assert layout.pointer_offsets.max() <= 50 * cfg.max_cond_frames


def test_reconditioned_every_frame_reads_its_recent_frames_within_the_bound() -> None:
    """The pipeline with the demo's memory_tracking (recondition_every: 1) propagates a track and
    then conditions it on the same frame, so every memory frame is a conditioning frame. SAM3 still
    reads the ones pushed out of the latest max_cond_frames as recent frames and pointers; the
    memory they take stays within the bound, which they fill exactly."""
    cfg = TrackerConfig.tiny("perceiver")
    cfg.prompt_previous_mask = True  # as the demo tracker
    cfg.memory_attention_layers = 1
    torch.manual_seed(0)
    model = TrackerModel(get_config("es-ev-tiny"), cfg).eval()
    gen = torch.Generator().manual_seed(0)
    size = model.image_config.image_size
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[20:70, 30:90] = True
    bound = model.memory_bytes()
    # the frames max_cond_frames + 1 .. num_maskmem - 1 back are read as recent: row = offset - 1
    recent_rows = [offset - 1 for offset in range(cfg.num_maskmem - 1, cfg.max_cond_frames, -1)]
    offsets = [float(o) for o in range(1, cfg.max_object_pointers)]  # a pointer for every frame back
    with torch.inference_mode():
        track = model.new_track()
        for idx in range(100):
            frame = _frame(cfg, model.grid_size, idx, gen)
            if idx:
                model.propagate([track], frame)
            model.condition(track, frame, mask)
            assert track.nbytes() <= bound
            if idx + 1 >= cfg.max_cond_frames + cfg.max_object_pointers - 1:  # every deque full
                assert track.nbytes() == bound
            if idx + 1 < cfg.max_object_pointers:
                continue
            layout = track.gather(idx + 1)
            assert layout.tpos_index.tolist() == [cfg.num_maskmem - 1] * cfg.max_cond_frames + recent_rows
            assert sorted(layout.pointer_offsets.tolist()) == offsets
