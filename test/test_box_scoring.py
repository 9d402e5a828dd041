"""The box-scoring head (ModelConfig.box_scoring): RoIAlign by grid_sample, a zero start that
changes nothing, one correction on every detector path (detect, training, ONNX), its config, and
a stage-3 run that trains it alone."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torchvision.ops import roi_align
from training_fixtures import CONFIGS, drop_ratio, tiny_concept_setup, write_datasets

from efficientsam3_ros.modeling import get_config
from efficientsam3_ros.modeling.box_scoring import roi_grid_sample
from efficientsam3_ros.modeling.checkpoint import save_checkpoint
from efficientsam3_ros.modeling.checkpoint_files import CheckpointError
from efficientsam3_ros.modeling.config import ModelConfig
from efficientsam3_ros.training.config import ConceptStageOptions, ConfigError, load_config
from efficientsam3_ros.training.stage3 import ConceptModule
from efficientsam3_ros.training.trainer import train

HEAD = {"roi_size": 3, "samples": 2, "hidden_size": 16}


def _random_boxes(k: int, b: int, generator: torch.Generator) -> torch.Tensor:
    corners = torch.rand(k, b, 2, 2, generator=generator)
    return torch.cat([corners.min(2).values, corners.max(2).values], -1)  # [K, B, 4] xyxy in [0, 1]


@pytest.mark.parametrize("images", [1, 3])
@pytest.mark.parametrize(("roi_size", "samples"), [(4, 2), (3, 1), (2, 3)])
def test_roi_grid_sample_is_torchvisions_roi_align(images, roi_size, samples):
    generator = torch.Generator().manual_seed(roi_size * 10 + samples)
    k, b, c, h, w = 3, 7, 5, 16, 20
    features = torch.randn(images, c, h, w, generator=generator)
    boxes = _random_boxes(k, b, generator)
    got = roi_grid_sample(features, boxes, roi_size, samples)
    image = torch.arange(k).repeat_interleave(b)[:, None].float() * (images > 1)
    rois = torch.cat([image, (boxes * torch.tensor([w, h, w, h])).reshape(-1, 4)], 1)
    want = roi_align(
        features, rois, output_size=roi_size, spatial_scale=1.0, sampling_ratio=samples, aligned=True
    )
    assert got.shape == (k, b, c * roi_size**2)
    torch.testing.assert_close(got.reshape(k * b, c, roi_size, roi_size), want, rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def frame():
    torch.manual_seed(1)
    return torch.rand(1, 3, 112, 112) * 2 - 1


def test_a_new_head_changes_no_output_until_it_trains(frame, box_scoring_tiny):
    plain, headed = box_scoring_tiny(), box_scoring_tiny(HEAD)
    # built last: every other weight drew the same random start
    plain_state, headed_state = plain.state_dict(), headed.state_dict()
    assert set(headed_state) - set(plain_state) == {k for k in headed_state if k.startswith("box_scoring.")}
    for name, tensor in plain_state.items():
        torch.testing.assert_close(headed_state[name], tensor, rtol=0, atol=0)
    phrases = ["red mug", "person", "chair"]
    with torch.no_grad():
        features = headed.encode_image(frame)
        concepts = headed.encode_concepts(phrases)
        before = plain.detect(features, concepts)
        zero = headed.detect(features, concepts)
        torch.testing.assert_close(zero.pred_logits, before.pred_logits, rtol=0, atol=0)
        torch.nn.init.normal_(headed.box_scoring.roi_mlp[-1].weight)
        moved = headed.detect(features, concepts)
        one_shot = headed(frame, phrases)
    assert (moved.pred_logits - before.pred_logits).abs().max() > 1e-2  # the head reads the boxes
    for field in ("pred_boxes", "pred_masks", "presence_logits"):  # and only the logits move
        torch.testing.assert_close(getattr(moved, field), getattr(before, field), rtol=0, atol=0)
    torch.testing.assert_close(one_shot.pred_logits, moved.pred_logits, rtol=1e-5, atol=1e-5)


def test_training_and_detect_apply_the_head_alike(frame, box_scoring_tiny):
    """Stage 3's forward (run_detector) rescoring from the levels it encoded, as detect() does."""
    from efficientsam3_ros.training.stage3 import run_detector

    model = box_scoring_tiny(HEAD)
    phrases = ["red mug", "person"]
    ids, mask = model.tokenize(phrases)
    with torch.no_grad():
        torch.nn.init.normal_(model.box_scoring.roi_mlp[-1].weight)
        trained = run_detector(model, frame.expand(2, -1, -1, -1), phrases)
        served = model.detect(model.encode_image(frame), model.encode_concepts(phrases))
        plain = model.detector(
            pixel_values=frame.expand(2, -1, -1, -1),
            input_ids=ids,
            attention_mask=mask,
        )
    torch.testing.assert_close(trained.pred_logits, served.pred_logits, rtol=1e-5, atol=1e-5)
    assert (trained.pred_logits - plain.pred_logits).abs().max() > 1e-2  # the head was applied


def test_boxes_past_the_image_are_clamped_before_pooling():
    from efficientsam3_ros.modeling.box_scoring import BoxScoring

    torch.manual_seed(0)
    head = BoxScoring(8, roi_size=2, samples=2, hidden_size=8)
    torch.nn.init.normal_(head.roi_mlp[-1].weight)
    finest, text, mask = torch.randn(1, 8, 12, 12), torch.randn(2, 3, 8), torch.ones(2, 3)
    inside = torch.tensor([[[0.0, 0.2, 0.5, 1.0]], [[0.6, 0.0, 1.0, 0.4]]])
    past = inside + torch.tensor([[[-0.3, 0.0, 0.0, 0.4]], [[0.0, -0.2, 0.5, 0.0]]])
    logits = torch.zeros(2, 1)
    torch.testing.assert_close(
        head(logits, past, finest, text, mask), head(logits, inside, finest, text, mask)
    )


def test_box_scoring_config_is_checked_and_round_trips():
    config = get_config("es-ev-tiny").with_box_scoring({"roi_size": 4})
    again = ModelConfig.from_dict(config.to_dict())
    assert again.box_scoring == {"roi_size": 4}
    old = {k: v for k, v in config.to_dict().items() if k != "box_scoring"}  # a file from before the head
    assert ModelConfig.from_dict(old).box_scoring == {}
    with pytest.raises(ValueError, match=r"unknown model config box_scoring keys \['roi'\]"):
        get_config("es-ev-tiny").with_box_scoring({"roi": 4})
    with pytest.raises(ValueError, match="must be positive integers"):
        get_config("es-ev-tiny").with_box_scoring({"samples": 0})
    with pytest.raises(ValueError, match="must be a mapping"):
        ModelConfig.from_dict({**config.to_dict(), "box_scoring": 4})
    with pytest.raises(ConfigError, match=r"model.box_scoring.*unknown model config box_scoring keys"):
        load_config(CONFIGS / "tiny_stage3.yaml", ["model.box_scoring={roi: 4}"])
    with pytest.raises(ConfigError, match="options.negative_class_weight"):
        load_config(CONFIGS / "tiny_stage3.yaml", ["options.negative_class_weight=-1"])


def test_negative_class_loss_scores_the_queries_of_absent_phrases(tmp_path, one_thread):
    model, dataset = tiny_concept_setup(tmp_path, num_images=4)
    batch = [dataset[i] for i in range(4, 16)]
    assert any(len(s["boxes"]) == 0 for s in batch)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        off_loss, off = ConceptModule(model, None, ConceptStageOptions(focal_alpha=0.5)).eval()(
            batch, generator
        )
        options = ConceptStageOptions(focal_alpha=0.5, negative_class_weight=2.0)
        on_loss, on = ConceptModule(model, None, options).eval()(batch, generator)
    assert "negative_class" not in off and on["negative_class"] > 0
    expected = off_loss + options.class_weight * 2.0 * on["negative_class"]
    torch.testing.assert_close(on_loss, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def saco(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("box-scoring-data"))["saco"]


def test_stage3_trains_the_head_alone_from_a_plain_student(saco, tmp_path, one_thread, box_scoring_tiny):
    """The demo recipe's last image step: the head added to a trained student, nothing else moving."""
    start = save_checkpoint(box_scoring_tiny(), tmp_path / "student.safetensors")
    config = load_config(
        CONFIGS / "tiny_stage3.yaml",
        [
            f"run.output_dir={tmp_path / 'run'}",
            f"data.root={saco}",
            f"model.student_checkpoint={start}",
            "model.box_scoring={roi_size: 3, hidden_size: 16}",
            "options.distill_weight=0",
            "options.negative_class_weight=1",
            "options.train=[box_scoring.*]",
            "optim.lr=1e-2",
        ],
    )
    result = train(config)
    assert drop_ratio(result.losses()) < 0.95  # the head alone lowers the loss: 0.85 (1.00 at lr 1e-9)
    before, after = load_file(str(start)), load_file(str(result.export_path))
    head = {k for k in after if k.startswith("box_scoring.")}
    assert head and set(after) - set(before) == head
    for name, tensor in before.items():  # frozen: bit for bit, BatchNorm statistics included
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)
    assert after["box_scoring.roi_mlp.2.weight"].abs().max() > 0
    from efficientsam3_ros.zoo.resolve import resolve_model

    # the export names its head in its config: loaded by path, or by registry name + file
    for loaded in (
        resolve_model(str(result.export_path)),
        resolve_model("es-ev-tiny", str(result.export_path)),
    ):
        assert loaded.config.box_scoring == {"roi_size": 3, "hidden_size": 16}
        torch.testing.assert_close(
            loaded.state_dict()["box_scoring.roi_mlp.2.weight"], after["box_scoring.roi_mlp.2.weight"]
        )


def test_a_start_file_with_the_head_is_not_dropped_silently(saco, tmp_path, box_scoring_tiny):
    start = save_checkpoint(box_scoring_tiny(HEAD), tmp_path / "student.safetensors")
    overrides = [
        f"run.output_dir={tmp_path / 'run'}",
        f"data.root={saco}",
        f"model.student_checkpoint={start}",
    ]
    config = load_config(CONFIGS / "tiny_stage3.yaml", [*overrides, "options.distill_weight=0"])
    from efficientsam3_ros.training.models import build_student

    with pytest.raises(CheckpointError, match=r"set model.box_scoring: \{'roi_size': 3"):
        build_student(config)
    dropped = load_config(CONFIGS / "tiny_stage3.yaml", [*overrides, "model.box_scoring={}"])
    assert build_student(dropped).box_scoring is None
    other = load_config(CONFIGS / "tiny_stage3.yaml", [*overrides, "model.box_scoring={roi_size: 3}"])
    with pytest.raises(CheckpointError, match=r"model.box_scoring asks for \{'roi_size': 3\}"):
        build_student(other)  # samples 2 / hidden 128 are not the file's 2 / 16
    kept = load_config(
        CONFIGS / "tiny_stage3.yaml", [*overrides, "model.box_scoring={roi_size: 3, hidden_size: 16}"]
    )
    assert build_student(kept).config.box_scoring == {"roi_size": 3, "hidden_size": 16}


def test_a_file_with_the_head_loads_under_a_zoo_name_and_verifies(
    tmp_path, monkeypatch, capsys, box_scoring_tiny
):
    """A zoo name (or registry name) + a fine-tuned file: the file's head is taken, as its input size is."""
    import yaml

    from efficientsam3_ros.cli import main
    from efficientsam3_ros.zoo.resolve import resolve_model

    zoo = tmp_path / "zoo.yaml"
    entry = {
        "format": "efficientsam3_ros",
        "architecture": "es-ev-tiny",
        "source": {"hub": "no/ne", "file": "x"},
    }
    zoo.write_text(yaml.safe_dump({"models": {"tiny-zoo": entry}}))
    monkeypatch.setenv("EFFICIENTSAM3_ZOO", str(zoo))
    model = box_scoring_tiny(HEAD)
    path = save_checkpoint(model, tmp_path / "tuned.safetensors")
    for name in ("tiny-zoo", "es-ev-tiny"):
        assert resolve_model(name, str(path)).config.box_scoring == HEAD
    assert main(["models", "verify", str(path), "--model", "tiny-zoo"]) == 0
    assert "OK" in capsys.readouterr().out
