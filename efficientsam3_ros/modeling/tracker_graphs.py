"""The tracker's per-frame graphs as tensor-only modules (what PyTorch runs and ONNX exports).

Two graphs run per frame for all live tracks at once:

``TrackStepGraph``: memory attention over each track's memory + the SAM mask decoder
  -> mask logits, IoU, object score, object pointer per track.
``MemoryEncoderGraph``: the new frame's feature + each track's predicted mask -> the
  memory tokens stored for that frame (dense map or Perceiver latents).

Both take and return tensors only (no Python state, no dicts), so the same module runs
in PyTorch and exports to ONNX/TensorRT; the Python side (``TrackerModel``) only does
the bookkeeping: which memory frames and pointers each track feeds in. The modules
wrap transformers' submodules (they own no weights of their own); the small amount of
glue mirrors ``Sam3TrackerVideoModel._prepare_memory_conditioned_features``,
``_single_frame_forward`` and ``_encode_new_memory`` but is batched over tracks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
    NO_OBJ_SCORE,
    Sam3TrackerVideoModel,
    get_1d_sine_pe,
)


def run_sam_heads(
    sam: Sam3TrackerVideoModel,
    image_embeddings: torch.Tensor,
    s0: torch.Tensor,
    s1: torch.Tensor,
    *,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask_output: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder on [N, C, g, g] embeddings (SAM3's SAM heads, transformers' modules).

    ``points`` [N, B, P, 2] and ``boxes`` [N, B, 4] are in model-input pixels; no prompt at all
    means "track": a single padding point, as SAM3 does. Returns (mask logits [N, B, K, 4g, 4g],
    iou [N, B, K], output tokens [N, B, K, C], object score logits [N, B, 1]).
    """
    n = image_embeddings.shape[0]
    if points is None and boxes is None:
        points = image_embeddings.new_zeros(n, 1, 1, 2)
        labels = -torch.ones(n, 1, 1, dtype=torch.int32, device=image_embeddings.device)
    elif points is not None and labels is None:
        labels = torch.ones(points.shape[:-1], dtype=torch.int32, device=points.device)
    sparse, dense = sam.prompt_encoder(
        input_points=points, input_labels=labels, input_boxes=boxes, input_masks=mask_input
    )
    image_pe = sam.get_image_wide_positional_embeddings().expand(n, -1, -1, -1)
    return sam.mask_decoder(
        image_embeddings=image_embeddings,
        image_positional_embeddings=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
        high_resolution_features=[s0.expand(n, -1, -1, -1), s1.expand(n, -1, -1, -1)],
    )


def select_best_mask(
    sam: Sam3TrackerVideoModel,
    masks: torch.Tensor,
    iou: torch.Tensor,
    tokens: torch.Tensor,
    object_score_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM3's tracking choice: best-IoU mask of the multimask output, object pointer from its token.

    Inputs are ``run_sam_heads``' outputs with one prompt per track (B = 1). Returns
    (mask logits [N, 1, 4g, 4g] set to NO_OBJ_SCORE where the object is absent,
    iou [N, 1], object score logits [N, 1], object pointer [N, C]).
    """
    n, _, k, h, w = masks.shape
    best = iou[:, 0].argmax(dim=-1)  # [N]
    index = best.view(n, 1, 1, 1).expand(n, 1, h, w)
    low_res = torch.gather(masks[:, 0], 1, index)  # [N, 1, h, w]
    best_iou = torch.gather(iou[:, 0], 1, best.view(n, 1))
    token = torch.gather(tokens[:, 0], 1, best.view(n, 1, 1).expand(n, 1, tokens.shape[-1]))[:, 0]
    score = object_score_logits[:, 0]  # [N, 1]
    appearing = score > 0
    low_res = torch.where(appearing[:, :, None, None], low_res, torch.full_like(low_res, NO_OBJ_SCORE))
    lam = appearing.to(token.dtype)
    pointer = lam * sam.object_pointer_proj(token) + (1 - lam) * sam.no_object_pointer
    return low_res, best_iou, score, pointer


def mask_prompt(sam: Sam3TrackerVideoModel, masks: torch.Tensor, image_size: int) -> torch.Tensor:
    """Binary masks [N, 1, h, w] (any size) -> the prompt encoder's mask input, as SAM3 makes it.

    SAM3's mask-as-output path: the mask at input resolution through ``mask_downsample``
    (stride 4), then to the prompt encoder's ``mask_input_size``. A low-res mask is upsampled
    bilinearly and left soft at its edges: thresholding it again would make the exported graph
    disagree with PyTorch wherever the upsampled value lands on 0.5 up to rounding.
    """
    if tuple(masks.shape[-2:]) != (image_size, image_size):
        masks = F.interpolate(masks, size=(image_size, image_size), mode="bilinear", align_corners=False)
    prompt = sam.mask_downsample(masks)
    size = tuple(sam.prompt_encoder.mask_input_size)
    if tuple(prompt.shape[-2:]) != size:
        prompt = F.interpolate(prompt, size=size, mode="bilinear", align_corners=False)
    return prompt


class TrackStepGraph(nn.Module):
    """Memory attention + mask decoder for N tracks with the same memory layout (F frames, P pointers).

    Inputs: the frame's ``feat``/``pos`` [1, C, g, g], ``s0`` [1, C/8, 4g, 4g], ``s1`` [1, C/4, 2g, 2g]
    (or N rows: each track's own frame, as training's batched clips give);
    per track ``memory`` [N, F, T, Dm], ``memory_tpos`` [N, F] (int64 temporal slot per memory
    frame), ``pointers`` [N, P, C] and ``pointer_offsets`` [N, P] (frame distance, float).
    With ``prompt_previous_mask`` one more input, ``prompt_masks`` [N, 1, 4g, 4g] (each track's
    previous binary mask), prompts the mask decoder as a conditioning mask would.
    Outputs: mask logits [N, 1, 4g, 4g], iou [N, 1], object score logits [N, 1], pointers [N, C].
    """

    def __init__(
        self,
        sam: Sam3TrackerVideoModel,
        memory_attention: nn.Module,
        codec: nn.Module,
        perceiver: bool,
        prompt_previous_mask: bool = False,
    ):
        super().__init__()
        self.sam = sam
        self.memory_attention = memory_attention
        self.codec = codec
        self.perceiver = perceiver
        self.prompt_previous_mask = prompt_previous_mask
        self.image_size = int(sam.config.image_size)
        self.num_maskmem = sam.num_maskmem
        self.max_object_pointers = sam.config.max_object_pointers_in_encoder
        self.mem_dim = sam.mem_dim

    def memory_tokens(
        self,
        memory: torch.Tensor,
        memory_tpos: torch.Tensor,
        pointers: torch.Tensor,
        pointer_offsets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Concatenate memory frames and split pointers with their position encodings (seq-first)."""
        n, frames, tokens, dm = memory.shape
        num_pointers, channels = pointers.shape[1], pointers.shape[2]
        temporal = self.sam.memory_temporal_positional_encoding.view(self.num_maskmem, dm)[memory_tpos]
        memory_pos = self.codec.spatial_pos.to(memory.dtype)[None, None] + temporal[:, :, None]
        sine = get_1d_sine_pe(pointer_offsets / float(max(self.max_object_pointers - 1, 1)), dim=channels)
        pointer_pos = self.sam.temporal_positional_encoding_projection_layer(sine.to(pointers.dtype))
        splits = channels // dm
        pointer_tokens = pointers.reshape(n, num_pointers * splits, dm)
        pointer_pos = pointer_pos.repeat_interleave(splits, dim=1)
        keys = torch.cat([memory.reshape(n, frames * tokens, dm), pointer_tokens], dim=1)
        keys_pos = torch.cat([memory_pos.reshape(n, frames * tokens, dm), pointer_pos], dim=1)
        return keys.transpose(0, 1), keys_pos.transpose(0, 1), num_pointers * splits

    def forward(
        self,
        feat: torch.Tensor,
        pos: torch.Tensor,
        s0: torch.Tensor,
        s1: torch.Tensor,
        memory: torch.Tensor,
        memory_tpos: torch.Tensor,
        pointers: torch.Tensor,
        pointer_offsets: torch.Tensor,
        prompt_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if (prompt_masks is not None) != self.prompt_previous_mask:
            raise ValueError(
                "prompt_masks must be given exactly when the tracker prompts with the previous mask "
                f"(TrackerConfig.prompt_previous_mask = {self.prompt_previous_mask})"
            )
        n, frames = memory.shape[:2]
        _, channels, height, width = feat.shape
        keys, keys_pos, num_pointer_tokens = self.memory_tokens(
            memory.to(feat.dtype), memory_tpos, pointers, pointer_offsets
        )
        current = feat.flatten(2).permute(2, 0, 1).expand(-1, n, -1)
        current_pos = pos.flatten(2).permute(2, 0, 1).expand(-1, n, -1)
        extra = {"num_spatial_memory_tokens": frames} if self.perceiver else {}
        conditioned = self.memory_attention(
            current_vision_features=current,
            memory=keys,
            current_vision_position_embeddings=current_pos,
            memory_posision_embeddings=keys_pos,
            num_object_pointer_tokens=num_pointer_tokens,
            **extra,
        )
        conditioned = (
            conditioned.reshape(n, height * width, channels)
            .transpose(1, 2)
            .reshape(n, channels, height, width)
        )
        prompt = None if prompt_masks is None else mask_prompt(self.sam, prompt_masks, self.image_size)
        outputs = run_sam_heads(self.sam, conditioned, s0, s1, mask_input=prompt, multimask_output=True)
        return select_best_mask(self.sam, *outputs)


class MemoryEncoderGraph(nn.Module):
    """New memory tokens for N tracks from the frame feature and each track's mask logits.

    Inputs: ``feat`` [1 or N, C, g, g] (raw tracker feature), ``mask_logits`` [N, 1, h, w] (any size; the
    mask decoder's 4g output in tracking), ``object_score_logits`` [N, 1]. Output: [N, T, Dm].
    Like SAM3 it feeds sigmoid(logits) * 20 - 10 to the memory encoder and adds the occlusion
    embedding where the object is absent; a conditioning mask is passed as saturated logits.
    """

    def __init__(self, sam: Sam3TrackerVideoModel, codec: nn.Module):
        super().__init__()
        self.sam = sam
        self.codec = codec
        mask_size = sam.prompt_encoder.mask_input_size
        self.mask_memory_size = (mask_size[0] * 4, mask_size[1] * 4)  # 16 g: the mask downsampler's stride
        self.scale = float(sam.config.sigmoid_scale_for_mem_enc)
        self.bias = float(sam.config.sigmoid_bias_for_mem_enc)

    def forward(
        self, feat: torch.Tensor, mask_logits: torch.Tensor, object_score_logits: torch.Tensor
    ) -> torch.Tensor:
        n = mask_logits.shape[0]
        if tuple(mask_logits.shape[-2:]) != self.mask_memory_size:
            mask_logits = F.interpolate(
                mask_logits, size=self.mask_memory_size, mode="bilinear", align_corners=False
            )
        mask_for_mem = torch.sigmoid(mask_logits) * self.scale + self.bias
        features, pos = self.sam.memory_encoder(feat.expand(n, -1, -1, -1), mask_for_mem)
        occlusion = self.sam.occlusion_spatial_embedding_parameter
        if occlusion is not None:
            absent = (object_score_logits <= 0).to(features.dtype)  # [N, 1]
            features = features + absent[:, :, None, None] * occlusion[..., None, None]
        return self.codec(features, pos)
