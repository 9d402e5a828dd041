"""Per-track tracker memory: bounded deques, so nothing grows with the length of the video.

A track holds at most ``max_cond_frames`` conditioning frames (from detections; the latest
ones), the ``num_maskmem - 1`` latest other memory frames and the ``max_object_pointers - 1``
latest other object pointers. SAM3 attends to the ``max_cond_frames`` conditioning frames
closest to the tracked frame; one it leaves out (pushed out here by a newer one) it still
reads as a recent frame while it is among the last ``num_maskmem - 1`` frames, and its pointer
while among the last ``max_object_pointers - 1``. So a pushed-out conditioning frame joins the
recent deques, in frame order, beside the tracked frames. That is all SAM3's tracker reads when
tracking forward (sam3_tracker_base ``_prepare_memory_conditioned_features`` without its
optional memory selection; transformers' port also reads the pointer of every earlier
conditioning frame, however old). Its session keeps every past frame, a robot running for
hours cannot, and dropping the older entries changes nothing SAM3's tracker would see.

``gather(frame_idx)`` lays the memory out as SAM3 does (conditioning frames first, then recent
frames oldest first; conditioning pointers first, then recent pointers nearest first), with the
temporal indices the graphs need. Only the order among conditioning frames differs (here oldest
first, SAM3 nearest first); they share one temporal row, so attention does not see it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class MemoryLayout:
    """One track's memory for one step, ready to stack with other tracks of the same shape."""

    features: torch.Tensor  # [F, T, Dm] memory tokens (storage dtype)
    tpos_index: torch.Tensor  # [F] int64 row of memory_temporal_positional_encoding per frame
    pointers: torch.Tensor  # [P, C] object pointers
    pointer_offsets: torch.Tensor  # [P] float frame distance of each pointer
    prompt_mask: torch.Tensor | None = None  # [4g, 4g] bool: the track's last non-empty mask, if kept

    @property
    def key(self) -> tuple[int, int]:
        """Tracks whose memories share (frames, pointers) counts can run in one batched step."""
        return int(self.features.shape[0]), int(self.pointers.shape[0])


class TrackMemory:
    """Bounded memory of one track. Create with ``TrackerModel.new_track()``."""

    def __init__(self, num_maskmem: int, max_cond_frames: int, max_object_pointers: int):
        self.num_maskmem = num_maskmem
        self.max_object_pointers = max_object_pointers
        self.cond: deque[tuple[int, torch.Tensor, torch.Tensor]] = deque(maxlen=max_cond_frames)
        self.recent: deque[tuple[int, torch.Tensor]] = deque(maxlen=max(num_maskmem - 1, 0))
        self.recent_pointers: deque[tuple[int, torch.Tensor]] = deque(maxlen=max(max_object_pointers - 1, 0))
        self.last_frame_idx: int | None = None
        #: the last non-empty mask [4g, 4g] (bool), kept only for trackers that prompt with it
        self.prompt_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        """Memory frames held (conditioning + recent)."""
        return len(self.cond) + len(self.recent)

    @property
    def is_conditioned(self) -> bool:
        return len(self.cond) > 0

    def add_conditioning(self, frame_idx: int, features: torch.Tensor, pointer: torch.Tensor) -> None:
        """A frame whose mask came from outside (a detection): kept as a conditioning frame.

        The latest ``max_cond_frames`` of them (by frame index) are the conditioning memory; an
        older one joins the recent frames and pointers, as SAM3 reads it (see the module docstring).
        """
        self._drop_recent(frame_idx)
        held = [c for c in self.cond if c[0] != frame_idx] + [(frame_idx, features, pointer)]
        held.sort(key=_frame)
        cut = max(len(held) - (self.cond.maxlen or 0), 0)
        self.cond = deque(held[cut:], maxlen=self.cond.maxlen)
        for f, feats, ptr in held[:cut]:
            self.recent = _insert_in_frame_order(self.recent, f, feats)
            self.recent_pointers = _insert_in_frame_order(self.recent_pointers, f, ptr)
        self.last_frame_idx = frame_idx

    def add_tracked(self, frame_idx: int, features: torch.Tensor, pointer: torch.Tensor) -> None:
        """A frame the tracker predicted itself."""
        self._drop_recent(frame_idx)
        if self.recent.maxlen:
            self.recent.append((frame_idx, features))
        if self.recent_pointers.maxlen:
            self.recent_pointers.append((frame_idx, pointer))
        self.last_frame_idx = frame_idx

    def _drop_recent(self, frame_idx: int) -> None:
        if any(f == frame_idx for f, _ in self.recent):
            self.recent = deque([r for r in self.recent if r[0] != frame_idx], maxlen=self.recent.maxlen)
        if any(f == frame_idx for f, _ in self.recent_pointers):
            kept = [r for r in self.recent_pointers if r[0] != frame_idx]
            self.recent_pointers = deque(kept, maxlen=self.recent_pointers.maxlen)

    def gather(self, frame_idx: int) -> MemoryLayout:
        """The memory SAM3 would attend to when tracking ``frame_idx`` (streaming, forward in time)."""
        if not self.cond:
            raise RuntimeError("track has no conditioning frame; call TrackerModel.condition() first")
        last_slot = self.num_maskmem - 1  # SAM3 indexes conditioning frames' temporal encoding with -1
        frames = [(last_slot, feats) for _, feats, _ in self.cond]
        by_frame = dict(self.recent)
        for offset in range(self.num_maskmem - 1, 0, -1):
            feats = by_frame.get(frame_idx - offset)
            if feats is not None:
                frames.append((offset - 1, feats))
        pointers = [(float(frame_idx - f), ptr) for f, _, ptr in self.cond if f <= frame_idx]
        by_frame_ptr = dict(self.recent_pointers)
        for offset in range(1, self.max_object_pointers):
            ptr = by_frame_ptr.get(frame_idx - offset)
            if ptr is not None:
                pointers.append((float(offset), ptr))
        features = torch.stack([f for _, f in frames])
        device = features.device  # the graphs index and encode with these: on the model's device
        return MemoryLayout(
            features=features,
            tpos_index=torch.tensor([i for i, _ in frames], dtype=torch.int64, device=device),
            pointers=torch.stack([p for _, p in pointers]),
            pointer_offsets=torch.tensor([o for o, _ in pointers], dtype=torch.float32, device=device),
            prompt_mask=self.prompt_mask,
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this track holds (what ``nbytes`` counts)."""
        held = [t for _, feats, ptr in self.cond for t in (feats, ptr)]
        held += [feats for _, feats in self.recent]
        held += [ptr for _, ptr in self.recent_pointers]
        if self.prompt_mask is not None:
            held.append(self.prompt_mask)
        return held

    def nbytes(self) -> int:
        """Bytes of tensor storage held by this track (not counting Python object overhead)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


def _frame(entry: tuple) -> int:
    return entry[0]


def _insert_in_frame_order(entries: deque, frame_idx: int, value: torch.Tensor) -> deque:
    """``entries`` (in frame order) with ``(frame_idx, value)`` added; when full, the oldest frame goes."""
    if not entries.maxlen:
        return entries
    held = sorted([*entries, (frame_idx, value)], key=_frame)
    return deque(held[-entries.maxlen :], maxlen=entries.maxlen)
