"""Stage 3's batch-wide losses against their per-datapoint definition, and the loss helpers they use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_fixtures import WORLD, tiny_concept_setup

from efficientsam3_ros.synthetic import write_saco
from efficientsam3_ros.training.config import ConceptStageOptions
from efficientsam3_ros.training.data.common import RecentImages, load_image
from efficientsam3_ros.training.losses import (
    box_losses,
    dice_loss,
    segment_mean,
    sigmoid_focal_loss,
    weighted_sum,
)
from efficientsam3_ros.training.stage3 import ConceptModule, detect_batch, hungarian_match


def test_segment_mean_averages_each_segment_and_leaves_empty_ones_at_zero():
    values = torch.tensor([1.0, 3.0, 10.0, 4.0])
    segments = torch.tensor([0, 0, 2, 2])
    assert segment_mean(values, segments, 4).tolist() == [2.0, 0.0, 7.0, 0.0]


def test_per_item_losses_average_to_the_scalar_ones():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 8, generator=gen)
    targets = (torch.rand(3, 8, 8, generator=gen) > 0.5).float()
    assert dice_loss(logits, targets, reduction="none").shape == (3,)
    assert torch.allclose(dice_loss(logits, targets, reduction="none").mean(), dice_loss(logits, targets))
    focal = sigmoid_focal_loss(logits, targets, 0.5, 2.0, reduction="none")
    assert focal.shape == logits.shape
    assert torch.allclose(focal.mean(), sigmoid_focal_loss(logits, targets, 0.5, 2.0))
    corner = torch.rand(5, 2, generator=gen) * 0.5
    pred, target = torch.cat([corner, corner + 0.3], 1), torch.cat([corner + 0.05, corner + 0.4], 1)
    l1, giou = box_losses(pred, target, reduction="none")
    assert l1.shape == giou.shape == (5,)
    mean_l1, mean_giou = box_losses(pred, target)
    assert torch.allclose(mean_l1, F.l1_loss(pred, target)) and torch.allclose(l1.mean(), mean_l1)
    assert torch.allclose(giou.mean(), mean_giou)
    with pytest.raises(ValueError, match="reduction must be"):
        dice_loss(logits, targets, reduction="sum")


def _per_datapoint_reference(module: ConceptModule, batch: list[dict]) -> dict[str, float]:
    """Stage 3's losses as defined: every datapoint and decoder layer matched and scored on its own."""
    opts, model = module.options, module.student
    found = detect_batch(model, batch)
    out, all_logits, all_boxes = found.out, found.all_logits, found.all_boxes
    size = found.images.shape[-1]
    last = all_logits.shape[0] - 1
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("class", "bbox", "giou", "mask_dice", "mask_focal")
    }
    aux_parts = []
    for b, sample in enumerate(batch):
        gt = sample["boxes"] / size
        if not len(gt):
            continue
        per_layer = []
        for layer in range(last + 1):
            logits = out.pred_logits[b] if layer == last else all_logits[layer, b]
            boxes = out.pred_boxes[b] if layer == last else all_boxes[layer, b]
            ((rows, cols),) = hungarian_match(logits[None], boxes[None], gt, opts)
            labels = torch.zeros_like(logits)
            labels[rows] = 1.0
            cls = (
                sigmoid_focal_loss(logits, labels, opts.focal_alpha, opts.focal_gamma)
                * len(logits)
                / len(cols)
            )
            l1, giou = box_losses(boxes[rows], gt[cols])
            per_layer.append({"class": cls, "bbox": l1, "giou": giou})
        for key in ("class", "bbox", "giou"):
            parts[key].append(per_layer[last][key])
        earlier = per_layer[:last]
        weights = {"class": opts.class_weight, "bbox": opts.bbox_weight, "giou": opts.giou_weight}
        aux_parts.append(weighted_sum({k: sum(p[k] for p in earlier) for k in weights}, weights))
        gt_masks = F.interpolate(
            sample["masks"].float()[None], size=out.pred_masks.shape[-2:], mode="bilinear"
        )[0]
        gt_masks = (gt_masks[cols] > 0.5).float()
        parts["mask_dice"].append(dice_loss(out.pred_masks[b, rows], gt_masks))
        parts["mask_focal"].append(
            sigmoid_focal_loss(out.pred_masks[b, rows], gt_masks, opts.focal_alpha, opts.focal_gamma)
        )
    means = {k: float(torch.stack(v).mean()) for k, v in parts.items()}
    means["aux"] = float(torch.stack(aux_parts).mean())
    return means


def test_batch_wide_losses_equal_the_per_datapoint_definition(tmp_path, one_thread):
    model, dataset = tiny_concept_setup(tmp_path, num_images=4)
    batch = [dataset[i] for i in range(4, 16)]  # 12 datapoints as the demo's batch; a few images
    counts = [len(s["boxes"]) for s in batch]
    assert 0 in counts and len({c for c in counts if c}) > 1  # negatives and varying instance counts
    # three decoder layers: two auxiliary ones, so summing them over layers is checked too;
    # eval: no dropout, so both computations see the same outputs; the losses do not depend on it
    module = ConceptModule(model, None, ConceptStageOptions(focal_alpha=0.5)).eval()
    with torch.no_grad():
        _, logs = module(batch, torch.Generator().manual_seed(0))
        reference = _per_datapoint_reference(module, batch)
    for key, value in reference.items():
        assert logs[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_recent_images_decode_each_image_once_while_it_is_recent(tmp_path):
    write_saco(tmp_path / "saco", seed=3, num_images=3, config=WORLD)
    paths = sorted((tmp_path / "saco").rglob("*.jpg"))[:3]
    recent = RecentImages(capacity=2)
    first = recent(paths[0])
    assert np.array_equal(first, load_image(paths[0])) and not first.flags.writeable
    assert recent(paths[0]) is first  # a hit: no second decode
    recent(paths[1])
    recent(paths[2])  # evicts paths[0], the least recently used
    again = recent(paths[0])
    assert again is not first and np.array_equal(again, first)
