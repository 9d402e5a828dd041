"""Student image trunks: a timm backbone plus the EfficientSAM3 adapter head.

The adapter turns the backbone's last (stride-32) stage into a feature that looks
exactly like SAM3's ViT trunk output — same channels, same grid — so SAM3's FPN
neck and detector run on it unchanged. The module returns the same kind of
output as transformers' ``Sam3ViTModel`` (a flattened ``[B, H*W, C]`` sequence),
which is what lets it replace the teacher trunk inside ``Sam3VisionModel``.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from .config import ModelConfig


class StudentImageEncoder(nn.Module):
    """timm ``features_only`` backbone -> Conv1x1 -> BN -> GELU -> Conv3x3 -> resize to the teacher grid."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.patch_size = config.patch_size
        # the last stage by default; ``backbone_kwargs["out_indices"]`` may pick an earlier, finer one
        kwargs = {"out_indices": (-1,), **config.backbone_kwargs}
        self.backbone = timm.create_model(config.backbone, pretrained=False, features_only=True, **kwargs)
        in_channels = self.backbone.feature_info.channels()[-1]
        out_channels = config.trunk_dim
        # Indices 0/1/3 match the released checkpoints' ``head.{0,1,3}`` keys (2 is the activation).
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )

    def trunk_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The distillation target's counterpart: ``[B, C, H/patch, W/patch]``."""
        feature = self.backbone(pixel_values)[-1]
        feature = self.head(feature)
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        if tuple(feature.shape[-2:]) != grid:
            feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
        return feature

    def forward(self, pixel_values: torch.Tensor, **_: object) -> BaseModelOutput:
        feature = self.trunk_features(pixel_values)
        return BaseModelOutput(last_hidden_state=feature.flatten(2).transpose(1, 2))
