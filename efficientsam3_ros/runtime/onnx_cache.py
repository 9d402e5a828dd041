"""On-disk cache of exported ONNX graphs, so that the second start of a node is fast.

Exporting the detector of a full-size model takes tens of seconds; a robot restarts often.
Graphs are stored under ``<cache>/onnx/<model>-<size>-<key>/<graph>.onnx`` where the key
hashes everything that changes the graph: model name, full config, the weights, input
size, opset, exporter and torch version. A changed checkpoint therefore never reuses a
stale graph, and an unchanged one never re-exports.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from ..modeling.efficientsam3 import EfficientSam3Model
from .export import DEFAULT_OPSET, export_graph
from .graphs import get_graph

log = logging.getLogger(__name__)

# Bump when a graph's interface changes without a change of model/weights/torch (e.g. 2: the
# image_encoder gained its ``trunk`` output), so caches written by older code are not reused.
GRAPHS_REVISION = 2


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def graph_cache_key(
    model: EfficientSam3Model, *, opset: int, exporter: str, weights: str | None = None
) -> str:
    parts = {
        "model": model.config.name,
        "config": model.config.to_dict(),
        "input_size": model.config.image_size,
        "weights": weights or weights_sha256(model),
        "opset": opset,
        "exporter": exporter,
        "torch": torch.__version__,
        "graphs_revision": GRAPHS_REVISION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_graphs(
    model: EfficientSam3Model,
    names: Iterable[str],
    cache_dir: Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
) -> dict[str, Path]:
    """Paths of ``names``' graphs for ``model``, exporting only the ones not cached yet."""
    key = graph_cache_key(model, opset=opset, exporter=exporter)
    folder = Path(cache_dir) / "onnx" / f"{model.config.name}-{model.config.image_size}-{key[:16]}"
    paths = {}
    for name in names:
        path = folder / f"{name}.onnx"
        if not path.is_file():
            log.info("exporting %s of %s to %s (cached for the next start)", name, model.config.name, path)
            export_graph(get_graph(name), model, path, opset=opset, exporter=exporter)
        paths[name] = path
    (folder / "key.json").write_text(json.dumps({"key": key, "model": model.config.name}, indent=1))
    return paths


def graphs_from_dir(onnx_dir: Path, names: Iterable[str]) -> dict[str, Path]:
    """Graphs written by ``efficientsam3 export``; a missing one is an error naming the fix."""
    paths = {}
    for name in names:
        path = Path(onnx_dir) / f"{name}.onnx"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `efficientsam3 export --out {onnx_dir} ...` or drop onnx_dir to export"
            )
        paths[name] = path
    return paths


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
