"""training/launch/torchrun.sh on machines with and without nvidia-smi (torchrun replaced by a stub)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "launch" / "torchrun.sh"
BASH = shutil.which("bash")


def _bin(tmp_path: Path, nvidia_smi: str | None) -> Path:
    """A PATH of its own: a torchrun that prints its arguments, the few tools the script uses,
    and nvidia-smi only when asked for (whatever the machine running the test has)."""
    folder = tmp_path / "bin"
    folder.mkdir(parents=True)
    stubs = {"torchrun": 'echo "torchrun $*"'}
    if nvidia_smi is not None:
        stubs["nvidia-smi"] = nvidia_smi
    for name, body in stubs.items():
        (folder / name).write_text(f"#!{BASH}\n{body}\n")
        (folder / name).chmod(0o755)
    for tool in ("wc", "tr"):
        (folder / tool).symlink_to(shutil.which(tool))
    return folder


def _launch(tmp_path: Path, nvidia_smi: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    path = _bin(tmp_path, nvidia_smi)
    environ = {k: v for k, v in os.environ.items() if k not in ("GPUS", "NNODES")}
    environ.update(PATH=str(path), **env)
    return subprocess.run(
        [BASH, str(SCRIPT), "stage3", "--config", "c.yaml"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_without_nvidia_smi_it_runs_one_process_and_says_so(tmp_path):
    """It exited 127 without a word: `$(nvidia-smi -L | wc -l)` failed under set -euo pipefail."""
    proc = _launch(tmp_path, nvidia_smi=None)
    assert proc.returncode == 0, proc.stderr
    assert "--nproc_per_node=1 " in proc.stdout
    assert (
        "--standalone" in proc.stdout
        and "efficientsam3_ros.training.cli stage3 --config c.yaml" in proc.stdout
    )
    assert "nvidia-smi not found" in proc.stderr


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_gpus_are_counted_with_nvidia_smi_or_taken_from_gpus(tmp_path):
    two = 'echo "GPU 0: H200 (UUID: a)"; echo "GPU 1: H200 (UUID: b)"'
    assert "--nproc_per_node=2 " in _launch(tmp_path / "a", nvidia_smi=two).stdout
    failing = "echo 'NVIDIA-SMI has failed' >&2; exit 9"  # installed, but no driver
    proc = _launch(tmp_path / "b", nvidia_smi=failing)
    assert proc.returncode == 0 and "--nproc_per_node=1 " in proc.stdout, proc.stderr
    assert "--nproc_per_node=3 " in _launch(tmp_path / "c", nvidia_smi=None, GPUS="3").stdout
