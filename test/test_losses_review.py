"""Review of the training losses and the Hungarian matcher against hand-computed values.

Each test pins a defect found in review (it failed before the fix beside it): the matcher's
GIoU on degenerate boxes, and stage 2's mask-logit clamp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import generalized_box_iou_loss
from training_fixtures import tiny_concept_setup

from efficientsam3_ros.modeling.tracker import TrackerOutput
from efficientsam3_ros.modeling.tracker_graphs import NO_OBJ_SCORE
from efficientsam3_ros.training.config import ConceptStageOptions
from efficientsam3_ros.training.losses import pairwise_giou
from efficientsam3_ros.training.stage2 import MemoryDistillModule
from efficientsam3_ros.training.stage3 import ConceptModule, hungarian_match


def test_the_matcher_survives_degenerate_boxes():
    """A zero-area target (an annotation without mask or box reads as [0, 0, 0, 0]) against a
    zero-area prediction (a box head whose width underflows: cx +- w / 2 rounds to cx, at any
    width under 0.4 % of the image in bf16) gave a 0 / 0 GIoU: NaN in the cost matrix, and
    scipy's assignment raised, ending the run. The loss's GIoU (torchvision's, with eps) was finite.
    """
    boxes = torch.tensor([[[0.3, 0.3, 0.3, 0.5], [0.1, 0.1, 0.4, 0.4]]])  # [L=1, Q=2, 4]; query 0 is a line
    targets = torch.tensor([[0.3, 0.2, 0.3, 0.6], [0.1, 0.1, 0.4, 0.45]])  # target 0 is a line too
    giou = pairwise_giou(boxes[0], targets)
    assert torch.isfinite(giou).all()
    ((rows, cols),) = hungarian_match(torch.zeros(1, 2), boxes, targets, ConceptStageOptions())
    # the line query overlaps the line target's extent; the proper box is its target's exact fit
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 0, 1: 1}


def test_the_matchers_giou_is_the_losses_giou():
    """The matching cost and the GIoU loss use one definition: cost = -(1 - loss), pair by pair."""
    gen = torch.Generator().manual_seed(0)
    corner = torch.rand(5, 2, generator=gen) * 0.5
    pred = torch.cat([corner, corner + torch.rand(5, 2, generator=gen) * 0.5], 1)
    corner = torch.rand(3, 2, generator=gen) * 0.5
    target = torch.cat([corner, corner + torch.rand(3, 2, generator=gen) * 0.5], 1)
    expected = torch.stack([1.0 - generalized_box_iou_loss(p.expand(3, 4), target) for p in pred])
    assert torch.allclose(pairwise_giou(pred, target), expected, atol=1e-6)
    # hand-computed: [0, 0, 1, 1] vs [2, 0, 3, 1]: IoU 0, hull 3, union 2 -> GIoU -1/3
    assert pairwise_giou(
        torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[2.0, 0, 3, 1]])
    ).item() == pytest.approx(-1 / 3, abs=1e-6)


def _tracker_output(mask_logits: torch.Tensor, scores: list[float]) -> TrackerOutput:
    return TrackerOutput(mask_logits, torch.tensor(scores), torch.full((len(scores),), 0.5))


def test_stage2_corrects_a_confidently_wrong_pixel_of_a_present_track():
    """The clamp to +-32 meant for absent-scored tracks (mask = NO_OBJ_SCORE) ran on every track,
    and a clamp passes no gradient outside its range: a pixel a present-scored track had pushed
    past -32 where the object is (or past +32 where it is not) was never corrected.

    Hand-computed: the focal loss (alpha 0.25, gamma 2) of logit x on a positive pixel is
    0.25 (1 - s(x))^2 softplus(-x), whose slope at x = -40 is -0.25 (1 - s)^3 + O(s) = -0.25; the
    mean over the frame's 2 x 4 x 4 pixels makes it -0.25 / 32.
    """
    logits = torch.full((2, 4, 4), -8.0)
    logits[0, 1, 1] = -40.0  # present track, object pixel, confidently wrong
    logits[1] = NO_OBJ_SCORE  # absent-scored track: the tracker wrote the constant
    logits.requires_grad_(True)
    target = torch.zeros(2, 4, 4)
    target[0, 1, 1] = 1.0
    target[1, :2] = 1.0  # the object is there, the track scored it absent
    present = torch.tensor([True, True])
    terms = MemoryDistillModule._frame_losses(_tracker_output(logits, [3.0, -2.0]), target, present)
    terms["focal"].backward()
    assert logits.grad[0, 1, 1].item() == pytest.approx(-0.25 / 32, rel=1e-3)
    # the absent-scored track's constant mask still scores as clamped: O(1), not 0.25 x 1024 a pixel
    focal = terms["focal"].item() * 32
    pixel_0 = 0.25 * 40.0  # the wrong pixel: alpha * softplus(40) (its (1 - s)^2 is 1)
    absent = 8 * 0.25 * 32.0  # 8 object pixels at the clamped -32
    assert focal == pytest.approx(pixel_0 + absent, rel=1e-3)
    assert np.isfinite(terms["dice"].item())


def test_stage3_scores_a_batch_as_the_mean_of_its_datapoints_alone(tmp_path, one_thread):
    """Every stage-3 term is a per-datapoint mean (the matched ones over the positives): a batch of
    two present phrases scores the mean of the two alone. A positive beside a negative does not:
    the matched losses average over the positives only (as DETR normalises by the batch's boxes),
    so there they weigh twice what they weigh averaged over two batches of one.
    """
    model, dataset = tiny_concept_setup(tmp_path, num_images=2)
    samples = [dataset[i] for i in range(len(dataset))]
    pos = [s for s in samples if len(s["boxes"])][:2]
    neg = next(s for s in samples if not len(s["boxes"]))
    module = ConceptModule(model, None, ConceptStageOptions(focal_alpha=0.5)).eval()
    gen = torch.Generator()
    with torch.no_grad():
        (a, logs_a), (b, logs_b) = module(pos[:1], gen), module(pos[1:], gen)
        both, logs = module(pos, gen)
        alone_neg, logs_neg = module([neg], gen)
        mixed, logs_mixed = module([pos[0], neg], gen)
    assert both.item() == pytest.approx((a.item() + b.item()) / 2, rel=1e-5)
    for key, value in logs.items():
        assert value == pytest.approx((logs_a[key] + logs_b[key]) / 2, rel=1e-5, abs=1e-7), key
    assert logs_neg["class"] == 0.0 and logs_neg["bbox"] == 0.0  # a negative: the presence terms alone
    for key in ("class", "bbox", "giou", "mask_dice", "mask_focal", "aux"):
        assert logs_mixed[key] == pytest.approx(logs_a[key], rel=1e-5, abs=1e-7), key
    assert logs_mixed["presence"] == pytest.approx((logs_a["presence"] + logs_neg["presence"]) / 2, rel=1e-5)
