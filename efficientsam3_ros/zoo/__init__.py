"""The model zoo: released weights by name, their download, and ``resolve_model``.

``resolve_model(spec)`` is the single entry point the CLI, exporter, ROS node and
evaluators use to get a loaded model from a zoo name, a registry name, a checkpoint
file or an HF directory.
"""

from .download import download, find_local, manual_path, models_dir, sha256_file
from .manifest import ZooEntry, ZooError, get_entry, load_zoo
from .resolve import config_for_path, resolve_model

__all__ = [
    "ZooEntry",
    "ZooError",
    "config_for_path",
    "download",
    "find_local",
    "get_entry",
    "load_zoo",
    "manual_path",
    "models_dir",
    "resolve_model",
    "sha256_file",
]
