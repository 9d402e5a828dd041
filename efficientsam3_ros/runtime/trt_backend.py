"""The TensorRT backend: engines built from the ONNX graphs with the TensorRT Python API.

Engines are built once per (graph sha256, TensorRT version, GPU, precision, profile) and
kept in an ``EngineCache`` (``<onnx_dir>/engines`` for an export folder, where
``efficientsam3 export --format tensorrt`` put them, else ``<cache>/engines``); a shared
timing cache makes rebuilds after an upgrade fast.
The concept axis gets one optimisation profile (1 .. max_concepts, tuned for
opt_concepts); larger concept sets are run in chunks. I/O uses torch CUDA tensors, so no
pycuda/cuda-python dependency is needed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..modeling.efficientsam3 import DetectorOutput, EfficientSam3Model
from .base import (
    Backend,
    BackendUnavailable,
    ImageFeatures,
    RuntimeOptions,
    check_cuda_device,
    detector_output,
    features_by_name,
)
from .engine_cache import EngineCache, EngineKey, atomic_write
from .graphs import get_graph
from .onnx_cache import declared_dims, file_sha256
from .ort_backend import graph_paths

log = logging.getLogger(__name__)

TRT_FIX = "pip install tensorrt (x86 + CUDA 12), or on Jetson use JetPack's python3-libnvinfer"

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def import_tensorrt() -> Any:
    """The tensorrt module, or ``BackendUnavailable`` naming the fix."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"the tensorrt Python package is not installed ({exc}); {TRT_FIX}") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU and torch sees none")
    return trt


def profile_shapes(onnx_path: Path, graph: str, min_k: int, opt_k: int, max_k: int) -> Shapes:
    """(min, opt, max) shapes of every dynamic input, from the graph's declared dims."""
    spec = get_graph(graph)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    shapes: Shapes = {}
    for inp in proto.graph.input:
        if inp.name not in spec.dynamic_inputs:
            continue
        dims = declared_dims(inp)
        for i, d in enumerate(dims):
            if d is None and i not in spec.dynamic_inputs[inp.name]:
                raise ValueError(f"{graph}:{inp.name} axis {i} is dynamic but not declared in the GraphSpec")

        def fill(k: int, dims: list[int | None] = dims) -> tuple[int, ...]:
            return tuple(k if d is None else d for d in dims)

        shapes[inp.name] = (fill(min_k), fill(opt_k), fill(max_k))
    return shapes


def profile_string(shapes: Shapes) -> str:
    return ";".join(f"{n}:{'/'.join('x'.join(map(str, s)) for s in v)}" for n, v in sorted(shapes.items()))


def engine_key(onnx_path: Path, shapes: Shapes, trt_version: str, gpu: str, precision: str) -> EngineKey:
    """The engine cache key of one graph; ``efficientsam3 export`` and the backend share it, so an
    engine the export built is the one the backend looks up."""
    return EngineKey(file_sha256(onnx_path), trt_version, gpu, precision, profile_string(shapes))


def engine_dir(options: RuntimeOptions) -> Path:
    """Where the backend keeps engines: beside the graphs of an export folder, else in the cache.

    ``efficientsam3 export --format tensorrt --out DIR`` writes ``DIR/engines``; pointing
    ``onnx_dir`` at DIR therefore reuses its engines (same precision and concept profile) and
    adds any others there, instead of building them all again under ``<cache>/engines``.
    """
    if options.onnx_dir is not None:
        return Path(options.onnx_dir) / "engines"
    return options.resolved_cache_dir() / "engines"


def timing_cache_path(root: Path, trt_version: str, gpu: str) -> Path:
    """The timing cache shared by every build in ``root`` (one per TensorRT version and GPU)."""
    return root / f"timing-{trt_version}-{_slug(gpu)}.cache"


def build_engine(
    onnx_path: Path,
    precision: str,
    shapes: Shapes,
    timing_cache_path: Path | None = None,
    workspace_bytes: int = 4 << 30,
) -> bytes:
    """Parse ``onnx_path`` and build a serialised engine (FP16 allowed or strict FP32)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 matmuls would break parity
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    timing = b""
    if timing_cache_path is not None and timing_cache_path.is_file():
        timing = timing_cache_path.read_bytes()
    cache = config.create_timing_cache(timing)
    config.set_timing_cache(cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)"
        )
    if timing_cache_path is not None:
        try:  # a speed-up for later builds only: an unwritable folder must not cost this engine
            timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(timing_cache_path, bytes(config.get_timing_cache().serialize()))
        except OSError as exc:
            log.warning("cannot write the TensorRT timing cache %s (%s)", timing_cache_path, exc)
    return bytes(serialized)


def gpu_context(device: torch.device) -> contextlib.AbstractContextManager:
    """``device`` as the current GPU, checked first: TensorRT builds, deserialises and runs on the
    current GPU, whatever device the tensors name."""
    check_cuda_device(device)
    return torch.cuda.device(device)


class TrtRunner:
    """One deserialised engine + execution context; feeds and returns torch CUDA tensors."""

    def __init__(self, engine_bytes: bytes, device: torch.device):
        trt = import_tensorrt()
        self.trt = trt
        self.device = device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialise the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.dtypes = {n: _torch_dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = torch.cuda.Stream(device=device)

    def __call__(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.cuda.device(self.device):  # the engine's context lives on this GPU
            return self._run(feeds)

    def _run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        keep = []
        for name in self.inputs:
            t = feeds[name].to(self.device, self.dtypes[name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise RuntimeError(f"TensorRT rejected shape {tuple(t.shape)} for {name}")
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            o = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            outs.append(o)
            self.context.set_tensor_address(name, o.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        del keep
        return outs


def _torch_dtype(np_dtype: Any) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype


class TensorRTBackend(Backend):
    """Engines for the three detector graphs, built or loaded from the engine cache."""

    def __init__(
        self, model: EfficientSam3Model, options: RuntimeOptions | None = None, device: str | None = None
    ):
        trt = import_tensorrt()
        options = options or RuntimeOptions()
        self.name = "tensorrt"
        self.device = torch.device(device or f"cuda:{options.cuda_device}")
        self.max_concepts = options.max_concepts
        self.model = model  # exemplar-box prompts run through PyTorch (geometry encoder not exported)
        on_gpu = gpu_context(self.device)
        gpu = torch.cuda.get_device_name(self.device)
        root = engine_dir(options)
        cache = EngineCache(root)
        # an export folder may be read-only (/opt on a robot): engines built here then go to the cache
        spare = EngineCache(options.resolved_cache_dir() / "engines") if options.onnx_dir else None
        timing = timing_cache_path(root, trt.__version__, gpu)
        self.runners: dict[str, TrtRunner] = {}
        with on_gpu:
            for graph, path in graph_paths(model, options).items():
                shapes = profile_shapes(path, graph, 1, options.opt_concepts, options.max_concepts)
                key = engine_key(path, shapes, trt.__version__, gpu, options.precision)
                data, built = cache.get_or_build(
                    graph,
                    key,
                    lambda p=path, s=shapes: build_engine(p, options.precision, s, timing),
                    spare=spare,
                )
                log.info(
                    "TensorRT %s engine for %s (%s)", "built" if built else "cached", graph, options.precision
                )
                self.runners[graph] = TrtRunner(data, self.device)

    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        runner = self.runners["image_encoder"]
        return features_by_name(runner.outputs, runner({"pixels": pixels}))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        chunks = []
        for s in range(0, input_ids.shape[0], self.max_concepts):
            sl = slice(s, s + self.max_concepts)
            feeds = {"input_ids": input_ids[sl], "attention_mask": attention_mask[sl]}
            chunks.append(self.runners["text_encoder"](feeds)[0].float().cpu())
        return torch.cat(chunks)

    def run_detector(
        self, features: ImageFeatures, embeds: torch.Tensor, mask: torch.Tensor
    ) -> DetectorOutput:
        parts = []
        fpn = {f"fpn_{i}": f for i, f in enumerate(features.fpn)}
        for s in range(0, embeds.shape[0], self.max_concepts):
            sl = slice(s, s + self.max_concepts)
            parts.append(self.runners["detector"]({**fpn, "text_embeds": embeds[sl], "text_mask": mask[sl]}))
        return detector_output(*(torch.cat([p[i] for p in parts]) for i in range(4)))

    def close(self) -> None:
        self.runners.clear()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)
