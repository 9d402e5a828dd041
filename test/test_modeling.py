"""The image model: registry, parameter counts, cached vs one-shot path, tiny configs."""

from __future__ import annotations

import time

import pytest
import torch

from efficientsam3_ros.modeling import (
    STUDENTS,
    EfficientSam3Model,
    build_model,
    count_parameters,
    get_config,
    list_models,
)

# Paper (EfficientSAM3 Table 1): backbone parameters in millions.
PAPER_BACKBONE_M = {
    "es-rv-s": 4.72,
    "es-rv-m": 7.77,
    "es-rv-l": 22.40,
    "es-tv-s": 5.07,
    "es-tv-m": 10.55,
    "es-tv-l": 20.62,
    "es-ev-s": 0.68,
    "es-ev-m": 4.64,
    "es-ev-l": 14.98,
}
TINY = ["sam3-tiny", "es-rv-tiny", "es-tv-tiny", "es-ev-tiny", "es-ev-tiny-mobileclip"]


def test_registry_lists_students_teacher_and_tiny():
    names = list_models()
    for name in [*PAPER_BACKBONE_M, "sam3", *TINY]:
        assert name in names
    with pytest.raises(KeyError, match="known models"):
        get_config("es-xx-s")


@pytest.mark.parametrize("name", sorted(PAPER_BACKBONE_M))
def test_student_backbone_parameters_match_paper(name):
    counts = count_parameters(name)
    assert round(counts["backbone"] / 1e6, 2) == PAPER_BACKBONE_M[name]
    # adapter head: 1x1 (C->1024, no bias) + BN(1024) + 3x3 (1024->1024, bias)
    assert counts["trunk"] > counts["backbone"]


def test_teacher_trunk_is_vit_sized():
    counts = count_parameters("sam3")
    assert 440e6 < counts["trunk"] < 450e6
    assert 350e6 < counts["text"] < 360e6


def test_students_share_the_detector_with_the_teacher():
    teacher = count_parameters("sam3")["detector"]
    for name in STUDENTS:
        assert count_parameters(name)["detector"] == teacher


@pytest.mark.parametrize("name", TINY)
def test_tiny_configs_forward_fast(name):
    torch.manual_seed(0)
    model = build_model(name)
    pixels = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        model.encode_image(pixels)  # warm-up (first call initialises kernels)
        start = time.perf_counter()
        features = model.encode_image(pixels)
        out = model.detect(features, model.encode_concepts(["red mug", "person"]))
        elapsed = time.perf_counter() - start
    q = model.config.detector["detr_decoder"]["num_queries"]
    assert out.pred_masks.shape == (2, q, 32, 32)
    assert out.pred_boxes.shape == (2, q, 4)
    assert out.pred_logits.shape == (2, q)
    assert out.presence_logits.shape == (2, 1)
    assert torch.all((out.scores >= 0) & (out.scores <= 1))
    print(f"{name}: tiny forward {elapsed * 1e3:.0f} ms")  # reported, not asserted (no timing asserts)


@pytest.mark.parametrize("name", ["sam3-tiny", "es-rv-tiny", "es-ev-tiny-mobileclip"])
def test_cached_path_equals_one_shot_forward(name):
    torch.manual_seed(1)
    model = build_model(name)
    pixels = torch.randn(1, 3, 112, 112)
    phrases = ["red mug", "person", "blue square"]
    with torch.inference_mode():
        one_shot = model(pixels, phrases)
        features = model.encode_image(pixels)
        concepts = model.encode_concepts(phrases)
        cached = model.detect(features, concepts)
    for field in ("pred_masks", "pred_boxes", "pred_logits", "presence_logits"):
        diff = (getattr(one_shot, field) - getattr(cached, field)).abs().max().item()
        assert diff <= 1e-5, f"{field} differs by {diff}"


def test_concepts_batch_equals_one_at_a_time(tiny_model):
    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        features = tiny_model.encode_image(pixels)
        both = tiny_model.detect(features, tiny_model.encode_concepts(["red mug", "person"]))
        single = tiny_model.detect(features, tiny_model.encode_concepts(["person"]))
    assert torch.allclose(both.scores[1], single.scores[0], atol=1e-5)
    assert torch.allclose(both.pred_masks[1], single.pred_masks[0], atol=1e-4)


def test_student_trunk_matches_teacher_grid():
    for name in ["es-rv-tiny", "es-tv-tiny", "es-ev-tiny", "sam3-tiny"]:
        model = build_model(name)
        with torch.inference_mode():
            trunk = model.trunk_features(torch.randn(1, 3, 112, 112))
        assert trunk.shape == (1, model.config.trunk_dim, 8, 8), name


def test_full_size_student_grid_is_72_at_1008():
    config = get_config("es-ev-s")
    assert config.grid_size == 72 and config.trunk_dim == 1024
    assert get_config("es-ev-s").with_image_size(504).grid_size == 36
    with pytest.raises(ValueError, match="multiple of the patch size"):
        config.with_image_size(500)


def test_input_size_is_a_parameter():
    model = build_model("es-ev-tiny", input_size=56)
    with torch.inference_mode():
        out = model.detect(model.encode_image(torch.randn(1, 3, 56, 56)), model.encode_concepts(["mug"]))
    assert out.pred_masks.shape[-1] == 16


def test_tokenizer_is_offline_clip_bpe_with_context_32(tiny_model):
    ids, mask = tiny_model.tokenize(["red mug", "  a   person  "])
    assert ids.shape == (2, 32)
    assert ids[0, 0].item() == 49406 and 49407 in ids[0].tolist()  # CLIP start/end of text
    assert mask[0].sum().item() == 4  # <sot> red mug <eot>
    assert torch.equal(ids[1][:4], tiny_model.tokenize(["a person"])[0][0][:4])
    with pytest.raises(ValueError, match="empty concept"):
        tiny_model.tokenize([" "])


def _box_spread_across_images(model) -> float:
    """How much the detector's boxes move when only the image changes (0 = blind to the image)."""
    from efficientsam3_ros.training.stage3 import run_detector

    size = model.config.image_size
    with torch.no_grad():
        out = run_detector(model, torch.randn(4, 3, size, size), ["red circle"] * 4)
    return float(out.pred_boxes.std(0).mean())


def test_fan_in_init_lets_a_small_from_scratch_model_see_its_image():
    # transformers' normal(0.02) at 48 wide: the image barely reaches the decoder (measured ~1e-6),
    # which is why the demo models start from "fan_in" (measured ~2e-3)
    torch.manual_seed(0)
    config = get_config("demo-teacher")
    assert config.init == "fan_in"
    seen = _box_spread_across_images(EfficientSam3Model(config))
    torch.manual_seed(0)
    config.init = "sam3"
    blind = _box_spread_across_images(EfficientSam3Model(config))
    assert seen > 100 * blind


def test_unknown_init_scheme_is_refused():
    config = get_config("es-ev-tiny")
    config.init = "xavier"
    with pytest.raises(ValueError, match="unknown init scheme 'xavier'"):
        EfficientSam3Model(config)


def test_student_can_take_a_finer_backbone_stage():
    # the demo student reads timm's stride-16 stage (backbone_kwargs["out_indices"]); the
    # nine paper students keep the last stage
    demo = build_model("demo-student")
    # stride 16 is the trunk; 4 and 8 are the finer maps its high_res_features hand the FPN
    assert demo.image_trunk.backbone.feature_info.reduction() == [4, 8, 16]
    assert build_model("es-ev-tiny").image_trunk.backbone.feature_info.reduction() == [32]
    size = demo.config.image_size
    assert demo.trunk_features(torch.randn(1, 3, size, size)).shape[-1] == demo.config.grid_size


def test_operating_point_travels_with_the_config():
    from efficientsam3_ros.modeling import ModelConfig, OperatingPoint, get_config
    from efficientsam3_ros.modeling.registry import DEMO_OPERATING_POINT

    assert get_config("es-ev-s").operating_point == OperatingPoint(0.5, 0.7, False)  # SAM3's
    demo = get_config("demo-student")
    assert demo.operating_point == DEMO_OPERATING_POINT and DEMO_OPERATING_POINT.crop_masks_to_boxes
    teacher = get_config("demo-teacher").operating_point  # its own thresholds, the memory rules shared
    assert (teacher.score_threshold, teacher.new_track_threshold) == (0.25, 0.35)
    assert teacher.mask_threshold == 0.047
    assert teacher.memory_tracking == DEMO_OPERATING_POINT.memory_tracking
    data = demo.to_dict()
    assert {k: v for k, v in data["operating_point"].items() if k != "memory_tracking"} == {
        "score_threshold": 0.05,
        "new_track_threshold": 0.4,
        "crop_masks_to_boxes": True,
        "mask_threshold": 0.01,
    }
    assert data["operating_point"]["memory_tracking"]["recondition_score"] == 0.35
    assert ModelConfig.from_dict(data) == demo
    del data["operating_point"]  # a file written before operating points existed: SAM3's
    assert ModelConfig.from_dict(data).operating_point == OperatingPoint()
    with pytest.raises(ValueError, match=r"operating_point.score_threshold must be in \[0, 1\]"):
        ModelConfig.from_dict({**data, "operating_point": {"score_threshold": 1.5}})
    with pytest.raises(ValueError, match="operating_point.mask_threshold is a mask probability strictly"):
        ModelConfig.from_dict({**data, "operating_point": {"mask_threshold": 1.0}})
    with pytest.raises(ValueError, match="unknown operating_point keys"):
        ModelConfig.from_dict({**data, "operating_point": {"score": 0.3}})
    # the memory-tracking rules are TrackingConfig fields, checked when the file is read
    with pytest.raises(ValueError, match=r"operating_point.memory_tracking: unknown tracking parameters"):
        ModelConfig.from_dict({**data, "operating_point": {"memory_tracking": {"recondition": 0.3}}})
    with pytest.raises(ValueError, match=r"operating_point.memory_tracking: recondition_score must be"):
        ModelConfig.from_dict({**data, "operating_point": {"memory_tracking": {"recondition_score": 3}}})
    with pytest.raises(ValueError, match="must not set new_det_threshold"):  # that is new_track_threshold
        ModelConfig.from_dict({**data, "operating_point": {"memory_tracking": {"new_det_threshold": 0.9}}})
    rules = {"max_missed_frames": 5}
    point = OperatingPoint(memory_tracking=rules)
    rules["max_missed_frames"] = 99  # the point holds its own copy
    assert point.memory_tracking == {"max_missed_frames": 5} and hash(point) == hash(OperatingPoint())


def test_high_res_features_start_as_the_plain_student_then_sharpen_the_fine_levels(high_res_tiny):
    fused = high_res_tiny()
    plain = build_model("es-ev-tiny").eval()
    missing, unexpected = plain.load_state_dict(fused.state_dict(), strict=False)
    assert not missing and unexpected and all(".high_res_fusion." in k for k in unexpected)
    pixels = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        before = fused.encode_image(pixels).fpn_hidden_states
        ref = plain.encode_image(pixels).fpn_hidden_states
        # zero-initialised: weights trained without the fusion (a stage-1 export) behave as before
        for a, b in zip(before, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for param in fused.detector.vision_encoder.high_res_fusion.parameters():
            param.normal_()
        after = fused.encode_image(pixels).fpn_hidden_states
    changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert changed == [True, True, True, False]  # the levels the detector reads, not the unused 0.5x
    assert fused(pixels, ["red mug"]).pred_masks.shape == (1, 16, 32, 32)


def test_high_res_features_need_a_multi_stage_student_trunk(high_res_tiny):
    config = get_config("demo-teacher")
    config.high_res_features = True
    with pytest.raises(ValueError, match="high_res_features needs a multi-stage student trunk"):
        EfficientSam3Model(config)
    kwargs = {**get_config("es-ev-tiny").backbone_kwargs, "out_indices": (1,)}
    with pytest.raises(ValueError, match="pick a later trunk stage"):
        high_res_tiny(backbone_kwargs=kwargs)
    # -3 of a 4-stage trunk is stage 1 too: it built with stage 1 handed over twice ([16, 24, 24] channels)
    kwargs = {**get_config("es-ev-tiny").backbone_kwargs, "out_indices": (-3,)}
    with pytest.raises(ValueError, match="which is one of them"):
        high_res_tiny(backbone_kwargs=kwargs)
    kwargs = {**get_config("es-ev-tiny").backbone_kwargs, "out_indices": (-2,)}
    assert high_res_tiny(backbone_kwargs=kwargs).config.backbone_kwargs["out_indices"] == (
        -2,
    )  # stage 2: fine


def test_detr_level_scale_two_gives_the_detector_a_finer_grid(high_res_tiny):
    from efficientsam3_ros.training.export import transfer_matching

    fine = high_res_tiny(detr_level_scale=2.0)
    g = fine.config.grid_size
    pixels = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        levels = fine.encode_image(pixels).fpn_hidden_states
        assert [f.shape[-1] for f in levels[:3]] == [4 * g, 2 * g, 2 * g]
        out = fine(pixels, ["red mug"])
    assert out.pred_masks.shape == (1, 16, 4 * g, 4 * g)  # the masks keep their 4x grid
    # the DETR encoder (whose output every box, score and presence logit comes from) reads the 2x grid
    seen: list[tuple[int, ...]] = []
    hook = fine.detector.detr_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["vision_features"][0].shape[-2:])),
        with_kwargs=True,
    )
    with torch.no_grad():
        fine(pixels, ["red mug"])
    hook.remove()
    assert seen == [(2 * g, 2 * g)]
    # a 1x-level model's weights fit everything but that level's own FPN layer
    plain = high_res_tiny()
    copied = transfer_matching(plain, fine)
    differs = sorted(k for k, v in plain.state_dict().items() if fine.state_dict()[k].shape != v.shape)
    assert copied == len(plain.state_dict()) - len(differs)
    assert differs and all(k.startswith("detector.vision_encoder.neck.fpn_layers.2.") for k in differs)


def test_detr_level_scale_must_be_a_level_sam3s_neck_builds():
    from efficientsam3_ros.modeling import ModelConfig

    config = get_config("es-ev-tiny")
    config.detr_level_scale = 0.5
    with pytest.raises(ValueError, match="detr_level_scale 0.5 is not one of"):
        EfficientSam3Model(config)
    data = {**get_config("es-ev-tiny").to_dict(), "detr_level_scale": True}  # a YAML "yes", not 1.0
    with pytest.raises(ValueError, match="detr_level_scale must be of type float, got True"):
        ModelConfig.from_dict(data)  # refused when the file is read, before anything is built


def test_high_res_fusion_learns_from_zero(high_res_tiny):
    """Zero-initialised convs still get gradients (input x upstream), so stage 3 can train them."""
    from efficientsam3_ros.training.stage3 import run_detector

    model = high_res_tiny().train()
    out = run_detector(model, torch.rand(2, 3, 112, 112) * 2 - 1, ["red mug", "chair"])
    (out.pred_masks.sum() + out.pred_logits.sum()).backward()
    grads = [conv.weight.grad for conv in model.detector.vision_encoder.high_res_fusion.projections]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def _edited(edit: dict) -> dict:
    """sam3-tiny's config as a file holds it, with ``edit`` applied at its dotted key."""
    import json

    data = json.loads(json.dumps(get_config("sam3-tiny").to_dict()))
    for dotted, value in edit.items():
        *parents, key = dotted.split(".")
        section = data
        for parent in parents:
            section = section[parent]
        section[key] = value
    return data


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"operating_point.crop_masks_to_boxes": "no"}, "crop_masks_to_boxes must be of type bool"),
        ({"image_size": "112"}, "image_size must be of type int"),
        ({"image_size": 120}, "image_size 120 must be a positive multiple of the patch size 14"),
        ({"image_size": 0}, "image_size 0 must be a positive multiple"),
        (
            {"detector.detr_decoder.num_querys": 8},
            r"unknown model config detector.detr_decoder keys \['num_querys'\]",
        ),
        ({"vit.num_hiden_layers": 2}, r"unknown model config vit keys \['num_hiden_layers'\]"),
        ({"text.hidden_sise": 32}, r"unknown model config text keys \['hidden_sise'\]"),
        ({"vit.image_size": 224}, "vit.image_size is set by the model config's image_size"),
        ({"detector.detr_decodr": {}}, "detector must have the parts"),
        ({"text_encoder": "bert"}, "text_encoder 'bert' is not one of"),
        ({"family": "vit"}, "family 'vit' is not one of"),
        ({"family": "repvit"}, "family 'repvit' does not go with backbone 'sam3_vit'"),
        ({"init": "xavier"}, "init 'xavier' is not one of"),
        ({"context_length": 0}, "context_length must be at least 1"),
        ({"tracker": {"hiden_size": 64}}, r"unknown model config tracker keys \['hiden_size'\]"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_model_config_from_dict_refuses_what_would_build_another_model(edit, message):
    """A file's typo or wrong type must fail when read, not build defaults or the opposite setting."""
    from efficientsam3_ros.modeling import ModelConfig

    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(_edited(edit))


@pytest.mark.parametrize("name", list_models())
def test_every_registry_config_round_trips_through_json(name):
    """What a checkpoint's metadata holds reads back as the same config (tuples come back as lists)."""
    import json

    from efficientsam3_ros.modeling import ModelConfig

    written = json.loads(json.dumps(get_config(name).to_dict()))
    assert json.loads(json.dumps(ModelConfig.from_dict(written).to_dict())) == written
