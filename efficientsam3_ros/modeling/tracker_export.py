"""Input/output names, static layouts and example inputs of the tracker's two per-frame graphs.

Each graph is exported for one static layout (N tracks, F memory frames, P object
pointers): TensorRT wants static shapes, and the memory layout changes only while a
track's memory fills up (its first ``max_object_pointers`` frames). The runtime declares
the graphs (``runtime/graphs.py``: ``tracker_step``, ``tracker_memory_encoder``) from
these facts and exports them with the same machinery as the detector graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tracker import TrackerModel

STEP_INPUTS = ("feat", "pos", "s0", "s1", "memory", "memory_tpos", "pointers", "pointer_offsets")
PROMPT_INPUT = "prompt_masks"  # only for trackers with TrackerConfig.prompt_previous_mask
STEP_OUTPUTS = ("mask_logits", "iou_scores", "object_score_logits", "object_pointers")
MEMORY_INPUTS = ("feat", "mask_logits", "object_score_logits")
MEMORY_OUTPUTS = ("memory_tokens",)


@dataclass(frozen=True)
class StepLayout:
    """Static shape of one tracker step: tracks batched, memory frames and pointers per track."""

    num_tracks: int
    num_memory_frames: int
    num_pointers: int


def step_input_names(model: TrackerModel) -> tuple[str, ...]:
    """The step graph's inputs for ``model``: ``prompt_masks`` last when it prompts with the previous mask."""
    return STEP_INPUTS + ((PROMPT_INPUT,) if model.config.prompt_previous_mask else ())


def steady_state_layout(model: TrackerModel, num_tracks: int, num_cond_frames: int = 1) -> StepLayout:
    """The layout every track reaches once its memory is full (conditioned ``num_cond_frames`` times)."""
    cfg = model.config
    cond = min(num_cond_frames, cfg.max_cond_frames)
    return StepLayout(num_tracks, cond + cfg.num_maskmem - 1, cond + cfg.max_object_pointers - 1)


def step_example_inputs(
    model: TrackerModel, layout: StepLayout, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the step graph for ``layout`` (shapes and dtypes are what matter)."""
    c, g, dm = model.config.hidden_size, model.grid_size, model.config.memory_dim
    n, f, p = layout.num_tracks, layout.num_memory_frames, layout.num_pointers

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    tpos = torch.arange(f, dtype=torch.int64).remainder(model.config.num_maskmem).expand(n, f).contiguous()
    offsets = torch.arange(1, p + 1, dtype=torch.float32).expand(n, p).contiguous()
    inputs = (
        rand(1, c, g, g),
        rand(1, c, g, g),
        rand(1, c // 8, 4 * g, 4 * g),
        rand(1, c // 4, 2 * g, 2 * g),
        rand(n, f, model.tokens_per_memory_frame, dm),
        tpos,
        rand(n, p, c),
        offsets,
    )
    if model.config.prompt_previous_mask:  # binary masks, as the tracker keeps them
        inputs += ((rand(n, 1, 4 * g, 4 * g) > 0.5).float(),)
    return inputs


def memory_example_inputs(
    model: TrackerModel, num_tracks: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the memory encoder graph (masks at the mask decoder's 4g output size)."""
    c, g = model.config.hidden_size, model.grid_size
    scores = torch.where(torch.arange(num_tracks) % 2 == 0, 1.0, -1.0).view(num_tracks, 1)
    return (
        torch.randn(1, c, g, g, generator=generator),
        torch.randn(num_tracks, 1, 4 * g, 4 * g, generator=generator) * 4,
        scores,
    )
