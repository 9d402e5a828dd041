"""Released-checkpoint conversion, end to end: the layouts upstream code writes, and what a wrong file says.

Key names come from the reference manifests (test_reference); shapes are shrunk to the tiny
teacher so the files are small. Facts checked against upstream sources are listed in
/work/demo/s25/convert_readme.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_reference import PREDICTOR, _meta_model, released_shapes, require_reference

from efficientsam3_ros.modeling.checkpoint import load_checkpoint, plan_checkpoint
from efficientsam3_ros.modeling.checkpoint_files import CheckpointError, OpenCheckpoint
from efficientsam3_ros.modeling.convert_sam3 import released_key_mapper
from efficientsam3_ros.modeling.registry import build_model, get_config


def _released_from(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Invert the conversion: the released-format tensors (teacher manifest names) that load as ``model``.

    A fused qkv / in_proj is the concatenation of the model's q, k, v; the ViT position
    embedding gets a cls slot back; the CLIP text projection is stored for ``x @ W``.
    """
    require_reference()
    own = model.state_dict()
    full = released_shapes("sam3_image_teacher.json")
    mapper = released_key_mapper(model.config, full)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in full:
        result = mapper(key)
        if not isinstance(result, list) or not all(t.key in own for t in result):
            continue
        kind = result[0].transform.kind
        if kind == "chunk":
            out[key] = torch.cat([own[t.key] for t in sorted(result, key=lambda t: t.transform.index)])
        elif kind == "transpose":
            out[key] = own[result[0].key].t().contiguous()
        elif kind == "strip_cls":
            pos = own[result[0].key]
            out[key] = torch.cat([torch.randn(pos.shape[0], 1, *pos.shape[2:], generator=gen), pos], dim=1)
        else:
            out[key] = own[result[0].key].clone()
    return out


def _forward(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """Image features and concept features: every converted weight is on one of these paths."""
    size = model.config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        image = model.encode_image(pixels)
        concepts = model.encode_concepts(["red cube", "dog"])
        out = model.detect(image, concepts)
    return (
        image.last_hidden_state,
        *image.fpn_hidden_states,
        concepts.embeds,
        out.pred_masks,
        out.pred_logits,
    )


def test_released_file_converts_to_the_same_forward_as_the_models_own_state() -> None:
    """convert -> strict load -> forward equals the reference model's own forward (tiny teacher)."""
    reference = build_model("sam3-tiny").eval()
    state = _released_from(reference)
    model = build_model("sam3-tiny").eval()
    ckpt = OpenCheckpoint(
        path=Path("tiny_release.pt"),
        kind="torch",
        shapes={k: tuple(v.shape) for k, v in state.items()},
        dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
        _tensors=state,
    )
    report = load_checkpoint(model, ckpt)
    assert report.format == "original" and report.plan.ok
    for got, want in zip(_forward(model), _forward(reference)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_bfloat16_release_loads_as_the_rounded_weights(tmp_path: Path) -> None:
    """bf16 / fp16 released files are cast into the float32 model, every tensor change still applied."""
    reference = build_model("sam3-tiny").eval()
    state = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _released_from(reference).items()
    }
    path = tmp_path / "release_bf16.pt"
    torch.save({"model": state}, path)
    model = build_model("sam3-tiny").eval()
    load_checkpoint(model, path)
    for key, value in reference.state_dict().items():
        want = value.to(torch.bfloat16).to(value.dtype) if value.is_floating_point() else value
        assert model.state_dict()[key].dtype == value.dtype, key
        if not key.endswith("position_embeddings"):  # its cls slot was random, the rest must match
            torch.testing.assert_close(model.state_dict()[key], want, rtol=0, atol=0, msg=key)


def test_an_upstream_image_model_state_dict_without_the_detector_prefix_loads(tmp_path: Path) -> None:
    """upstream's _load_checkpoint takes a bare Sam3Image ``model.state_dict()`` (its ``detector.``
    strip is a no-op there, and inst_interactive_predictor.model.* is the predictor): a fine-tuned
    upstream model saved that way was refused as 'unrecognised key naming'."""
    reference = build_model("sam3-tiny").eval()
    released = _released_from(reference)
    bare = {k.removeprefix("detector."): v for k, v in released.items()}
    bare[PREDICTOR + "mask_downsample.weight"] = torch.zeros(1, 1, 4, 4)
    path = tmp_path / "finetuned_sam3image.pt"
    torch.save({"model": bare}, path)
    model = build_model("sam3-tiny").eval()
    report = load_checkpoint(model, path)
    assert report.format == "original"
    assert set(report.unused) == {PREDICTOR + "mask_downsample.weight"}
    for got, want in zip(_forward(model), _forward(reference)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("model_name", "file_name", "says"),
    [
        ("es-ev-s", "sam3_image_teacher.json", ["SAM3 ViT", "--model sam3"]),
        ("sam3", "efficientsam3_efficientvit_s.json", ["EfficientViT", "es-ev-s"]),
        ("es-ev-s", "efficientsam3_repvit_s.json", ["RepViT", "es-rv-s, es-rv-m, es-rv-l"]),
        ("es-tv-m", "efficientsam3_efficientvit_m.json", ["EfficientViT", "es-ev-m"]),
        ("es-ev-m", "efficientsam3_efficientvit_m_mobileclip_s0_ctx16.json", ["MobileCLIP", "text"]),
        ("es-ev-s", "efficientsam3_efficientvit_m.json", ["another size", "es-ev-s, es-ev-m, es-ev-l"]),
    ],
)
def test_a_release_for_another_architecture_says_what_it_holds(
    model_name: str, file_name: str, says: list[str]
) -> None:
    """The mismatch listing named hundreds of keys but not the cause: which trunk / text tower the
    file holds, and which model name loads it."""
    model = _meta_model(get_config(model_name))
    ckpt = OpenCheckpoint(path=Path(file_name), kind="torch", shapes=released_shapes(file_name))
    _, plan = plan_checkpoint(model, ckpt)
    assert not plan.ok
    text = plan.problems()
    for phrase in says:
        assert phrase in text, (phrase, text[-600:])


def test_a_stage1_student_only_file_says_to_merge_it_with_sam3(tmp_path: Path) -> None:
    """The raw stage-1 trainer output (ImageStudentEncoder: backbone.model.*, head.*) is not a model file."""
    path = tmp_path / "ckpt_epoch_29.pth"
    torch.save(
        {"model": {"backbone.model.features.0.0.c.weight": torch.zeros(2), "head.0.weight": torch.zeros(2)}},
        path,
    )
    with pytest.raises(CheckpointError, match=r"stage-1 student.*sam3\.pt"):
        load_checkpoint(build_model("es-ev-tiny"), path)


def test_a_released_model_file_given_as_the_tracker_says_what_it_is(tmp_path: Path) -> None:
    """A released SAM3 / EfficientSAM3 .pt (detector.* / tracker.*) passed as the memory tracker was
    refused with a missing/unexpected count only; SAM3's own tracker is not this package's."""
    from efficientsam3_ros.modeling.tracker_checkpoint import load_tracker

    path = tmp_path / "sam3.pt"
    torch.save(
        {"model": {"detector.transformer.decoder.norm.weight": torch.zeros(2), "tracker.x": torch.zeros(1)}},
        path,
    )
    with pytest.raises(CheckpointError, match=r"released .*image model.*stage 2"):
        load_tracker(path, get_config("es-ev-tiny"))
