"""Review of the model layer: defects found by reading it against its sources, one test each."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.modeling.instance import InstancePredictor
from efficientsam3_ros.modeling.registry import get_config
from efficientsam3_ros.modeling.tracker import TrackerModel
from efficientsam3_ros.modeling.tracker_config import TrackerConfig
from efficientsam3_ros.modeling.tracker_neck import TrackerFrame

pytestmark = pytest.mark.usefixtures("one_thread")


def test_per_box_points_go_to_their_own_box(predictor: InstancePredictor, pixels: torch.Tensor) -> None:
    """``point_coords`` [B, P, 2] with ``box`` [B, 4] (SAM's ``predict_torch`` layout): box i is
    prompted with its own P points, as it would be alone. They were flattened into one list of
    B*P points and every box got all of them, without an error."""
    predictor.set_image(pixels)
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [0.0, 0.0, 50.0, 50.0]])
    points = torch.tensor([[[30.0, 40.0]], [[20.0, 20.0]]])
    labels = torch.tensor([[1], [0]])
    masks, iou, low_res = predictor.predict(point_coords=points, point_labels=labels, box=boxes)
    assert masks.shape == (2, 3, 112, 112) and iou.shape == (2, 3) and low_res.shape == (2, 3, 32, 32)
    for i in range(2):
        alone = predictor.predict(point_coords=points[i], point_labels=labels[i], box=boxes[i])
        torch.testing.assert_close(low_res[i], alone[2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(iou[i], alone[1], atol=1e-5, rtol=1e-5)
    # per-prompt point sets without boxes batch the same way
    _, _, by_points = predictor.predict(point_coords=points, point_labels=labels)
    for i in range(2):
        alone = predictor.predict(point_coords=points[i], point_labels=labels[i])
        torch.testing.assert_close(by_points[i], alone[2], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="point sets"):
        predictor.predict(point_coords=points, point_labels=labels, box=boxes[:1].expand(3, -1))


def test_a_failed_set_image_does_not_leave_the_previous_image(pixels: torch.Tensor) -> None:
    """An image that cannot be encoded (another input size) must not leave the previous image's
    features in place: ``predict`` would answer for the old image, silently."""
    torch.manual_seed(0)
    image_model = build_model("es-ev-tiny")
    tracker = TrackerModel(image_model.config, TrackerConfig.tiny("perceiver")).eval()
    predictor = InstancePredictor(image_model, tracker)
    predictor.set_image(pixels)
    with pytest.raises(ValueError, match="tokens"):
        predictor.set_image(torch.randn(1, 3, 98, 98))
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(box=torch.tensor([0.0, 0.0, 10.0, 10.0]))


def _tiny_frame(tracker: TrackerModel, idx: int) -> TrackerFrame:
    gen = torch.Generator().manual_seed(idx)
    c, g = tracker.config.hidden_size, tracker.grid_size
    shapes = ((1, c, g, g), (1, c, g, g), (1, c // 8, 4 * g, 4 * g), (1, c // 4, 2 * g, 2 * g))
    return TrackerFrame(*(torch.randn(shape, generator=gen) for shape in shapes), frame_idx=idx)


@pytest.mark.parametrize("memory_dtype", ["float32", "bfloat16"])
def test_a_track_holds_only_its_own_memory(memory_dtype: str) -> None:
    """Each tensor a track keeps owns its storage. Rows of the batched outputs (``tokens[j]`` when
    the storage dtype is the compute dtype, every ``pointer[j]``, every conditioning prompt mask)
    were views that pinned the whole batch: with N tracks each kept N tracks' worth (8 tracks,
    float32 memory: 349184 bytes held for 44544 counted), so ``TrackMemory.nbytes()`` and the
    per-track bound undercounted by up to N times, and a removed track's rows stayed allocated."""
    torch.manual_seed(0)
    config = dataclasses.replace(
        TrackerConfig.tiny("perceiver"), memory_dtype=memory_dtype, prompt_previous_mask=True
    )
    tracker = TrackerModel(get_config("es-ev-tiny"), config).eval()
    tracker.sam.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(3.0)
    tracks = [tracker.new_track() for _ in range(8)]
    masks = torch.zeros(8, 112, 112, dtype=torch.bool)
    masks[:, 20:60, 20:60] = True
    with torch.inference_mode():
        tracker.condition_tracks(tracks, [_tiny_frame(tracker, 0)] * 8, masks)
        for idx in range(1, 4):
            tracker.propagate(tracks, _tiny_frame(tracker, idx))
    for track in tracks:
        held = sum(t.untyped_storage().nbytes() for t in track.tensors())
        assert held == track.nbytes()
