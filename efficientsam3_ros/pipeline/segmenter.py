"""ConceptSegmenter: the one object every front door uses.

The live node, the rosbag evaluator, the CLI, the benchmarks and the tests all
feed frames into the same object; only the source of the frames differs. It owns
the cached concept embeddings (computed once per concept change), the per-frame
orchestration (preprocess -> encode -> detect -> post -> track) and the timings.

With a memory tracker (``memory=TrackerModel``) the track step is SAM3 video's: every live
track's memory predicts its mask on the new frame (one batched ``propagate`` over all
tracks), the ConceptTracker associates the detections with those predictions by mask IoU,
new tracks are conditioned on their detection, re-conditioned tracks on theirs, and the
memories of removed tracks are dropped. The image encoder still runs once per frame: the
tracker's neck reads the trunk tokens the backend returns with the FPN levels.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config_utils import check_mask_threshold, check_score_threshold
from ..modeling import EfficientSam3Model, TrackerModel, TrackMemory, build_tracker
from ..modeling.config import ModelConfig, OperatingPoint
from ..modeling.memory_format import lay_out
from ..modeling.tokenizer import validate_phrase
from ..modeling.tracker_checkpoint import load_tracker
from ..modeling.tracker_neck import TrackerFrame
from ..runtime import Backend, ImageFeatures, RuntimeOptions, select_backend
from ..runtime.base import PADDING_BOX_LABEL, explicit_device
from ..runtime.fallback import backend_for_device
from ..runtime.torch_backend import TorchBackend
from ..tracking import ConceptTracker, TrackingConfig
from .preprocess import (
    boxes_to_image,
    masks_to_image,
    preprocess,
    probability_to_logit,
    validate_image,
)
from .results import FrameResult, Instance

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCEPTS = 32
TEXT_CACHE_SIZE = 512  # phrases whose text features are kept for re-use (per model, shared by forks)
MEMORY_KINDS = ("none", "perceiver", "dense")


@dataclass
class _Concept:
    concept_id: int
    label: str
    embeds: torch.Tensor  # [L, D]
    mask: torch.Tensor  # [L]
    exemplar_boxes: list[list[float]] = field(default_factory=list)  # normalised cxcywh
    exemplar_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative


class ConceptSegmenter:
    """Segments every instance of every active concept in a stream of RGB frames."""

    def __init__(
        self,
        model: EfficientSam3Model,
        *,
        backend: Backend | None = None,
        score_threshold: float | None = None,
        mask_threshold: float | None = None,
        crop_masks_to_boxes: bool | None = None,
        max_concepts: int = DEFAULT_MAX_CONCEPTS,
        tracker: ConceptTracker | None = None,
        memory: TrackerModel | None = None,
        memory_source: MemorySource | None = None,
    ):
        """``tracker`` gives stable ids; ``memory`` (needs ``tracker``) makes tracks propagate through memory.

        ``memory_source`` says how to build ``memory`` again (``from_name`` sets it): when the
        backend hands over to another device, the tracker follows it, and weights on a GPU that
        died cannot be copied off it, only loaded again.

        Without ``memory`` a track's prediction for the next frame is its last mask; with it,
        the mask its memory predicts, which keeps ids through fast motion and short misses.
        ``score_threshold``, ``mask_threshold`` (a probability) and ``crop_masks_to_boxes`` left
        at None take the model's operating point (``model.config.operating_point``: SAM3's 0.5,
        0.5 and no cropping, unless the model was trained to another).
        """
        if memory is not None and tracker is None:
            raise ValueError(
                "a memory tracker needs a ConceptTracker for association and ids (tracking=True)"
            )
        self.model = model.eval()
        self.backend = backend if backend is not None else TorchBackend(model, device=str(self.model_device))
        point = model.config.operating_point
        self.score_threshold = point.score_threshold if score_threshold is None else score_threshold
        self.mask_threshold = point.mask_threshold if mask_threshold is None else mask_threshold
        self.crop_masks_to_boxes = (
            point.crop_masks_to_boxes if crop_masks_to_boxes is None else crop_masks_to_boxes
        )
        self.max_concepts = max_concepts
        self.tracker = tracker
        self.memory = memory.eval() if memory is not None else None
        self.memory_source = memory_source
        self._memories: dict[int, TrackMemory] = {}  # live track id -> its memory (memory tracker only)
        self._memory_frame = 0  # frame index the memories see; never reset, so it only grows per track
        self._memory_device = _device_of(self.memory) if self.memory is not None else None
        self.propagate_calls = 0  # batched propagate() calls, for diagnostics and tests
        self._concepts: dict[int, _Concept] = {}
        self._next_concept_id = 0
        self._last_image_size: tuple[int, int] | None = None
        self.frames_processed = 0
        # label -> (embeds, mask); shared between forks so each phrase is encoded once per model
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def fork(self, tracker: ConceptTracker | None = None) -> ConceptSegmenter:
        """A segmenter for another camera: shares the model, backend, tracker weights and text cache.

        Concepts, tracks and track memories are its own.
        """
        if tracker is None and self.tracker is not None:
            tracker = ConceptTracker(self.tracker.config)
        other = ConceptSegmenter(
            self.model,
            backend=self.backend,
            score_threshold=self.score_threshold,
            mask_threshold=self.mask_threshold,
            crop_masks_to_boxes=self.crop_masks_to_boxes,
            max_concepts=self.max_concepts,
            tracker=tracker,
            memory=self.memory if tracker is not None else None,
            memory_source=self.memory_source,
        )
        other._text_cache = self._text_cache
        return other

    @classmethod
    def from_name(
        cls,
        name: str,
        checkpoint: str | None = None,
        *,
        backend: str = "auto",
        device: str | None = None,
        input_size: int | None = None,
        tracking: bool | TrackingConfig = True,
        options: RuntimeOptions | None = None,
        memory: str = "none",
        memory_checkpoint: str | None = None,
        new_track_threshold: float | None = None,
        **kwargs: object,
    ) -> ConceptSegmenter:
        """Build the model (registry or zoo name, checkpoint file, HF directory) and pick a backend.

        ``device`` narrows the backends: ``"cpu"`` keeps ``auto`` (and the onnxruntime/torch
        families) off the GPU, ``"cuda:N"`` runs every GPU backend on GPU N; None lets ``backend``
        choose. The memory tracker runs on the device the chosen backend runs on.

        ``tracking`` attaches a ConceptTracker (stable track ids across frames); pass False for
        single images, or a TrackingConfig to change its thresholds (True: SAM3's rules, with the
        model's operating point for starting a track and re-conditioning its memory;
        ``new_track_threshold`` overrides the former).

        ``memory`` picks how tracks are predicted from frame to frame: ``"none"`` (the default)
        re-uses a track's last mask; ``"perceiver"`` (EfficientSAM3's Stage-2 memory) and
        ``"dense"`` (SAM3's) propagate each track through a memory tracker built with
        ``build_tracker(model.config, memory=...)``. ``memory_checkpoint`` is a stage-2 tracker
        file (its own sizes and the image model it was trained on are checked, see
        ``modeling.tracker_checkpoint``) or a bare ``TrackerModel`` state dict; without one the
        tracker has random weights, whose propagated masks are noise that association then has
        to reject. The default is "none": the only trained tracker that ships is the demo
        model's (``models/demo/tracker.safetensors``).
        """
        from ..zoo import resolve_model

        if memory not in MEMORY_KINDS:
            raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {memory!r}")
        if memory != "none" and tracking is False:
            raise ValueError(f"memory={memory!r} needs tracking (the memory follows tracks)")
        if memory == "none" and memory_checkpoint is not None:
            raise ValueError("memory_checkpoint given but memory='none': pick 'perceiver' or 'dense'")
        # the device picks the backends and the GPU (cpu keeps "auto" off the GPU, cuda:1 is GPU 1)
        backend, options = backend_for_device(backend, device, options or RuntimeOptions())
        model = resolve_model(name, checkpoint, input_size=input_size, device=device or "cpu")
        chain = select_backend(backend, model, options)
        tracker_model = source = None
        if memory != "none":
            # the tracker runs where the backend runs (it reads the trunk tokens the backend returns)
            source = MemorySource(memory, memory_checkpoint, options.memory_format)
            tracker_model = source.build(model.config, chain.device)
        point = model.config.operating_point
        if new_track_threshold is not None:
            if isinstance(tracking, TrackingConfig):  # its new_det_threshold starts tracks, not the point's
                raise ValueError(
                    "new_track_threshold is ignored beside tracking=TrackingConfig(...): set the config's "
                    "new_det_threshold instead"
                )
            point = dataclasses.replace(point, new_track_threshold=new_track_threshold)
        tracker = make_tracker(tracking, point, memory=tracker_model is not None)
        return cls(
            model, backend=chain, tracker=tracker, memory=tracker_model, memory_source=source, **kwargs
        )

    # ------------------------------------------------------------------- concepts
    @property
    def concepts(self) -> dict[int, str]:
        return {cid: c.label for cid, c in self._concepts.items()}

    @property
    def input_size(self) -> int:
        return self.model.config.image_size

    @property
    def operating_point(self) -> dict[str, object]:
        """The thresholds and mask clean-up this segmenter runs at (for reports)."""
        point: dict[str, object] = {
            "score_threshold": self.score_threshold,
            "mask_threshold": self.mask_threshold,
            "crop_masks_to_boxes": self.crop_masks_to_boxes,
        }
        if self.tracker is not None:
            point["new_track_threshold"] = self.tracker.config.new_det_threshold
            if self.memory is not None:  # the rules a memory tracker runs under
                point["tracking"] = self.tracker.config.to_dict()
        return point

    @property
    def backend_info(self) -> dict:
        return dict(self.backend.info)

    def set_concepts(self, labels: list[str], append: bool = False) -> list[int]:
        """Activate concepts; returns their ids. A label that is already active keeps its id."""
        cleaned = [validate_phrase(label) for label in labels]
        if not cleaned:
            raise ValueError("no concepts given: pass at least one phrase (use remove_concepts to clear)")
        unique = list(dict.fromkeys(cleaned))
        existing = {c.label: cid for cid, c in self._concepts.items()}
        if append:
            kept = dict(self._concepts)
        else:
            kept = {existing[label]: self._concepts[existing[label]] for label in unique if label in existing}
        to_encode = [label for label in unique if label not in existing]
        if len(kept) + len(to_encode) > self.max_concepts:
            raise ValueError(
                f"{len(kept) + len(to_encode)} concepts requested; the limit is {self.max_concepts}"
            )
        for label, (embeds, mask) in self._encode(to_encode).items():
            kept[self._next_concept_id] = _Concept(self._next_concept_id, label, embeds, mask)
            self._next_concept_id += 1
        removed = set(self._concepts) - set(kept)
        self._concepts = kept
        for cid in removed:
            self._forget_tracks(cid)
        by_label = {c.label: cid for cid, c in self._concepts.items()}
        return [by_label[label] for label in cleaned]

    def remove_concepts(self, concept_ids: list[int]) -> None:
        concept_ids = list(dict.fromkeys(concept_ids))  # [1, 1] removes concept 1 once
        unknown = [cid for cid in concept_ids if cid not in self._concepts]
        if unknown:
            raise ValueError(f"unknown concept ids {unknown}; active: {sorted(self._concepts)}")
        for cid in concept_ids:
            del self._concepts[cid]
            self._forget_tracks(cid)

    def add_exemplar(self, concept_id: int, boxes_xyxy: np.ndarray, positive: list[bool]) -> None:
        """Visual exemplars (boxes on the latest frame) that refine a concept from now on."""
        if concept_id not in self._concepts:
            raise ValueError(f"unknown concept id {concept_id}; active: {sorted(self._concepts)}")
        if self._last_image_size is None:
            raise ValueError("no frame processed yet: exemplar boxes refer to the latest frame")
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        if len(boxes) != len(positive):
            raise ValueError(f"{len(boxes)} boxes but {len(positive)} positive/negative flags")
        height, width = self._last_image_size
        for x0, y0, x1, y1 in boxes:
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ValueError(f"box {[x0, y0, x1, y1]} is empty or outside the {width}x{height} image")
        concept = self._concepts[concept_id]
        for (x0, y0, x1, y1), pos in zip(boxes, positive):
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            concept.exemplar_boxes.append([cx, cy, (x1 - x0) / width, (y1 - y0) / height])
            concept.exemplar_labels.append(1 if pos else 0)

    def exemplar_count(self, concept_id: int) -> int:
        """How many exemplar boxes the concept holds (every add_exemplar call adds to them)."""
        if concept_id not in self._concepts:
            raise ValueError(f"unknown concept id {concept_id}; active: {sorted(self._concepts)}")
        return len(self._concepts[concept_id].exemplar_boxes)

    def reset(self) -> None:
        """Forget all tracks and their memories (concepts stay)."""
        if self.tracker is not None:
            self.tracker.reset()
        self._memories.clear()

    @property
    def memory_track_ids(self) -> list[int]:
        """Track ids that hold a memory (equal to the tracker's live ids when a memory tracker is set)."""
        return sorted(self._memories)

    def memory_bytes(self) -> int:
        """Bytes of tensor storage all track memories hold now (bounded per track by the tracker)."""
        if self.memory is None:
            return 0
        return self.memory.memory_bytes(list(self._memories.values()))

    # ---------------------------------------------------------------------- frames
    @torch.inference_mode()
    def process(self, image: np.ndarray) -> FrameResult:
        """One RGB uint8 frame -> instances of every active concept, in original pixels."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        image = validate_image(image)
        image_size = (int(image.shape[0]), int(image.shape[1]))
        if self.tracker is not None and self._last_image_size not in (None, image_size):
            # a camera changed resolution: tracks of the old size cannot match the new masks
            log.info("image size %s -> %s: tracks reset", self._last_image_size, image_size)
            self.reset()
        instances: list[Instance] = []
        features: ImageFeatures | None = None
        # With no concept and no track memory nothing reads the image features: an idle node
        # leaves the accelerator alone (its tracker still ages the tracks, which then end).
        if self._concepts or self._memories:
            pixels = self._preprocess(image)
            t1 = time.perf_counter()
            timings["preprocess"] = (t1 - t0) * 1e3
            features = self.backend.encode_image(pixels)  # a failing backend hands over in here
            t2 = time.perf_counter()
            timings["encode"] = (t2 - t1) * 1e3
            if self._concepts:
                concepts = list(self._concepts.values())
                embeds = torch.stack([c.embeds for c in concepts])
                mask = torch.stack([c.mask for c in concepts])
                boxes, box_labels = self._exemplar_tensors(concepts)
                out = self.backend.detect(features, embeds, mask, boxes, box_labels)
                t3 = time.perf_counter()
                timings["detect"] = (t3 - t2) * 1e3
                instances = self._postprocess(out, concepts, image_size)
                timings["post"] = (time.perf_counter() - t3) * 1e3
        if self.tracker is not None:
            t4 = time.perf_counter()
            self._follow_backend_device()
            instances = self._track(instances, features, image_size)
            timings["track"] = (time.perf_counter() - t4) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        self._last_image_size = image_size
        self.frames_processed += 1
        return FrameResult(
            instances=instances, image_size=image_size, concepts=self.concepts, timings_ms=timings
        )

    @property
    def score_threshold(self) -> float:
        """Instances scoring at or below this are dropped (checked on every set: the node sets it live)."""
        return self._score_threshold

    @score_threshold.setter
    def score_threshold(self, value: float) -> None:
        self._score_threshold = check_score_threshold(value)

    @property
    def mask_threshold(self) -> float:
        """Mask probability above which a pixel belongs to an instance (checked on every set: the node sets it live)."""
        return self._mask_threshold

    @mask_threshold.setter
    def mask_threshold(self, value: float) -> None:
        self._mask_threshold = check_mask_threshold(value)

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --------------------------------------------------------------------- helpers
    def _encode(self, labels: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Text features per label, computed once per model (the cache is shared by forks)."""
        missing = [label for label in labels if label not in self._text_cache]
        if missing:
            input_ids, attention_mask = self.model.tokenize(missing)
            with torch.inference_mode():
                embeds = self.backend.encode_text(input_ids, attention_mask)
            for i, label in enumerate(missing):
                self._text_cache[label] = (embeds[i], attention_mask[i])
        found = {}
        for label in labels:
            self._text_cache.move_to_end(label)  # least recently used first
            found[label] = self._text_cache[label]
        while len(self._text_cache) > TEXT_CACHE_SIZE:  # a node whose concepts change for days
            self._text_cache.popitem(last=False)  # active concepts keep their own copy (_Concept)
        return found

    def _exemplar_tensors(self, concepts: list[_Concept]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        most = max(len(c.exemplar_boxes) for c in concepts)
        if most == 0:
            return None, None
        boxes = torch.zeros(len(concepts), most, 4)
        labels = torch.full((len(concepts), most), PADDING_BOX_LABEL, dtype=torch.long)
        for i, c in enumerate(concepts):
            n = len(c.exemplar_boxes)
            if n:
                boxes[i, :n] = torch.tensor(c.exemplar_boxes)
                labels[i, :n] = torch.tensor(c.exemplar_labels)
        return boxes, labels

    def _postprocess(self, out, concepts: list[_Concept], image_size: tuple[int, int]) -> list[Instance]:
        scores = out.scores
        mask_logit = probability_to_logit(self.mask_threshold)
        instances: list[Instance] = []
        for k, concept in enumerate(concepts):
            keep = torch.nonzero(scores[k] > self.score_threshold).flatten()
            if keep.numel() == 0:
                continue
            keep = keep[scores[k, keep].argsort(descending=True)]
            # the masks are still on the backend's device: only the kept rows are upsampled there
            # (inside their boxes when cropping) and come to the host, as bool masks at frame size
            boxes = boxes_to_image(out.pred_boxes[k, keep], image_size)
            masks = masks_to_image(
                out.pred_masks[k, keep.to(out.pred_masks.device)],
                image_size,
                mask_logit,
                boxes_xyxy=boxes if self.crop_masks_to_boxes else None,
            )
            for j in range(len(keep)):
                instances.append(
                    Instance(
                        concept_id=concept.concept_id,
                        label=concept.label,
                        score=float(scores[k, keep[j]]),
                        box_xyxy=boxes[j],
                        mask=masks[j],
                    )
                )
        return instances

    def _forget_tracks(self, concept_id: int) -> None:
        if self.tracker is not None:
            for tid in self.tracker.remove_concept(concept_id):
                self._memories.pop(tid, None)

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """The model input, resized on the backend's device when it is a GPU.

        Why the CPU retry: after a lasting CUDA error (driver reset, Xid) this copy is the first
        thing of a frame to touch the GPU. Raised here, outside the backend, the fallback chain
        would never see the failure and every later frame would fail the same way; on the CPU
        the frame reaches the backend, which fails and hands over to the next one.
        """
        device = self.backend.device
        try:
            return preprocess(image, self.input_size, device=device)
        except (ValueError, TypeError):
            raise
        except Exception as exc:  # noqa: BLE001 - any device failure: let the backend decide
            if device.type == "cpu":
                raise
            log.warning("preprocessing on %s failed (%s); this frame is resized on the CPU", device, exc)
            return preprocess(image, self.input_size, device="cpu")

    # ---------------------------------------------------------------- memory tracking
    def _follow_backend_device(self) -> None:
        """Put the memory tracker where the backend now runs (it changes when the chain hands over).

        This camera's track memories stay on the old device, which may be dead: its tracks are
        reset. The tracker module is shared by forks; the first to notice moves it.
        """
        if self.memory is None:
            return
        target = self.backend.device
        if _same_device(self._memory_device, target):
            return
        log.warning(
            "backend now runs on %s: the memory tracker moves there from %s and this camera's tracks restart",
            target,
            self._memory_device,
        )
        self.reset()
        if not _same_device(_device_of(self.memory), target):
            try:
                self.memory.to(target)
            except Exception as exc:  # noqa: BLE001 - weights on a dead GPU cannot be copied off
                if self.memory_source is None:
                    raise RuntimeError(
                        f"the memory tracker could not move to {target} ({exc}) and has no source to "
                        "load it again from: build the segmenter with ConceptSegmenter.from_name"
                    ) from exc
                fresh = self.memory_source.build(self.model.config, target)
                self.memory.to_empty(device=target)
                self.memory.load_state_dict(fresh.state_dict())
            if self.memory_source is not None:
                lay_out(self.memory, self.model.config, target, self.memory_source.memory_format)
        self._memory_device = _device_of(self.memory)

    def _track(
        self, detections: list[Instance], features: ImageFeatures | None, image_size: tuple[int, int]
    ) -> list[Instance]:
        """Association (+ propagation and conditioning when a memory tracker is set) for one frame.

        ``features`` is None only when there is nothing to propagate or condition (no concept, no memory).
        """
        assert self.tracker is not None
        if self.memory is None:
            return self.tracker.update(detections).instances
        frame_idx = self._memory_frame
        self._memory_frame += 1
        frame: TrackerFrame | None = None  # the tracker neck runs only when some track needs it
        propagated: dict[int, tuple[np.ndarray, float]] | None = None
        if self._memories:
            frame = self._memory_frame_features(features, frame_idx)
            ids = sorted(self._memories)
            out = self.memory.propagate([self._memories[tid] for tid in ids], frame)  # all tracks, batched
            self.propagate_calls += 1
            # the tracker's own mask head, trained on its own; read at SAM's logit 0, not at the
            # detector's operating point (with the demo rules its masks are not published anyway)
            masks = masks_to_image(out.mask_logits, image_size, 0.0)
            scores = torch.sigmoid(out.object_score_logits.float()).tolist()
            propagated = {tid: (masks[i], float(scores[i])) for i, tid in enumerate(ids)}
        update = self.tracker.update(detections, propagated)
        for tid in update.removed_track_ids:
            self._memories.pop(tid, None)
        inputs = update.memory_inputs()  # births and re-conditionings, with their detection masks
        if inputs:
            if frame is None:
                frame = self._memory_frame_features(features, frame_idx)
            for tid, inst in sorted(inputs.items()):
                track = self._memories.get(tid)
                if track is None:
                    track = self._memories[tid] = self.memory.new_track()
                self.memory.condition(track, frame, self._mask_to_model_input(inst.mask))
        live = set(self.tracker.track_ids())
        for tid in [t for t in self._memories if t not in live]:  # e.g. remove_track() outside update
            del self._memories[tid]
        return update.instances

    def _memory_frame_features(self, features: ImageFeatures | None, frame_idx: int) -> TrackerFrame:
        """The tracker neck on this frame's trunk tokens (computed by the image encoder, not again)."""
        assert self.memory is not None and features is not None
        if features.trunk is None:
            raise RuntimeError(
                f"backend {self.backend.name} returned no trunk feature, which the memory tracker needs: "
                "its image_encoder graph predates the `trunk` output; re-export it (efficientsam3 export) "
                "or drop onnx_dir to let the cache re-export"
            )
        param = next(self.memory.parameters())
        trunk = features.trunk.to(device=param.device, dtype=torch.float32)
        return self.memory.encode_frame(trunk, frame_idx)

    def _mask_to_model_input(self, mask: np.ndarray) -> torch.Tensor:
        """Bool [H, W] image mask -> float [S, S] coverage at the model input (SAM3 resizes, no padding).

        ``condition`` thresholds it at 0.5, so the mask lands on the tracker's input grid
        as the detector saw the image.
        """
        assert self.memory is not None
        param = next(self.memory.parameters())
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(param.device)[None, None]
        size = self.input_size
        if tuple(m.shape[-2:]) != (size, size):
            shrink = m.shape[-2] > size or m.shape[-1] > size
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        return m[0, 0]


def make_tracker(
    tracking: bool | TrackingConfig, point: OperatingPoint | None = None, memory: bool = False
) -> ConceptTracker | None:
    """``True`` -> SAM3-video rules at the model's operating ``point`` when given (the score that
    starts a track; with a ``memory`` tracker also its ``memory_tracking`` rules), a config ->
    those rules, ``False`` -> no tracking."""
    if tracking is False:
        return None
    if isinstance(tracking, TrackingConfig):
        return ConceptTracker(tracking)
    if point is None:
        return ConceptTracker()
    return ConceptTracker(TrackingConfig(**point.tracking_rules(memory)))


@dataclass(frozen=True)
class MemorySource:
    """What a memory tracker is built from, kept so that it can be built again on another device."""

    kind: str  # "perceiver" or "dense"
    checkpoint: str | None = None  # a stage-2 tracker file; None: random weights
    memory_format: str = "auto"  # RuntimeOptions.memory_format

    def build(self, config: ModelConfig, device: torch.device | str) -> TrackerModel:
        """The tracker on ``device``, its weights laid out as the torch backend lays out its own."""
        tracker = build_memory_tracker(config, self.kind, self.checkpoint).to(device)
        return lay_out(tracker, config, device, self.memory_format)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _same_device(a: torch.device | None, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are one device when 0 is the current one."""
    return a is not None and explicit_device(a) == explicit_device(b)


def build_memory_tracker(config: ModelConfig, memory: str, checkpoint: str | None = None) -> TrackerModel:
    """The memory tracker for a model of ``config`` on the CPU: a stage-2 tracker file (its own
    sizes), else random weights."""
    if checkpoint is None:
        log.warning(
            "memory tracker %r has random weights: propagated masks are not meaningful; pass "
            "memory_checkpoint= (a stage-2 tracker file, e.g. models/demo/tracker.safetensors)",
            memory,
        )
        tracker = build_tracker(config, memory=memory)
    else:
        tracker = load_tracker(checkpoint, config, memory)
    return tracker.eval()
