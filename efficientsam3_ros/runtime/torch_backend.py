"""The torch backend: the graph wrappers run eagerly, on CUDA (FP16 autocast) or CPU.

It runs the very modules the ONNX graphs are exported from, so it is both the reference
for parity checks and the last resort that works wherever torch imports.
"""

from __future__ import annotations

import copy

import torch

from ..modeling.efficientsam3 import DetectorOutput, EfficientSam3Model
from ..modeling.memory_format import is_laid_out, relaid_copy, resolve_memory_format
from .base import (
    Backend,
    BackendUnavailable,
    ImageFeatures,
    RuntimeOptions,
    check_cuda_device,
    detector_output,
    explicit_device,
)
from .graphs import DETECTOR_GRAPHS, get_graph


class TorchBackend(Backend):
    """Eager PyTorch on ``device`` ("cpu" or "cuda[:i]")."""

    def __init__(self, model: EfficientSam3Model, options: RuntimeOptions | None = None, device: str = "cpu"):
        options = options or RuntimeOptions()
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise BackendUnavailable(f"unsupported torch device {device!r}")
        if self.device.type == "cuda":
            check_cuda_device(self.device)
            self.device = explicit_device(self.device)  # compares equal to the model's cuda:N
        self.name = f"torch-{self.device.type}"
        model_device = next(model.parameters()).device
        memory_format = resolve_memory_format(options.memory_format, model.config, self.device)
        # Never move or re-lay the caller's model: another backend in the chain may still use it
        # (and export it) as it is.
        if model_device != self.device:
            self.model = copy.deepcopy(model).to(self.device, memory_format=memory_format)
        elif is_laid_out(model, memory_format):
            self.model = model
        else:
            self.model = relaid_copy(model, memory_format)
        self.model.eval()
        self.autocast = self.device.type == "cuda" and options.precision == "fp16"
        self.graphs = {name: get_graph(name).build(self.model).eval() for name in DETECTOR_GRAPHS}

    def _ctx(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.autocast)

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        with self._ctx():
            f0, f1, f2, trunk = self.graphs["image_encoder"](pixels.to(self.device, torch.float32))
        return ImageFeatures((f0, f1, f2), trunk)

    @torch.inference_mode()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self._ctx():
            embeds = self.graphs["text_encoder"](input_ids.to(self.device), attention_mask.to(self.device))
        return embeds.float().cpu()

    @torch.inference_mode()
    def run_detector(
        self, features: ImageFeatures, embeds: torch.Tensor, mask: torch.Tensor
    ) -> DetectorOutput:
        # Features from torch-cuda's fp16 autocast are half; without autocast here (CPU, fp32) the
        # detector's float32 weights cannot take them, so a hand-over would lose the frame.
        fpn = features.to(self.device, None if self.autocast else torch.float32).fpn
        with self._ctx():
            out = self.graphs["detector"](*fpn, embeds.to(self.device), mask.to(self.device))
        return detector_output(*out)
