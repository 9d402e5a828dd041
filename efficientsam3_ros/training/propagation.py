"""Does a memory tracker follow the object it was given? Propagation scores on clips with masks.

A tracker can lower its training loss by segmenting whatever is salient, whichever object it
was conditioned on. The demo's first stage-2 trackers did exactly that: every track of a
scene propagated the same mask, and each followed another object more closely than its own
(models/demo/MODEL_CARD.md). Loss curves do not show it; these scores do. Every object of a
clip's first frame is conditioned on its true mask, all are propagated through the rest of
the clip, and each propagated mask is compared with its own object, with the best-matching
other object, and with the trivial answer of copying the previous frame's true mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..modeling import EfficientSam3Model
from ..modeling.tracker import TrackerModel

#: clips stage 2 scores its tracker on when it exports it (a few seconds on a CPU)
REPORT_CLIPS = 16


@dataclass(frozen=True)
class PropagationScores:
    """Mean hard Dice over every (track, propagated frame) whose object is visible."""

    clips: int  # clips scored (those with at least two objects in their first frame)
    track_frames: int
    own_dice: float  # with the object the track was conditioned on
    other_dice: float  # with the best-matching other object of the clip
    own_wins: float  # fraction of track-frames where the own object matches best
    copy_dice: float  # the previous frame's true mask as the answer: what a tracker should beat

    @property
    def follows_its_object(self) -> bool:
        """False for a tracker that answers with the same (salient) mask whatever it was given."""
        return self.track_frames > 0 and self.own_dice > self.other_dice

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "follows_its_object": self.follows_its_object}

    def summary(self) -> str:
        return (
            f"propagation over {self.track_frames} track-frames of {self.clips} clips: Dice with its own "
            f"object {self.own_dice:.3f}, with the best other {self.other_dice:.3f} (own best in "
            f"{100 * self.own_wins:.0f} %); copying the previous frame {self.copy_dice:.3f}"
        )


def masks_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bool masks [..., S, S] at the tracker's mask size [..., h, w] (bilinear, then > 0.5)."""
    lead = masks.shape[:-2]
    resized = F.interpolate(masks.float().reshape(-1, 1, *masks.shape[-2:]), size=size, mode="bilinear")
    return (resized > 0.5).reshape(*lead, *size)


def _dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice of one mask [h, w] against K targets [K, h, w] -> [K]."""
    inter = (pred[None] & target).flatten(1).sum(-1).float()
    total = pred.sum().float() + target.flatten(1).sum(-1).float()
    return 2 * inter / total.clamp(min=1)


@torch.no_grad()
def score_propagation(
    image_model: EfficientSam3Model,
    tracker: TrackerModel,
    clips: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> PropagationScores:
    """Condition on every object of frame 0, propagate all through the clip, score each frame.

    ``clips``: (pixels [T, 3, S, S] as the image model takes them, masks [T, N, S, S] bool),
    the SA-V reader's ``pixels`` / ``masks``. Objects absent from frame 0 are left out, and
    clips with fewer than two objects left are skipped: "its own object or another" needs
    another.
    """
    device = next(tracker.parameters()).device
    own, other, copy, clips_scored = [], [], [], 0
    for pixels, masks in clips:
        masks = masks[:, masks[0].flatten(1).any(-1)]  # only objects there is a first mask for
        if masks.shape[1] < 2:
            continue
        clips_scored += 1
        tokens = image_model.encode_image(pixels.to(device)).last_hidden_state
        frames = tracker.encode_frames(tokens, range(len(pixels)))
        masks = masks.to(device).bool()
        tracks = [tracker.new_track() for _ in range(masks.shape[1])]
        tracker.condition_tracks(tracks, [frames[0]] * len(tracks), masks[0])
        for t in range(1, len(frames)):
            out = tracker.propagate(tracks, frames[t])
            truth = masks_at(masks[t - 1 : t + 1], tuple(out.mask_logits.shape[-2:]))
            for i, logits in enumerate(out.mask_logits):
                if not truth[1, i].any():
                    continue  # gone: nothing to follow
                dice = _dice(logits > 0, truth[1])
                own.append(float(dice[i]))
                other.append(float(torch.cat([dice[:i], dice[i + 1 :]]).max()))
                copy.append(float(_dice(truth[0, i], truth[1, i : i + 1])[0]))
    n = len(own)

    def mean(values: list[float]) -> float:
        return sum(values) / n if n else 0.0

    return PropagationScores(
        clips=clips_scored,
        track_frames=n,
        own_dice=mean(own),
        other_dice=mean(other),
        own_wins=mean([float(a > b) for a, b in zip(own, other)]),
        copy_dice=mean(copy),
    )
