"""The tracker model: SAM3's tracker heads on the shared image features, with dense or Perceiver memory.

Per frame, ``encode_frame`` runs the tracker neck once on the trunk feature the image
model already computed; ``propagate`` then advances every live track in batched calls
of the two per-frame graphs (``tracker_graphs``), grouped by memory layout so tracks of
different ages can still batch. ``condition`` adds a detection's mask to a track as a
conditioning frame (SAM3's "mask as output" path). Each track's state is a bounded
``TrackMemory``; nothing grows with the length of the video.

The modules are transformers': ``Sam3TrackerVideoModel`` (without its vision encoder)
supplies the prompt encoder, mask decoder, memory encoder, dense memory attention and
object-pointer parts; the Perceiver config swaps in EdgeTAM's memory attention and
spatial Perceiver resampler. Weight names stay transformers' (``sam.*``), so SAM3's
tracker checkpoint maps onto ``sam`` + ``tracker_neck``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.edgetam_video.modeling_edgetam_video import EdgeTamVideoMemoryAttention
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoModel

from .config import ModelConfig
from .efficientsam3 import initialise_weights
from .memory import MemoryLayout, TrackMemory
from .tracker_config import TrackerConfig, default_tracker_config, to_edgetam_config, to_sam3_tracker_config
from .tracker_graphs import (
    MemoryEncoderGraph,
    TrackStepGraph,
    mask_prompt,
    run_sam_heads,
    select_best_mask,
)
from .tracker_memory import DenseMemoryCodec, PerceiverMemoryCodec
from .tracker_neck import TrackerFrame, TrackerNeck, trunk_tokens_of

# Logit a conditioning mask is given: saturates the memory encoder's sigmoid, i.e. SAM3's binarisation.
_HARD_LOGIT = 1.0e4


@dataclass
class TrackerOutput:
    """One frame's tracking result for N tracks, in the order they were passed."""

    mask_logits: torch.Tensor  # [N, 4g, 4g] low-res mask logits (NO_OBJ_SCORE where absent)
    object_score_logits: torch.Tensor  # [N] > 0: the object is visible
    iou_scores: torch.Tensor  # [N] predicted IoU of the chosen mask


class TrackerModel(nn.Module):
    """SAM3 tracker over EfficientSAM3 image features. ``config.memory`` picks dense or Perceiver memory."""

    def __init__(self, image_config: ModelConfig, config: TrackerConfig):
        super().__init__()
        self.image_config = image_config
        self.config = config
        self.grid_size = image_config.grid_size
        self.tracker_neck = TrackerNeck(image_config, config)
        self.sam = Sam3TrackerVideoModel(
            to_sam3_tracker_config(image_config, config), remove_vision_encoder=True
        )
        if config.memory == "perceiver":
            edgetam = to_edgetam_config(image_config, config)
            # EdgeTAM's memory attention: RoPE on the window latents only, none on global latents/pointers
            self.sam.memory_attention = EdgeTamVideoMemoryAttention(edgetam)
            self.memory_codec: nn.Module = PerceiverMemoryCodec(edgetam, self.grid_size)
        else:
            self.memory_codec = DenseMemoryCodec(self.grid_size, config.memory_dim)
        initialise_weights(self, image_config.init)  # a from-scratch image model's tracker starts alike
        self.memory_dtype = getattr(torch, config.memory_dtype)
        # Graph wrappers share this model's submodules; a tuple keeps them out of the state dict.
        self._graphs = (
            TrackStepGraph(
                self.sam,
                self.sam.memory_attention,
                self.memory_codec,
                config.memory == "perceiver",
                config.prompt_previous_mask,
            ),
            MemoryEncoderGraph(self.sam, self.memory_codec),
        )

    # ------------------------------------------------------------------ graphs
    @property
    def step_graph(self) -> TrackStepGraph:
        """Memory attention + mask decoder, batched over tracks (tensor-only, exportable)."""
        return self._graphs[0]

    @property
    def memory_encoder_graph(self) -> MemoryEncoderGraph:
        """Mask + feature -> stored memory tokens, batched over tracks (tensor-only, exportable)."""
        return self._graphs[1]

    @property
    def tokens_per_memory_frame(self) -> int:
        return self.memory_codec.tokens_per_frame

    # ------------------------------------------------------------------- frames
    def encode_frame(
        self, image_features: Sam3VisionEncoderOutput | torch.Tensor, frame_idx: int = 0
    ) -> TrackerFrame:
        """Tracker neck on the shared trunk feature (``EfficientSam3Model.encode_image`` output), once per frame."""
        if trunk_tokens_of(image_features).shape[0] != 1:
            raise ValueError("encode_frame() takes the features of one image; encode_frames() takes several")
        return self.encode_frames(image_features, [frame_idx])[0]

    def encode_frames(
        self, image_features: Sam3VisionEncoderOutput | torch.Tensor, frame_indices: Sequence[int]
    ) -> list[TrackerFrame]:
        """``encode_frame`` for a batch of images in one neck call (training encodes whole clips).

        The neck is per image (no batch statistics), so each frame equals its ``encode_frame``;
        one call instead of one per frame is what makes a training step fewer, larger operations.
        """
        tokens = trunk_tokens_of(image_features)
        if tokens.shape[0] != len(frame_indices):
            raise ValueError(f"{tokens.shape[0]} images but {len(frame_indices)} frame indices")
        levels, positions = self.tracker_neck(tokens)
        s0 = self.sam.mask_decoder.conv_s0(levels[0])
        s1 = self.sam.mask_decoder.conv_s1(levels[1])
        return [
            TrackerFrame(
                feat=levels[2][i : i + 1],
                pos=positions[2][i : i + 1],
                s0=s0[i : i + 1],
                s1=s1[i : i + 1],
                frame_idx=int(idx),
            )
            for i, idx in enumerate(frame_indices)
        ]

    # ------------------------------------------------------------------- tracks
    def new_track(self) -> TrackMemory:
        """Empty bounded memory for one track (condition it before propagating)."""
        cfg = self.config
        return TrackMemory(cfg.num_maskmem, cfg.max_cond_frames, cfg.max_object_pointers)

    def condition(self, track: TrackMemory, frame: TrackerFrame, mask: torch.Tensor) -> TrackerOutput:
        """Add a conditioning frame from a detection mask ([h, w], bool / probability / logits > 0 = object).

        Returns the mask decoder's answer to the mask prompt (one track), which training
        supervises when the decoder itself learns (stage 2 ``options.condition_weight``).

        Mirrors SAM3's mask-as-output path: the object pointer comes from the mask decoder
        prompted with the (downsampled) mask on the raw frame feature; the memory is encoded
        from the binarised mask.
        """
        if mask.dim() != 2:
            raise ValueError(f"mask must be [h, w]; got {tuple(mask.shape)}")
        return self.condition_tracks([track], [frame], mask[None])

    def condition_tracks(
        self, tracks: Sequence[TrackMemory], frames: Sequence[TrackerFrame], masks: torch.Tensor
    ) -> TrackerOutput:
        """``condition`` for N tracks at once, each on its own frame (training conditions every clip's objects together).

        ``masks`` is [N, h, w]; each mask is read on its own (a probability mask is cut at 0.5,
        logits or bool at 0), so a row gives what ``condition`` gives it alone.
        """
        if masks.dim() != 3 or len(tracks) != masks.shape[0] or len(frames) != masks.shape[0]:
            raise ValueError(
                f"condition_tracks() takes N tracks, N frames and masks [N, h, w]; got {len(tracks)} "
                f"tracks, {len(frames)} frames and masks {tuple(masks.shape)}"
            )
        if not tracks:
            return self._no_output()
        feat, _, s0, s1 = _stack_frames(frames)
        binary = (masks > _binary_thresholds(masks)).to(feat.dtype)
        appearing = binary.flatten(1).any(dim=1)  # [N]
        size = self.image_config.image_size
        full = _resize(binary[:, None], (size, size))
        prompt = mask_prompt(self.sam, full, size)
        if self.config.prompt_previous_mask:
            kept = _resize(full, (4 * self.grid_size,) * 2)[:, 0] > 0.5
            for track, kept_mask in zip(tracks, kept):
                if kept_mask.any():  # an object too small for the 4g grid keeps the mask it had
                    track.prompt_mask = kept_mask.clone()  # its own row, not a view of the batch
        # the SAM heads take one embedding row per prompt (a shared frame is a one-row view)
        embeddings = feat.expand(len(tracks), -1, -1, -1)
        outputs = run_sam_heads(self.sam, embeddings, s0, s1, mask_input=prompt, multimask_output=True)
        low_res, iou, object_score, pointer = select_best_mask(self.sam, *outputs)
        # SAM3 decides presence from the mask itself on this path
        pointer = torch.where(appearing[:, None], pointer, self.sam.no_object_pointer.expand_as(pointer))
        score = torch.where(appearing, 10.0, -10.0).to(feat.dtype)[:, None]
        hard = (_resize(full, self.memory_encoder_graph.mask_memory_size) > 0.5).to(full.dtype)
        tokens = self.memory_encoder_graph(feat, (hard * 2 - 1) * _HARD_LOGIT, score)
        for i, (track, frame) in enumerate(zip(tracks, frames)):
            track.add_conditioning(frame.frame_idx, *self._own_rows(tokens[i], pointer[i]))
        return TrackerOutput(low_res[:, 0], object_score[:, 0], iou[:, 0])

    def propagate(
        self, tracks: list[TrackMemory], frame: TrackerFrame | Sequence[TrackerFrame]
    ) -> TrackerOutput:
        """Advance every track to ``frame``: batched step + memory encoding, grouped by memory layout.

        ``frame`` may also be one frame per track: training advances the tracks of several
        clips in one call, each on its own clip's frame.
        """
        frames = [frame] * len(tracks) if isinstance(frame, TrackerFrame) else list(frame)
        if len(frames) != len(tracks):
            raise ValueError(f"propagate() got {len(frames)} frames for {len(tracks)} tracks")
        if not tracks:
            return self._no_output()
        layouts = [t.gather(f.frame_idx) for t, f in zip(tracks, frames)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, layout in enumerate(layouts):
            groups.setdefault(layout.key, []).append(i)
        masks: list[torch.Tensor | None] = [None] * len(tracks)
        scores: list[torch.Tensor | None] = [None] * len(tracks)
        ious: list[torch.Tensor | None] = [None] * len(tracks)
        for indices in groups.values():
            group = [layouts[i] for i in indices]
            feat, pos, s0, s1 = _stack_frames([frames[i] for i in indices])
            batch = _stack_layouts(group, feat.dtype)
            if self.config.prompt_previous_mask:
                batch += (self._prompt_masks(group, feat),)
            low_res, iou, score, pointer = self.step_graph(feat, pos, s0, s1, *batch)
            tokens = self.memory_encoder_graph(feat, low_res, score)
            for j, i in enumerate(indices):
                tracks[i].add_tracked(frames[i].frame_idx, *self._own_rows(tokens[j], pointer[j]))
                masks[i], scores[i], ious[i] = low_res[j, 0], score[j, 0], iou[j, 0]
                if self.config.prompt_previous_mask:
                    seen = low_res[j, 0].detach() > 0
                    if bool(seen.any()):  # lost (nothing seen): keep the last mask
                        tracks[i].prompt_mask = seen
        return TrackerOutput(torch.stack(masks), torch.stack(scores), torch.stack(ious))

    def _own_rows(self, tokens: torch.Tensor, pointer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One track's memory tokens (in the storage dtype) and pointer, copied out of the batch.

        A row of a batched output is a view that keeps the whole batch allocated: every track
        would hold N tracks' worth for as long as any of them lives, and ``nbytes()`` would not see it.
        """
        return tokens.to(self.memory_dtype, copy=True), pointer.clone()

    def _no_output(self) -> TrackerOutput:
        """The result for zero tracks, with the shapes and device of a real one."""
        like = next(self.parameters())
        empty = like.new_zeros(0)
        return TrackerOutput(like.new_zeros(0, 4 * self.grid_size, 4 * self.grid_size), empty, empty)

    def _prompt_masks(self, layouts: list[MemoryLayout], like: torch.Tensor) -> torch.Tensor:
        """[N, 1, 4g, 4g] float prompts from each track's kept mask (empty where it has none)."""
        side = 4 * self.grid_size
        empty = torch.zeros(side, side, dtype=like.dtype, device=like.device)
        return torch.stack([empty if m.prompt_mask is None else m.prompt_mask.to(like) for m in layouts])[
            :, None
        ]

    # ------------------------------------------------------------------- sizes
    def memory_bytes(self, tracks: list[TrackMemory] | None = None) -> int:
        """Bytes held by ``tracks``; without tracks, the bound for one track with a full memory."""
        if tracks is not None:
            return sum(t.nbytes() for t in tracks)
        return self.config.memory_bytes_per_track(self.grid_size)


def build_tracker(
    image_config: ModelConfig, config: TrackerConfig | None = None, *, memory: str = "perceiver"
) -> TrackerModel:
    """A random-weight tracker for an image model (tiny for the ``*-tiny`` test models), in eval mode."""
    return TrackerModel(image_config, config or default_tracker_config(image_config, memory)).eval()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, antialiased when shrinking (as SAM3 does for masks)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _binary_thresholds(masks: torch.Tensor) -> torch.Tensor | int:
    """Per-mask cut ([N, 1, 1]): 0.5 for a probability mask (float, no negative value), else 0 (logits, bool)."""
    if not masks.dtype.is_floating_point:
        return 0
    probability = masks.flatten(1).amin(dim=1) >= 0
    return torch.where(probability, 0.5, 0.0).to(masks.dtype)[:, None, None]


def _stack_frames(frames: Sequence[TrackerFrame]) -> tuple[torch.Tensor, ...]:
    """(feat, pos, s0, s1) with one row per track, or the single frame's own rows when all tracks share it.

    The graphs broadcast a one-row frame over the tracks, so a shared frame is never copied.
    """
    first = frames[0]
    if all(f is first for f in frames):
        return first.feat, first.pos, first.s0, first.s1
    return tuple(torch.cat([getattr(f, name) for f in frames]) for name in ("feat", "pos", "s0", "s1"))


def _stack_layouts(layouts: list[MemoryLayout], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    return (
        torch.stack([m.features for m in layouts]).to(dtype),
        torch.stack([m.tpos_index for m in layouts]),
        torch.stack([m.pointers for m in layouts]).to(dtype),
        torch.stack([m.pointer_offsets for m in layouts]),
    )
