"""Backend selection and the fallback chain.

A robot should degrade, not die: ``select_backend("auto", model)`` walks
tensorrt -> onnxruntime-cuda -> torch-cuda -> onnxruntime-cpu -> torch-cpu, takes the
first that starts, and remembers why each earlier one was skipped. If the chosen backend
raises at run time (CUDA out of memory, a driver reset, an engine that fails to
execute), the chain logs a warning, moves to the next backend and retries the same call
with its inputs copied to the CPU, so the node keeps publishing. If those inputs were
left unreadable by the failed GPU (a lasting CUDA error), that one call is lost (raised),
not the next backend. ``info`` exposes the choice and every fall-back reason for
the node's diagnostics.

Caller errors (``ValueError``/``TypeError``: wrong shapes, bad arguments) are re-raised
as they are: another backend would fail the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..modeling.efficientsam3 import DetectorOutput, EfficientSam3Model
from .base import Backend, BackendUnavailable, ImageFeatures, RuntimeOptions

log = logging.getLogger(__name__)

AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")
BACKEND_NAMES = (*AUTO_ORDER, "onnxruntime-tensorrt")
# Family names (what the ROS parameter offers) try their GPU then CPU flavour, then the last resort.
ALIASES = {
    "onnxruntime": ("onnxruntime-cuda", "onnxruntime-cpu", "torch-cpu"),
    "torch": ("torch-cuda", "torch-cpu"),
    "cpu": ("onnxruntime-cpu", "torch-cpu"),
}
CALLER_ERRORS = (ValueError, TypeError)

Factory = Callable[[], Backend]


def make_backend(name: str, model: EfficientSam3Model, options: RuntimeOptions) -> Backend:
    """Construct one backend by its canonical name (raises ``BackendUnavailable`` if it cannot run)."""
    if name == "tensorrt":
        from .trt_backend import TensorRTBackend

        return TensorRTBackend(model, options)  # on cuda:<options.cuda_device>
    if name.startswith("onnxruntime-"):
        from .ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, options, provider=name.removeprefix("onnxruntime-"))
    if name.startswith("torch-"):
        from .torch_backend import TorchBackend

        kind = name.removeprefix("torch-")
        return TorchBackend(model, options, device=f"cuda:{options.cuda_device}" if kind == "cuda" else kind)
    raise ValueError(f"unknown backend {name!r}; choose auto, {', '.join((*BACKEND_NAMES, *ALIASES))}")


def candidate_names(name: str) -> list[str]:
    """The order tried for a requested backend: itself, then what comes after it in auto order.

    ``onnxruntime-tensorrt`` (not in auto: TensorRT proper is preferred) continues like tensorrt.
    """
    if name in ALIASES:
        return list(ALIASES[name])
    if name == "auto":
        return list(AUTO_ORDER)
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose auto, {', '.join((*BACKEND_NAMES, *ALIASES))}")
    after = AUTO_ORDER[AUTO_ORDER.index(name) + 1 :] if name in AUTO_ORDER else AUTO_ORDER[1:]
    return [name, *after]


class FallbackChain(Backend):
    """A ``Backend`` that delegates to the first working candidate and hands over on failure.

    ``candidates`` are (name, factory) pairs; factories run lazily, so a GPU backend later
    in the list costs nothing unless it is reached.
    """

    def __init__(self, candidates: Sequence[tuple[str, Factory]]):
        if not candidates:
            raise ValueError("a FallbackChain needs at least one candidate backend")
        self._pending = list(candidates)
        self._fallbacks: list[str] = []
        self._lock = threading.RLock()
        self.active: Backend | None = None
        self._advance()

    # ---------------------------------------------------------------- selection
    def _advance(self) -> None:
        """Start the next candidate that can start; raise if none is left."""
        while self._pending:
            name, factory = self._pending.pop(0)
            try:
                backend = factory()
            except Exception as exc:  # noqa: BLE001 - any start failure means "try the next one"
                kind = (
                    "unavailable"
                    if isinstance(exc, BackendUnavailable)
                    else f"failed to start ({type(exc).__name__})"
                )
                reason = f"{name}: {kind}: {exc}"
                self._fallbacks.append(reason)
                log.info("backend %s", reason)
                continue
            self.active = backend
            # an operator must see why the backend asked for was not the one that started
            log.log(
                logging.WARNING if self._fallbacks else logging.INFO,
                "backend: using %s%s",
                backend.name,
                self._skipped_note(),
            )
            return
        self.active = None
        raise BackendUnavailable("no backend could start: " + " | ".join(self._fallbacks))

    def _skipped_note(self) -> str:
        return f" (skipped: {'; '.join(self._fallbacks)})" if self._fallbacks else ""

    def _call(self, method: str, *args: Any) -> Any:
        while True:
            with self._lock:
                backend = self.active
            if backend is None:
                raise BackendUnavailable("no backend left: " + " | ".join(self._fallbacks))
            try:
                return getattr(backend, method)(*args)
            except CALLER_ERRORS:
                raise
            except Exception as exc:
                with self._lock:
                    if self.active is backend:  # else another thread already moved on
                        if not self._pending:
                            raise
                        self._hand_over(backend, method, exc)
                args = self._inputs_for_next(method, args, exc)

    def _hand_over(self, backend: Backend, method: str, exc: Exception) -> None:
        """Record why ``backend`` failed, close it and start the next candidate (under the lock)."""
        reason = f"{backend.name}: failed at run time in {method} ({type(exc).__name__}: {exc})"
        self._fallbacks.append(reason)
        log.warning("backend %s; handing over to the next backend", reason)
        try:
            backend.close()
        except Exception:  # noqa: BLE001 - a broken backend may fail to close too
            log.debug("closing %s failed", backend.name, exc_info=True)
        self._advance()

    def _inputs_for_next(self, method: str, args: tuple[Any, ...], exc: Exception) -> tuple[Any, ...]:
        """The retried call's inputs, copied to the CPU, where every backend can read them.

        They may be outputs of the backend that just failed (image features on its GPU). After a
        lasting CUDA error they cannot be read at all; passed on as they are, the next backend
        would fail on them and be blamed and closed in turn, down to the last one. So the copy is
        made here: if it fails, the inputs are dead and this call is lost (re-raised for the
        caller to count); the new backend, blameless, serves the next call.
        """
        try:
            return tuple(_on_cpu(a) for a in args)
        except Exception as copy_exc:
            raise RuntimeError(
                f"{method}: its inputs were left unreadable by the failed backend ({copy_exc}); "
                f"this call is lost, the next one runs on {self.name}"
            ) from exc

    # ---------------------------------------------------------------- Backend API
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.active.name if self.active else "none"

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.active.device if self.active else torch.device("cpu")

    @property
    def info(self) -> dict[str, Any]:
        """{"backend": active name, "device": ..., "fallbacks": [reasons], "remaining": [names]}."""
        with self._lock:
            return {
                "backend": self.name,
                "device": str(self.device),
                "fallbacks": list(self._fallbacks),
                "remaining": [n for n, _ in self._pending],
            }

    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        return self._call("encode_image", pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._call("encode_text", input_ids, attention_mask)

    def detect(
        self,
        features: ImageFeatures,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        boxes: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
    ) -> DetectorOutput:
        return self._call("detect", features, embeds, mask, boxes, box_labels)

    def close(self) -> None:
        if self.active is not None:
            self.active.close()


def _on_cpu(value: Any) -> Any:
    """A call input on the CPU (tensors, image features; anything else as it is), dtype kept."""
    if isinstance(value, (torch.Tensor, ImageFeatures)):
        return value.to("cpu")
    return value


GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-tensorrt")


def backend_for_device(name: str, device: str | None, options: RuntimeOptions) -> tuple[str, RuntimeOptions]:
    """The backend request and options that honour a ``device`` ("cpu", "cuda", "cuda:1"; None: any).

    Why: the backends pick their device from their name, so a device has to become a choice of
    backends (``cpu`` keeps auto off the GPU) and a GPU index (``cuda:1`` for every GPU backend).
    """
    if not device:
        return name, options
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device: use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda":
        index = options.cuda_device if parsed.index is None else parsed.index
        return name, dataclasses.replace(options, cuda_device=index)
    if parsed.type != "cpu":
        raise ValueError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    if name in ("auto", "onnxruntime"):
        return "cpu", options
    if name == "torch":
        return "torch-cpu", options
    if name in GPU_BACKENDS:
        raise ValueError(f"backend {name!r} runs on a GPU but device is {device!r}: pick one of them")
    return name, options


def select_backend(
    name: str,
    model: EfficientSam3Model,
    options: RuntimeOptions | None = None,
    *,
    fallback: bool = True,
    factories: dict[str, Callable[[EfficientSam3Model, RuntimeOptions], Backend]] | None = None,
) -> FallbackChain:
    """The backend for ``name`` ("auto", a backend name or an alias) wrapped in a fallback chain.

    ``fallback=False`` keeps only the requested backend (it still reports why it failed).
    ``factories`` overrides constructors by name (tests, or a custom backend).
    """
    options = options or RuntimeOptions()
    names = candidate_names(name)
    if not fallback:
        names = names[:1]
    factories = factories or {}

    def factory(n: str) -> Factory:
        if n in factories:
            return lambda: factories[n](model, options)
        return lambda: make_backend(n, model, options)

    return FallbackChain([(n, factory(n)) for n in names])
