"""Start weights of a training run: student, tracker and teacher files made for another model are refused.

A start file is loaded partially on purpose in some places (a stage-1 image export into a
text student, a dense SAM3 tracker into a Perceiver one, an export without the detector
where the teacher fills it, a plain export into a student with zero-started fusion convs);
everywhere else a file that leaves part of the model random is a wrong file, refused with
a ``CheckpointError`` naming it before a tensor is copied (the CLI's exit code 2).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from training_fixtures import CONFIGS, write_tracker_checkpoint

from efficientsam3_ros.modeling import build_model
from efficientsam3_ros.modeling.checkpoint import save_checkpoint
from efficientsam3_ros.modeling.checkpoint_files import CheckpointError, open_checkpoint
from efficientsam3_ros.training.cli import main as cli_main
from efficientsam3_ros.training.config import load_config
from efficientsam3_ros.training.export import export_model, load_weights
from efficientsam3_ros.training.models import (
    TEXT_PREFIXES,
    TRUNK_PREFIX,
    build_student,
    build_teacher,
    build_tracker,
    check_student_weights,
)


@pytest.fixture(scope="module")
def tracker_file(tmp_path_factory):
    return write_tracker_checkpoint(tmp_path_factory.mktemp("tracker") / "tracker.safetensors")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Stage-1-style exports (safetensors + config metadata + sidecar) of two tiny students."""
    folder = tmp_path_factory.mktemp("exports")
    torch.manual_seed(1)
    ev = export_model(build_model("es-ev-tiny"), folder / "ev" / "model.safetensors")
    rv = export_model(build_model("es-rv-tiny"), folder / "rv" / "model.safetensors")
    return {"es-ev-tiny": ev, "es-rv-tiny": rv}


def _config(name: str, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", list(overrides))


def _same(model: torch.nn.Module, path, prefix: str = "") -> bool:
    """Every tensor of the file under ``prefix`` is the model's (and there is at least one)."""
    ckpt = open_checkpoint(path)
    keys = [k for k in ckpt.shapes if k.startswith(prefix)]
    own = model.state_dict()
    return bool(keys) and all(torch.equal(own[k], ckpt.get(k)) for k in keys)


# ----------------------------------------------------------------------------- student
def test_a_student_export_of_another_architecture_is_refused(exports):
    config = _config("tiny_stage2", f"model.student_checkpoint={exports['es-rv-tiny']}")
    with pytest.raises(CheckpointError, match=r"rv.model\.safetensors.*exported for es-rv-tiny.*es-ev-tiny"):
        build_student(config)


def test_a_student_file_without_metadata_that_fills_part_of_the_model_is_refused(exports, tmp_path):
    """No config to compare: the names decide. An es-rv-tiny state dict fills es-ev-tiny's heads
    but none of its trunk, which nothing else fills in stage 2."""
    bare = tmp_path / "rv_bare.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("es-rv-tiny").state_dict().items()}, str(bare))
    config = _config("tiny_stage2", f"model.student_checkpoint={bare}")
    with pytest.raises(CheckpointError, match=r"rv_bare\.safetensors does not fit es-ev-tiny.*backbone"):
        build_student(config)
    # a file holding the right trunk but nothing else is refused too where no teacher fills the rest
    trunk_only = tmp_path / "trunk_only.safetensors"
    ckpt = open_checkpoint(exports["es-ev-tiny"])
    save_file({k: ckpt.get(k) for k in ckpt.shapes if k.startswith(TRUNK_PREFIX)}, str(trunk_only))
    config = _config("tiny_stage2", f"model.student_checkpoint={trunk_only}")
    with pytest.raises(CheckpointError, match="tensors that nothing else fills"):
        build_student(config)


def test_a_student_export_without_the_detector_loads_where_the_teacher_fills_it(exports, tmp_path):
    trunk_only = tmp_path / "trunk_only.safetensors"
    ckpt = open_checkpoint(exports["es-ev-tiny"])
    save_file({k: ckpt.get(k) for k in ckpt.shapes if k.startswith(TRUNK_PREFIX)}, str(trunk_only))
    config = _config("tiny_stage3", f"model.student_checkpoint={trunk_only}")
    teacher = build_teacher(config)
    student = build_student(config, teacher, exclude=(TRUNK_PREFIX,))
    assert _same(student, trunk_only, TRUNK_PREFIX)
    head = "detector.detr_decoder.query_embed.weight"  # a detector tensor: the teacher's
    assert torch.equal(student.state_dict()[head], teacher.state_dict()[head])


def test_a_stage1_image_export_loads_into_a_text_student(exports):
    """Stage 1 text: the image side from a stage-1 export, the MobileCLIP tower is what it trains."""
    config = _config("tiny_stage1_text", f"model.student_checkpoint={exports['es-ev-tiny']}")
    teacher = build_teacher(config)
    student = build_student(config, teacher, exclude=TEXT_PREFIXES, may_lack=TEXT_PREFIXES)
    assert _same(student, exports["es-ev-tiny"], TRUNK_PREFIX)


def test_a_whole_export_loads_at_another_input_size_and_into_a_student_with_fusion_convs(
    exports, high_res_tiny
):
    config = _config(
        "tiny_stage2", f"model.student_checkpoint={exports['es-ev-tiny']}", "model.input_size=140"
    )
    student = build_student(config)
    assert student.config.image_size == 140 and _same(student, exports["es-ev-tiny"])
    # high_res_features' 1x1 convs start at zero: a plain export loads and gives the plain model
    check_student_weights(high_res_tiny(), open_checkpoint(exports["es-ev-tiny"]), set())


# ----------------------------------------------------------------------------- tracker
def test_a_tracker_checkpoint_of_another_model_is_refused(tmp_path):
    image_file = save_checkpoint(build_model("es-ev-tiny"), tmp_path / "image.safetensors")
    config = _config("tiny_stage2", f"model.tracker_checkpoint={image_file}")
    image_model = build_model("es-ev-tiny")
    with pytest.raises(
        CheckpointError, match=r"image\.safetensors does not fit the dense tracker.*image-model"
    ):
        build_tracker(image_model, "dense", config)
    with pytest.raises(CheckpointError, match="none of its"):  # the low-level load refuses to copy nothing
        load_weights(build_tracker(image_model, "dense", _config("tiny_stage2")), image_file)


def test_a_tracker_checkpoint_with_part_of_the_tensors_or_other_shapes_is_refused(tracker_file, tmp_path):
    ckpt = open_checkpoint(tracker_file)
    state = {k: ckpt.get(k) for k in ckpt.shapes}
    half = tmp_path / "half.safetensors"
    save_file({k: v for i, (k, v) in enumerate(sorted(state.items())) if i % 2}, str(half))
    image_model = build_model("es-ev-tiny")
    with pytest.raises(CheckpointError, match=r"half\.safetensors does not fit the perceiver tracker"):
        build_tracker(image_model, "perceiver", _config("tiny_stage2", f"model.tracker_checkpoint={half}"))
    key = "sam.mask_decoder.iou_prediction_head.proj_in.weight"
    wider = tmp_path / "wider.safetensors"
    save_file({**state, key: torch.zeros(state[key].shape[0], state[key].shape[1] + 1)}, str(wider))
    with pytest.raises(
        CheckpointError, match=rf"tracker of es-ev-tiny: 1 has another shape \(e\.g\. \['{key}'\]\)"
    ):
        build_tracker(image_model, "dense", _config("tiny_stage2", f"model.tracker_checkpoint={wider}"))


def test_a_dense_tracker_file_fills_a_dense_tracker_and_a_perceiver_one_but_its_memory(tracker_file):
    config = _config("tiny_stage2", f"model.tracker_checkpoint={tracker_file}")
    image_model = build_model("es-ev-tiny")
    dense = build_tracker(image_model, "dense", config)
    assert _same(dense, tracker_file)
    perceiver = build_tracker(image_model, "perceiver", config)
    ckpt = open_checkpoint(tracker_file)
    shared = [k for k in perceiver.state_dict() if k in ckpt.shapes]
    assert len(shared) > 200 and all(torch.equal(perceiver.state_dict()[k], ckpt.get(k)) for k in shared)
    assert all(
        k.startswith(("memory_codec.", "sam.memory_attention."))
        for k in perceiver.state_dict()
        if k not in ckpt.shapes
    )


def test_the_cli_exits_2_for_a_tracker_checkpoint_of_another_model(tmp_path, capsys):
    image_file = save_checkpoint(build_model("es-ev-tiny"), tmp_path / "image.safetensors")
    code = cli_main(
        [
            "stage2",
            "--config",
            str(CONFIGS / "tiny_stage2.yaml"),
            f"model.tracker_checkpoint={image_file}",
            f"run.output_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "model.tracker_checkpoint" in err and "image.safetensors" in err
