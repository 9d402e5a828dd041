"""The node's parameter table: one source for declaration, validation, config YAML and README.

Each :class:`ParamSpec` says its type, default, description, range or choices, and
whether it may change while the node runs (``dynamic``). Static parameters (model,
backend, topics, QoS) only take effect on configure, so the node refuses to change
them while configured; the lifecycle way is deactivate -> cleanup -> set -> configure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config_utils import fits_kind

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
RELIABILITY = ("best_effort", "reliable")
TRANSPORTS = ("raw", "compressed", "both")
LABEL_ENCODINGS = ("mono16", "32SC1")

# Python type of each kind; ``str_list`` is a ROS string array.
KINDS = {"bool": bool, "int": int, "float": float, "str": str, "str_list": list}


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: what it is, its default, its limits and whether it is runtime-changeable."""

    name: str
    kind: str  # one of KINDS
    default: Any
    description: str
    dynamic: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    model_default: bool = False  # -1 is also accepted and means "the model's own value"

    def validate(self, value: Any) -> str | None:
        """Return why ``value`` is not acceptable for this parameter, or None when it is."""
        expected = KINDS[self.kind]
        if self.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind == "str_list":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                return f"{self.name} must be a list of strings"
            return None
        if not fits_kind(value, expected):
            return f"{self.name} must be {self.kind}, got {type(value).__name__}"
        if self.model_default and value == -1:
            return None
        if self.minimum is not None and value < self.minimum:
            return f"{self.name} must be >= {self.minimum}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name} must be <= {self.maximum}, got {value}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {list(self.choices)}, got {value!r}"
        return None

    def declared_range(self) -> tuple[float, float] | None:
        """The range to declare to ROS: the limits, widened down to -1 where -1 means "the model's own".

        rclpy refuses a default outside the declared range, and -1 is the default of every
        ``model_default`` parameter; values between -1 and the minimum are still refused by
        :meth:`validate` (the node's parameter callback).
        """
        if self.minimum is None or self.maximum is None:
            return None
        return (-1 if self.model_default else self.minimum), self.maximum

    @property
    def range_text(self) -> str:
        """Human-readable limits for docs and descriptors."""
        if self.choices:
            return " | ".join(self.choices)
        if self.minimum is not None or self.maximum is not None:
            bounds = f"[{self.minimum if self.minimum is not None else ''}, {self.maximum if self.maximum is not None else ''}]"
            return f"-1 or {bounds}" if self.model_default else bounds
        return ""


PARAMS: tuple[ParamSpec, ...] = (
    # model (static: applied on configure)
    ParamSpec(
        "model",
        "str",
        "es-ev-s",
        "Model zoo name (e.g. es-ev-s, es-rv-s, es-tv-s; es-ev-tiny is a random test model).",
    ),
    ParamSpec("checkpoint", "str", "", "Checkpoint path; empty uses the zoo's file for `model`."),
    ParamSpec(
        "backend",
        "str",
        "auto",
        "Inference backend; auto tries TensorRT, then ONNX Runtime, then torch.",
        choices=BACKENDS,
    ),
    ParamSpec(
        "device",
        "str",
        "",
        "Device (cuda, cuda:1, cpu): cpu keeps backend auto off the GPU, cuda:N runs every GPU backend on GPU N; "
        "empty picks the GPU when there is one.",
    ),
    ParamSpec(
        "input_size",
        "int",
        0,
        "Model input side in pixels; 0 keeps the model's default. Cost grows with its square.",
        minimum=0,
        maximum=4096,
    ),
    ParamSpec(
        "memory",
        "str",
        "none",
        "Track memory: none matches detections to a track's last mask (not published once missed); "
        "perceiver / dense propagate every track through a memory tracker (memory_checkpoint).",
        choices=("none", "perceiver", "dense"),
    ),
    ParamSpec(
        "memory_checkpoint",
        "str",
        "",
        "Stage-2 tracker file for memory (e.g. the demo's models/demo/tracker.safetensors); "
        "empty: random tracker weights, whose propagated masks are noise.",
    ),
    ParamSpec(
        "precision",
        "str",
        "fp16",
        "GPU backends' precision (TensorRT engines, CUDA autocast); CPU backends always run fp32.",
        choices=("fp16", "fp32"),
    ),
    ParamSpec(
        "onnx_dir",
        "str",
        "",
        "Folder written by `efficientsam3 export` (ONNX graphs, TensorRT engines) to run from; empty: "
        "graphs are exported into cache_dir on first use. Engines are reused when built at this "
        "precision and max_concepts.",
    ),
    ParamSpec(
        "cache_dir",
        "str",
        "",
        "Where exported graphs and built TensorRT engines are kept between starts; empty: "
        "~/.cache/efficientsam3_ros.",
    ),
    # inputs (static)
    ParamSpec(
        "image_topics",
        "str_list",
        ["image"],
        "Input image topics, one per camera (image_transport base names; compressed is <topic>/compressed).",
    ),
    ParamSpec(
        "camera_names",
        "str_list",
        [],
        "Output namespace per camera, parallel to image_topics; empty derives them (one camera: none).",
    ),
    ParamSpec(
        "input_transport",
        "str",
        "raw",
        "Subscribe to sensor_msgs/Image (raw), CompressedImage (compressed) or both.",
        choices=TRANSPORTS,
    ),
    ParamSpec(
        "qos_reliability",
        "str",
        "best_effort",
        "Input QoS reliability; best_effort matches SensorDataQoS.",
        choices=RELIABILITY,
    ),
    ParamSpec(
        "qos_depth", "int", 5, "Input QoS history depth (SensorDataQoS uses 5).", minimum=1, maximum=1000
    ),
    # runtime-changeable
    ParamSpec(
        "concepts",
        "str_list",
        [],
        "Text concepts to segment, e.g. ['person', 'red mug']; setting it replaces the current set.",
        dynamic=True,
    ),
    ParamSpec(
        "score_threshold",
        "float",
        -1.0,
        "Minimum instance score to publish; -1: the model's own operating point (SAM3's 0.5 unless "
        "the model carries another, e.g. the demo model's 0.1).",
        dynamic=True,
        minimum=0.0,
        maximum=1.0,
        model_default=True,
    ),
    ParamSpec(
        "mask_threshold",
        "float",
        -1.0,
        "Mask probability above which a pixel belongs to the instance; -1: the model's own operating "
        "point (SAM3's 0.5 unless the model carries another, e.g. the demo model's 0.01).",
        dynamic=True,
        minimum=0.001,
        maximum=0.999,
        model_default=True,
    ),
    ParamSpec(
        "track_new_threshold",
        "float",
        -1.0,
        "Score a detection needs to start a new track; -1: the model's own operating point "
        "(SAM3 video's 0.7 unless the model carries another).",
        dynamic=True,
        minimum=0.0,
        maximum=1.0,
        model_default=True,
    ),
    ParamSpec(
        "track_match_iou",
        "float",
        -1.0,
        "Mask IoU at which a detection continues an existing track; -1: the model's own (SAM3 video: 0.5).",
        dynamic=True,
        minimum=0.1,
        maximum=1.0,
        model_default=True,
    ),
    ParamSpec(
        "track_max_missed_frames",
        "int",
        -1,
        "Frames an unmatched track survives (occlusion) before it is removed; -1: the model's own "
        "(SAM3: 30; the demo model with memory: 5).",
        dynamic=True,
        minimum=0,
        maximum=10000,
        model_default=True,
    ),
    ParamSpec(
        "track_stale_mask_frames",
        "int",
        0,
        "Misses for which an unmatched track without a memory-propagated mask is still published, "
        "as PREDICTED with its last mask; 0: never (the track stays alive for re-association, unpublished).",
        dynamic=True,
        minimum=0,
        maximum=10000,
    ),
    ParamSpec(
        "track_reset_time_jump_s",
        "float",
        1.0,
        "Forget a camera's tracks when its image stamps go back by more than this many seconds "
        "(ros2 bag play --loop, a simulator reset), so old ids do not continue into a new pass; 0: never.",
        dynamic=True,
        minimum=0.0,
        maximum=1e6,
    ),
    ParamSpec(
        "track_reset_gap_s",
        "float",
        0.0,
        "Forget a camera's tracks when its image stamps move forward by more than this many seconds "
        "(a parked robot, a camera that reconnects); 0: never (a slow camera's gaps mean nothing).",
        dynamic=True,
        minimum=0.0,
        maximum=1e6,
    ),
    ParamSpec(
        "max_tracks",
        "int",
        64,
        "Hard cap on live tracks per camera; births beyond it are refused and counted.",
        dynamic=True,
        minimum=1,
        maximum=10000,
    ),
    ParamSpec(
        "max_rate_hz",
        "float",
        0.0,
        "Most frames per second processed per camera; 0 means as fast as the model goes.",
        dynamic=True,
        minimum=0.0,
        maximum=1000.0,
    ),
    ParamSpec(
        "publish_overlay",
        "bool",
        False,
        "Publish an rgb8 overlay image (<camera>/overlay) for viewing.",
        dynamic=True,
    ),
    ParamSpec(
        "publish_label_image",
        "bool",
        False,
        "Publish an instance label image (<camera>/label_image): 0 background, track id otherwise.",
        dynamic=True,
    ),
    ParamSpec(
        "label_image_encoding",
        "str",
        "mono16",
        "Encoding of the label image; mono16 wraps ids above 65535.",
        dynamic=True,
        choices=LABEL_ENCODINGS,
    ),
    ParamSpec(
        "max_concepts",
        "int",
        16,
        "Most concepts at once (each costs one detector pass per frame).",
        dynamic=True,
        minimum=1,
        maximum=256,
    ),
    ParamSpec(
        "max_phrase_length",
        "int",
        64,
        "Longest accepted concept phrase in characters.",
        dynamic=True,
        minimum=1,
        maximum=200,  # the tokenizer's own limit (modeling.tokenizer.MAX_PHRASE_CHARS; a test keeps them equal)
    ),
    ParamSpec(
        "max_exemplar_boxes",
        "int",
        16,
        "Most exemplar boxes a concept holds, all add_exemplar calls together (each box runs "
        "through the detector on every frame).",
        dynamic=True,
        minimum=1,
        maximum=256,
    ),
    ParamSpec(
        "diagnostics_period_s",
        "float",
        1.0,
        "Seconds between diagnostics messages.",
        dynamic=True,
        minimum=0.1,
        maximum=3600.0,
    ),
    ParamSpec(
        "stats_window", "int", 200, "Frames kept for fps and latency percentiles.", minimum=10, maximum=100000
    ),
)

BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


def defaults() -> dict[str, Any]:
    """Return every parameter's default value (lists copied)."""
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in PARAMS}


def split_own(changes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a parameter change into the node's own parameters and those rclpy owns.

    rclpy declares parameters of its own on every node (``use_sim_time``, ``qos_overrides.*``);
    a change to them reaches our callback too, and refusing it would fail the whole set
    (``ros2 param set ... use_sim_time true``, ``ros2 param load`` of a dump).
    """
    own = {k: v for k, v in changes.items() if k in BY_NAME}
    return own, {k: v for k, v in changes.items() if k not in BY_NAME}


def read_values(get_value: Callable[[str], Any]) -> dict[str, Any]:
    """Every parameter's value from ``get_value(name)``; None (declared by type only, never set) is the default.

    Lists come back as lists (rclpy gives arrays).
    """
    values = {}
    for spec in PARAMS:
        value = get_value(spec.name)
        if value is None:
            value = list(spec.default) if spec.kind == "str_list" else spec.default
        values[spec.name] = list(value) if spec.kind == "str_list" else value
    return values


def validate(values: dict[str, Any]) -> list[str]:
    """Return the problems with ``values`` (unknown names, wrong types, out of range); empty when fine."""
    problems = []
    for name, value in values.items():
        spec = BY_NAME.get(name)
        if spec is None:
            problems.append(f"unknown parameter {name!r}")
            continue
        error = spec.validate(value)
        if error:
            problems.append(error)
    if "image_topics" in values and not values["image_topics"]:
        problems.append("image_topics needs at least one topic")
    return problems


@dataclass
class NodeConfig:
    """The parameter values, typed, as the node core reads them."""

    values: dict[str, Any] = field(default_factory=defaults)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    @classmethod
    def from_values(cls, overrides: dict[str, Any] | None = None) -> NodeConfig:
        """Merge ``overrides`` onto the defaults; raise ValueError listing every problem."""
        overrides = dict(overrides or {})
        problems = validate(overrides)
        if problems:
            raise ValueError("; ".join(problems))
        values = defaults()
        for name, value in overrides.items():
            values[name] = float(value) if BY_NAME[name].kind == "float" else value
        return cls(values)


def camera_names(topics: list[str], names: list[str]) -> list[str]:
    """Output namespace for each input topic.

    Explicit ``names`` win (they must be as many as the topics and unique). One camera
    gets "" (outputs directly in the node's namespace); several get the topic's parent
    path ("front/image" -> "front") or ``camera<i>`` when that is empty or repeated.
    """
    if names:
        if len(names) != len(topics):
            raise ValueError(f"camera_names has {len(names)} entries for {len(topics)} image_topics")
        if len(set(names)) != len(names):
            raise ValueError(f"camera_names must be unique, got {names}")
        return [n.strip("/") for n in names]
    if len(topics) == 1:
        return [""]
    derived = []
    for i, topic in enumerate(topics):
        parent = topic.strip("/").rpartition("/")[0]
        derived.append(parent if parent and parent not in derived else f"camera{i}")
    return derived


def output_topic(camera: str, name: str) -> str:
    """Relative output topic ``name`` for ``camera`` ("" -> ``name``, "front" -> ``front/name``)."""
    return f"{camera}/{name}" if camera else name


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return repr(value)


def render_yaml() -> str:
    """Return config/efficientsam3.yaml: every parameter with its default, description and range.

    Empty lists are written commented out: ROS 2 parameter files cannot give an empty
    list a type, and the node treats a missing list parameter as its (empty) default.
    """
    lines = [
        "# Parameters of concept_segmentation_node (efficientsam3_ros).",
        "# GENERATED from efficientsam3_ros/ros/params.py; test_ros_params.py checks it matches.",
        "# dynamic: can change at run time (ros2 param set); static: applied on configure.",
        "/**:",
        "  ros__parameters:",
    ]
    for p in PARAMS:
        limits = f" Range: {p.range_text}." if p.range_text else ""
        lines.append(f"    # {p.description}{limits} ({'dynamic' if p.dynamic else 'static'})")
        entry = f"{p.name}: {_yaml_value(p.default)}"
        lines.append(f"    # {entry}" if p.default == [] else f"    {entry}")
    return "\n".join(lines) + "\n"


def render_markdown_table() -> str:
    """Return the README's parameter table (name, type, default, range, dynamic, description)."""
    rows = [
        "| parameter | type | default | range | changes at run time | description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in PARAMS:
        rng = p.range_text.replace("|", "\\|")
        default = _yaml_value(p.default)
        rows.append(
            f"| `{p.name}` | {p.kind} | `{default}` | {rng} | {'yes' if p.dynamic else 'no'} | {p.description} |"
        )
    return "\n".join(rows) + "\n"
