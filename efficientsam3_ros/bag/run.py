"""The eval-bag run loop: bag in, results bag + report out, stopping cleanly on any failure.

Why this shape: a long evaluation must never lose its work. Every way the loop can end
(finished, Ctrl-C, a storage file that breaks part-way, an unexpected error) goes
through the same ``finally``: the results bag is closed (index + metadata.yaml written,
so it plays), and the report is written with the reason and the place it stopped.
A single bad message (corrupt CDR, undecodable image, a frame the model refuses, a result
that cannot be written) is counted as failed, listed in the report, and skipped. A run that
evaluates nothing (an image topic without messages, every frame failed) does not end
"completed": it has its own stop reason and exit code 1.

Frames are processed, tracked and scored in bag log-time order. Header stamps that go
backwards in that order (usually a bad recording: clocks reset, topics merged from several
bags) are counted in the report's ``frames.stamps_backwards`` and warned about.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from efficientsam3_ros import __version__
from efficientsam3_ros.bag.ground_truth import read_gt_topic
from efficientsam3_ros.bag.sink import ResultsWriter
from efficientsam3_ros.bag.source import (
    BagError,
    BagOpenError,
    BagPathError,
    BagReadError,
    BagSource,
    StampOrder,
    header_stamp_ns,
)
from efficientsam3_ros.config_utils import check_mask_threshold
from efficientsam3_ros.evaluation.ground_truth import load_ground_truth
from efficientsam3_ros.evaluation.records import FrameRecord, InstanceRecord, records_by_stamp
from efficientsam3_ros.evaluation.report import write_report
from efficientsam3_ros.evaluation.scoring import score
from efficientsam3_ros.evaluation.stats import instances_over_time, latency_stats, track_lifetimes
from efficientsam3_ros.pipeline.results import FrameResult
from efficientsam3_ros.ros import messages

log = logging.getLogger(__name__)

MAX_LISTED_FAILURES = 100  # the report lists this many failed messages; all are counted

EXIT_OK = 0
EXIT_ERROR = 1  # stopped early (bag unreadable part-way, nothing usable, unexpected error)
EXIT_USAGE = 2  # bad arguments: missing topic, unreadable ground truth, existing output
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


#: What stops the whole run even when one frame raised it: the user, or the process itself in trouble.
#: Anything else raised while decoding or processing one image message fails that frame only
#: (decoders raise more than FrameError: cv2.error, struct.error, ...), so it is counted and skipped.
FATAL_ERRORS = (KeyboardInterrupt, MemoryError)


class Segmenter(Protocol):
    """What the loop needs from ``pipeline.ConceptSegmenter`` (tests pass light stand-ins)."""

    def set_concepts(self, labels: list[str]) -> list[int]: ...

    def process(self, image: np.ndarray) -> FrameResult: ...

    @property
    def backend_info(self) -> dict: ...


@dataclass
class EvalConfig:
    """Everything one eval-bag run needs; mirrors the CLI options."""

    bag: Path
    image_topic: str
    concepts: list[str]
    out_dir: Path
    model: str = "es-ev-s"
    checkpoint: str | None = None
    backend: str = "auto"
    device: str | None = None
    input_size: int | None = None
    # what reaches the backends (runtime.RuntimeOptions): the node's precision / onnx_dir / cache_dir
    precision: str = "fp16"
    onnx_dir: Path | None = None  # a folder written by `efficientsam3 export`; None: export into cache_dir
    cache_dir: Path | None = None  # None: ~/.cache/efficientsam3_ros
    memory: str = "none"  # none | perceiver | dense: propagate tracks through a memory tracker
    memory_checkpoint: str | None = None  # trained tracker weights (stage-2 export) for ``memory``
    # None: the model's operating point (ModelConfig.operating_point; SAM3's 0.5 / 0.7 by default)
    score_threshold: float | None = None  # instances scoring below are dropped
    new_track_threshold: float | None = None  # a detection starts a track only at this score
    mask_threshold: float | None = None  # mask probability above which a pixel is the instance's
    every: int = 1
    max_frames: int | None = None
    gt: Path | None = None
    gt_topic: str | None = None
    storage: str | None = None  # None: same as the input bag
    overlay: bool = False
    progress: bool = True


@dataclass
class EvalOutcome:
    """What a run produced, for the CLI and for tests."""

    exit_code: int
    report: dict[str, Any]
    report_json: Path | None = None
    report_html: Path | None = None
    results_bag: Path | None = None
    error: str | None = None


class UsageError(BagError):
    """A problem with the request itself, found before any frame is processed."""


@dataclass
class _RunState:
    frames: list[FrameRecord] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    in_topic: int | None = None
    seen: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    duplicates: int = 0
    order: StampOrder = field(default_factory=lambda: StampOrder("eval-bag"))  # stamps going backwards
    stamps: set[int] = field(default_factory=set)
    last_index: int | None = None
    last_stamp: int | None = None
    stop_reason: str = "completed"
    stop_message: str = ""

    def fail(self, index: int, stamp: int | None, stage: str, error: BaseException) -> None:
        self.failed += 1
        text = f"{type(error).__name__}: {error}" if not isinstance(error, (BagError,)) else str(error)
        log.warning("image message %d failed (%s): %s", index, stage, text)
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append({"index": index, "stamp_ns": stamp, "stage": stage, "error": text})


def build_segmenter(config: EvalConfig) -> Segmenter:
    """The real pipeline; imported here so reading and scoring bags never needs torch."""
    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter
    from efficientsam3_ros.runtime import RuntimeOptions

    options = RuntimeOptions(precision=config.precision, onnx_dir=config.onnx_dir, cache_dir=config.cache_dir)
    return ConceptSegmenter.from_name(
        config.model,
        checkpoint=config.checkpoint,
        backend=config.backend,
        device=config.device,
        input_size=config.input_size,
        options=options,
        memory=config.memory,
        memory_checkpoint=config.memory_checkpoint,
        score_threshold=config.score_threshold,
        new_track_threshold=config.new_track_threshold,
        mask_threshold=config.mask_threshold,
    )


def to_record(result: FrameResult, stamp_ns: int) -> FrameRecord:
    """A pipeline result as a scoring record (masks kept as RLE only)."""
    return FrameRecord(
        stamp_ns=stamp_ns,
        image_size=(int(result.image_size[0]), int(result.image_size[1])),
        instances=[
            InstanceRecord(
                label=i.label,
                rle=i.rle(),
                score=float(i.score),
                track_id=int(i.track_id),
                concept_id=int(i.concept_id),
            )
            for i in result.instances
        ],
    )


def evaluate_bag(
    config: EvalConfig,
    segmenter: Segmenter | None = None,
    segmenter_factory: Callable[[EvalConfig], Segmenter] = build_segmenter,
) -> EvalOutcome:
    """Run the evaluation; never raises for bag or model problems (see :class:`EvalOutcome`).

    Usage errors (missing topic, bad ground truth, existing output, an --out that is a file, a
    sqlite3 path with '#', '?' or '%') return ``EXIT_USAGE``
    with no outputs written. Everything after the first frame is attempted ends with a
    closed results bag and a written report.
    """
    if config.every < 1:
        return _usage(f"--every must be >= 1, got {config.every}")
    if config.max_frames is not None and config.max_frames < 1:
        return _usage(
            f"--max-frames must be >= 1, got {config.max_frames} (leave it out to process every frame)"
        )
    for flag, value in (
        ("--score-threshold", config.score_threshold),
        ("--new-track-threshold", config.new_track_threshold),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            return _usage(f"{flag} must be in [0, 1] (scores are probabilities), got {value}")
    if config.mask_threshold is not None:
        try:
            check_mask_threshold(config.mask_threshold, "--mask-threshold")
        except ValueError as err:
            return _usage(str(err))
    out_dir = Path(config.out_dir)
    results_path = out_dir / "results"
    if problem := out_dir_problem(out_dir):
        return _usage(problem)
    if results_path.exists():
        return _usage(f"{results_path} already exists; choose another --out or remove it")
    gt, gt_labels, gt_source = None, [], ""
    if config.gt is not None:
        try:
            gt, gt_labels = load_ground_truth(config.gt)
        except ValueError as err:
            return _usage(str(err))
        gt_source = str(config.gt)

    started = time.time()
    source = BagSource(config.bag)
    state = _RunState()
    run_info = _run_info(config, source, results_path)
    backend: dict[str, Any] = {}
    writer: ResultsWriter | None = None
    try:
        try:
            source.open()
        except BagPathError as err:
            return _usage(str(err))
        except BagOpenError as err:
            state.stop_reason, state.stop_message = "bag_unreadable", str(err)
            log.error("%s", err)
            return _finish(
                config, state, run_info, backend, None, gt, gt_labels, gt_source, started, EXIT_ERROR
            )
        try:
            conns = source.image_connections(config.image_topic)
            if config.gt_topic:
                gt, gt_labels = read_gt_topic(source, config.gt_topic)
                gt_source = f"topic {config.gt_topic}"
        except BagError as err:
            return _usage(str(err))
        run_info["image_types"] = sorted({c.msgtype for c in conns})
        run_info["bag_version"] = source.info.version
        run_info["bag_embeds_definitions"] = source.info.embeds_definitions
        run_info["bag_types_without_definition"] = list(source.info.types_without_definition)
        # results are rosbag2: a ROS 1 recording's results go to sqlite3 unless --storage says otherwise
        storage = config.storage or ("sqlite3" if source.info.storage == "rosbag1" else source.info.storage)
        run_info["results_storage"] = storage
        if storage == "sqlite3" and (problem := messages.sqlite_path_problem(results_path)):
            return _usage(
                f"cannot write the sqlite3 results bag {results_path}: {problem}. Choose an --out without "
                f"{messages.sqlite_uri_chars_text()}, or pass --storage mcap."
            )
        if not source.has_messages(conns):
            state.in_topic = 0
            _no_messages(config, state)
            return _finish(
                config, state, run_info, backend, None, gt, gt_labels, gt_source, started, EXIT_ERROR
            )

        if segmenter is None:
            segmenter = segmenter_factory(config)
        reset = getattr(segmenter, "reset", None)
        if callable(reset):
            reset()  # a bag starts with no tracks, even when the segmenter served another bag before
        segmenter.set_concepts(list(config.concepts))
        backend = dict(segmenter.backend_info)
        run_info.update(getattr(segmenter, "operating_point", {}))  # the thresholds actually used

        writer = ResultsWriter(
            results_path,
            config.image_topic,
            storage=storage,
            overlay=config.overlay,
            custom_data={
                "efficientsam3_ros.version": __version__,
                "efficientsam3_ros.source_bag": str(config.bag),
                "efficientsam3_ros.model": config.model,
                "efficientsam3_ros.concepts": "; ".join(config.concepts),
            },
        )
        writer.open()
        run_info["results_topics"] = [t for t in (writer.instances_topic, writer.overlay_topic) if t]
        _loop(config, source, conns, segmenter, writer, state)
        code = EXIT_OK
    except KeyboardInterrupt:
        state.stop_reason, state.stop_message = "interrupted", "stopped by Ctrl-C (SIGINT)"
        code = EXIT_INTERRUPTED
    except BagReadError as err:
        state.stop_reason, state.stop_message = "bag_read_error", str(err)
        code = EXIT_ERROR
    except Exception as err:  # model build, writer, disk full: still flush what exists
        log.exception("eval-bag stopped by an unexpected error")
        state.stop_reason, state.stop_message = "error", f"{type(err).__name__}: {err}"
        code = EXIT_ERROR
    finally:
        if writer is not None:
            writer.close()
        source.close()
    if code == EXIT_OK and not state.seen:  # the index promised messages the topic did not have
        _no_messages(config, state)
        code = EXIT_ERROR
    elif code == EXIT_OK and not state.processed:
        state.stop_reason = "all_frames_failed"
        state.stop_message = (
            f"none of the {state.failed} image message(s) tried could be processed; see failures"
        )
        code = EXIT_ERROR
    return _finish(
        config, state, run_info, backend, writer and writer.path, gt, gt_labels, gt_source, started, code
    )


def _loop(
    config: EvalConfig,
    source: BagSource,
    conns: list,
    segmenter: Segmenter,
    writer: ResultsWriter,
    state: _RunState,
) -> None:
    """Process the topic's messages in log-time order; raises only to stop the whole run."""
    draw_overlay = None
    if config.overlay:
        from efficientsam3_ros.pipeline.overlay import draw_overlay
    total = state.in_topic = source.message_count(conns)
    bar = tqdm(
        total=total or None, unit="frame", desc="eval-bag", disable=not config.progress, dynamic_ncols=True
    )
    try:
        for index, (conn, log_time, raw) in enumerate(source.raw_messages(conns)):
            if config.max_frames is not None and state.processed >= config.max_frames:
                state.stop_reason, state.stop_message = (
                    "max_frames",
                    f"--max-frames {config.max_frames} reached",
                )
                return
            state.seen += 1
            state.last_index = index
            bar.update(1)
            if index % config.every:
                state.skipped += 1
                continue
            stamp = None
            try:
                msg = source.deserialize(raw, conn.msgtype)
                stamp = header_stamp_ns(msg)
                state.order.see(stamp)
                state.last_stamp = stamp
                if stamp in state.stamps:
                    state.duplicates += 1
                state.stamps.add(stamp)
                rgb = messages.msg_to_rgb(msg)
            except FATAL_ERRORS:
                raise
            except Exception as err:  # a message that does not decode is one failed frame
                state.fail(index, stamp, "decode", err)
                continue
            try:
                result = segmenter.process(rgb)
            except FATAL_ERRORS:
                raise
            except Exception as err:  # a frame the model refuses (size, content) is one failed frame
                state.fail(index, stamp, "model", err)
                continue
            try:
                frame_id = str(getattr(msg.header, "frame_id", ""))
                overlay = draw_overlay(rgb, result.instances) if draw_overlay is not None else None
                record = to_record(result, stamp)
                writer.write_frame(result, stamp, log_time, frame_id, overlay)
            except FATAL_ERRORS:
                raise
            except Exception as err:  # a result that cannot be built or written is one failed frame
                state.fail(index, stamp, "write", err)
                continue
            state.frames.append(record)
            state.timings.append(dict(result.timings_ms))
            state.processed += 1
            bar.set_postfix(processed=state.processed, failed=state.failed, refresh=False)
    finally:
        bar.close()


def out_dir_problem(out_dir: Path) -> str | None:
    """Why ``out_dir`` cannot be an output folder (it, or a folder above it, is a file), or None."""
    not_a_folder = next((p for p in (out_dir, *out_dir.parents) if p.exists() and not p.is_dir()), None)
    if not_a_folder is None:
        return None
    what = "is an existing file" if not_a_folder == out_dir else f"is under {not_a_folder}, an existing file"
    return f"--out {out_dir} {what}, not a folder; choose another --out"


def _no_messages(config: EvalConfig, state: _RunState) -> None:
    state.stop_reason = "empty_topic"
    state.stop_message = (
        f"image topic {config.image_topic} has no messages in bag {config.bag}; nothing was evaluated"
    )


def _usage(message: str) -> EvalOutcome:
    return EvalOutcome(exit_code=EXIT_USAGE, report={}, error=message)


def _run_info(config: EvalConfig, source: BagSource, results_path: Path) -> dict[str, Any]:
    return {
        "tool": "efficientsam3 eval-bag",
        "version": __version__,
        "bag": str(config.bag),
        "storage": source.info.storage,
        "image_topic": config.image_topic,
        "concepts": list(config.concepts),
        "model": config.model,
        "checkpoint": config.checkpoint,
        "backend_requested": config.backend,
        "memory": config.memory,
        "memory_checkpoint": config.memory_checkpoint,
        "score_threshold": config.score_threshold,
        "new_track_threshold": config.new_track_threshold,
        "mask_threshold": config.mask_threshold,
        "every": config.every,
        "max_frames": config.max_frames,
        "gt": str(config.gt) if config.gt else None,
        "gt_topic": config.gt_topic,
        "out_dir": str(config.out_dir),
        "results_bag": str(results_path),
    }


def _finish(
    config: EvalConfig,
    state: _RunState,
    run_info: dict[str, Any],
    backend: dict[str, Any],
    results_bag: Path | None,
    gt: dict[int, FrameRecord] | None,
    gt_labels: list[str],
    gt_source: str,
    started: float,
    code: int,
) -> EvalOutcome:
    """Build and write the report for whatever was processed; returns the outcome."""
    wall = time.time() - started
    run_info["wall_s"] = wall
    report: dict[str, Any] = {
        "run": run_info,
        "backend": backend,
        "stop": {
            "reason": state.stop_reason,
            "message": state.stop_message,
            "frame_index": state.last_index,
            "stamp_ns": state.last_stamp,
        },
        "frames": {
            "in_topic": state.in_topic,
            "total_seen": state.seen,
            "processed": state.processed,
            "skipped": state.skipped,
            "failed": state.failed,
            "duplicate_stamps": state.duplicates,
            "stamps_backwards": state.order.backwards,
            "wall_fps": state.processed / wall if wall > 0 else None,
        },
        "failures": state.failures,
        "latency_ms": latency_stats(state.timings),
        "instances_over_time": instances_over_time(state.frames, list(config.concepts)),
        "tracks": track_lifetimes(state.frames),
        "scores": None,
    }
    if state.order.backwards:
        log.warning(
            "%d image message(s) have a header stamp earlier than the message before them; "
            "tracking is scored in the order the frames were processed (bag log time)",
            state.order.backwards,
        )
    if gt is not None:
        # a repeated stamp scores its first frame; frames stay in processing order for tracking
        pred = records_by_stamp(state.frames)
        report["scores"] = score(gt, pred, config.concepts, source=gt_source, gt_labels=gt_labels)
    json_path, html_path = write_report(report, config.out_dir, state.timings)
    if code != EXIT_OK:
        log.error("eval-bag stopped (%s): %s", state.stop_reason, state.stop_message)
    return EvalOutcome(
        exit_code=code,
        report=report,
        report_json=json_path,
        report_html=html_path,
        results_bag=results_bag,
        error=state.stop_message if code != EXIT_OK else None,
    )
