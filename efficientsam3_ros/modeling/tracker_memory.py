"""What one memory frame becomes before it is stored: dense tokens or Perceiver latents.

The memory encoder (transformers' ``Sam3TrackerVideoMemoryEncoder``) turns a frame's
feature and predicted mask into a [Dm, g, g] map. SAM3 stores that map as g*g tokens
(5184 at 1008 px); EfficientSAM3 stores 256 global + 256 window latents instead,
resampled by EdgeTAM's 2D spatial Perceiver (transformers'
``EdgeTamVideoPerceiverResampler``). Both codecs expose the same interface so the
tracker, the exported graphs and the benchmark treat them alike; each also holds the
(constant) spatial position encoding of its tokens, so tracks need not store it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import EdgeTamVideoConfig
from transformers.models.edgetam_video.modeling_edgetam_video import EdgeTamVideoPerceiverResampler
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
    Sam3TrackerVideoPositionEmbeddingSine,
)


class DenseMemoryCodec(nn.Module):
    """SAM3's memory: the whole g x g map, one token per cell."""

    def __init__(self, grid_size: int, memory_dim: int):
        super().__init__()
        self.grid_size = grid_size
        sine = Sam3TrackerVideoPositionEmbeddingSine(num_position_features=memory_dim // 2, normalize=True)
        pos = sine((1, memory_dim, grid_size, grid_size), "cpu", torch.float32)
        self.register_buffer("spatial_pos", pos.flatten(2).transpose(1, 2)[0].clone(), persistent=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_size * self.grid_size

    def forward(self, features: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """[N, Dm, g, g] memory map -> [N, g*g, Dm] tokens (``pos`` is implied by ``spatial_pos``)."""
        return features.flatten(2).transpose(1, 2)


class PerceiverMemoryCodec(nn.Module):
    """EdgeTAM's 2D spatial Perceiver: global latents over the whole map + one latent per window.

    EdgeTAM partitions the map into ``sqrt(num_latents_2d)`` windows per side with
    ``window = g // windows``, which only tiles the map when g divides (64 at 1024 px).
    SAM3's grid does not (72 at 1008), so the 2D branch sees the map bilinearly resized to
    the next multiple (80: 5x5 windows) rather than zero-padded (which would leave whole
    windows empty). The global branch always sees the map as it is.
    """

    def __init__(self, config: EdgeTamVideoConfig, grid_size: int):
        super().__init__()
        self.resampler = EdgeTamVideoPerceiverResampler(config)
        self.grid_size = grid_size
        self.window_grid = math.isqrt(config.perceiver_resampler_num_latents_2d)
        self.window_input = self.window_grid * math.ceil(grid_size / self.window_grid)
        dim = config.perceiver_resampler_hidden_size
        # global latents carry no position (EdgeTAM gives them zeros); window latents a sine over the window grid
        pos_2d = self.resampler.positional_encoding(
            (1, dim, self.window_grid, self.window_grid), "cpu", torch.float32
        )
        pos = torch.cat(
            [torch.zeros(config.perceiver_resampler_num_latents, dim), pos_2d.flatten(2)[0].T], dim=0
        )
        self.register_buffer("spatial_pos", pos.clone(), persistent=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.resampler.num_latents_1d + self.resampler.num_latents_2d

    def forward(self, features: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """[N, Dm, g, g] memory map (+ its sine position) -> [N, n_1d + n_2d, Dm] latents."""
        latents_1d, _ = self.resampler._forward_1d(features, pos)
        windowed = features
        if self.window_input != self.grid_size:
            windowed = F.interpolate(
                features, size=(self.window_input,) * 2, mode="bilinear", align_corners=False
            )
        return torch.cat([latents_1d, self._window_latents(windowed)], dim=1)

    def _window_latents(self, maps: torch.Tensor) -> torch.Tensor:
        """[N, Dm, W, W] maps (W a multiple of the window grid) -> [N, n_2d, Dm], one latent per window.

        transformers' ``_forward_2d`` computes this too, but its ``expand(batch).view()`` of the
        latents only works for one map, and a map at a time made stage 2's step many small
        operations. The same layers run here on all maps' windows at once, in the same order
        (maps, then window rows, then window columns); test_tracker_model checks it against
        ``_forward_2d`` map by map.
        """
        resampler, grid = self.resampler, self.window_grid
        n, dim, side, _ = maps.shape
        size = side // grid
        windows = (
            maps.permute(0, 2, 3, 1)
            .reshape(n, grid, size, grid, size, dim)
            .transpose(2, 3)
            .reshape(n * grid * grid, size * size, dim)
        )
        latents = resampler.latents_2d[None].expand(n, -1, -1).reshape(n * grid * grid, 1, dim)
        for layer in resampler.layers:
            latents = layer(latents, windows, positional_encoding=None)
        return resampler.layer_norm(latents.reshape(n, grid * grid, dim))
