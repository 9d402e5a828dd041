"""Launch files parse and declare the documented arguments (checked with ast: no ROS needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SINGLE = ROOT / "launch" / "efficientsam3.launch.py"
MULTI = ROOT / "launch" / "multi_camera.launch.py"
DOCUMENTED = {
    "image",
    "model",
    "backend",
    "concepts",
    "params_file",
    "namespace",
    "use_lifecycle",
    "use_sim_time",
}


def _arguments(path: Path) -> dict[str, tuple[str, str]]:
    """The module-level ARGUMENTS dict literal: name -> (default, description)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} has no ARGUMENTS table")


@pytest.mark.parametrize("path", [SINGLE, MULTI], ids=lambda p: p.name)
def test_launch_file_parses_and_has_entry_point(path):
    tree = ast.parse(path.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    assert "DeclareLaunchArgument" in path.read_text()


def test_single_camera_arguments():
    args = _arguments(SINGLE)
    assert set(args) >= DOCUMENTED, DOCUMENTED - set(args)
    assert args["use_lifecycle"][0] == "true" and args["use_sim_time"][0] == "false"
    assert all(description.strip() for _, description in args.values())


def test_multi_camera_arguments_forward_to_the_single_launch():
    args = _arguments(MULTI)
    assert (DOCUMENTED - {"image"}) | {"images", "camera_names"} <= set(args)
    assert "," in args["images"][0]
    assert "efficientsam3.launch.py" in MULTI.read_text()
    single = _arguments(SINGLE)
    forwarded = set(args) - {"images"}
    assert forwarded <= set(single), forwarded - set(single)


def test_plain_mode_uses_the_no_lifecycle_flag_the_node_understands():
    assert '"--no-lifecycle"' in SINGLE.read_text()
    assert '"--no-lifecycle"' in (ROOT / "efficientsam3_ros" / "ros" / "node.py").read_text()


def test_launch_arguments_map_to_real_parameters():
    from efficientsam3_ros.ros.params import BY_NAME

    text = SINGLE.read_text()
    for param in ("image_topics", "model", "backend", "concepts", "camera_names"):
        assert f'"{param}"' in text and param in BY_NAME


def test_launch_files_load_when_ros_launch_is_installed():
    """Where ROS 2 is installed, actually build the launch descriptions."""
    pytest.importorskip("launch_ros", reason="needs ROS 2 launch_ros")
    import importlib.util

    for path in (SINGLE, MULTI):
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
        names = {a.name for a in description.get_launch_arguments()}
        assert set(_arguments(path)) <= names
