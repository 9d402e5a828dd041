"""The onnxruntime backend: the exported graphs on the TensorRT, CUDA or CPU execution provider.

Graphs come from ``RuntimeOptions.onnx_dir`` (written by ``efficientsam3 export``) or are
exported on first use and cached (see ``onnx_cache``). Tensors cross as numpy arrays; image
features stay numpy-backed torch tensors (zero-copy) between the two per-frame calls.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling.efficientsam3 import DetectorOutput, EfficientSam3Model
from .base import (
    Backend,
    BackendUnavailable,
    ImageFeatures,
    RuntimeOptions,
    detector_output,
    features_by_name,
)
from .graphs import DETECTOR_GRAPHS, get_graph
from .onnx_cache import cached_graphs, file_sha256, graphs_from_dir

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def graph_paths(model: EfficientSam3Model, options: RuntimeOptions, names=DETECTOR_GRAPHS) -> dict[str, Path]:
    """Exported graphs for ``model``: the export folder if given, else the on-disk cache."""
    if options.onnx_dir is not None:
        return graphs_from_dir(options.onnx_dir, names, model)
    return cached_graphs(model, names, options.resolved_cache_dir(), opset=options.opset)


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` per graph on ``provider`` ("cpu", "cuda" or "tensorrt")."""

    def __init__(
        self, model: EfficientSam3Model, options: RuntimeOptions | None = None, provider: str = "cpu"
    ):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(
                f"onnxruntime is not installed ({exc}): pip install onnxruntime"
            ) from exc
        options = options or RuntimeOptions()
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
        ep = PROVIDERS[provider]
        if ep not in ort.get_available_providers():
            fix = "pip install onnxruntime-gpu" if provider != "cpu" else "reinstall onnxruntime"
            raise BackendUnavailable(
                f"onnxruntime has no {ep} (available: {', '.join(ort.get_available_providers())}); {fix}"
            )
        # no torch.cuda check: this backend never puts a tensor on the GPU, and a Jetson may run
        # onnxruntime-gpu beside a CPU-only torch; a provider that cannot start is caught below
        self.name = f"onnxruntime-{provider}"
        self.device = torch.device("cpu")  # tensors cross the boundary on the host
        self.options = options
        self.model = model  # exemplar-box prompts run through PyTorch (geometry encoder not exported)
        paths = graph_paths(model, options)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.sessions = {
            name: ort.InferenceSession(str(path), so, providers=self._providers(provider, name, path, model))
            for name, path in paths.items()
        }
        active = self.sessions["detector"].get_providers()[0]
        if active != ep:  # onnxruntime falls back to CPU silently; we do not
            raise BackendUnavailable(f"onnxruntime could not start {ep} (got {active})")

    def _providers(self, provider: str, graph: str, path: Path, model: EfficientSam3Model) -> list[Any]:
        if provider == "cpu":
            return ["CPUExecutionProvider"]
        gpu = self.options.cuda_device
        if provider == "cuda":
            return [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
        trt_options = {**ort_tensorrt_options(graph, path, model, self.options), "device_id": gpu}
        return [
            ("TensorrtExecutionProvider", trt_options),
            ("CUDAExecutionProvider", {"device_id": gpu}),
            "CPUExecutionProvider",
        ]

    def _run(self, graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, inputs)

    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        out = self._run("image_encoder", {"pixels": _np(pixels, np.float32)})
        return features_by_name(self._output_names("image_encoder"), [torch.from_numpy(o) for o in out])

    def _output_names(self, graph: str) -> list[str]:
        return [o.name for o in self.sessions[graph].get_outputs()]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = _np(input_ids, np.int64), _np(attention_mask, np.int64)
        (embeds,) = self._run("text_encoder", {"input_ids": ids, "attention_mask": mask})
        return torch.from_numpy(embeds)

    def run_detector(
        self, features: ImageFeatures, embeds: torch.Tensor, mask: torch.Tensor
    ) -> DetectorOutput:
        feeds = {f"fpn_{i}": _np(f, np.float32) for i, f in enumerate(features.fpn)}
        feeds["text_embeds"] = _np(embeds, np.float32)
        feeds["text_mask"] = _np(mask, np.int64)
        return detector_output(*self._run("detector", feeds))

    def close(self) -> None:
        self.sessions.clear()


def _np(t: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(t, dtype=dtype)


def ort_tensorrt_options(
    graph: str, path: Path, model: EfficientSam3Model, options: RuntimeOptions
) -> dict[str, Any]:
    """TensorRT EP options for ``graph`` (the ONNX file ``path``), its engine cache folder included.

    The EP names a cached engine by a hash of the model file's name, its input and node names and
    the ORT/TensorRT versions: not the weights, the precision or the profile. Our graphs are always
    called ``text_encoder.onnx`` / ``detector.onnx``, so one shared folder would hand a model the
    engine built from another checkpoint. Each graph file content (sha256) + build settings
    therefore gets its own folder; the timing cache (kernel timings, weight-independent) is shared.
    """
    root = options.resolved_cache_dir() / "ort_trt"
    profiles = _ort_trt_profiles(graph, model, options)
    engines = root / ort_tensorrt_engine_folder(graph, path, options.precision, profiles)
    engines.mkdir(parents=True, exist_ok=True)  # the EP creates only the last level itself
    return {
        "trt_fp16_enable": options.precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(root),
        **profiles,
    }


def ort_tensorrt_engine_folder(graph: str, path: Path, precision: str, profiles: dict[str, str]) -> str:
    """``<graph>-<digest>``: digest of the graph file's sha256, the precision and the profile shapes."""
    parts = {"onnx_sha256": file_sha256(path), "precision": precision, "profiles": profiles}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return f"{graph}-{digest[:24]}"


def _ort_trt_profiles(graph: str, model: EfficientSam3Model, options: RuntimeOptions) -> dict[str, str]:
    """TensorRT EP profile strings ("name:1x32x256,...") for the concept axis of ``graph``."""
    spec = get_graph(graph)
    if not spec.dynamic_inputs:
        return {}
    example = dict(zip(spec.input_names, spec.example_inputs(model, 1)))
    out = {}
    for key, k in (("min", 1), ("opt", options.opt_concepts), ("max", options.max_concepts)):
        parts = []
        for name, axes in spec.dynamic_inputs.items():
            shape = list(example[name].shape)
            for axis in axes:
                shape[axis] = k
            parts.append(f"{name}:{'x'.join(map(str, shape))}")
        out[f"trt_profile_{key}_shapes"] = ",".join(parts)
    return out
