"""The one interface every inference backend implements (torch, onnxruntime, tensorrt).

The pipeline talks to a ``Backend`` only, so that the same per-frame code runs on a
laptop CPU, a desktop GPU and a Jetson engine. The boundary is deliberately small and
tensor-in/tensor-out:

* inputs are ``torch.Tensor`` on any device (a backend moves them where it runs);
* ``encode_text`` returns CPU ``float32``, and so does ``detect`` for its small outputs
  (boxes, logits, presence), so they survive a hand-over to another backend; its
  ``pred_masks`` (``float32``) stay on the device that computed them: [K,Q,4g,4g] for every
  query is up to a gigabyte a frame (16 concepts x 200 queries at 1008 px), of which
  postprocessing keeps a few rows, so the pipeline selects them and upsamples them there;
* ``ImageFeatures`` may stay on the backend's device (no host round trip between the
  image encoder and the detector of one frame); any backend accepts any device.

Shapes (S = input size, g = S / 14, C = fpn dim, K = concepts, L = 32 tokens, Q = queries):
``encode_image([1,3,S,S]) -> ImageFeatures(fpn=([1,C,4g,4g], [1,C,2g,2g], [1,C,g,g]), trunk=[1,g*g,C_trunk])``
(the third level is [1,C,2g,2g] for a model with ``detr_level_scale`` 2),
``encode_text(ids[K,L] int64, mask[K,L] int64) -> [K,L,C]``,
``detect(features, embeds[K,L,C], mask[K,L], boxes=None, box_labels=None) -> DetectorOutput`` with
``pred_masks [K,Q,4g,4g]``, ``pred_boxes [K,Q,4]`` (normalised xyxy), ``pred_logits [K,Q]``,
``presence_logits [K,1]``. Optional visual exemplars (``boxes [K,N,4]`` normalised cxcywh,
``box_labels [K,N]`` 1/0, -10 = padding) go through SAM3's geometry encoder, which is not
exported yet: every backend runs that rare path with the PyTorch modules on the CPU
(``detect_with_exemplars``), so a prompt with boxes gives the same result everywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config_utils import check_memory_format
from ..modeling.efficientsam3 import DetectorOutput

__all__ = [
    "Backend",
    "BackendUnavailable",
    "DetectorOutput",
    "ImageFeatures",
    "RuntimeOptions",
    "check_cuda_device",
    "explicit_device",
    "detect_with_exemplars",
    "features_by_name",
    "has_exemplars",
    "detector_output",
]

PRECISIONS = ("fp32", "fp16")


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine; the message says why (and is shown to users)."""


@dataclass
class ImageFeatures:
    """Per-frame output of the image encoder: the three FPN levels the detector reads.

    SAM3's neck also makes a fourth (stride-28) level and sine position encodings; the
    detector never reads the former and the latter are constants of the input size, so
    neither crosses this boundary. ``trunk`` is the trunk feature the FPN levels were made
    from (tokens [1, g*g, C_trunk]): the memory tracker runs its own neck on it, so the trunk
    still runs once per frame. It is None only for graphs exported before it was an output.
    """

    # strides 3.5, 7, 14 of the input (the last 7 with ModelConfig.detr_level_scale 2)
    fpn: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    trunk: torch.Tensor | None = None  # [1, g*g, C_trunk] trunk tokens (the tracker neck's input)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ImageFeatures:
        fpn = tuple(f.to(device=device, dtype=dtype) for f in self.fpn)
        trunk = self.trunk.to(device=device, dtype=dtype) if self.trunk is not None else None
        return ImageFeatures(fpn, trunk)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return self.fpn[0].device


@dataclass
class RuntimeOptions:
    """Knobs shared by all backends; each backend ignores what does not apply to it."""

    precision: str = "fp16"  # fp16 on GPU backends; CPU backends always run fp32
    cache_dir: Path | None = None  # defaults to ~/.cache/efficientsam3_ros
    onnx_dir: Path | None = None  # graphs written by `efficientsam3 export` (else exported and cached)
    max_concepts: int = 16  # upper bound of the concept axis in TensorRT optimisation profiles
    opt_concepts: int = 4  # the concept count TensorRT tunes kernels for
    opset: int = 18
    cuda_device: int = 0  # the GPU (cuda:N) the GPU backends run on
    # torch backend and memory tracker: layout of the models' 4-D weights (modeling.memory_format);
    # auto is channels-last for a student on the CPU (README "Channels-last on the CPU"), as is elsewhere
    memory_format: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_memory_format(self.memory_format, "RuntimeOptions.memory_format")
        if not 1 <= self.opt_concepts <= self.max_concepts:
            raise ValueError(
                f"need 1 <= opt_concepts ({self.opt_concepts}) <= max_concepts ({self.max_concepts})"
            )
        if self.cuda_device < 0:
            raise ValueError(f"cuda_device must be a GPU index >= 0, got {self.cuda_device}")
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        if self.onnx_dir is not None:
            self.onnx_dir = Path(self.onnx_dir)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path.home() / ".cache" / "efficientsam3_ros"


def check_cuda_device(device: torch.device) -> None:
    """Raise ``BackendUnavailable`` unless torch can run on the GPU ``device`` names."""
    if not torch.cuda.is_available():
        raise BackendUnavailable("torch has no CUDA device (torch.cuda.is_available() is False)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise BackendUnavailable(
            f"{device} asked for, but torch sees {count} GPU(s): cuda:0 .. cuda:{count - 1}"
        )


def explicit_device(device: torch.device) -> torch.device:
    """``device`` with its GPU index spelled out: ``cuda`` is the current GPU, so that it compares
    equal to the ``cuda:N`` a tensor on it reports."""
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)


class Backend(ABC):
    """Runs the three graphs of one model at one input size on one device.

    Subclasses raise ``BackendUnavailable`` from ``__init__`` when they cannot run here
    (no GPU, no package); anything raised later is a run-time failure that a
    ``FallbackChain`` answers by handing over to the next backend.
    """

    name: str = "backend"
    device: torch.device = torch.device("cpu")
    model: Any  # the PyTorch EfficientSam3Model: exemplar boxes run through it on every backend

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        """[1,3,S,S] normalised pixels -> the three FPN levels (once per frame)."""

    @abstractmethod
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [K,L] -> projected token features [K,L,C] on CPU (once per concept change)."""

    def detect(
        self,
        features: ImageFeatures,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        boxes: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
    ) -> DetectorOutput:
        """One image's features + K concepts (+ optional exemplar boxes) -> CPU outputs, one call.

        Exemplar boxes need the geometry encoder, which is not exported: on every backend they
        run through the PyTorch modules (``self.model``); everything else runs the detector graph.
        Only the concepts that have exemplars take that path. SAM3's geometry encoder adds a
        prompt token to every row it is given, even a row of padding boxes, so a concept without
        exemplars must not share the call: one concept's exemplar would otherwise move every
        other concept's scores and masks (and all of them off the exported graph).
        """
        rows = exemplar_rows(boxes, box_labels)
        if rows is None or not rows.any():
            return self.run_detector(features, embeds, mask)
        labels = box_labels[rows] if box_labels is not None else None
        prompted = detect_with_exemplars(self.model, features, embeds[rows], mask[rows], boxes[rows], labels)
        if rows.all():
            return prompted
        return merge_rows(rows, prompted, self.run_detector(features, embeds[~rows], mask[~rows]))

    def run_detector(
        self, features: ImageFeatures, embeds: torch.Tensor, mask: torch.Tensor
    ) -> DetectorOutput:
        """The detector graph for K concepts; backends that run graphs implement it (wrappers override detect)."""
        raise NotImplementedError(f"{type(self).__name__} runs no detector graph")

    @property
    def info(self) -> dict[str, Any]:
        """What diagnostics show about this backend."""
        return {"backend": self.name, "device": str(self.device), "fallbacks": []}

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release sessions/engines early (garbage collection does it otherwise)."""


def features_by_name(names: list[str], outputs: list[torch.Tensor]) -> ImageFeatures:
    """ImageFeatures from an image_encoder run's outputs, matched by output name.

    By name, not position, so that a graph exported before ``trunk`` was an output (a user's
    ``onnx_dir``) still serves the detector; it then yields ``trunk=None``, which only the
    memory tracker refuses (with a message saying to re-export).
    """
    out = dict(zip(names, outputs))
    missing = [n for n in ("fpn_0", "fpn_1", "fpn_2") if n not in out]
    if missing:
        raise RuntimeError(f"image_encoder graph has no outputs {missing} (has {names}); re-export it")
    return ImageFeatures((out["fpn_0"], out["fpn_1"], out["fpn_2"]), out.get("trunk"))


def has_exemplars(boxes: torch.Tensor | None) -> bool:
    return boxes is not None and boxes.numel() > 0


#: The box label transformers' Sam3 reads as padding (a row's unused exemplar slots).
PADDING_BOX_LABEL = -10


def exemplar_rows(boxes: torch.Tensor | None, box_labels: torch.Tensor | None) -> torch.Tensor | None:
    """Which concepts ([K] bool) have at least one real exemplar box; None when there are no boxes at all."""
    if not has_exemplars(boxes):
        return None
    if box_labels is None:
        return torch.ones(boxes.shape[0], dtype=torch.bool)
    return (box_labels != PADDING_BOX_LABEL).any(dim=1).cpu()


def merge_rows(rows: torch.Tensor, chosen: DetectorOutput, others: DetectorOutput) -> DetectorOutput:
    """One output for all K concepts: ``chosen`` holds the rows where ``rows`` is True, ``others`` the rest."""

    def merged(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # the two paths may leave their masks on different devices (the exemplar path's PyTorch
        # modules vs a GPU graph); the rows that went through the graph decide
        here = rows.to(b.device)
        out = b.new_empty((rows.shape[0], *b.shape[1:]))
        out[here], out[~here] = a.to(b.device), b
        return out

    return DetectorOutput(
        pred_masks=merged(chosen.pred_masks, others.pred_masks),
        pred_boxes=merged(chosen.pred_boxes, others.pred_boxes),
        pred_logits=merged(chosen.pred_logits, others.pred_logits),
        presence_logits=merged(chosen.presence_logits, others.presence_logits),
    )


def detect_with_exemplars(
    model: Any,
    features: ImageFeatures,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    boxes: torch.Tensor,
    box_labels: torch.Tensor | None,
) -> DetectorOutput:
    """Exemplar-prompted detection through ``model.detect`` (PyTorch) from our three FPN levels.

    Rebuilds what ``detect`` expects: sine position encodings per level (constants of the
    shape) and a placeholder fourth level that SAM3's detector drops unread.
    """
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    from ..modeling.efficientsam3 import ConceptFeatures

    device = next(model.parameters()).device
    fpn = tuple(f.to(device=device, dtype=torch.float32) for f in features.fpn)
    pos_enc = model.detector.vision_encoder.neck.position_encoding
    pos = tuple(pos_enc(f.shape, f.device, f.dtype) for f in fpn)
    vision = Sam3VisionEncoderOutput(fpn_hidden_states=(*fpn, fpn[-1]), fpn_position_encoding=(*pos, pos[-1]))
    concepts = ConceptFeatures(embeds=embeds.to(device), mask=mask.to(device), labels=[""] * embeds.shape[0])
    labels = box_labels.to(device) if box_labels is not None else None
    with torch.inference_mode():
        out = model.detect(vision, concepts, input_boxes=boxes.to(device), input_boxes_labels=labels)
    return detector_output(out.pred_masks, out.pred_boxes, out.pred_logits, out.presence_logits)


def detector_output(
    pred_masks: Any, pred_boxes: Any, pred_logits: Any, presence_logits: Any
) -> DetectorOutput:
    """A ``DetectorOutput`` from tensors or numpy arrays of any device / dtype: float32, the small
    outputs on the CPU, the masks left on their own device (see the module docstring: copying every
    query's mask to the host cost a GPU frame 1 s at 1008 px and 16 concepts)."""

    def tensor(x: Any) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
        return t.detach().to(dtype=torch.float32)

    return DetectorOutput(
        pred_masks=tensor(pred_masks),
        pred_boxes=tensor(pred_boxes).cpu(),
        pred_logits=tensor(pred_logits).cpu(),
        presence_logits=tensor(presence_logits).cpu(),
    )
