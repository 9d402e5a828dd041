"""Student image trunks: a timm backbone plus the EfficientSAM3 adapter head.

The adapter turns the backbone's last (stride-32) stage into a feature that looks
exactly like SAM3's ViT trunk output — same channels, same grid — so SAM3's FPN
neck and detector run on it unchanged. The module returns the same kind of
output as transformers' ``Sam3ViTModel`` (a flattened ``[B, H*W, C]`` sequence),
which is what lets it replace the teacher trunk inside ``Sam3VisionModel``.

With ``ModelConfig.high_res_features`` the trunk also hands over its stride-4 and stride-8
stage maps (``hidden_states``), and ``HighResVisionModel`` adds them to the FPN levels the
detector reads (``HighResFusion`` says which goes where, and why).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput, Sam3VisionModel

from .config import ModelConfig


class StudentImageEncoder(nn.Module):
    """timm ``features_only`` backbone -> Conv1x1 -> BN -> GELU -> Conv3x3 -> resize to the teacher grid."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.patch_size = config.patch_size
        # the last stage by default; ``backbone_kwargs["out_indices"]`` may pick an earlier, finer one
        kwargs = {"out_indices": (-1,), **config.backbone_kwargs}
        num_high_res = 2 if config.high_res_features else 0
        if num_high_res:
            (trunk_stage,) = kwargs["out_indices"]
            if trunk_stage in (0, 1):
                raise ValueError(
                    f"high_res_features adds stages 0 and 1 to the trunk's stage {trunk_stage}; "
                    "pick a later trunk stage (backbone_kwargs.out_indices) or turn high_res_features off"
                )
            kwargs["out_indices"] = (0, 1, trunk_stage)
        self.backbone = timm.create_model(config.backbone, pretrained=False, features_only=True, **kwargs)
        stages = self.backbone.feature_info.module_name()
        if num_high_res and len(set(stages)) < len(stages):  # a negative index naming stage 0 or 1
            raise ValueError(
                f"high_res_features adds stages 0 and 1 to the trunk's stage {kwargs['out_indices'][-1]}, "
                f"which is one of them ({stages}); pick a later trunk stage (backbone_kwargs.out_indices) "
                "or turn high_res_features off"
            )
        #: channels of the finer stage maps ``forward`` returns as ``hidden_states`` (finest first)
        self.high_res_channels: list[int] = self.backbone.feature_info.channels()[:num_high_res]
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
        return self._features(pixel_values)[0]

    def _features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(trunk feature on the teacher grid, the finer stage maps high_res_features asks for)."""
        *finer, feature = self.backbone(pixel_values)
        feature = self.head(feature)
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        if tuple(feature.shape[-2:]) != grid:
            feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
        return feature, tuple(finer)

    def forward(self, pixel_values: torch.Tensor, **_: object) -> BaseModelOutput:
        feature, finer = self._features(pixel_values)
        return BaseModelOutput(
            last_hidden_state=feature.flatten(2).transpose(1, 2), hidden_states=finer or None
        )


class HighResFusion(nn.Module):
    """Adds the trunk's finer stage maps to the FPN levels the detector reads, one 1x1 conv per level.

    Level 0 (4x the trunk grid) takes the stride-4 map, levels 1 and 2 (2x, and 1x or 2x by
    ``ModelConfig.detr_level_scale``) the stride-8 one: levels 0-1 are what the mask decoder paints from, level 2 is all the DETR encoder (and
    so the boxes, scores and presence) sees, and a shape's corners are what tells a square from
    a circle of the same colour. The convs start at zero, so a model gains the fusion without
    changing its outputs: weights trained without it (a stage-1 export, the teacher's heads)
    load and behave as before, and fine-tuning decides how much of the finer maps to use.
    """

    #: which finer map (index into the trunk's ``hidden_states``, finest first) feeds FPN level i
    LEVEL_SOURCES = (0, 1, 1)

    def __init__(self, in_channels: list[int], fpn_dim: int):
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Conv2d(in_channels[source], fpn_dim, kernel_size=1) for source in self.LEVEL_SOURCES
        )
        for conv in self.projections:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(
        self, fpn_levels: tuple[torch.Tensor, ...], finer: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        """``fpn_levels`` finest first; each finer map is resized (bilinear) onto its level."""
        fused = list(fpn_levels)
        for level, (conv, source) in enumerate(zip(self.projections, self.LEVEL_SOURCES)):
            feature, size = finer[source], fused[level].shape[-2:]
            if feature.shape[-2:] != size:
                feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
            fused[level] = fused[level] + conv(feature)
        return tuple(fused)


class HighResVisionModel(Sam3VisionModel):
    """``Sam3VisionModel`` (trunk + FPN neck) whose FPN levels also see the trunk's finer stages.

    A subclass rather than a wrapper so that every parameter keeps its name
    (``detector.vision_encoder.backbone.*``, ``.neck.*``); only ``high_res_fusion.*`` is new.
    """

    def __init__(self, config: Sam3VisionConfig, trunk: StudentImageEncoder, fpn_dim: int):
        super().__init__(config)
        self.backbone = trunk
        self.high_res_fusion = HighResFusion(trunk.high_res_channels, fpn_dim)

    def forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> Sam3VisionEncoderOutput:
        out = super().forward(pixel_values, **kwargs)
        return Sam3VisionEncoderOutput(
            last_hidden_state=out.last_hidden_state,
            fpn_hidden_states=self.high_res_fusion(out.fpn_hidden_states, out.hidden_states),
            fpn_position_encoding=out.fpn_position_encoding,
        )
