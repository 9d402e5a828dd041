"""Training configs: every shipped recipe validates; bad keys and values are named; overrides; schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from efficientsam3_ros.modeling import STUDENTS, list_models
from efficientsam3_ros.training.config import ConfigError, config_from_dict, load_config
from efficientsam3_ros.training.trainer import cosine_with_warmup

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def test_every_recipe_exists_and_validates():
    files = sorted(CONFIGS.glob("*.yaml"))
    names = {f.stem for f in files}
    assert {f"stage1_image_{s}" for s in STUDENTS} <= names  # the nine image students
    assert {"stage1_text_mobileclip-s0", "stage1_text_mobileclip-s1", "stage1_text_mobileclip2-l"} <= names
    assert {"stage2_perceiver", "stage3_es-ev-s"} <= names
    assert sum(n.startswith("tiny_") for n in names) >= 4
    models = set(list_models())
    for path in files:
        config = load_config(path)
        assert config.model.student in models and config.model.teacher in models, path.name
        assert path.stem.replace("tiny_", "").startswith(config.stage.replace("-", "_")), path.name


def test_unknown_key_names_itself_and_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"stage": "stage3", "optim": {"lr_warmup": 10}})
    assert "optim.lr_warmup" in str(err.value) and "warmup_steps" in str(err.value)
    with pytest.raises(ConfigError, match=r"options\.prompt_in_loop.*valid keys"):
        config_from_dict({"stage": "stage3", "data": {"format": "saco"}, "options": {"prompt_in_loop": True}})
    with pytest.raises(ConfigError, match="'bogus'"):
        config_from_dict({"stage": "stage3", "bogus": 1})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"'run\.steps'.*integer"):
        config_from_dict({"stage": "stage1-text", "data": {"format": "text"}, "run": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"'data\.format'"):
        config_from_dict({"stage": "stage2", "data": {"format": "sa1b"}})
    with pytest.raises(ConfigError, match="'stage'"):
        config_from_dict({"stage": "stage9"})
    with pytest.raises(ConfigError, match=r"data\.hflip.*feature_cache"):
        config_from_dict({"stage": "stage1-image", "data": {"hflip": 0.5}, "options": {"feature_cache": "c"}})
    with pytest.raises(ConfigError, match=r"data\.phrases_per_image.*only stage3"):
        config_from_dict({"stage": "stage2", "data": {"format": "sav", "phrases_per_image": 4}})
    with pytest.raises(ConfigError, match=r"data\.phrases_per_image.*at least 1"):
        config_from_dict({"stage": "stage3", "data": {"format": "saco", "phrases_per_image": 0}})
    with pytest.raises(ConfigError, match=r"optim\.implementation.*'fused', 'foreach', 'for-loop'"):
        config_from_dict({"stage": "stage3", "data": {"format": "saco"}, "optim": {"implementation": "fast"}})


def test_stage2_tracker_overrides_are_checked():
    """options.tracker holds TrackerConfig fields: a misspelt one, or a value of the wrong kind, is named."""
    stage2 = {"stage": "stage2", "data": {"format": "sav"}}
    config = config_from_dict(
        {**stage2, "options": {"target": "gt", "tracker": {"prompt_previous_mask": True}}}
    )
    assert config.options.tracker == {"prompt_previous_mask": True}
    with pytest.raises(ConfigError, match=r"options\.tracker.*\['promt_previous_mask'\]"):
        config_from_dict({**stage2, "options": {"tracker": {"promt_previous_mask": True}}})
    with pytest.raises(ConfigError, match=r"options\.tracker.*prompt_previous_mask must be of type bool"):
        config_from_dict({**stage2, "options": {"tracker": {"prompt_previous_mask": "false"}}})
    with pytest.raises(ConfigError, match=r"options\.tracker.*perfect square"):
        config_from_dict({**stage2, "options": {"tracker": {"num_latents_2d": 10}}})
    with pytest.raises(ConfigError, match=r"options\.tracker.*expected a mapping"):
        config_from_dict({**stage2, "options": {"tracker": ["prompt_previous_mask"]}})
    with pytest.raises(ConfigError, match=r"options\.tracker\.memory.*options\.target: gt"):
        config_from_dict({**stage2, "options": {"target": "teacher", "tracker": {"memory": "dense"}}})


def test_overrides_parse_yaml_values(tmp_path):
    config = load_config(
        CONFIGS / "tiny_stage3.yaml",
        ["optim.lr=3e-4", "options.train=['detector.*']", "run.stop_at_step=7", "model.student_checkpoint="],
    )
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.options.train == ["detector.*"] and config.run.stop_at_step == 7
    assert config.model.student_checkpoint is None
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CONFIGS / "tiny_stage3.yaml", ["optim.lr"])
    with pytest.raises(ConfigError, match="not 'stage2'"):
        load_config(CONFIGS / "tiny_stage3.yaml", stage="stage2")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_cosine_schedule_with_warmup():
    assert cosine_with_warmup(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10, 0.1) == pytest.approx(0.1)
    mid = cosine_with_warmup(55, 100, 10, 0.0)
    assert mid == pytest.approx(0.5)


def test_demo_recipe_configs_validate_and_chain_to_the_shipped_input_size():
    """The recipe's stages hand their exports on in order, and it finishes at the size it ships."""
    import json

    root = CONFIGS.parents[1]
    demo = root / "training" / "demo"
    configs = {p.stem: load_config(p) for p in sorted(demo.glob("*.yaml"))}
    assert set(configs) == {
        "teacher_stage3",
        "student_stage1_image",
        "student_stage3",
        "student_stage3_336",
        "student_stage2",
    }

    def export_of(config) -> str:
        return f"{config.run.output_dir}/export/model.safetensors"

    assert configs["student_stage3"].model.student_checkpoint == export_of(configs["student_stage1_image"])
    assert configs["student_stage3_336"].model.student_checkpoint == export_of(configs["student_stage3"])
    assert configs["student_stage2"].model.student_checkpoint == export_of(configs["student_stage3_336"])
    shipped = json.loads((root / "models" / "demo" / "model.json").read_text())
    assert configs["student_stage3_336"].model.input_size == shipped["image_size"] == 336
    # the tracker learns at the deployed size
    assert configs["student_stage2"].model.input_size == shipped["image_size"]
    # the head the last finish adds is the shipped file's, and stage 2 keeps it (a start file's head is never dropped)
    assert configs["student_stage3_336"].model.box_scoring == shipped["box_scoring"]
    assert configs["student_stage2"].model.box_scoring == shipped["box_scoring"]
    assert configs["student_stage3"].model.input_size is None  # the rest of stage 3 at the registry's 168
    # The experiments beside the recipe (which must validate too) chain from its stage-3 student:
    # the 224 px finish (in the recipe until session 29), then the box-scoring head at 224. The
    # finishes are stage 3 continued: its data and losses are stage 3's (the files repeat them), and
    # the 336 px finish and the experiment run the 224 px finish's settings, plus the absent
    # phrases' class loss.
    finish = load_config(demo / "experiments" / "student_stage3_224.yaml")
    experiment = load_config(demo / "experiments" / "box_scoring.yaml")
    assert finish.model.student_checkpoint == export_of(configs["student_stage3"])
    assert experiment.model.student_checkpoint == export_of(finish)
    assert experiment.model.input_size == finish.model.input_size == 224

    # (data.cache_mb is a speed setting: the 168 px world fits in RAM, the 336 px one does not)
    def data_of(config):
        return dataclasses.replace(config.data, cache_mb=0.0)

    assert data_of(finish) == data_of(configs["student_stage3"])
    assert finish.options == configs["student_stage3"].options
    for run in (configs["student_stage3_336"], experiment):
        assert run.model.box_scoring and run.options.negative_class_weight > 0
        assert (run.optim, data_of(run), run.run.steps) == (finish.optim, data_of(finish), finish.run.steps)
        assert dataclasses.replace(run.options, negative_class_weight=0.0) == finish.options


_OUT_OF_RANGE = [
    ("stage3", "run", "seed", -1, r"\[0, 2\*\*32\)"),
    ("stage3", "run", "seed", 2**32, r"\[0, 2\*\*32\)"),
    ("stage3", "optim", "min_lr_ratio", -0.1, r"\[0, 1\]"),
    ("stage3", "optim", "min_lr_ratio", 1.5, r"\[0, 1\]"),
    ("stage3", "optim", "betas", [0.9, 1.0], r"\[0, 1\)"),
    ("stage3", "optim", "betas", [-0.1, 0.999], r"\[0, 1\)"),
    ("stage3", "optim", "weight_decay", -0.01, ">= 0"),
    ("stage3", "model", "input_size", 0, "positive"),
    ("stage3", "model", "input_size", -14, "positive"),
    ("stage3", "data", "limit", 0, "at least 1"),
    ("stage3", "data", "num_workers", -1, ">= 0"),
    ("stage3", "data", "cache_mb", -1, ">= 0"),
    ("stage2", "data", "cache_mb", 100, "only the saco and coco readers"),
    ("stage2", "data", "frame_stride", 0, "at least 1"),
    ("stage1-image", "options", "cache_shard_size", 0, "at least 1"),
    ("stage1-image", "options", "cache_batch_size", 0, "at least 1"),
]


@pytest.mark.parametrize(
    ("stage", "section", "key", "value", "accepted"),
    _OUT_OF_RANGE,
    ids=[f"{section}.{key}={value}" for _, section, key, value, _ in _OUT_OF_RANGE],
)
def test_out_of_range_values_are_refused_with_the_key_and_the_range(stage, section, key, value, accepted):
    """Each of these passed validation and crashed later (seed, sizes) or trained wrongly (lr, betas)."""
    data_format = {"stage1-image": "sa1b", "stage2": "sav", "stage3": "saco"}[stage]
    raw = {"stage": stage, "data": {"format": data_format}}
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=rf"'{section}\.{key}'.*{accepted}"):
        config_from_dict(raw)


def test_date_style_seeds_and_range_edges_are_accepted():
    ok = {
        "stage": "stage3",
        "data": {"format": "saco", "limit": 1, "num_workers": 0},
        "run": {"seed": 20240101},
        "optim": {"min_lr_ratio": 0.0, "betas": [0.0, 0.999], "weight_decay": 0.0},
    }
    assert config_from_dict(ok).run.seed == 20240101
    assert config_from_dict({**ok, "run": {"seed": 2**32 - 1}, "optim": {"min_lr_ratio": 1.0}})
