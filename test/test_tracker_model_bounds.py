"""A long run keeps every track's memory bounded: 1000 frames, tensors held measured directly."""

from __future__ import annotations

import pytest
import torch

from efficientsam3_ros.modeling.registry import get_config
from efficientsam3_ros.modeling.tracker import TrackerModel
from efficientsam3_ros.modeling.tracker_config import TrackerConfig
from efficientsam3_ros.modeling.tracker_neck import TrackerFrame


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _frame(cfg: TrackerConfig, grid: int, idx: int, gen: torch.Generator) -> TrackerFrame:
    c = cfg.hidden_size
    return TrackerFrame(
        feat=torch.randn(1, c, grid, grid, generator=gen),
        pos=torch.randn(1, c, grid, grid, generator=gen),
        s0=torch.randn(1, c // 8, 4 * grid, 4 * grid, generator=gen),
        s1=torch.randn(1, c // 4, 2 * grid, 2 * grid, generator=gen),
        frame_idx=idx,
    )


@pytest.mark.parametrize("memory", ["perceiver", "dense"])
def test_thousand_frames_memory_is_bounded(memory: str) -> None:
    """Bytes, tensor count and memory layout stop growing once the memory is full; re-conditioning too."""
    cfg = TrackerConfig.tiny(memory)
    cfg.memory_attention_layers = 1  # the bound is about bookkeeping; one layer keeps 1000 frames fast
    torch.manual_seed(0)
    model = TrackerModel(get_config("es-ev-tiny"), cfg).eval()
    gen = torch.Generator().manual_seed(0)
    size = model.image_config.image_size
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[20:70, 30:90] = True
    full_bytes = model.memory_bytes()  # the bound for one track with full memory
    history: list[tuple[int, int, int]] = []
    with torch.inference_mode():
        track = model.new_track()
        model.condition(track, _frame(cfg, model.grid_size, 0, gen), mask)
        for idx in range(1, 1000):
            frame = _frame(cfg, model.grid_size, idx, gen)
            if idx % 100 == 0:  # periodic re-conditioning from a detection: at most max_cond_frames kept
                model.condition(track, frame, mask)
            else:
                out = model.propagate([track], frame)
                assert torch.isfinite(out.mask_logits).all()
            history.append((track.nbytes(), len(track.tensors()), len(track)))
    steady = history[cfg.max_object_pointers :]
    max_bytes = max(b for b, _, _ in history)
    assert max_bytes <= full_bytes
    assert max(b for b, _, _ in history[450:]) == max(b for b, _, _ in history[:450]) or max_bytes == full_bytes
    assert max(n for _, n, _ in steady) <= 2 * cfg.max_cond_frames + cfg.num_maskmem - 1 + cfg.max_object_pointers - 1
    assert max(f for _, _, f in history) == cfg.max_memory_frames()
    assert len(track.cond) == cfg.max_cond_frames
    # after the last re-conditioning (frame 900) every track ends in the same state as any other full memory
    assert history[-1] == history[-2]
    layout = track.gather(1000)
    assert layout.features.shape[0] == cfg.max_memory_frames()
    assert layout.pointers.shape[0] <= cfg.max_cond_frames + cfg.max_object_pointers - 1
    assert layout.pointer_offsets.max() < 1000  # nothing older than the bound survives
