"""training.propagation: scores that tell a tracker following its own object from one that does not."""

from __future__ import annotations

import pytest
import torch

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.modeling.tracker import TrackerModel, TrackerOutput
from efficientsam3_ros.modeling.tracker_config import TrackerConfig
from efficientsam3_ros.training.propagation import score_propagation


class _Oracle(TrackerModel):
    """A real tiny tracker whose propagate answers with the true mask of object ``(i + shift) % N``."""

    truth: torch.Tensor  # [T, N, S, S]
    shift: int

    def propagate(self, tracks, frame):
        side = 4 * self.grid_size
        truth = self.truth[frame.frame_idx].float()[None]
        masks = (torch.nn.functional.interpolate(truth, size=side, mode="bilinear") > 0.5)[0].float()
        order = [(i + self.shift) % len(tracks) for i in range(len(tracks))]
        logits = masks[order] * 20 - 10
        n = len(tracks)
        return TrackerOutput(logits, torch.ones(n), torch.ones(n))


def _moving_squares(frames: int = 3, size: int = 56) -> torch.Tensor:
    """Two squares drifting right by 2 px a frame: [T, 2, S, S] bool."""
    masks = torch.zeros(frames, 2, size, size, dtype=torch.bool)
    for t in range(frames):
        masks[t, 0, 8:24, 4 + 2 * t : 20 + 2 * t] = True
        masks[t, 1, 32:52, 24 + 2 * t : 44 + 2 * t] = True
    return masks


@pytest.mark.parametrize(("shift", "follows"), [(0, True), (1, False)])
def test_scores_tell_own_object_from_another(shift, follows):
    torch.manual_seed(0)
    image = build_model("es-ev-tiny", input_size=56)
    tracker = _Oracle(image.config, TrackerConfig.tiny("perceiver")).eval()
    truth = _moving_squares()
    tracker.truth, tracker.shift = truth, shift
    pixels = torch.randn(len(truth), 3, 56, 56)
    one_object = (pixels, truth[:, :1])  # skipped: "another object" needs one
    absent_first = truth.clone()
    absent_first[0, 1] = False  # object 1 has no first mask: left out, so one object is left
    scores = score_propagation(image, tracker, [(pixels, truth), one_object, (pixels, absent_first)])
    assert scores.clips == 1 and scores.track_frames == 4  # 2 tracks x 2 propagated frames
    assert scores.follows_its_object is follows
    high, low = (scores.own_dice, scores.other_dice) if follows else (scores.other_dice, scores.own_dice)
    assert high > 0.95 and low < 0.05  # disjoint squares: one matches exactly, the other not at all
    assert scores.own_wins == (1.0 if follows else 0.0)
    assert 0.6 < scores.copy_dice < 1.0  # the squares moved by 2 px: copying is close, not exact
    assert scores.as_dict()["follows_its_object"] is follows and "own best in" in scores.summary()


def test_no_scorable_clip_is_not_a_pass():
    image = build_model("es-ev-tiny", input_size=56)
    tracker = TrackerModel(image.config, TrackerConfig.tiny("perceiver")).eval()
    scores = score_propagation(image, tracker, [(torch.randn(3, 3, 56, 56), _moving_squares()[:, :1])])
    assert scores.track_frames == 0 and not scores.follows_its_object
