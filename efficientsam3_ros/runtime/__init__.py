"""Runtime layer: exportable graphs, inference backends (tensorrt, onnxruntime, torch), caches.

The pipeline needs only ``select_backend`` and the ``Backend`` interface::

    backend = select_backend("auto", model, RuntimeOptions(precision="fp16"))
    features = backend.encode_image(pixels)                 # once per frame
    embeds = backend.encode_text(input_ids, attention_mask)  # once per concept change
    out = backend.detect(features, embeds, attention_mask)   # all concepts in one call
    backend.info  # {"backend": "onnxruntime-cpu", "fallbacks": ["tensorrt: unavailable: ..."], ...}

TensorRT and onnxruntime are imported lazily, inside the backends that need them.
"""

from .base import Backend, BackendUnavailable, ImageFeatures, RuntimeOptions
from .engine_cache import EngineCache, EngineKey
from .fallback import AUTO_ORDER, BACKEND_NAMES, FallbackChain, candidate_names, make_backend, select_backend
from .graphs import DETECTOR_GRAPHS, GRAPHS, TRACKER_GRAPHS, GraphSpec, get_graph, register_graph

__all__ = [
    "AUTO_ORDER",
    "BACKEND_NAMES",
    "DETECTOR_GRAPHS",
    "GRAPHS",
    "Backend",
    "BackendUnavailable",
    "EngineCache",
    "EngineKey",
    "FallbackChain",
    "GraphSpec",
    "ImageFeatures",
    "RuntimeOptions",
    "TRACKER_GRAPHS",
    "candidate_names",
    "get_graph",
    "make_backend",
    "register_graph",
    "select_backend",
]
