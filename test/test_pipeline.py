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


def test_make_tracker_applies_the_memory_rules_only_with_a_memory():
    """The operating point's memory_tracking rules change a tracker only when a memory runs."""
    from efficientsam3_ros.modeling import OperatingPoint
    from efficientsam3_ros.pipeline.segmenter import make_tracker
    from efficientsam3_ros.tracking import TrackingConfig

    point = OperatingPoint(new_track_threshold=0.4, memory_tracking={"max_missed_frames": 3})
    plain, memory = make_tracker(True, point), make_tracker(True, point, memory=True)
    assert plain.config == TrackingConfig(new_det_threshold=0.4)
    assert memory.config == TrackingConfig(new_det_threshold=0.4, max_missed_frames=3)
    given = TrackingConfig(max_missed_frames=9)
    assert make_tracker(given, point, memory=True).config is given  # the caller's rules win
    assert make_tracker(False, point, memory=True) is None


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


def test_crop_masks_to_boxes_clears_what_lies_outside_each_box():
    from efficientsam3_ros.pipeline.preprocess import BOX_CROP_MARGIN, BOX_CROP_PIXELS, crop_masks_to_boxes

    masks = np.zeros((2, 50, 80), dtype=bool)
    masks[:, 10:20, 10:20] = True  # object A
    masks[:, 30:40, 50:70] = True  # object B, same concept: both queries painted both
    boxes = np.array([[10, 10, 20, 20], [50, 30, 70, 40]], dtype=np.float32)
    cropped = crop_masks_to_boxes(masks, boxes)
    assert cropped[0, 10:20, 10:20].all() and not cropped[0, 30:40, 50:70].any()
    assert cropped[1, 30:40, 50:70].all() and not cropped[1, 10:20, 10:20].any()
    # the margin keeps an edge the box missed by a pixel or two, and nothing further out
    edge = np.zeros((1, 50, 80), dtype=bool)
    edge[0, 15, :] = True
    kept = crop_masks_to_boxes(edge, boxes[:1])[0, 15]
    reach = BOX_CROP_MARGIN * 10 + BOX_CROP_PIXELS  # 3 px either side of the 10 px box
    assert kept[int(10 - reach)] and not kept[int(10 - reach) - 1]
    assert kept[int(20 + reach) - 1] and not kept[int(20 + reach)]
    assert crop_masks_to_boxes(masks[:0], boxes[:0]).shape == (0, 50, 80)


def test_segmenter_runs_at_the_models_operating_point(tiny_model, rgb_image, monkeypatch):
    from efficientsam3_ros.modeling import OperatingPoint
    from efficientsam3_ros.pipeline.preprocess import BOX_CROP_MARGIN, BOX_CROP_PIXELS

    assert ConceptSegmenter(tiny_model).operating_point == {
        "score_threshold": 0.5,
        "mask_threshold": 0.5,
        "crop_masks_to_boxes": False,
    }
    point = OperatingPoint(score_threshold=0.0, new_track_threshold=0.35, crop_masks_to_boxes=True)
    monkeypatch.setattr(tiny_model.config, "operating_point", point)
    own = ConceptSegmenter.from_name("es-ev-tiny", backend="torch")  # a fresh model: SAM3's point
    assert own.score_threshold == 0.5 and own.tracker.config.new_det_threshold == 0.7
    seg = ConceptSegmenter(tiny_model, tracker=None)
    assert (seg.score_threshold, seg.crop_masks_to_boxes) == (0.0, True)
    assert ConceptSegmenter(tiny_model, score_threshold=0.6).score_threshold == 0.6  # the caller wins
    seg.set_concepts(["person", "red mug"])
    instances = seg.process(rgb_image).instances
    assert instances, "score threshold 0 keeps every query"
    height, width = rgb_image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    for inst in instances:  # every mask lies inside its own (grown) box
        x0, y0, x1, y1 = inst.box_xyxy
        gx, gy = BOX_CROP_MARGIN * (x1 - x0) + BOX_CROP_PIXELS, BOX_CROP_MARGIN * (y1 - y0) + BOX_CROP_PIXELS
        inside = (xs >= x0 - gx) & (xs <= x1 + gx) & (ys >= y0 - gy) & (ys <= y1 + gy)
        assert not (inst.mask & ~inside).any()
    uncropped = ConceptSegmenter(tiny_model, tracker=None, crop_masks_to_boxes=False)
    uncropped.set_concepts(["person", "red mug"])
    spilled = [i for i in uncropped.process(rgb_image).instances if i.mask.sum() > 0]
    assert sum(int(i.mask.sum()) for i in spilled) > sum(int(i.mask.sum()) for i in instances)


def test_mask_threshold_is_a_probability_taken_from_the_operating_point(tiny_model, rgb_image, monkeypatch):
    from efficientsam3_ros.modeling import OperatingPoint
    from efficientsam3_ros.pipeline.preprocess import probability_to_logit

    assert probability_to_logit(0.5) == 0.0 and probability_to_logit(0.01) == pytest.approx(-4.595, abs=1e-3)
    assert np.isfinite(probability_to_logit(0.0)) and np.isfinite(probability_to_logit(1.0))
    areas = {}
    for threshold in (0.9, 0.5, 0.01):
        point = OperatingPoint(score_threshold=0.0, mask_threshold=threshold)
        monkeypatch.setattr(tiny_model.config, "operating_point", point)
        seg = ConceptSegmenter(tiny_model, tracker=None)
        assert seg.mask_threshold == threshold and seg.operating_point["mask_threshold"] == threshold
        seg.set_concepts(["person"])
        areas[threshold] = [int(i.mask.sum()) for i in seg.process(rgb_image).instances]
    # the same queries (score threshold 0 keeps all), each mask grows as the threshold falls
    assert len(areas[0.9]) == len(areas[0.5]) == len(areas[0.01]) > 0
    assert all(a <= b <= c for a, b, c in zip(areas[0.9], areas[0.5], areas[0.01]))
    assert sum(areas[0.01]) > sum(areas[0.9])
    assert ConceptSegmenter(tiny_model, tracker=None, mask_threshold=0.3).mask_threshold == 0.3  # caller wins
    with pytest.raises(ValueError, match="mask_threshold is a mask probability strictly between 0 and 1"):
        ConceptSegmenter(tiny_model, tracker=None, mask_threshold=0.0)  # the old logit default
    seg = ConceptSegmenter(tiny_model, tracker=None)
    with pytest.raises(ValueError, match="got 1.5"):
        seg.mask_threshold = 1.5  # checked on every set (the node sets it live)
    assert seg.mask_threshold == 0.01


def test_score_threshold_is_checked_as_the_mask_threshold_is(tiny_model):
    """ConceptSegmenter(score_threshold=5.0) was accepted and dropped every instance without a
    word; every command and the node refused it, the Python API did not."""
    for bad in (5.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="score_threshold must be in"):
            ConceptSegmenter(tiny_model, tracker=None, score_threshold=bad)
    seg = ConceptSegmenter(tiny_model, tracker=None, score_threshold=0.3)
    with pytest.raises(ValueError, match="got 1.5"):
        seg.score_threshold = 1.5  # checked on every set (the node sets it live)
    assert seg.score_threshold == 0.3


def test_from_name_refuses_a_new_track_threshold_it_would_ignore():
    """With tracking=TrackingConfig(...) the config's own new_det_threshold starts tracks, so a
    new_track_threshold beside it was silently ignored (0.7 used, 0.2 asked)."""
    from efficientsam3_ros.tracking import TrackingConfig

    with pytest.raises(ValueError, match="new_track_threshold.*TrackingConfig"):
        ConceptSegmenter.from_name(
            "es-ev-tiny",
            backend="torch-cpu",
            device="cpu",
            tracking=TrackingConfig(),
            new_track_threshold=0.2,
        )


def test_an_exemplar_on_one_concept_leaves_the_others_untouched(segmenter, rgb_image):
    """SAM3's geometry encoder adds a prompt token to every row it gets, padding rows too: concepts
    without exemplars must not share that call."""
    segmenter.set_concepts(["red mug", "person"])
    before = segmenter.process(rgb_image)
    segmenter.add_exemplar(0, np.array([[10, 10, 60, 50]]), [True])
    after = segmenter.process(rgb_image)

    def of(result, cid):
        found = sorted((i for i in result.instances if i.concept_id == cid), key=lambda i: -i.score)
        return (
            [i.score for i in found],
            np.array([i.box_xyxy for i in found]),
            [mask_to_rle(i.mask) for i in found],
        )

    scores, boxes, masks = of(after, 1)
    assert (
        scores == of(before, 1)[0] and np.array_equal(boxes, of(before, 1)[1]) and masks == of(before, 1)[2]
    )
    assert not np.allclose(of(before, 0)[0], of(after, 0)[0])  # the exemplar does act on its own concept


def test_a_new_image_size_resets_the_tracks_instead_of_failing_every_frame(tiny_model, rgb_image):
    from efficientsam3_ros.tracking import ConceptTracker, TrackingConfig

    tracker = ConceptTracker(TrackingConfig(new_det_threshold=0.0))
    segmenter = ConceptSegmenter(tiny_model, score_threshold=0.0, tracker=tracker)
    segmenter.set_concepts(["red mug"])
    first = segmenter.process(rgb_image)
    assert first.instances and tracker.track_ids()
    bigger = np.concatenate([rgb_image, rgb_image], axis=0)  # a camera switched resolution
    for _ in range(2):
        result = segmenter.process(bigger)
        assert result.image_size == bigger.shape[:2] and result.instances


def test_a_repeated_concept_id_is_removed_once(segmenter):
    segmenter.set_concepts(["red mug", "person"])
    segmenter.remove_concepts([1, 1])
    assert segmenter.concepts == {0: "red mug"}


def test_the_text_cache_stays_bounded_and_keeps_recent_phrases(segmenter, monkeypatch):
    from efficientsam3_ros.pipeline import segmenter as segmenter_module

    monkeypatch.setattr(segmenter_module, "TEXT_CACHE_SIZE", 4)
    encoded = []
    encode_text = segmenter.backend.encode_text
    monkeypatch.setattr(
        segmenter.backend, "encode_text", lambda ids, mask: encoded.append(len(ids)) or encode_text(ids, mask)
    )
    for i in range(10):
        segmenter.set_concepts([f"thing {i}"])
    assert len(segmenter._text_cache) == 4 and sum(encoded) == 10
    segmenter.set_concepts(["thing 9"])  # still cached: not encoded again
    assert sum(encoded) == 10


def test_overlay_draws_on_every_frame_process_accepts(segmenter, rgb_image):
    from efficientsam3_ros.pipeline import Instance
    from efficientsam3_ros.pipeline.overlay import draw_overlay

    gray = np.ascontiguousarray(rgb_image[:, :, 1])
    segmenter.set_concepts(["cat"])
    result = segmenter.process(gray)  # the pipeline takes a gray frame
    mask = np.zeros(gray.shape, dtype=bool)
    mask[10:30, 20:60] = True
    drawn_mask = Instance(0, "cat", 0.9, np.array([20, 10, 60, 30], np.float32), mask)
    instances = [*result.instances, drawn_mask]
    drawn = draw_overlay(gray, instances)
    assert drawn.shape == (*gray.shape, 3) and drawn.dtype == np.uint8
    np.testing.assert_array_equal(drawn, draw_overlay(np.repeat(gray[:, :, None], 3, axis=2), instances))
    assert (drawn[20, 40] != gray[20, 40]).any(), "the mask is drawn"
    for bad, fragment in [(gray.astype(np.float32), "uint8"), (np.zeros((4, 4, 4), np.uint8), "HxWx3")]:
        with pytest.raises(ValueError, match=fragment):  # refused as process() refuses it, with its message
            draw_overlay(bad, [])
        with pytest.raises(ValueError, match=fragment):
            segmenter.process(bad)


def _reference_masks(logits: torch.Tensor, size: tuple[int, int], threshold: float, boxes: np.ndarray | None):
    """The whole-frame way: F.interpolate every mask, threshold, then clear what lies outside each grown box."""
    from efficientsam3_ros.pipeline.preprocess import BOX_CROP_MARGIN, BOX_CROP_PIXELS

    values = torch.nn.functional.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)
    values = values[:, 0].numpy()
    masks = values > threshold
    if boxes is not None:
        grow_x = BOX_CROP_MARGIN * (boxes[:, 2] - boxes[:, 0]) + BOX_CROP_PIXELS
        grow_y = BOX_CROP_MARGIN * (boxes[:, 3] - boxes[:, 1]) + BOX_CROP_PIXELS
        ys, xs = np.arange(size[0], dtype=np.float32) + 0.5, np.arange(size[1], dtype=np.float32) + 0.5
        cols = (xs >= boxes[:, :1] - grow_x[:, None]) & (xs <= boxes[:, 2:3] + grow_x[:, None])
        rows = (ys >= boxes[:, 1:2] - grow_y[:, None]) & (ys <= boxes[:, 3:4] + grow_y[:, None])
        masks &= rows[:, :, None] & cols[:, None, :]
    return masks, values


@pytest.mark.parametrize("crop", [False, True])
def test_masks_computed_in_windows_match_the_whole_frame_upsample(crop):
    """Windows (box and logit support) must give what upsampling the whole frame gives.

    Float rounding differs between F.interpolate's fused kernel and the window's separate
    operations, so a pixel may only differ where its value ties the threshold to 1e-4.
    """
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        h, w = int(rng.integers(4, 150)), int(rng.integers(4, 150))  # the frame may be smaller (downsampling)
        size = (int(rng.integers(10, 300)), int(rng.integers(10, 400)))
        n = int(rng.integers(1, 5))
        logits = torch.from_numpy(rng.normal(-3.0, 3.0, (n, h, w)).astype(np.float32))
        if trial % 3 == 0:  # a few blobs on a very negative background, as real masks look
            logits = torch.full((n, h, w), -20.0)
            for i in range(n):
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                logits[i, y : y + 3, x : x + 4] = 5.0
        if trial % 7 == 0:
            logits[0] = 9.0  # everywhere: the whole-frame path
        threshold = float(rng.choice([0.0, -4.595, 2.0]))
        boxes = None
        if crop:
            x0 = rng.uniform(-20, size[1], n)
            y0 = rng.uniform(-20, size[0], n)
            boxes = np.stack(
                [x0, y0, x0 + rng.uniform(0, size[1] / 2, n), y0 + rng.uniform(0, size[0] / 2, n)], axis=1
            ).astype(np.float32)
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, size[1])
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, size[0])
        got = masks_to_image(logits, size, threshold, boxes_xyxy=boxes)
        want, values = _reference_masks(logits, size, threshold, boxes)
        assert got.shape == want.shape and got.dtype == bool
        differ = got != want
        assert np.all(np.abs(values[differ] - threshold) < 1e-4), (
            f"trial {trial}: {differ.sum()} pixels differ"
        )
        checked += want.sum()
    assert checked > 10_000  # the masks were not all empty


def test_crop_masks_to_boxes_matches_the_pixel_centre_rule():
    from efficientsam3_ros.pipeline.preprocess import crop_masks_to_boxes

    rng = np.random.default_rng(1)
    masks = rng.random((20, 60, 90)) > 0.3
    x0, y0 = rng.uniform(-5, 90, 20), rng.uniform(-5, 60, 20)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, 40, 20), y0 + rng.uniform(0, 30, 20)], axis=1)
    boxes = boxes.clip(0, [90, 60, 90, 60]).astype(np.float32)
    boxes[3] = [10, 10, 10, 10]  # a point box keeps its grown 2 px either side
    logits = torch.from_numpy(np.where(masks, 1.0, -1.0).astype(np.float32))
    want, _ = _reference_masks(logits, (60, 90), 0.0, boxes)  # same size: interpolation is the identity
    assert np.array_equal(crop_masks_to_boxes(masks, boxes), want)
    assert crop_masks_to_boxes(masks, boxes)[3].sum() == masks[3, 8:12, 8:12].sum()


def test_bilinear_taps_are_pytorchs_own_weights():
    """The window's weights must be F.interpolate's bit for bit (its source index is one fused
    multiply-add): else a pixel a row away from an exact tap reads the wrong source row."""
    from efficientsam3_ros.pipeline.preprocess import _BilinearTaps

    rng = np.random.default_rng(3)
    pairs = [(50, 2), (1280, 288), (720, 144), (240, 288), (1, 7)]
    pairs += [(int(rng.integers(1, 900)), int(rng.integers(1, 300))) for _ in range(40)]
    for out_size, in_size in pairs:
        eye = torch.eye(in_size)[None, None]  # row j of the input is the j-th unit vector
        want = torch.nn.functional.interpolate(
            eye, size=(out_size, in_size), mode="bilinear", align_corners=False
        )[0, 0]
        got = _BilinearTaps(out_size, in_size, torch.device("cpu")).matrix
        assert torch.equal(got, want), (out_size, in_size)


def test_a_non_finite_logit_stays_where_interpolation_puts_it():
    """A product of the window matrices would spread one NaN / inf over the whole window."""
    logits = torch.full((1, 16, 16), -20.0)
    logits[0, 2:4, 2:4] = 5.0
    logits[0, 10:12, 10:12] = 5.0
    for bad in (float("nan"), float("-inf"), float("inf")):
        bent = logits.clone()
        bent[0, 2, 8] = bad
        got = masks_to_image(bent, (64, 64), 0.0)
        want = masks_to_image(bent, (64, 64), 0.0, whole_frame=True)
        assert np.array_equal(got, want), bad
        assert got.sum() >= 64  # the two blobs are still there


def test_masks_in_windows_run_in_float32_under_autocast():
    rng = np.random.default_rng(4)
    logits = torch.full((3, 48, 48), -20.0)
    for i in range(3):  # small objects: their windows go through the matrix products
        y, x = (int(v) for v in rng.integers(0, 40, 2))
        logits[i, y : y + 6, x : x + 6] = torch.from_numpy(rng.normal(1.0, 3.0, (6, 6)).astype(np.float32))
    want, values = _reference_masks(logits, (200, 300), 0.0, None)
    assert want.sum() > 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = masks_to_image(logits, (200, 300), 0.0)
    assert np.all(np.abs(values[got != want]) < 1e-4)


def test_one_box_per_mask_is_required():
    from efficientsam3_ros.pipeline.preprocess import crop_masks_to_boxes

    logits = torch.zeros((3, 8, 8))
    boxes = np.array([[0, 0, 4, 4]], np.float32)
    with pytest.raises(ValueError, match="1 boxes for 3 masks"):
        masks_to_image(logits, (16, 16), 0.0, boxes_xyxy=boxes)
    with pytest.raises(ValueError, match="1 boxes for 3 masks"):
        crop_masks_to_boxes(np.zeros((3, 16, 16), bool), boxes)
