"""On-disk cache of exported ONNX graphs, so that the second start of a node is fast.

Exporting the detector of a full-size model takes tens of seconds; a robot restarts often.
Graphs are stored under ``<cache>/onnx/<model>-<size>-<key>/<graph>.onnx`` where the key
hashes everything that changes the graph: model name, full config, the weights, input
size, opset, exporter, the torch and transformers versions (a graph is a trace of
transformers' SAM3 modules run by torch) and this package's version and graph revision
(its wrappers). A changed checkpoint or an upgrade therefore never reuses a stale graph
(nor, through the graph file's sha256, a stale TensorRT engine), and an unchanged setup
never re-exports.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx
import torch
import transformers

import efficientsam3_ros

from ..modeling.efficientsam3 import EfficientSam3Model
from .export import DEFAULT_OPSET, export_graph
from .graphs import get_graph

log = logging.getLogger(__name__)

# Bump when a graph's interface or computation changes without a change of model/weights/torch
# (2: the image_encoder gained its ``trunk`` output; 3: the detector's box-scoring head clamps its
# boxes and pools in float32), so caches written by older code are not reused.
GRAPHS_REVISION = 3


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
        "transformers": transformers.__version__,  # the traced SAM3 modules are transformers' code
        "package": efficientsam3_ros.__version__,  # the graph wrappers are ours
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


def graphs_from_dir(
    onnx_dir: Path, names: Iterable[str], model: EfficientSam3Model | None = None
) -> dict[str, Path]:
    """Graphs written by ``efficientsam3 export``; a missing one is an error naming the fix.

    With ``model``, the folder's ``manifest.json`` must describe it: the same input size and,
    when the manifest records them (exports by this version on), the same weights, which also
    pins the architecture. A graph carries its own weights, so an export of another model or
    checkpoint would otherwise run in its place, silently.
    Each graph must also still have the sha256 the manifest recorded (a truncated copy fails here
    rather than inside onnxruntime or TensorRT).
    """
    onnx_dir = Path(onnx_dir)
    manifest = _read_manifest(onnx_dir)
    if model is not None and manifest is not None:
        _check_manifest_describes(manifest, model, onnx_dir)
    elif model is not None and "image_encoder" in names:
        # graphs copied in by hand: the input size is in the graph itself, and a wrong one would
        # only fail on the first frame (and TensorRT would build every engine first)
        _check_graph_input_size(onnx_dir / "image_encoder.onnx", model.config.image_size)
    paths = {}
    for name in names:
        path = onnx_dir / f"{name}.onnx"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `efficientsam3 export --out {onnx_dir} ...` or drop onnx_dir to export"
            )
        recorded = ((manifest or {}).get("graphs", {}).get(name) or {}).get("sha256")
        if recorded and file_sha256(path) != recorded:
            raise ValueError(
                f"{path} differs from the one {onnx_dir / 'manifest.json'} recorded: export again"
            )
        paths[name] = path
    return paths


def declared_dims(value_info: Any) -> list[int | None]:
    """An ONNX input's declared shape: a fixed size per axis, None for a dynamic (named) axis."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _check_graph_input_size(path: Path, image_size: int) -> None:
    """Refuse an image encoder graph whose fixed ``pixels`` input is not ``image_size`` square."""
    if not path.is_file():
        return  # reported with its fix by the caller
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:  # noqa: BLE001 - onnx raises several kinds for a damaged file
        raise ValueError(f"{path} is not a readable ONNX graph ({err}): export again") from err
    for inp in graph.input:
        if inp.name == "pixels":
            dims = declared_dims(inp)
            if None not in dims[-2:] and dims[-2:] != [image_size, image_size]:
                raise ValueError(
                    f"{path} takes {dims[-2]}x{dims[-1]} px images, this model {image_size} px: export it "
                    f"again at this size (`efficientsam3 export --out {path.parent}`) or pass input_size"
                )


def _read_manifest(onnx_dir: Path) -> dict | None:
    path = onnx_dir / "manifest.json"
    if not path.is_file():
        return None  # graphs copied in by hand: nothing to check them against
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is unreadable ({err}): export again or remove it") from err


def _check_manifest_describes(manifest: dict, model: EfficientSam3Model, onnx_dir: Path) -> None:
    """Refuse an export folder made for another model, input size or checkpoint."""
    what = (
        f"{onnx_dir} was exported for {manifest.get('model')!r} (checkpoint {manifest.get('checkpoint')!r})"
    )
    fix = "export this model there (`efficientsam3 export --out DIR`), or point onnx_dir elsewhere"
    if manifest.get("input_size") != model.config.image_size:
        raise ValueError(
            f"{what} at {manifest.get('input_size')} px, not {model.config.image_size} px: {fix}"
        )
    recorded = manifest.get("weights_sha256")
    if recorded and recorded != weights_sha256(model):
        raise ValueError(f"{what}, with other weights than this {model.config.name!r}: {fix}")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
