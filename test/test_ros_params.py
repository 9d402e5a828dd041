"""The parameter table, its validation, the shipped config YAML and camera naming."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from efficientsam3_ros.ros import params

ROOT = Path(__file__).resolve().parents[1]


def test_config_yaml_is_generated_from_the_table():
    text = (ROOT / "config" / "efficientsam3.yaml").read_text()
    assert text == params.render_yaml(), (
        "regenerate: python -c 'from efficientsam3_ros.ros import params; "
        'open("config/efficientsam3.yaml", "w").write(params.render_yaml())\''
    )


def test_config_yaml_documents_every_parameter_with_its_default():
    text = (ROOT / "config" / "efficientsam3.yaml").read_text()
    loaded = yaml.safe_load(text)["/**"]["ros__parameters"]
    for spec in params.PARAMS:
        if spec.default == []:
            assert f"# {spec.name}: []" in text  # ROS YAML cannot type an empty list
            assert spec.name not in loaded
        else:
            assert loaded[spec.name] == spec.default, spec.name
        assert spec.description in text


def test_every_parameter_has_description_and_valid_default():
    for spec in params.PARAMS:
        assert spec.description.strip(), spec.name
        assert spec.validate(spec.default) is None, spec.name
        if spec.kind in ("int", "float"):
            assert spec.minimum is not None and spec.maximum is not None, f"{spec.name} needs a range"


def test_every_default_lies_in_the_range_declared_to_ros():
    """rclpy refuses to declare a parameter whose default is outside its descriptor's range."""
    for spec in params.PARAMS:
        limits = spec.declared_range()
        if spec.kind in ("int", "float"):
            low, high = limits
            assert low <= spec.default <= high, (spec.name, spec.default, limits)
            if spec.model_default:
                assert low == -1, spec.name  # -1 ("the model's own") must be settable at run time too
        else:
            assert limits is None, spec.name


@pytest.mark.parametrize(
    "name", ["score_threshold", "mask_threshold", "track_new_threshold", "track_match_iou"]
)
def test_model_default_parameters_take_minus_one_and_refuse_the_gap(name):
    spec = params.BY_NAME[name]
    assert spec.model_default
    assert spec.validate(-1) is None
    assert ">=" in spec.validate(-0.5)  # between -1 and the minimum: neither a value nor "the model's own"


def test_rclpy_own_parameters_are_split_off():
    own, foreign = params.split_own({"use_sim_time": True, "score_threshold": 0.3, "qos_overrides./x": 1})
    assert own == {"score_threshold": 0.3}
    assert foreign == {"use_sim_time": True, "qos_overrides./x": 1}


def test_values_read_from_ros_fill_unset_parameters_with_their_defaults():
    """Typed parameters that were never set (camera_names, concepts) read as None: they get the default."""
    set_by_launch = {"model": "demo", "image_topics": ("/a", "/b")}
    values = params.read_values(set_by_launch.get)
    assert values["model"] == "demo"
    assert values["image_topics"] == ["/a", "/b"] and isinstance(values["image_topics"], list)
    assert values["camera_names"] == [] and values["concepts"] == []
    assert values["score_threshold"] == params.BY_NAME["score_threshold"].default
    assert params.NodeConfig.from_values(values).model == "demo"


def test_max_phrase_length_cannot_exceed_the_tokenizer_limit():
    tokenizer = pytest.importorskip(
        "efficientsam3_ros.modeling.tokenizer", reason="needs torch and open_clip"
    )
    assert params.BY_NAME["max_phrase_length"].maximum == tokenizer.MAX_PHRASE_CHARS


def test_runtime_changeable_set_is_the_documented_one():
    dynamic = {p.name for p in params.PARAMS if p.dynamic}
    assert {"score_threshold", "mask_threshold", "concepts", "max_rate_hz"} <= dynamic
    assert not dynamic & {
        "model",
        "backend",
        "checkpoint",
        "device",
        "input_size",
        "image_topics",
        "qos_depth",
    }


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"score_threshold": 1.5}, "<= 1.0"),
        ({"score_threshold": "high"}, "must be float"),
        ({"max_rate_hz": -1.0}, ">= 0.0"),
        ({"backend": "cuda"}, "one of"),
        ({"qos_depth": 0}, ">= 1"),
        ({"publish_overlay": 1}, "must be bool"),
        ({"qos_depth": True}, "must be int"),
        ({"concepts": "person"}, "list of strings"),
        ({"image_topics": []}, "at least one topic"),
        ({"nope": 1}, "unknown parameter"),
    ],
)
def test_validation_rejects_bad_values(values, fragment):
    problems = params.validate(values)
    assert problems and any(fragment in p for p in problems), problems
    with pytest.raises(ValueError):
        params.NodeConfig.from_values(values)


def test_ints_are_accepted_for_floats():
    cfg = params.NodeConfig.from_values({"score_threshold": 1, "max_rate_hz": 5})
    assert cfg.score_threshold == 1.0 and isinstance(cfg.max_rate_hz, float)


def test_camera_names():
    assert params.camera_names(["image"], []) == [""]
    assert params.camera_names(["front/image", "/rear/image"], []) == ["front", "rear"]
    assert params.camera_names(["image", "image_raw", "a/image"], []) == ["camera0", "camera1", "a"]
    assert params.camera_names(["front/image", "front/image2"], []) == ["front", "camera1"]
    assert params.camera_names(["x", "y"], ["/left", "right"]) == ["left", "right"]
    with pytest.raises(ValueError):
        params.camera_names(["x", "y"], ["only_one"])
    with pytest.raises(ValueError):
        params.camera_names(["x", "y"], ["same", "same"])
    assert params.output_topic("", "instances") == "instances"
    assert params.output_topic("front", "instances") == "front/instances"


def test_markdown_table_lists_every_parameter():
    table = params.render_markdown_table()
    for spec in params.PARAMS:
        assert f"`{spec.name}`" in table


def test_readme_parameter_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert params.render_markdown_table().strip() in readme, (
        "README's parameter table is stale: paste params.render_markdown_table() over it"
    )


def test_memory_parameter_is_static_validated_and_reaches_the_segmenter(monkeypatch):
    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter
    from efficientsam3_ros.ros import core

    spec = next(p for p in params.PARAMS if p.name == "memory")
    assert spec.default == "none" and not spec.dynamic
    assert params.validate({**params.defaults(), "memory": "lstm"})
    assert not params.validate({**params.defaults(), "memory": "perceiver"})
    seen: dict = {}
    monkeypatch.setattr(ConceptSegmenter, "from_name", classmethod(lambda cls, name, **kw: seen.update(kw)))
    core.default_segmenter_factory(params.NodeConfig.from_values({"memory": "dense"}))
    assert seen["memory"] == "dense" and seen["memory_checkpoint"] is None  # random weights
    tracker = "models/demo/tracker.safetensors"
    values = {"memory": "perceiver", "memory_checkpoint": tracker}
    core.default_segmenter_factory(params.NodeConfig.from_values(values))
    assert (seen["memory"], seen["memory_checkpoint"]) == ("perceiver", tracker)
    core.default_segmenter_factory(params.NodeConfig.from_values({"memory_checkpoint": tracker}))
    assert seen["memory_checkpoint"] is None  # memory none: the file is not loaded


def test_runtime_parameters_reach_the_backends_options(monkeypatch):
    """precision, onnx_dir (an `efficientsam3 export` folder) and cache_dir become the RuntimeOptions."""
    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter
    from efficientsam3_ros.ros import core

    seen: dict = {}
    monkeypatch.setattr(ConceptSegmenter, "from_name", classmethod(lambda cls, name, **kw: seen.update(kw)))
    core.default_segmenter_factory(params.NodeConfig.from_values({}))
    options = seen["options"]
    assert (options.precision, options.onnx_dir, options.cache_dir) == ("fp16", None, None)
    assert options.max_concepts == seen["max_concepts"] == params.BY_NAME["max_concepts"].default
    values = {"precision": "fp32", "onnx_dir": "/opt/export", "cache_dir": "/data/cache", "max_concepts": 2}
    core.default_segmenter_factory(params.NodeConfig.from_values(values))
    options = seen["options"]
    assert (options.precision, str(options.onnx_dir), str(options.cache_dir)) == (
        "fp32",
        "/opt/export",
        "/data/cache",
    )
    assert (options.max_concepts, options.opt_concepts) == (
        2,
        2,
    )  # the TensorRT profile covers what the node allows
    assert params.validate({"precision": "int8"})
