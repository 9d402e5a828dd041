"""package.xml, CMakeLists.txt and the installed executables agree with each other and with the sources."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package():
    catkin_pkg = pytest.importorskip(
        "catkin_pkg.package", reason="catkin_pkg parses and validates package.xml"
    )
    pkg = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    return pkg


def _names(deps):
    return {d.name for d in deps}


def test_package_xml_is_format_3_and_valid(package):
    assert package.package_format == 3
    assert package.name == "efficientsam3_ros"
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}


def test_package_version_matches_python_package(package):
    import efficientsam3_ros

    assert package.version == efficientsam3_ros.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(package.version)}"', pyproject, re.M)


def test_package_declares_ros_dependencies(package):
    build = _names(package.buildtool_depends)
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"} <= build
    run = _names(package.exec_depends) | _names(package.build_export_depends)
    needed = {
        "rclpy",
        "lifecycle_msgs",
        "rcl_interfaces",
        "sensor_msgs",
        "std_msgs",
        "diagnostic_msgs",
        "builtin_interfaces",
        "rosidl_default_runtime",
        "launch_ros",
        "python3-numpy",
        "python3-torch",
        "python3-opencv",
    }
    assert needed <= run, needed - run
    tests = _names(package.test_depends)
    assert {"ament_cmake_pytest", "python3-pytest"} <= tests


def test_every_ros_import_in_node_is_a_declared_dependency(package):
    tree = ast.parse((ROOT / "efficientsam3_ros" / "ros" / "node.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
    ros_modules = modules & {
        "rclpy",
        "sensor_msgs",
        "diagnostic_msgs",
        "rcl_interfaces",
        "std_msgs",
        "lifecycle_msgs",
    }
    declared = (
        _names(package.exec_depends) | _names(package.build_depends) | _names(package.build_export_depends)
    )
    assert ros_modules <= declared, ros_modules - declared


def test_only_node_imports_rclpy():
    offenders = []
    for path in (ROOT / "efficientsam3_ros").rglob("*.py"):
        if path.name == "node.py" and path.parent.name == "ros":
            continue
        text = path.read_text()
        if re.search(r"^\s*(import rclpy|from rclpy)", text, re.M):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"rclpy imported outside efficientsam3_ros/ros/node.py: {offenders}"


def test_cmakelists_generates_every_interface_and_avoids_rosidl_python_141():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in cmake.splitlines())
    for path in sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "srv").glob("*.srv")):
        assert f'"{path.relative_to(ROOT).as_posix()}"' in code, path.name
    assert "rosidl_generate_interfaces(${PROJECT_NAME}" in code
    # the trap: a second ament_python_install_package for the same name duplicates targets
    assert "ament_python_install_package" not in code
    assert "DESTINATION ${PYTHON_INSTALL_DIR}/${PROJECT_NAME}" in code
    assert code.index("rosidl_generate_interfaces") < code.index("${PYTHON_INSTALL_DIR}/${PROJECT_NAME}")
    assert "DESTINATION lib/${PROJECT_NAME}" in code
    assert "ament_package()" in code
    # rosidl_generate_interfaces builds C and C++ libraries: a project without languages cannot link them
    project = re.search(r"project\(([^)]*)\)", code).group(1).split()
    assert project[0] == "efficientsam3_ros" and "NONE" not in project, project


def test_executables_exist_are_executable_and_import_their_main():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    programs = re.search(r"PROGRAMS ([^\n]+)", cmake).group(1).split()
    assert {Path(p).name for p in programs} == {"concept_segmentation_node", "eval_bag"}
    targets = {
        "concept_segmentation_node": "efficientsam3_ros.ros.node",
        "eval_bag": "efficientsam3_ros.bag.cli",
    }
    for program in programs:
        path = ROOT / program
        assert path.exists() and path.stat().st_mode & 0o111, program
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env python3")
        assert f"from {targets[path.name]} import main" in text
        ast.parse(text)


def test_installed_directories_exist():
    for folder in ("launch", "config", "msg", "srv"):
        assert (ROOT / folder).is_dir(), folder
