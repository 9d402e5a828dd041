"""ConceptSegmenter: preprocessing, concept management, results in original pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from efficientsam3_ros.pipeline import ConceptSegmenter, mask_to_rle, rle_to_mask
from efficientsam3_ros.pipeline.preprocess import boxes_to_image, masks_to_image, preprocess


@pytest.fixture
def segmenter(tiny_model):
    return ConceptSegmenter(tiny_model, score_threshold=0.0)


def test_preprocess_matches_sam3_normalisation():
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    image[..., 0] = 255
    pixels = preprocess(image, 28)
    assert pixels.shape == (1, 3, 28, 28)
    assert torch.allclose(pixels[0, 0], torch.ones(28, 28))  # 255 -> +1
    assert torch.allclose(pixels[0, 1], -torch.ones(28, 28))  # 0 -> -1


def test_preprocess_refuses_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((4, 4, 3), dtype=np.float32), 28)
    with pytest.raises(ValueError, match="zero size"):
        preprocess(np.zeros((0, 4, 3), dtype=np.uint8), 28)
    with pytest.raises(ValueError, match="HxWx3"):
        preprocess(np.zeros((4, 4, 4), dtype=np.uint8), 28)


def test_postprocess_maps_back_to_original_size():
    logits = torch.full((1, 8, 8), -10.0)
    logits[0, :4, :4] = 10.0  # top-left quarter
    masks = masks_to_image(logits, (40, 60))
    assert masks.shape == (1, 40, 60)
    assert masks[0, :18, :28].all() and not masks[0, 22:, 32:].any()
    boxes = boxes_to_image(torch.tensor([[0.0, 0.0, 0.5, 1.2]]), (40, 60))
    np.testing.assert_allclose(boxes[0], [0, 0, 30, 40])  # clipped to the image


def test_rle_round_trip_is_lossless():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.5
    rle = mask_to_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_to_mask(rle), mask)


def test_concept_ids_are_stable(segmenter):
    assert segmenter.set_concepts(["red mug", "person"]) == [0, 1]
    assert segmenter.set_concepts(["person", "box"], append=True) == [1, 2]
    assert segmenter.set_concepts(["box", "cat"]) == [2, 3]  # replace: box keeps its id
    assert segmenter.concepts == {2: "box", 3: "cat"}
    segmenter.remove_concepts([2])
    assert segmenter.concepts == {3: "cat"}
    with pytest.raises(ValueError, match="unknown concept"):
        segmenter.remove_concepts([2])


def test_concept_validation(segmenter):
    with pytest.raises(ValueError, match="empty"):
        segmenter.set_concepts([""])
    with pytest.raises(ValueError, match="limit"):
        segmenter.set_concepts(["x" * 300])
    segmenter.max_concepts = 2
    with pytest.raises(ValueError, match="limit is 2"):
        segmenter.set_concepts(["a", "b", "c"])


def test_process_returns_instances_in_original_pixels(segmenter, rgb_image):
    segmenter.set_concepts(["red mug", "person"])
    result = segmenter.process(rgb_image)
    assert result.image_size == (90, 130)
    assert result.concepts == {0: "red mug", 1: "person"}
    assert len(result.instances) == 2 * 16  # threshold 0: every query of every concept
    for inst in result.instances:
        assert inst.mask.shape == (90, 130) and inst.mask.dtype == bool
        assert 0 <= inst.box_xyxy[0] <= inst.box_xyxy[2] <= 130
        assert 0 <= inst.box_xyxy[1] <= inst.box_xyxy[3] <= 90
    assert {"preprocess", "encode", "detect", "post", "total"} <= set(result.timings_ms)


def test_threshold_filters_and_sorts(segmenter, rgb_image):
    segmenter.set_concepts(["red mug"])
    all_scores = [i.score for i in segmenter.process(rgb_image).instances]
    segmenter.score_threshold = float(np.median(all_scores))
    kept = [i.score for i in segmenter.process(rgb_image).instances]
    assert 0 < len(kept) < len(all_scores)
    assert kept == sorted(kept, reverse=True)


def test_no_concepts_gives_no_instances(segmenter, rgb_image):
    assert segmenter.process(rgb_image).instances == []


def test_exemplars_change_the_result_and_are_validated(segmenter, rgb_image):
    segmenter.set_concepts(["red mug"])
    with pytest.raises(ValueError, match="no frame"):
        segmenter.add_exemplar(0, np.array([[1, 1, 5, 5]]), [True])
    before = segmenter.process(rgb_image)
    with pytest.raises(ValueError, match="outside"):
        segmenter.add_exemplar(0, np.array([[0, 0, 500, 5]]), [True])
    segmenter.add_exemplar(0, np.array([[10, 10, 60, 50]]), [True])
    after = segmenter.process(rgb_image)
    assert not np.allclose([i.score for i in before.instances], [i.score for i in after.instances])


def test_fork_shares_model_and_text_cache_but_not_state(segmenter, rgb_image):
    segmenter.set_concepts(["red mug"])
    other = segmenter.fork()
    assert other.model is segmenter.model and other.concepts == {}
    assert other.set_concepts(["red mug"]) == [0]
    assert other._text_cache is segmenter._text_cache and len(segmenter._text_cache) == 1
    segmenter.process(rgb_image)
    assert segmenter.frames_processed == 1 and other.frames_processed == 0


def test_tracking_keeps_ids_on_a_static_scene(tiny_model, rgb_image):
    from efficientsam3_ros.pipeline import TrackState
    from efficientsam3_ros.pipeline.segmenter import make_tracker
    from efficientsam3_ros.tracking import TrackingConfig

    tracker = make_tracker(TrackingConfig(new_det_threshold=0.0))
    seg = ConceptSegmenter(tiny_model, score_threshold=0.0, tracker=tracker)
    seg.set_concepts(["red mug", "person"])
    first = seg.process(rgb_image).instances
    assert first and all(i.state == TrackState.NEW and i.track_id >= 1 for i in first)
    second = seg.process(rgb_image).instances
    assert {i.track_id for i in second} == {i.track_id for i in first}
    assert all(i.state == TrackState.TRACKED for i in second)
    seg.remove_concepts([0])
    assert all(i.concept_id == 1 for i in seg.process(rgb_image).instances)
    assert seg.fork().tracker is not tracker
    seg.reset()
    third = seg.process(rgb_image).instances
    assert min(i.track_id for i in third) > max(i.track_id for i in first)  # ids never reused
