"""Launch the concept segmentation node for one camera.

    ros2 launch efficientsam3_ros efficientsam3.launch.py image:=/camera/color/image_raw \
        concepts:="person,red mug" model:=es-ev-s backend:=auto

use_lifecycle:=true (default) starts the managed node and drives it to active
(configure, then activate) unless autostart:=false; use_lifecycle:=false starts the
plain node, which is active at once.
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

import launch
from launch import LaunchDescription

PACKAGE = "efficientsam3_ros"
EXECUTABLE = "concept_segmentation_node"
NODE_NAME = "concept_segmentation_node"

ARGUMENTS = {
    "image": (
        "image",
        "Input image topic (image_transport base name; <image>/compressed for compressed input). "
        "Several comma-separated topics serve several cameras with one model.",
    ),
    "camera_names": ("", "Comma-separated output namespace per camera (multi-camera); empty derives them."),
    "model": ("es-ev-s", "Model zoo name or checkpoint directory."),
    "backend": ("auto", "Inference backend: auto, tensorrt, onnxruntime or torch."),
    "concepts": ("", "Comma-separated text concepts, e.g. 'person,red mug'; empty starts with none."),
    "params_file": ("", "Extra parameter YAML (applied after the package's config/efficientsam3.yaml)."),
    "namespace": ("", "Namespace of the node and its topics."),
    "use_lifecycle": ("true", "Start the managed (lifecycle) node; false starts the plain node."),
    "autostart": ("true", "With use_lifecycle, configure and activate at start."),
    "use_sim_time": ("false", "Use /clock (simulation or bag playback)."),
}


def _default_params_file() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory

        return os.path.join(get_package_share_directory(PACKAGE), "config", "efficientsam3.yaml")
    except Exception:  # not installed (e.g. parsing the file in tests)
        return ""


def _split(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (launch arguments are strings; lists are comma-separated)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _parameters(context: launch.LaunchContext) -> list:
    """Parameter files and overrides from the launch arguments, in increasing precedence."""
    params: list = []
    default_file = _default_params_file()
    if default_file and os.path.exists(default_file):
        params.append(default_file)
    extra = LaunchConfiguration("params_file").perform(context)
    if extra:
        params.append(extra)
    overrides = {
        "image_topics": _split(LaunchConfiguration("image").perform(context)),
        "model": LaunchConfiguration("model").perform(context),
        "backend": LaunchConfiguration("backend").perform(context),
        "use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() == "true",
    }
    concepts = _split(LaunchConfiguration("concepts").perform(context))
    if concepts:
        overrides["concepts"] = concepts
    cameras = _split(LaunchConfiguration("camera_names").perform(context))
    if cameras:
        overrides["camera_names"] = cameras
    params.append(overrides)
    return params


def _nodes(context: launch.LaunchContext) -> list:
    params = _parameters(context)
    namespace = LaunchConfiguration("namespace").perform(context)
    lifecycle = LaunchConfiguration("use_lifecycle").perform(context).lower() == "true"
    if not lifecycle:
        return [
            Node(
                package=PACKAGE,
                executable=EXECUTABLE,
                name=NODE_NAME,
                namespace=namespace,
                parameters=params,
                arguments=["--no-lifecycle"],
                output="screen",
            )
        ]
    node = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=namespace,
        parameters=params,
        output="screen",
    )
    autostart = LaunchConfiguration("autostart").perform(context).lower() == "true"
    if not autostart:
        return [node]
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE
        )
    )
    activate_when_inactive = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(node),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                )
            ],
        )
    )
    return [activate_when_inactive, node, configure]


def generate_launch_description() -> LaunchDescription:
    """One camera, one node."""
    return LaunchDescription(
        [
            DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()
        ]
        + [OpaqueFunction(function=_nodes)]
    )
