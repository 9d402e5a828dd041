"""The concept segmentation node without ROS: lifecycle, cameras, scheduling, results, services.

``node.py`` creates one :class:`NodeCore`, forwards subscription callbacks to
:meth:`NodeCore.on_message`, runs :meth:`NodeCore.process_next` on a worker thread
and publishes what it returns; services and parameter changes call the matching
methods here. Everything it returns is a rosbags message object (see
:mod:`.messages`), which the node serializes to CDR and publishes as raw bytes, so
the bytes on the wire are exactly those the tests check.

Cameras: one model, many cameras. Each camera gets its own segmenter *state*
(tracks, latest frame for exemplars). When the segmenter offers ``fork()`` (a new
tracking session sharing weights), cameras after the first use it; otherwise the
factory is called again, which loads the weights once more per camera.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import messages
from .convert import BadFrameError, msg_to_rgb
from .diagnostics import CameraStats, camera_status, diagnostic_array
from .labels import label_image
from .params import BY_NAME, NodeConfig, camera_names, output_topic, validate
from .scheduler import LatestFrameScheduler, Pending
from .services import (
    ServiceInputError,
    ServiceResult,
    select_cameras,
    validate_boxes,
    validate_concept_ids,
    validate_phrases,
)
from .time_jumps import StampWatch

UNCONFIGURED, INACTIVE, ACTIVE = "unconfigured", "inactive", "active"
WARN_PERIOD_S = 5.0


def answers_every_request(handler: Callable[..., ServiceResult]) -> Callable[..., ServiceResult]:
    """Turn an unexpected error in a service handler into a failed answer.

    rclpy's executors re-raise a callback's exception and end the process, so one request
    that trips a bug in the model would stop the robot's perception; the caller gets the
    error in the answer instead and the node keeps running.
    """

    @functools.wraps(handler)
    def answer(self: NodeCore, *args: Any, **kwargs: Any) -> ServiceResult:
        try:
            return handler(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - see the docstring
            self.log.error(f"{handler.__name__} failed: {type(err).__name__}: {err}")
            return ServiceResult.fail(
                f"internal error in {handler.__name__} ({type(err).__name__}: {err}); "
                "the node keeps running, see its log"
            )

    return answer


class Segmenter(Protocol):
    """What the core needs from efficientsam3_ros.pipeline.ConceptSegmenter."""

    concepts: dict[int, str]
    score_threshold: float
    mask_threshold: float
    backend_info: dict

    def set_concepts(self, labels: list[str], append: bool = False) -> list[int]: ...
    def remove_concepts(self, ids: list[int]) -> None: ...
    def add_exemplar(self, concept_id: int, boxes_xyxy: np.ndarray, positive: list[bool]) -> None: ...
    def exemplar_count(self, concept_id: int) -> int: ...
    def reset(self) -> None: ...
    def process(self, image: np.ndarray) -> Any: ...


SegmenterFactory = Callable[[NodeConfig], Segmenter]


def default_segmenter_factory(config: NodeConfig) -> Segmenter:
    """Load the pipeline's ConceptSegmenter as the parameters say (imported lazily: it pulls in torch)."""
    from ..pipeline import ConceptSegmenter
    from ..runtime import RuntimeOptions

    options = RuntimeOptions(
        precision=config.precision,
        onnx_dir=config.onnx_dir or None,
        cache_dir=config.cache_dir or None,
        # TensorRT's concept profile covers what the node allows (more concepts run in chunks)
        max_concepts=config.max_concepts,
        opt_concepts=min(RuntimeOptions.opt_concepts, config.max_concepts),
    )
    return ConceptSegmenter.from_name(
        config.model,
        checkpoint=config.checkpoint or None,
        backend=config.backend,
        device=config.device or None,
        input_size=config.input_size or None,
        memory=config.memory,
        memory_checkpoint=(config.memory_checkpoint or None) if config.memory != "none" else None,
        max_concepts=config.max_concepts,
        options=options,
    )


@dataclass
class Output:
    """One message to publish: relative topic (e.g. ``front/instances``) and rosbags message object."""

    topic: str
    msg: Any


@dataclass
class CameraState:
    """Everything one camera owns: its input topic, output namespace, segmenter state and statistics."""

    name: str
    topic: str
    segmenter: Segmenter
    stats: CameraStats
    last_image_size: tuple[int, int] | None = None
    stamps: StampWatch = field(default_factory=StampWatch)


@dataclass
class InputFrame:
    """A frame as received: a message object, or serialized CDR bytes plus the type name."""

    payload: Any
    typename: str | None = None


@dataclass
class _Throttle:
    """Remembers when each warning key was last logged."""

    period_s: float
    last: dict[str, float] = field(default_factory=dict)

    def ready(self, key: str, now: float) -> bool:
        last = self.last.get(key)
        if last is not None and now - last < self.period_s:
            return False
        self.last[key] = now
        return True


class NodeCore:
    """The node's behaviour, driven by plain calls; thread-safe between one worker and the executor."""

    def __init__(
        self,
        config: NodeConfig | dict | None = None,
        segmenter_factory: SegmenterFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
        typestore: Any = None,
    ):
        self.config = config if isinstance(config, NodeConfig) else NodeConfig.from_values(config)
        self._factory = segmenter_factory or default_segmenter_factory
        self._clock = clock
        self.log = logger or logging.getLogger("efficientsam3_ros.node")
        self.typestore = typestore or messages.get_typestore()
        self._model_lock = threading.RLock()
        self._throttle = _Throttle(WARN_PERIOD_S)
        self.state = UNCONFIGURED
        self.cameras: dict[str, CameraState] = {}
        self.scheduler: LatestFrameScheduler | None = None
        self._overlay_fn: Callable | None = None

    # ------------------------------------------------------------------ lifecycle
    def configure(self) -> None:
        """Load the model for every camera and apply the initial concepts and thresholds."""
        if self.state != UNCONFIGURED:
            raise RuntimeError(f"configure needs state {UNCONFIGURED}, node is {self.state}")
        cfg = self.config
        names = camera_names(list(cfg.image_topics), list(cfg.camera_names))
        first = self._factory(cfg)
        segmenters = [first] + [self._share(first) for _ in names[1:]]
        cameras = {}
        for name, topic, seg in zip(names, cfg.image_topics, segmenters):
            _apply_thresholds(seg, cfg)
            cameras[name] = CameraState(name, topic, seg, CameraStats(window=cfg.stats_window))
        self.cameras = cameras
        if cfg.concepts:
            result = self.set_concepts(list(cfg.concepts), append=False)
            if not result.success:
                self.cameras = {}
                raise ValueError(f"parameter concepts: {result.message}")
        self.scheduler = LatestFrameScheduler(names, cfg.max_rate_hz, self._clock)
        self.scheduler.close()  # frames are refused until activate
        self.state = INACTIVE
        self._log_backend(len(names))

    def _log_backend(self, n_cameras: int) -> None:
        """Say which backend runs; when the fallback chain skipped some, warn with each reason.

        The runtime logs the same through Python logging, which rclpy does not show; the
        node's logger is what an operator reads, so why TensorRT was not used is said here too.
        """
        info = self.backend_info()
        text = f"configured {n_cameras} camera(s) on backend {info.get('backend')}"
        fallbacks = [str(reason) for reason in info.get("fallbacks") or []]
        if not fallbacks:
            self.log.info(text)
            return
        self.log.warning(
            f"{text} (backend parameter: {self.config.backend}); skipped {len(fallbacks)} backend(s): "
            + " | ".join(fallbacks)  # a reason may itself contain "; "
        )

    def _share(self, first: Segmenter) -> Segmenter:
        """A segmenter for one more camera: a fork sharing weights when supported, else a fresh load."""
        fork = getattr(first, "fork", None)
        return fork() if callable(fork) else self._factory(self.config)

    def activate(self) -> None:
        """Start accepting frames."""
        if self.state != INACTIVE:
            raise RuntimeError(f"activate needs state {INACTIVE}, node is {self.state}")
        assert self.scheduler is not None
        self.scheduler.reopen()
        self.state = ACTIVE

    def deactivate(self) -> None:
        """Stop accepting frames; a waiting frame is discarded (counted as dropped)."""
        if self.state != ACTIVE:
            raise RuntimeError(f"deactivate needs state {ACTIVE}, node is {self.state}")
        assert self.scheduler is not None
        self.scheduler.close()
        self.state = INACTIVE

    def cleanup(self) -> None:
        """Release the model(s) and the GPU memory they held."""
        if self.state == ACTIVE:
            self.deactivate()
        with self._model_lock:
            self.cameras = {}
            self.scheduler = None
            self.state = UNCONFIGURED
        gc.collect()
        _empty_gpu_cache()

    # ------------------------------------------------------------------ frames
    def on_message(self, camera: str, payload: Any, typename: str | None = None) -> bool:
        """Hand a received frame to the scheduler; return True when a waiting frame was dropped for it.

        ``payload`` is a sensor_msgs Image/CompressedImage object, or its CDR bytes with
        ``typename`` (what a raw rclpy subscription delivers). Nothing is decoded here,
        so subscription callbacks stay cheap.
        """
        if self.scheduler is None:
            return True
        return self.scheduler.submit(camera, InputFrame(payload, typename))

    def process_next(self, timeout: float | None = 0.0) -> list[Output] | None:
        """Process the next due frame and return the messages to publish.

        Returns None when no frame was due within ``timeout``, and an empty list when
        the frame was dropped (bad frame, model error); never raises for a bad frame.
        """
        scheduler = self.scheduler
        if scheduler is None or self.state != ACTIVE:
            if timeout:
                time.sleep(min(timeout, 0.05))
            return None
        item = scheduler.take(timeout)
        if item is None:
            return None
        camera, pending = item
        return self._process(camera, pending)

    def _process(self, camera_name: str, pending: Pending) -> list[Output]:
        camera = self.cameras.get(camera_name)
        if camera is None:
            return []
        try:
            msg = self._decode(pending.frame)
            image = msg_to_rgb(msg)
        except Exception as err:  # FrameError by contract; whatever a decoder lets through is a bad frame too
            camera.stats.bad_frames += 1
            self._warn(f"bad:{camera_name}:{type(err).__name__}", f"dropping frame on {camera.topic}: {err}")
            return []
        header = getattr(msg, "header", None)
        with self._model_lock:
            self._reset_on_time_jump(camera, header)
            started = self._clock()
            try:
                result = camera.segmenter.process(image)
            except Exception as err:  # the model failing must not kill the worker
                camera.stats.errors += 1
                camera.stats.last_error = f"{type(err).__name__}: {err}"
                self._warn(f"model:{camera_name}", f"model failed on a frame from {camera.topic}: {err}")
                return []
            elapsed_ms = (self._clock() - started) * 1000.0
        camera.stats.last_error = ""
        camera.last_image_size = tuple(int(v) for v in result.image_size)
        timings = result.timings_ms or {}
        inference_ms = float(timings.get("total", sum(timings.values()) if timings else elapsed_ms))
        try:
            outputs = [
                Output(
                    output_topic(camera_name, "instances"),
                    messages.frame_result_to_msg(result, header, self.typestore, inference_ms),
                )
            ]
            outputs += self._extra_images(camera_name, image, result, header)
        except Exception as err:  # a result that cannot be published costs this frame, not the worker
            camera.stats.errors += 1
            camera.stats.last_error = f"{type(err).__name__}: {err}"
            self._warn(f"publish:{camera_name}", f"could not build the messages for {camera.topic}: {err}")
            return []
        done = self._clock()
        camera.stats.record(done, (done - pending.arrival) * 1000.0, inference_ms)
        return outputs

    def _reset_on_time_jump(self, camera: CameraState, header: Any) -> None:
        """Forget the camera's tracks when its stamps jumped (see :mod:`.time_jumps`); call under the model lock."""
        if header is None:
            return
        reason = camera.stamps.observe(
            messages.stamp_to_ns(header), self.config.track_reset_time_jump_s, self.config.track_reset_gap_s
        )
        if reason is None:
            return
        camera.segmenter.reset()
        camera.stats.tracking_resets += 1
        self.log.info(f"reset the tracks of {camera.topic}: {reason}")

    def _decode(self, frame: InputFrame) -> Any:
        """Turn a raw CDR payload into a message object; a corrupt payload is a bad frame."""
        if frame.typename is None:
            return frame.payload
        try:
            return self.typestore.deserialize_cdr(bytes(frame.payload), frame.typename)
        except Exception as err:  # rosbags raises several types for truncated/corrupt CDR
            raise BadFrameError(f"cannot deserialize {frame.typename}: {err}") from err

    def _extra_images(self, camera: str, image: np.ndarray, result: Any, header: Any) -> list[Output]:
        """Overlay and label images, when enabled."""
        out = []
        if self.config.publish_label_image:
            encoding = self.config.label_image_encoding
            labels = label_image(result.instances, result.image_size, encoding)
            out.append(
                Output(
                    output_topic(camera, "label_image"),
                    messages.numpy_to_image_msg(labels, encoding, header, self.typestore),
                )
            )
        if self.config.publish_overlay:
            draw = self._overlay()
            if draw is not None:
                overlay = np.asarray(draw(image, result.instances), dtype=np.uint8)
                out.append(
                    Output(
                        output_topic(camera, "overlay"),
                        messages.numpy_to_image_msg(overlay, "rgb8", header, self.typestore),
                    )
                )
        return out

    def _overlay(self) -> Callable | None:
        """The pipeline's overlay renderer, imported on first use (None, with a warning, if missing)."""
        if self._overlay_fn is None:
            try:
                from ..pipeline.overlay import draw_overlay
            except ImportError as err:
                self._warn("overlay", f"overlay disabled: {err}")
                return None
            self._overlay_fn = draw_overlay
        return self._overlay_fn

    def _warn(self, key: str, text: str) -> None:
        if self._throttle.ready(key, self._clock()):
            self.log.warning(text)

    # ------------------------------------------------------------------ services
    def _segmenters(self) -> list[Segmenter]:
        return [c.segmenter for c in self.cameras.values()]

    def _require_configured(self) -> None:
        if not self.cameras:
            raise ServiceInputError("the node is not configured (no model loaded)")

    def concepts(self) -> dict[int, str]:
        """The active concepts (id -> label), as the first camera's segmenter has them."""
        segs = self._segmenters()
        return dict(segs[0].concepts) if segs else {}

    @answers_every_request
    def set_concepts(self, labels: list[str], append: bool = False) -> ServiceResult:
        """Replace (or extend) the concepts on every camera; return their ids in request order."""
        try:
            self._require_configured()
            with self._model_lock:
                current = self.concepts()
                phrases = validate_phrases(
                    labels,
                    list(current.values()),
                    append,
                    self.config.max_concepts,
                    self.config.max_phrase_length,
                )
                ids_per_camera = [
                    list(seg.set_concepts(phrases, append=append)) for seg in self._segmenters()
                ]
        except ServiceInputError as err:
            return ServiceResult.fail(str(err))
        except ValueError as err:  # the pipeline's own phrase checks
            return ServiceResult.fail(f"rejected by the model: {err}")
        ids = [int(i) for i in ids_per_camera[0]]
        if any(other != ids_per_camera[0] for other in ids_per_camera[1:]):
            self.log.error(f"cameras assigned different concept ids: {ids_per_camera}")
        return ServiceResult(
            True, f"{len(ids)} concept(s) {'added' if append else 'set'}", concept_ids=ids, labels=phrases
        )

    @answers_every_request
    def remove_concepts(self, ids: list[int]) -> ServiceResult:
        """Remove concepts by id on every camera."""
        try:
            self._require_configured()
            with self._model_lock:
                wanted = validate_concept_ids(ids, self.concepts())
                for seg in self._segmenters():
                    seg.remove_concepts(wanted)
        except (ServiceInputError, ValueError) as err:
            return ServiceResult.fail(str(err))
        return ServiceResult(True, f"removed {len(wanted)} concept(s)", concept_ids=wanted)

    @answers_every_request
    def list_concepts(self) -> ServiceResult:
        """The active concepts as parallel id/label lists, sorted by id."""
        if not self.cameras:
            return ServiceResult.fail("the node is not configured (no model loaded)")
        with self._model_lock:
            concepts = self.concepts()
        ids = sorted(concepts)
        return ServiceResult(
            True, f"{len(ids)} concept(s)", concept_ids=ids, labels=[concepts[i] for i in ids]
        )

    @answers_every_request
    def add_exemplar(
        self, camera: str, concept_id: int, boxes_flat: list[float], positive: list[bool]
    ) -> ServiceResult:
        """Add box exemplars for a concept on one camera's latest processed frame."""
        try:
            self._require_configured()
            (name,) = select_cameras(camera, list(self.cameras), allow_all=False)
            state = self.cameras[name]
            with self._model_lock:
                validate_concept_ids([concept_id], self.concepts())
                boxes, flags = validate_boxes(
                    boxes_flat,
                    positive,
                    state.last_image_size,
                    self.config.max_exemplar_boxes,
                    held=state.segmenter.exemplar_count(int(concept_id)),
                )
                state.segmenter.add_exemplar(int(concept_id), boxes, flags)
        except (ServiceInputError, ValueError) as err:
            return ServiceResult.fail(str(err))
        return ServiceResult(True, f"added {len(flags)} exemplar box(es) to concept {int(concept_id)}")

    @answers_every_request
    def reset_tracking(self, camera: str = "") -> ServiceResult:
        """Forget the tracks of one camera, or of every camera for an empty name."""
        try:
            self._require_configured()
            names = select_cameras(camera, list(self.cameras), allow_all=True)
            with self._model_lock:
                for name in names:
                    self.cameras[name].segmenter.reset()
        except (ServiceInputError, ValueError) as err:
            return ServiceResult.fail(str(err))
        return ServiceResult(True, f"reset {len(names)} camera(s)")

    # ------------------------------------------------------------------ parameters
    def set_parameters(self, changes: dict[str, Any]) -> tuple[bool, str]:
        """Validate and apply parameter changes all together or not at all.

        Returns (accepted, reason). Static parameters are refused while configured;
        a bad concept list is refused with the service's message. Limits in the same
        change (``max_concepts``, ``max_phrase_length``) govern its ``concepts``; a
        ``max_concepts`` below the number of active concepts is refused. A refused change
        leaves the config, the segmenters and the concepts as they were.
        """
        problems = validate(changes)
        if problems:
            return False, "; ".join(problems)
        static = [n for n in changes if not BY_NAME[n].dynamic]
        if static and self.state != UNCONFIGURED:
            return False, f"{static} only change when unconfigured (deactivate, cleanup, set, configure)"
        values = dict(self.config.values)
        for name, value in changes.items():
            values[name] = float(value) if BY_NAME[name].kind == "float" else value
        config = NodeConfig(values)
        with self._model_lock:  # frames see the old parameters or the new ones, never a mix
            if self.cameras:
                refused = self._change_concepts(changes, config)
                if refused:
                    return False, refused
            self.config = config
            for seg in self._segmenters():
                _apply_thresholds(seg, self.config)
        if self.scheduler is not None:
            self.scheduler.max_rate_hz = self.config.max_rate_hz
        return True, ""

    def _change_concepts(self, changes: dict[str, Any], config: NodeConfig) -> str:
        """Apply the change's concepts under its limits (``config``); return why not, or "" when done.

        On refusal the config and the segmenters' limits are as before; the concepts too,
        since the service and the pipeline refuse before changing anything.
        """
        limit = int(config.max_concepts)
        if "concepts" not in changes:
            active = len(self.concepts())
            if active > limit:
                return (
                    f"max_concepts={limit} is below the {active} active concepts: remove "
                    f"{active - limit} first (remove_concepts service), or set concepts and "
                    "max_concepts together in one change"
                )
            return ""
        old_config = self.config
        segmenters = self._segmenters()
        old_limits = [seg.max_concepts for seg in segmenters]  # set by _apply_thresholds at configure
        # the service check reads self.config and the pipeline its own max_concepts: both take the new limit
        self.config = config
        for seg in segmenters:
            seg.max_concepts = limit
        result = ServiceResult(False, "not applied")
        try:
            labels = list(changes["concepts"])
            if labels:
                result = self.set_concepts(labels, append=False)
            else:
                known = list(self.concepts())
                result = self.remove_concepts(known) if known else ServiceResult(True, "")
        finally:
            if not result.success:
                self.config = old_config
                for seg, old in zip(segmenters, old_limits):
                    seg.max_concepts = old
        return "" if result.success else f"concepts: {result.message}"

    # ------------------------------------------------------------------ introspection
    def backend_info(self) -> dict:
        """The first segmenter's backend and fallbacks ({} when unconfigured)."""
        segs = self._segmenters()
        return dict(segs[0].backend_info) if segs else {}

    def diagnostics(self, stamp_ns: int, hardware_id: str = "") -> Any:
        """A DiagnosticArray with one status per camera (fps, latency percentiles, drops, backend)."""
        statuses = []
        for name, cam in self.cameras.items():
            counters = self.scheduler.counters[name] if self.scheduler else None
            statuses.append(
                camera_status(
                    f"efficientsam3: {name or 'camera'} ({cam.topic})",
                    cam.stats,
                    counters.received if counters else 0,
                    counters.dropped if counters else 0,
                    dict(cam.segmenter.backend_info),
                    self.state == ACTIVE,
                    hardware_id,
                    self.typestore,
                )
            )
        return diagnostic_array(statuses, stamp_ns, self.typestore)

    def input_topics(self) -> list[tuple[str, str, str]]:
        """(camera, topic, type name) of every subscription the node should create."""
        transport = self.config.input_transport
        topics = list(self.config.image_topics)
        out = []
        for name, topic in zip(camera_names(topics, list(self.config.camera_names)), topics):
            if transport in ("raw", "both"):
                out.append((name, topic, messages.IMAGE))
            if transport in ("compressed", "both"):
                out.append((name, f"{topic.rstrip('/')}/compressed", messages.COMPRESSED_IMAGE))
        return out

    def output_topics(self) -> dict[str, str]:
        """Relative output topic -> type name, for every camera (instances, overlay, label_image)."""
        out = {}
        for name in camera_names(list(self.config.image_topics), list(self.config.camera_names)):
            out[output_topic(name, "instances")] = messages.CONCEPT_INSTANCE_ARRAY
            out[output_topic(name, "overlay")] = messages.IMAGE
            out[output_topic(name, "label_image")] = messages.IMAGE
        return out


def _apply_thresholds(segmenter: Segmenter, config: NodeConfig) -> None:
    """Push the threshold parameters (and the concept limit) into the pipeline; a negative threshold means the model's own."""
    from ..modeling.config import OperatingPoint
    from ..tracking.config import TrackingConfig

    model = getattr(segmenter, "model", None)
    point = getattr(getattr(model, "config", None), "operating_point", None) or OperatingPoint()

    def own(value: float, name: str) -> float:
        return float(value) if value >= 0 else float(getattr(point, name))

    segmenter.max_concepts = int(config.max_concepts)  # the pipeline enforces it too: keep the two equal
    segmenter.score_threshold = own(config.score_threshold, "score_threshold")
    segmenter.mask_threshold = own(config.mask_threshold, "mask_threshold")
    tracker = getattr(segmenter, "tracker", None)
    if tracker is not None:  # the tracking config is immutable: swap in an updated copy
        # -1 parameters mean the model's own rules (with a memory tracker, its memory rules)
        rules = TrackingConfig(**point.tracking_rules(getattr(segmenter, "memory", None) is not None))
        iou, missed = float(config.track_match_iou), int(config.track_max_missed_frames)
        tracker.config = dataclasses.replace(
            rules,
            new_det_threshold=own(config.track_new_threshold, "new_track_threshold"),
            assoc_iou_threshold=iou if iou >= 0 else rules.assoc_iou_threshold,
            max_missed_frames=missed if missed >= 0 else rules.max_missed_frames,
            stale_mask_frames=int(config.track_stale_mask_frames),
            max_tracks=int(config.max_tracks),
        )


def _empty_gpu_cache() -> None:
    """Return cached CUDA memory to the driver, if torch is loaded and a GPU is in use."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
