"""A second look at each query's box on the finest FPN level, added to its class logit.

Why: SAM3 scores a query from the DETR decoder's state, which reads only the coarsest level
(the trunk grid, stride 14 or 16). For a small student that grid is too coarse to tell a cross
from a hexagon of the same colour: on the demo world a linear probe of the stride-16 level
reads an object's shape at 0.745, the 4x level at 0.819 (models/demo/MODEL_CARD.md), and the
false tracks that keep IDF1 down are exactly such same-colour shapes. This head pools the 4x
level inside each predicted box (an RoIAlign written with ``grid_sample``: ONNX's GridSample,
which TensorRT's parser maps to its grid-sample layer, so no custom op), embeds it, and adds
its agreement with the prompt to the query's logit:

    logit += <mlp(roi(fpn_0, box)), proj(mean of the prompt's token features)> / sqrt(C)

The MLP's last layer starts at zero, so a model gains the head without changing one output
until it trains (``ModelConfig.box_scoring``; a file without it loads, see
``training.models.ZERO_START_PREFIXES``). The boxes are detached (the class loss must not move
them) and clamped to the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def roi_grid_sample(features: torch.Tensor, boxes: torch.Tensor, roi_size: int, samples: int) -> torch.Tensor:
    """RoIAlign (torchvision's ``aligned=True``, ``sampling_ratio=samples``) of B boxes per image.

    ``features`` [N, C, H, W] with N = K images (or 1, shared by all K rows of ``boxes``),
    ``boxes`` [K, B, 4] normalised xyxy inside [0, 1] -> [K, B, C * roi_size**2] (``features``' dtype).
    Each of the roi_size x roi_size bins averages samples x samples bilinear taps; a normalised
    coordinate x is grid_sample's 2x - 1 (``align_corners=False``: pixel centres at (i + 0.5) / W).
    """
    k, b, _ = boxes.shape
    n = roi_size * samples
    steps = (torch.arange(n, device=boxes.device, dtype=boxes.dtype) + 0.5) / n  # [n]
    x1, y1, x2, y2 = boxes.unbind(-1)  # [K, B] each
    xs = x1[..., None] + (x2 - x1)[..., None] * steps  # [K, B, n]
    ys = y1[..., None] + (y2 - y1)[..., None] * steps
    grid = torch.stack(
        (xs[:, :, None, :].expand(k, b, n, n), ys[:, :, :, None].expand(k, b, n, n)), dim=-1
    )  # [K, B, n(y), n(x), 2]
    grid = (grid * 2 - 1).reshape(k, b * n, n, 2)
    # "border": a tap within half a pixel outside the map takes the edge value, as RoIAlign's does.
    # float32 throughout: a bf16 grid moves the taps by up to a pixel at 1008 px (17 % off the
    # fp32 features), and the CPU kernel has no half-precision path worth the name.
    taps = F.grid_sample(
        features.float().expand(k, -1, -1, -1), grid.float(), align_corners=False, padding_mode="border"
    )
    c = features.shape[1]
    taps = taps.reshape(k, c, b, roi_size, samples, roi_size, samples).mean((-3, -1))  # [K, C, B, r, r]
    return taps.permute(0, 2, 1, 3, 4).reshape(k, b, c * roi_size * roi_size).to(features.dtype)


class BoxScoring(nn.Module):
    """The class-logit correction read from the finest level in each query's box (module docstring)."""

    def __init__(self, dim: int, *, roi_size: int, samples: int, hidden_size: int):
        """Sizes as ``config.box_scoring_settings`` fills them in (its defaults are the only ones)."""
        super().__init__()
        self.roi_size, self.samples = roi_size, samples
        self.roi_mlp = nn.Sequential(
            nn.Linear(dim * roi_size * roi_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, dim)
        )
        self.prompt_proj = nn.Linear(dim, dim)
        self.reset_output()

    def reset_output(self) -> None:
        """Zero the last layer: the head adds nothing until it trains."""
        nn.init.zeros_(self.roi_mlp[-1].weight)
        nn.init.zeros_(self.roi_mlp[-1].bias)

    def forward(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        finest: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``logits`` [K, Q], ``boxes`` [K, Q, 4] normalised xyxy, ``finest`` [K or 1, C, H, W] (the
        4x FPN level), ``text_embeds`` [K, L, C] with ``text_mask`` [K, L] -> corrected logits [K, Q]."""
        # cxcywh -> xyxy can put an edge past the image: clamped, the RoIAlign is torchvision's
        boxes = boxes.detach().float().clamp(0.0, 1.0)
        rois = roi_grid_sample(finest, boxes, self.roi_size, self.samples)
        shape = self.roi_mlp(rois)  # [K, Q, C]
        weights = text_mask.to(text_embeds.dtype)[..., None]
        prompt = (text_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        prompt = self.prompt_proj(prompt.to(shape.dtype))  # [K, C]
        agreement = (shape * prompt[:, None]).sum(-1) / math.sqrt(shape.shape[-1])
        return logits + agreement.to(logits.dtype)
