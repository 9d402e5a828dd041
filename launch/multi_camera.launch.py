"""Several cameras served by one model: one node, one tracker state and output namespace per camera.

    ros2 launch efficientsam3_ros multi_camera.launch.py \
        images:=/front/image_raw,/rear/image_raw camera_names:=front,rear concepts:="person,forklift"

Outputs: <namespace>/front/instances, <namespace>/rear/instances (and overlay/label_image
when enabled). The node and its lifecycle behave as in efficientsam3.launch.py, which
this file includes.
"""

from __future__ import annotations

import os

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription

ARGUMENTS = {
    "images": ("front/image,rear/image", "Comma-separated input image topics, one per camera."),
    "camera_names": ("", "Comma-separated output namespace per camera; empty derives them from the topics."),
    "model": ("es-ev-s", "Model zoo name or checkpoint directory."),
    "backend": ("auto", "Inference backend: auto, tensorrt, onnxruntime or torch."),
    "concepts": ("", "Comma-separated text concepts, e.g. 'person,red mug'; empty starts with none."),
    "params_file": ("", "Extra parameter YAML (applied after the package's config/efficientsam3.yaml)."),
    "namespace": ("", "Namespace of the node and its topics."),
    "use_lifecycle": ("true", "Start the managed (lifecycle) node; false starts the plain node."),
    "autostart": ("true", "With use_lifecycle, configure and activate at start."),
    "use_sim_time": ("false", "Use /clock (simulation or bag playback)."),
}


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and include the single-camera launch file with every camera's topic."""
    single = os.path.join(os.path.dirname(os.path.abspath(__file__)), "efficientsam3.launch.py")
    forwarded = {name: LaunchConfiguration(name) for name in ARGUMENTS if name != "images"}
    forwarded["image"] = LaunchConfiguration("images")
    return LaunchDescription(
        [
            DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()
        ]
        + [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(single), launch_arguments=forwarded.items()
            )
        ]
    )
