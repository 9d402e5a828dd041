"""``eval-images`` on a small COCO / SA-Co fixture: plumbing with a real tiny model, numbers with oracles."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from efficientsam3_ros.evaluation import images as ev
from efficientsam3_ros.modeling.efficientsam3 import DetectorOutput
from efficientsam3_ros.modeling.registry import build_model
from efficientsam3_ros.synthetic.writers import write_coco


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"), seed=3, num_images=2, per_phrase=False)


@pytest.fixture(scope="module")
def saco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("saco"), seed=3, num_images=2, per_phrase=True)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_model("es-ev-tiny")


def _gt_masks(ann: Path) -> tuple[dict, dict]:
    data = json.loads(ann.read_text())
    images = {im["id"]: im for im in data["images"]}
    masks: dict[int, list[tuple[dict, np.ndarray]]] = {}
    for a in data["annotations"]:
        im = images[a["image_id"]]
        rle = ev._gt_rle(a, im["height"], im["width"])
        masks.setdefault(a["image_id"], []).append((a, mask_utils.decode(rle).astype(bool)))
    return data, masks


class _Oracle:
    """Stands in for the detector: answers with ground-truth masks, so the metrics have known values."""

    def __init__(self, model, ann: Path, mode: str) -> None:
        self.model, self.mode = model, mode
        self.data, self.masks = _gt_masks(ann)
        self.current: int | None = None
        self.config = model.config

    def parameters(self):
        return self.model.parameters()

    def eval(self):
        return self

    def encode_concepts(self, phrases):
        return self.model.encode_concepts(phrases)

    def encode_image(self, pixels):  # the file being evaluated is the next one in dataset order
        order = list(dict.fromkeys(im["file_name"] for im in self.data["images"]))
        index = 0 if self.current is None else order.index(self.current) + 1
        self.current = order[index]
        return None

    def _ids(self) -> list[int]:
        return [im["id"] for im in self.data["images"] if im["file_name"] == self.current]

    def detect(self, features, concepts, input_boxes=None, input_boxes_labels=None) -> DetectorOutput:
        rows = []
        instances = [pair for i in self._ids() for pair in self.masks.get(i, [])]
        if self.mode == "box":  # the instance whose box was given, as a rectangle mask
            im = next(im for im in self.data["images"] if im["file_name"] == self.current)
            h, w = im["height"], im["width"]
            for cx, cy, bw, bh in input_boxes[:, 0].tolist():
                m = np.zeros((h, w), bool)
                m[
                    round((cy - bh / 2) * h) : round((cy + bh / 2) * h),
                    round((cx - bw / 2) * w) : round((cx + bw / 2) * w),
                ] = True
                rows.append([m])
        else:
            names = {c["id"]: c["name"] for c in self.data["categories"]}
            for j, label in enumerate(concepts.labels):
                if "text_input" in self.data["images"][0]:
                    mine = [m for a, m in self.masks.get(self._ids()[j], [])]
                else:
                    mine = [m for a, m in instances if names[a["category_id"]] == label]
                rows.append(mine)
        q = max(1, max(len(r) for r in rows)) + 1
        im = next(im for im in self.data["images"] if im["file_name"] == self.current)
        h, w = im["height"], im["width"]
        masks = torch.full((len(rows), q, h, w), -10.0)
        logits = torch.full((len(rows), q), -10.0)
        for k, row in enumerate(rows):
            for i, m in enumerate(row):
                masks[k, i][torch.from_numpy(m)] = 10.0
                logits[k, i] = 10.0
        if self.mode == "wrong":  # shift every mask: the metrics must drop
            masks = torch.roll(masks, shifts=(h // 3, w // 3), dims=(2, 3))
        return DetectorOutput(masks, torch.zeros(len(rows), q, 4), logits, torch.full((len(rows), 1), 10.0))


def test_box_task_real_model_plumbing(tiny, coco: Path) -> None:
    result = ev.evaluate_images(tiny, coco, coco.parent, task="box", limit=1)
    data = json.loads(coco.read_text())
    first = data["images"][0]["id"]
    assert result["instances"] == sum(
        1 for a in data["annotations"] if a["image_id"] == first and not a["iscrowd"]
    )
    assert 0.0 <= result["mean_iou"] <= 1.0 and result["images"] == 1


def test_box_task_oracle_equals_box_vs_mask_iou(tiny, coco: Path) -> None:
    data, masks = _gt_masks(coco)
    expected = []
    for pairs in masks.values():
        for a, m in pairs:
            x, y, bw, bh = a["bbox"]
            box = np.zeros_like(m)
            box[round(y) : round(y + bh), round(x) : round(x + bw)] = True
            expected.append((m & box).sum() / (m | box).sum())
    result = ev.evaluate_images(_Oracle(tiny, coco, "box"), coco, coco.parent, task="box")
    assert result["instances"] == len(expected)
    assert result["mean_iou"] == pytest.approx(float(np.mean(expected)), abs=0.02)


@pytest.mark.parametrize("fixture", ["coco", "saco"])
def test_concept_task_oracle_is_perfect_and_wrong_masks_are_not(tiny, fixture: str, request) -> None:
    ann = request.getfixturevalue(fixture)
    good = ev.evaluate_images(
        _Oracle(tiny, ann, "oracle"), ann, ann.parent, task="concept", score_threshold=0.5
    )
    assert good["format"] == ("sa-co" if fixture == "saco" else "coco")
    assert good["AP"] == pytest.approx(1.0) and good["matched_mean_iou"] == pytest.approx(1.0)
    assert good["matched"] == good["instances"]
    bad = ev.evaluate_images(
        _Oracle(tiny, ann, "wrong"), ann, ann.parent, task="concept", score_threshold=0.5
    )
    assert bad["AP"] < 0.5
    assert bad["matched_mean_iou"] is None or bad["matched_mean_iou"] < 0.9


def test_concept_task_reads_masks_at_the_models_mask_threshold(tiny, saco: Path, monkeypatch) -> None:
    from efficientsam3_ros.modeling import OperatingPoint

    # the oracle's mask logits are +10 on the object: a threshold above sigmoid(10) leaves nothing
    monkeypatch.setattr(tiny.config, "operating_point", OperatingPoint(mask_threshold=0.99999))
    empty = ev.evaluate_images(_Oracle(tiny, saco, "oracle"), saco, saco.parent, task="concept")
    assert empty["AP"] < 0.1 and empty["matched_mean_iou"] is None
    monkeypatch.setattr(tiny.config, "operating_point", OperatingPoint(mask_threshold=0.99))
    kept = ev.evaluate_images(_Oracle(tiny, saco, "oracle"), saco, saco.parent, task="concept")
    assert kept["AP"] == pytest.approx(1.0)


def test_concept_task_real_model_and_cli(tiny, saco: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from efficientsam3_ros.commands import eval_images

    monkeypatch.setattr("efficientsam3_ros.zoo.resolve_model", lambda *a, **k: tiny)
    parser = argparse.ArgumentParser()
    eval_images.add_arguments(parser)
    out = tmp_path / "r.json"
    argv = ["--model", "es-ev-tiny", "--ann", str(saco), "--images", str(saco.parent), "--task", "concept"]
    assert eval_images.run(parser.parse_args([*argv, "--limit", "1", "--out", str(out)])) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "concept" and result["images"] == 1 and result["model"] == "es-ev-tiny"
    assert "mask AP" in capsys.readouterr().out


def test_missing_image_is_a_clear_error(tiny, coco: Path, tmp_path: Path) -> None:
    with pytest.raises(ev.EvalImagesError, match="image not found"):
        ev.evaluate_images(tiny, coco, tmp_path, task="box", limit=1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--limit", "-1"], "--limit must be >= 1"),  # it dropped the last image without a word
        (["--limit", "0"], "--limit must be >= 1"),
        (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
        (["--device", "cuda:99"], "CUDA device"),
        (["--score-threshold", "2"], r"--score-threshold must be in \[0, 1\]"),
    ],
    ids=" ".join,
)
def test_cli_refuses_a_bad_flag_before_the_model_loads(
    coco: Path, tmp_path: Path, capsys, monkeypatch, flags: list[str], message: str
) -> None:
    from efficientsam3_ros.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr("efficientsam3_ros.zoo.resolve_model", no_model)
    out = tmp_path / "r.json"
    argv = ["eval-images", "--model", "es-ev-tiny", "--ann", str(coco), "--images", str(coco.parent)]
    code = main([*argv, "--task", "box", "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not out.exists()
