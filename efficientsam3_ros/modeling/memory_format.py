"""Which memory layout a model's 4-D weights and activations should use: channels-last or not.

Why it matters: the students' trunks (EfficientViT, RepViT, TinyViT's stem), SAM3's neck and
pixel decoder and the tracker's mask encoder are stacks of convolutions. On the CPU, oneDNN runs
convolutions in a channels-last (NHWC) layout; given PyTorch's default NCHW tensors it reorders
each input and weight on every call, forwards and backwards. With the weights channels-last the
activations follow (a convolution's output takes its weight's layout), and the reorders go. On
2 CPU cores that made the demo student's training runs and its image encoder faster, and the
SAM3-style teacher, a ViT with convolutions only around its trunk, 5 % slower (README
"Channels-last on the CPU" has the measurements), so ``auto`` is channels-last for a student on
the CPU. On CUDA it was never measured here (channels-last is a common win with fp16 on tensor
cores), so ``auto`` leaves a model as it is there.

The layout changes only where numbers sit in memory, not the maths: outputs and gradients agree
with NCHW to float rounding (the summation order inside a convolution differs), and exports are
written contiguous either way.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config_utils import check_memory_format
from .config import ModelConfig


def resolve_memory_format(
    choice: str, config: ModelConfig, device: torch.device | str, convolves_images: bool = True
) -> torch.memory_format:
    """The layout ``choice`` means for a model of ``config`` on ``device``: ``auto`` is
    channels-last for a student on the CPU and leaves a model as it is otherwise
    (``torch.preserve_format``).

    ``convolves_images`` False (a stage that trains only the text tower) makes ``auto`` leave the
    model as it is on the CPU too: then no image goes through a convolution, and nothing was measured.
    """
    check_memory_format(choice)
    if choice == "auto":
        wins = config.is_student and torch.device(device).type == "cpu" and convolves_images
        return torch.channels_last if wins else torch.preserve_format
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def lay_out(
    module: nn.Module, config: ModelConfig, device: torch.device | str, choice: str = "auto"
) -> nn.Module:
    """``module`` (a model of ``config``, or one that reads its features), re-laid in place as
    ``choice`` means on ``device``: for models the caller owns."""
    return module.to(memory_format=resolve_memory_format(choice, config, device))


def is_laid_out(module: nn.Module, memory_format: torch.memory_format) -> bool:
    """Whether every 4-D parameter and buffer of ``module`` already sits in ``memory_format``."""
    if memory_format is torch.preserve_format:
        return True
    tensors = [*module.parameters(), *module.buffers()]
    return all(t.dim() != 4 or t.is_contiguous(memory_format=memory_format) for t in tensors)


def relaid_copy(module: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """A copy of ``module`` in ``memory_format`` that shares every tensor the layout leaves alone.

    Why: an inference backend must not re-lay the caller's model (another backend may export it
    as it is), but a full copy would double the weights in memory; only the 4-D ones (the
    convolutions') are laid out anew.
    """
    memo = {id(t): t for t in [*module.parameters(), *module.buffers()] if t.dim() != 4}
    return copy.deepcopy(module, memo).to(memory_format=memory_format)
