"""Tracker config: SAM3's tracker (dense memory, the teacher) or EfficientSAM3's Perceiver memory.

Plain data, like ``ModelConfig``, so a checkpoint can carry it. The tracker's modules
come from transformers (``sam3_tracker_video`` for the SAM heads, memory encoder and
dense memory attention; ``edgetam_video`` for the Perceiver resampler and the memory
attention that puts 2D positions on the window latents only). This file only says
which sizes to build them at and translates to transformers' config classes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from transformers import EdgeTamVideoConfig, Sam3TrackerVideoConfig

from ..config_utils import check_known_keys, check_scalar_types
from .config import ModelConfig

MEMORY_KINDS = ("perceiver", "dense")


@dataclass
class TrackerConfig:
    """Sizes of the tracker. Defaults are SAM3's tracker with the EdgeTAM-style Perceiver memory.

    ``memory="dense"`` keeps SAM3's memory (every memory frame is the full g x g grid, 5184
    tokens at 1008 px); ``"perceiver"`` compresses each memory frame to ``num_latents_1d``
    global + ``num_latents_2d`` window latents (512 tokens) before it is stored.
    """

    memory: str = "perceiver"
    hidden_size: int = 256  # tracker neck / prompt encoder / mask decoder width (SAM3: 256)
    memory_dim: int = 64  # memory token width; transformers hard-codes 64 in the memory cross-attention
    num_maskmem: int = 7  # memory frames per track: conditioning + (num_maskmem - 1) recent frames
    max_cond_frames: int = 4  # conditioning frames kept per track (SAM3's max_cond_frame_num)
    max_object_pointers: int = (
        16  # object pointers attended per track (SAM3's max_object_pointers_in_encoder)
    )
    memory_attention_layers: int = 4
    memory_attention_heads: int = 1
    memory_attention_mlp: int = 2048
    mask_decoder_heads: int = 8
    mask_decoder_mlp: int = 2048
    iou_head_hidden: int = 256
    memory_fuser_intermediate: int = 1024
    # EdgeTAM's 2D spatial Perceiver (used when memory == "perceiver")
    num_latents_1d: int = 256
    num_latents_2d: int = 256  # a perfect square: one latent per window of a sqrt x sqrt grid
    perceiver_layers: int = 2
    perceiver_mlp: int = 256
    perceiver_heads: int = 1
    # dtype the per-track memory is stored in (SAM3 stores bf16); the graphs compute in fp32
    memory_dtype: str = "bfloat16"
    #: Also prompt the mask decoder, on every tracked frame, with the track's previous mask
    #: (MaskTrack-style), not only on conditioning frames. SAM3 does not (False): its memory
    #: attention, trained at scale, tells objects apart on its own. A tracker trained from
    #: scratch in minutes does not: the demo's first ones propagated the same mask for every
    #: object. The prompt names the object, so the memory only has to follow it.
    prompt_previous_mask: bool = False

    def __post_init__(self) -> None:
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"unknown tracker memory {self.memory!r}; use one of {MEMORY_KINDS}")
        if self.memory_dim != 64:
            raise ValueError(
                "memory_dim must be 64: transformers builds the memory cross-attention with kv_in_dim=64"
            )
        if self.hidden_size % self.memory_dim:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be a multiple of memory_dim {self.memory_dim}"
            )
        side = math.isqrt(self.num_latents_2d)
        if self.memory == "perceiver" and (self.num_latents_1d < 1 or self.num_latents_2d < 1):
            raise ValueError("the Perceiver memory needs num_latents_1d >= 1 and num_latents_2d >= 1")
        if side * side != self.num_latents_2d:
            raise ValueError(
                f"num_latents_2d={self.num_latents_2d} must be a perfect square (one latent per window)"
            )
        if self.memory_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"memory_dtype must be float32, float16 or bfloat16; got {self.memory_dtype!r}")
        if self.num_maskmem < 1 or self.max_cond_frames < 1 or self.max_object_pointers < 1:
            raise ValueError("num_maskmem, max_cond_frames and max_object_pointers must be >= 1")

    @property
    def window_grid(self) -> int:
        """Windows per side of the Perceiver's 2D branch (16 for 256 window latents)."""
        return math.isqrt(self.num_latents_2d)

    def tokens_per_memory_frame(self, grid_size: int) -> int:
        """Tokens one memory frame holds: g*g (dense) or num_latents_1d + num_latents_2d (Perceiver)."""
        if self.memory == "dense":
            return grid_size * grid_size
        return self.num_latents_1d + self.num_latents_2d

    def max_memory_frames(self) -> int:
        """Upper bound on memory frames held per track: conditioning + recent."""
        return self.max_cond_frames + self.num_maskmem - 1

    def memory_bytes_per_track(self, grid_size: int) -> int:
        """Upper bound on one track's stored memory: full frames (storage dtype) + fp32 object pointers
        (+ the kept bool [4g, 4g] mask of a tracker that prompts with it)."""
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[self.memory_dtype]
        frames = (
            self.max_memory_frames() * self.tokens_per_memory_frame(grid_size) * self.memory_dim * itemsize
        )
        pointers = (self.max_cond_frames + self.max_object_pointers - 1) * self.hidden_size * 4
        prompt = (4 * grid_size) ** 2 if self.prompt_previous_mask else 0
        return frames + pointers + prompt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackerConfig:
        check_known_keys(cls, data, "tracker config keys")
        check_scalar_types(cls, data, "tracker config")
        return cls(**data)

    @classmethod
    def tiny(cls, memory: str = "perceiver") -> TrackerConfig:
        """Test-size tracker: 128 wide (2 pointer splits of 64), 1-2 layers, 16+16 latents."""
        return cls(
            memory=memory,
            hidden_size=128,
            memory_attention_layers=2,
            memory_attention_mlp=64,
            mask_decoder_heads=2,
            mask_decoder_mlp=64,
            iou_head_hidden=32,
            memory_fuser_intermediate=64,
            num_latents_1d=16,
            num_latents_2d=16,
            perceiver_layers=1,
            perceiver_mlp=64,
            memory_dtype="float32",
        )


def default_tracker_config(image_config: ModelConfig, memory: str = "perceiver") -> TrackerConfig:
    """The tracker that goes with an image model: tiny for the ``*-tiny`` test models, else SAM3's
    sizes with the model's own ``ModelConfig.tracker`` overrides (the demo models' small tracker)."""
    if image_config.name.endswith("-tiny"):
        return TrackerConfig.tiny(memory)
    return TrackerConfig.from_dict({**image_config.tracker, "memory": memory})


def to_sam3_tracker_config(image_config: ModelConfig, config: TrackerConfig) -> Sam3TrackerVideoConfig:
    """transformers' Sam3TrackerVideoConfig for the SAM heads, memory encoder and dense memory attention."""
    hidden = config.hidden_size
    return Sam3TrackerVideoConfig(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": image_config.trunk_dim,
                "patch_size": image_config.patch_size,
            },
            "fpn_hidden_size": hidden,
            "scale_factors": [4.0, 2.0, 1.0],
        },
        prompt_encoder_config={"hidden_size": hidden, "patch_size": image_config.patch_size},
        mask_decoder_config={
            "hidden_size": hidden,
            "mlp_dim": config.mask_decoder_mlp,
            "num_attention_heads": config.mask_decoder_heads,
            "iou_head_hidden_dim": config.iou_head_hidden,
        },
        image_size=image_config.image_size,
        num_maskmem=config.num_maskmem,
        max_cond_frame_num=config.max_cond_frames,
        max_object_pointers_in_encoder=config.max_object_pointers,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=config.memory_attention_layers,
        memory_attention_num_attention_heads=config.memory_attention_heads,
        memory_attention_feed_forward_hidden_size=config.memory_attention_mlp,
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=config.memory_dim,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=config.memory_fuser_intermediate,
    )


def to_edgetam_config(image_config: ModelConfig, config: TrackerConfig) -> EdgeTamVideoConfig:
    """transformers' EdgeTamVideoConfig for the Perceiver resampler and its memory attention.

    Queries keep RoPE over the g x g grid; keys get RoPE over the window grid for the 2D latents
    only (the global latents and object pointers get none).
    """
    grid = image_config.grid_size
    window_grid = config.window_grid
    edgetam = EdgeTamVideoConfig(
        memory_attention_hidden_size=config.hidden_size,
        memory_attention_num_layers=config.memory_attention_layers,
        memory_attention_num_attention_heads=config.memory_attention_heads,
        memory_attention_mlp_hidden_size=config.memory_attention_mlp,
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_attention_rope_k_sizes=[window_grid, window_grid],
        perceiver_resampler_num_latents=config.num_latents_1d,
        perceiver_resampler_num_latents_2d=config.num_latents_2d,
        perceiver_resampler_hidden_size=config.memory_dim,
        perceiver_resampler_mlp_intermediate_size=config.perceiver_mlp,
        perceiver_resampler_num_attention_heads=config.perceiver_heads,
        perceiver_resampler_attention_head_dim=config.memory_dim // config.perceiver_heads,
        perceiver_resampler_num_layers=config.perceiver_layers,
    )
    edgetam._attn_implementation = "sdpa"
    return edgetam
