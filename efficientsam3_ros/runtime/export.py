"""ONNX export of registered graphs, the structural check, and the PyTorch parity check.

Uses torch.onnx's TorchScript exporter (``dynamo=False``): on transformers' SAM3 modules it
gives a correct graph with named dynamic axes in seconds, while the dynamo exporter
(torch 2.14's default) is slower and, for these modules, not needed. ``exporter="dynamo"``
is kept as an option for when the TorchScript path is removed from torch.
"""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .graphs import GraphSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


def export_graph(
    spec: GraphSpec,
    model: nn.Module,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    num_concepts: int = 2,
    exporter: str = "torchscript",
) -> Path:
    """Write ``spec``'s graph of ``model`` to ``path`` and run onnx.checker on it.

    ``model`` is what ``spec.source`` names: the ``EfficientSam3Model`` for the detector path,
    the ``TrackerModel`` for the tracker graphs. ``num_concepts`` is the example size of the
    dynamic concept axis; 2 (not 1) so that the tracer cannot mistake the axis for a
    broadcastable constant. For the static tracker graphs it is the number of tracks baked in.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is too old: SAM3's LayerNorm/attention export needs opset >= 17")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = spec.build(model).eval()
    inputs = spec.example_inputs(model, num_concepts)
    input_names = spec.inputs_for(model)
    tmp = _temporary_path(path)
    graph_io = dict(
        input_names=list(input_names),
        output_names=list(spec.output_names),
        dynamic_axes=spec.dynamic_axes or None,
        opset_version=opset,
    )
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python ints: shapes are static by design
            if exporter == "torchscript":
                torch.onnx.export(
                    module, inputs, str(tmp), **graph_io, do_constant_folding=True, dynamo=False
                )
            else:
                torch.onnx.export(module, inputs, str(tmp), **graph_io, dynamo=True, external_data=False)
        check_graph(tmp, spec, input_names)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)  # a failed or interrupted export leaves no half-written file
    return path


def _temporary_path(path: Path) -> Path:
    """A temporary name beside ``path`` that no other exporter uses (pid + random).

    Two processes exporting into one folder (two nodes starting on one cache) each write their
    own file and rename it into place; one fixed name let one process rename, truncate or
    check the other's half-written graph (the engine cache's writes work the same way).
    """
    return path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.onnx")


def check_graph(
    path: Path, spec: GraphSpec | None = None, input_names: tuple[str, ...] | None = None
) -> onnx.ModelProto:
    """onnx.checker plus the declared interface: the graph has exactly the spec's inputs/outputs.

    ``input_names``: what the exported model's inputs are (``spec.inputs_for(model)``) when
    they depend on its config; default ``spec.input_names``.
    """
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    if spec is not None:
        expected = input_names if input_names is not None else spec.input_names
        ins = tuple(i.name for i in proto.graph.input)
        outs = tuple(o.name for o in proto.graph.output)
        if ins != expected or outs != spec.output_names:
            raise ValueError(
                f"{path}: graph has inputs {ins} and outputs {outs}, "
                f"expected {expected} -> {spec.output_names}"
            )
    return proto


@dataclass
class ParityRow:
    """Difference between one graph output and PyTorch on the same inputs."""

    graph: str
    output: str
    concepts: int
    max_abs: float
    max_rel: float  # max |a-b| / (max |b| + eps): scale-free, robust to near-zero elements
    shape: tuple[int, ...]


def parity_check(
    spec: GraphSpec,
    model: nn.Module,
    run: callable,
    *,
    num_concepts: int = 1,
    seed: int = 0,
) -> list[ParityRow]:
    """Compare ``run(inputs) -> list of arrays`` (an ONNX/TensorRT session) with the torch wrapper."""
    torch.manual_seed(seed)
    inputs = spec.example_inputs(model, num_concepts)
    with torch.no_grad():
        expected = spec.build(model).eval()(*inputs)
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    got = run(inputs)
    rows = []
    for name, e, g in zip(spec.output_names, expected, got):
        e = e.detach().float().cpu().numpy()
        g = np.asarray(g.detach().float().cpu() if isinstance(g, torch.Tensor) else g, dtype=np.float32)
        if e.shape != g.shape:
            raise AssertionError(f"{spec.name}.{name}: shape {g.shape} != torch {e.shape}")
        diff = float(np.abs(e - g).max()) if e.size else 0.0
        scale = float(np.abs(e).max()) if e.size else 0.0
        rows.append(ParityRow(spec.name, name, num_concepts, diff, diff / (scale + 1e-12), tuple(e.shape)))
    return rows


def format_parity(rows: list[ParityRow]) -> str:
    """A fixed-width table for the export command's output."""
    head = f"{'graph':<14} {'output':<16} {'K':>2} {'shape':<22} {'max abs':>10} {'max rel':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        lines.append(
            f"{r.graph:<14} {r.output:<16} {r.concepts:>2} {shape:<22} {r.max_abs:>10.2e} {r.max_rel:>10.2e}"
        )
    return "\n".join(lines)
