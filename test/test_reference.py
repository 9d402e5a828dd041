"""Shared helpers for the reference-manifest tests: fake released checkpoints in the exact original naming.

/work/shared/reference holds {key: [shape, dtype]} of the original SAM3 / EfficientSAM3
image models; a released file stores them as ``{"model": {"detector." + key: ...}}``, with
the instance predictor's ``inst_interactive_predictor.model.<k>`` saved as ``tracker.<k>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from efficientsam3_ros.modeling.config import ModelConfig
from efficientsam3_ros.modeling.registry import get_config

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
PREDICTOR = "inst_interactive_predictor.model."

# reference file -> (registry name, ModelConfig overrides)
FILES: dict[str, tuple[str, dict]] = {
    "sam3_image_teacher.json": ("sam3", {}),
    "efficientsam3_repvit_s.json": ("es-rv-s", {}),
    "efficientsam3_repvit_m.json": ("es-rv-m", {}),
    "efficientsam3_repvit_l.json": ("es-rv-l", {}),
    "efficientsam3_tinyvit_s.json": ("es-tv-s", {}),
    "efficientsam3_tinyvit_m.json": ("es-tv-m", {}),
    "efficientsam3_tinyvit_l.json": ("es-tv-l", {}),
    "efficientsam3_efficientvit_s.json": ("es-ev-s", {}),
    "efficientsam3_efficientvit_m.json": ("es-ev-m", {}),
    "efficientsam3_efficientvit_l.json": ("es-ev-l", {}),
    # The stage-3 "Quick Start" text tower: MobileCLIP-S0 truncated to 16 tokens.
    "efficientsam3_efficientvit_m_mobileclip_s0_ctx16.json": (
        "es-ev-m-mobileclip-s0",
        {"context_length": 16},
    ),
    "efficientsam3_repvit_m_mobileclip_s0_ctx16.json": (
        "es-ev-m-mobileclip-s0",
        {"context_length": 16, "_student": "es-rv-m"},
    ),
    "efficientsam3_tinyvit_m_mobileclip_s0_ctx16.json": (
        "es-ev-m-mobileclip-s0",
        {"context_length": 16, "_student": "es-tv-m"},
    ),
}

DTYPES = {"float32": torch.float32, "int64": torch.int64, "complex64": torch.complex64}


def require_reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference manifests not found at {REFERENCE} (CI checks out ../shared beside the repo)")
    return REFERENCE


def config_for(file_name: str) -> ModelConfig:
    """The ModelConfig of a reference file: its registry entry plus overrides (MobileCLIP ctx16 students)."""
    name, overrides = FILES[file_name]
    overrides = dict(overrides)
    config = get_config(name)
    student = overrides.pop("_student", None)
    if student is not None:  # a student trunk with the MobileCLIP-S0 tower of the registry's LiteText entry
        trunk = get_config(student)
        config.family, config.backbone, config.backbone_kwargs = (
            trunk.family,
            trunk.backbone,
            trunk.backbone_kwargs,
        )
    data = {**config.to_dict(), **overrides, "name": file_name.removesuffix(".json")}
    return ModelConfig.from_dict(data)


def manifest(file_name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    data = json.loads((require_reference() / file_name).read_text())
    return {k: (tuple(shape), dtype) for k, (shape, dtype) in data.items()}


def released_key(key: str) -> str:
    """state_dict key of the original model -> key in a released checkpoint."""
    return "tracker." + key[len(PREDICTOR) :] if key.startswith(PREDICTOR) else "detector." + key


def released_shapes(file_name: str) -> dict[str, tuple[int, ...]]:
    return {released_key(k): shape for k, (shape, _) in manifest(file_name).items()}


def fake_released_state(file_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of every listed shape and dtype, keyed as a released checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, (shape, dtype) in manifest(file_name).items():
        dt = DTYPES[dtype]
        if dt is torch.int64:
            value = torch.randint(0, 1000, shape, generator=gen, dtype=torch.int64)
        elif dt is torch.complex64:
            value = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
        else:
            value = torch.randn(shape, generator=gen)
        out[released_key(key)] = value
    return out


# ----------------------------------------------------------------------------------------- tests
import gc  # noqa: E402
import time  # noqa: E402

from efficientsam3_ros.modeling.checkpoint import load_checkpoint, plan_checkpoint  # noqa: E402
from efficientsam3_ros.modeling.checkpoint_files import OpenCheckpoint  # noqa: E402
from efficientsam3_ros.modeling.convert_common import plan_conversion  # noqa: E402
from efficientsam3_ros.modeling.convert_sam3 import released_key_mapper  # noqa: E402
from efficientsam3_ros.modeling.efficientsam3 import EfficientSam3Model  # noqa: E402
from efficientsam3_ros.modeling.registry import build_model  # noqa: E402

# Every reason a released key may be left out, and which keys may carry it.
ALLOWED_UNUSED = {
    "tracker.": "instance-interactive predictor / tracker",
    "detector.backbone.vision_backbone.sam2_convs.": "SAM2-style FPN",
    "detector.geometry_encoder.points_": "point-prompt projections",
    "detector.backbone.vision_backbone.trunk.blocks.": "RoPE table",
}


def _meta_model(config: ModelConfig) -> EfficientSam3Model:
    with torch.device("meta"):
        return EfficientSam3Model(config)


def _check_unused(unused: dict[str, str]) -> None:
    for key, reason in unused.items():
        prefix = next((p for p in ALLOWED_UNUSED if key.startswith(p)), None)
        assert prefix is not None, f"{key} is dropped but no rule allows it ({reason})"
        assert reason.startswith(ALLOWED_UNUSED[prefix]), f"{key}: unexpected reason {reason!r}"
        if prefix == "detector.backbone.vision_backbone.trunk.blocks.":
            assert key.endswith(".attn.freqs_cis"), key


@pytest.mark.parametrize("file_name", list(FILES))
def test_reference_names_and_shapes_map_exactly(file_name: str) -> None:
    """Fast (meta device): every released key is consumed or deliberately unused; every entry filled, shapes match."""
    config = config_for(file_name)
    model = _meta_model(config)
    ckpt = OpenCheckpoint(path=REFERENCE / file_name, kind="torch", shapes=released_shapes(file_name))
    fmt, plan = plan_checkpoint(model, ckpt)
    assert fmt == "original"
    assert plan.ok, plan.problems()
    consumed = {source for source, _ in plan.assignments.values()}
    assert consumed | set(plan.unused) == set(ckpt.shapes)
    assert not consumed & set(plan.unused)
    assert set(plan.assignments) == set(model.state_dict())
    _check_unused(plan.unused)
    n_tracker = sum(1 for k in ckpt.shapes if k.startswith("tracker."))
    assert n_tracker == 309  # the whole predictor is set aside, nothing else under tracker.


def test_reference_documented_transformations() -> None:
    """The teacher exercises every tensor change: cls-slot strip, qkv / in_proj split, transposed projection."""
    file_name = "sam3_image_teacher.json"
    model = _meta_model(config_for(file_name))
    shapes = released_shapes(file_name)
    mapper = released_key_mapper(model.config, shapes)
    plan = plan_conversion(shapes, {k: tuple(v.shape) for k, v in model.state_dict().items()}, mapper)
    a = plan.assignments
    pos = a["detector.vision_encoder.backbone.embeddings.position_embeddings"]
    assert pos == ("detector.backbone.vision_backbone.trunk.pos_embed", pos[1]) and pos[1].kind == "strip_cls"
    for i, name in enumerate("qkv"):
        src, tr = a[f"detector.vision_encoder.backbone.layers.3.attention.{name}_proj.weight"]
        assert src == "detector.backbone.vision_backbone.trunk.blocks.3.attn.qkv.weight"
        assert (tr.kind, tr.index, tr.parts) == ("chunk", i, 3)
        src, tr = a[f"detector.detr_decoder.layers.0.text_cross_attn.{name}_proj.bias"]
        assert src == "detector.transformer.decoder.layers.0.ca_text.in_proj_bias" and tr.index == i
    src, tr = a["detector.text_encoder.text_projection.weight"]
    assert src == "detector.backbone.language_backbone.encoder.text_projection" and tr.kind == "transpose"
    assert (
        a["detector.detr_decoder.box_head.layer3.weight"][0]
        == "detector.transformer.decoder.bbox_embed.layers.2.weight"
    )


def test_reference_mismatch_is_reported_by_name() -> None:
    """A wrong architecture (EfficientViT-B0 weights into a B1 model) fails with the offending names."""
    model = _meta_model(config_for("efficientsam3_efficientvit_m.json"))
    ckpt = OpenCheckpoint(
        path=Path("x.pt"), kind="torch", shapes=released_shapes("efficientsam3_efficientvit_s.json")
    )
    _, plan = plan_checkpoint(model, ckpt)
    assert not plan.ok
    text = plan.problems()
    assert "mis-shaped" in text and "stages_0" in text


def _inverse_shape(transform, shape: tuple[int, ...]) -> tuple[int, ...]:
    if transform.kind == "transpose":
        return tuple(reversed(shape))
    if transform.kind == "strip_cls":
        return (shape[0], shape[1] + 1, *shape[2:])
    if transform.kind == "chunk":
        return (shape[0] * transform.parts, *shape[1:])
    return shape


def test_tiny_teacher_released_checkpoint_loads_with_values(tmp_path: Path) -> None:
    """Fast, real tensors: a released-format file for ``sam3-tiny`` (names from the teacher manifest,
    shapes shrunk to the tiny model) loads strictly and every entry equals its transformed source."""
    model = build_model("sam3-tiny")
    targets = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    full = released_shapes("sam3_image_teacher.json")
    mapper = released_key_mapper(model.config, full)
    gen = torch.Generator().manual_seed(1)
    state: dict[str, torch.Tensor] = {}
    for key in full:
        result = mapper(key)
        if isinstance(result, list) and all(t.key in targets for t in result):
            shape = _inverse_shape(result[0].transform, targets[result[0].key])
            state[key] = torch.randn(shape, generator=gen)
        elif not isinstance(result, list) and key.startswith("tracker.mask_downsample"):
            state[key] = torch.randn(full[key], generator=gen)  # an unused key rides along
    path = tmp_path / "efficient_sam3_tiny.pt"
    torch.save({"model": state}, path)
    report = load_checkpoint(model, path)
    assert report.format == "original" and set(report.plan.assignments) == set(targets)
    assert set(report.unused) == {"tracker.mask_downsample.weight", "tracker.mask_downsample.bias"}
    loaded = model.state_dict()
    for target, (source, transform) in report.plan.assignments.items():
        assert torch.equal(loaded[target], transform.apply(state[source])), target


# ------------------------------------------------------------------------------ slow: full size
@pytest.mark.slow
@pytest.mark.parametrize("file_name", list(FILES))
def test_full_size_fake_release_loads_with_values(file_name: str, tmp_path: Path) -> None:
    """Full-size proof: a fake released file in the exact naming loads strictly; every parameter and
    buffer equals its source tensor after the documented transformation. Several GB of RAM; one at a time."""
    start = time.perf_counter()
    state = fake_released_state(file_name)
    path = tmp_path / "release.pt"
    torch.save({"model": state}, path)
    del state
    gc.collect()
    try:
        model = build_model(config_for(file_name))
        report = load_checkpoint(model, path)
        assert set(report.plan.assignments) == set(model.state_dict())
        _check_unused(report.unused)
        source = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
        consumed = {s for s, _ in report.plan.assignments.values()}
        assert consumed | set(report.unused) == set(source)
        loaded = model.state_dict()
        for target, (key, transform) in report.plan.assignments.items():
            assert torch.equal(loaded[target], transform.apply(source[key])), target
        del model, loaded, source, report
        gc.collect()
    finally:  # 1.7-3.3 GB each: pytest keeps its last 3 runs' tmp dirs, which filled small disks
        path.unlink(missing_ok=True)
    print(f"{file_name}: {time.perf_counter() - start:.1f}s")
