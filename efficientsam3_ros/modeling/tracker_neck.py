"""The tracker's own neck over the shared trunk feature (SAM3's ``sam2_convs`` / ``tracker_neck``).

SAM3 runs one trunk per frame and two FPN necks on its output: one for the concept
detector, one for the SAM2-style heads (prompt encoder, mask decoder, memory). This
module is the second one, built from transformers' ``Sam3VisionNeck`` at the tracker's
width with the three levels the SAM heads read (4g, 2g, g; SAM3's 0.5x level is unused
by the tracker, so it is not built). It takes the trunk feature the image model already
computed, so the trunk still runs once per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput, Sam3VisionNeck

from .config import ModelConfig
from .tracker_config import TrackerConfig


@dataclass
class TrackerFrame:
    """Per-frame tracker features, computed once and shared by every track and prompt.

    ``feat``/``pos`` are the g x g level (raw, before any memory conditioning); ``s0``/``s1``
    are the 4g and 2g levels already projected by the mask decoder's ``conv_s0``/``conv_s1``
    (what SAM3 caches as high-resolution features).
    """

    feat: torch.Tensor  # [1, C, g, g]
    pos: torch.Tensor  # [1, C, g, g] sine position encoding of the g x g level
    s0: torch.Tensor  # [1, C/8, 4g, 4g]
    s1: torch.Tensor  # [1, C/4, 2g, 2g]
    frame_idx: int = 0


class TrackerNeck(nn.Module):
    """Trunk feature [B, g*g, C_trunk] -> (levels 4g, 2g, g at the tracker width, their position encodings)."""

    def __init__(self, image_config: ModelConfig, config: TrackerConfig):
        super().__init__()
        self.grid_size = image_config.grid_size
        vision = Sam3VisionConfig(
            backbone_config={
                "model_type": "sam3_vit_model",
                "hidden_size": image_config.trunk_dim,
                "patch_size": image_config.patch_size,
            },
            fpn_hidden_size=config.hidden_size,
            scale_factors=[4.0, 2.0, 1.0],
        )
        self.neck = Sam3VisionNeck(vision)

    def forward(
        self, trunk_tokens: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        batch, seq, channels = trunk_tokens.shape
        grid = self.grid_size
        if seq != grid * grid:
            raise ValueError(f"trunk feature has {seq} tokens; expected {grid}x{grid} for this input size")
        spatial = trunk_tokens.view(batch, grid, grid, channels).permute(0, 3, 1, 2)
        return self.neck(spatial)


def trunk_tokens_of(image_features: Sam3VisionEncoderOutput | torch.Tensor) -> torch.Tensor:
    """The trunk feature as [B, g*g, C] from ``EfficientSam3Model.encode_image`` output (or the tensor itself)."""
    if isinstance(image_features, torch.Tensor):
        return image_features
    if image_features.last_hidden_state is None:
        raise ValueError(
            "image features carry no trunk feature (last_hidden_state); pass encode_image()'s output"
        )
    return image_features.last_hidden_state
