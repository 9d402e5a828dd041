"""Regenerate ``interfaces.py`` from the package's ``msg/`` and ``srv/`` files.

Why a generated copy: rosidl needs the definitions as files at the package root,
while a pip install (and the bag evaluator, which runs without ROS) needs them
inside the Python package. The files are the source of truth; a test fails when
the embedded copy drifts. Run ``python -m efficientsam3_ros.ros._interface_gen``
from the repository root after editing a .msg/.srv file.
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADER = '''"""The package's ROS 2 interface definitions, embedded as text.

GENERATED from msg/*.msg and srv/*.srv by ``python -m efficientsam3_ros.ros._interface_gen``;
do not edit by hand (test_ros_interfaces.py checks it matches the files).
"""

'''


def collect(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Read every .msg and .srv file under ``root``, keyed by type name (file stem)."""
    msgs = {p.stem: p.read_text() for p in sorted((root / "msg").glob("*.msg"))}
    srvs = {p.stem: p.read_text() for p in sorted((root / "srv").glob("*.srv"))}
    return msgs, srvs


def render(root: Path) -> str:
    """Return the source text of interfaces.py for the definitions under ``root``."""
    msgs, srvs = collect(root)
    lines = [HEADER, "MSG_DEFINITIONS: dict[str, str] = {"]
    lines += [f"    {name!r}: {text!r}," for name, text in msgs.items()]
    lines += ["}", "", "SRV_DEFINITIONS: dict[str, str] = {"]
    lines += [f"    {name!r}: {text!r}," for name, text in srvs.items()]
    lines += ["}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write interfaces.py next to this module from the repository at argv[0] (default: cwd)."""
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path.cwd()
    target = Path(__file__).with_name("interfaces.py")
    target.write_text(render(root))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
