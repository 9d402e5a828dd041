"""Which memory layout a model's 4-D weights and activations should use: channels-last or not.

Why it matters: the students' trunks (EfficientViT, RepViT, TinyViT's stem) and SAM3's neck and
pixel decoder are stacks of convolutions. On the CPU, oneDNN runs convolutions in a
channels-last (NHWC) layout; given PyTorch's default NCHW tensors it reorders each input and
weight on every call, forwards and backwards. With the weights channels-last the activations
follow (a convolution's output takes its weight's layout), and the reorders go. Measured on
2 CPU cores (README "Channels-last on the CPU"): the demo student's image encoder about 1.2x
faster at inference, its training steps 1.05-1.25x depending on the stage; the SAM3-style
teacher, a ViT with convolutions only around its trunk, about the same either way (1.01-1.10x).
On CUDA the choice is left to the user (``channels_last`` is a common win with fp16 on tensor
cores, but it was never measured here), so ``auto`` keeps PyTorch's default there.

The layout changes only where numbers sit in memory, not the maths: outputs and gradients agree
with NCHW to float rounding (the summation order inside a convolution differs), and exports are
written contiguous either way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config_utils import MEMORY_FORMATS


def check_memory_format(choice: str, key: str = "memory_format") -> str:
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"bad value for '{key}': {choice!r}; use one of {list(MEMORY_FORMATS)}")
    return choice


def resolve_memory_format(
    choice: str, device: torch.device | str, convolves_images: bool = True
) -> torch.memory_format:
    """The layout ``choice`` means on ``device``.

    ``convolves_images`` False (a stage that trains only the text tower) makes ``auto`` keep
    NCHW: then no image goes through a convolution, and nothing was measured.
    """
    check_memory_format(choice)
    if choice == "auto":
        wins = torch.device(device).type == "cpu" and convolves_images
        return torch.channels_last if wins else torch.contiguous_format
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def is_laid_out(module: nn.Module, memory_format: torch.memory_format) -> bool:
    """Whether every 4-D parameter of ``module`` already sits in ``memory_format``."""
    return all(p.dim() != 4 or p.is_contiguous(memory_format=memory_format) for p in module.parameters())
