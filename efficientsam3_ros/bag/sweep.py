"""Choose an operating point on recorded bags: run the model once, replay the tracker per threshold pair.

``eval-bag`` at one (score, new-track) pair runs the model over every frame; choosing a pair
that way costs one model pass per pair and per bag (the demo model's card swept 11 pairs on 3
bags: 33 passes). Without a memory tracker the detector does not depend on the tracker, so one
pass that keeps every detection above the lowest score threshold holds everything each pair
needs: a pair is then only the tracker replayed over the stored detections and scored, which
gives the same scores as ``eval-bag`` at that pair (``test_bag_sweep.py`` checks it) in a
fraction of a second per bag. With a memory tracker that no longer holds (which detections
start tracks decides what the memory is conditioned on), so the sweep runs without one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from efficientsam3_ros.bag.run import FATAL_ERRORS, to_record
from efficientsam3_ros.bag.source import BagSource, StampOrder, header_stamp_ns
from efficientsam3_ros.evaluation.records import FrameRecord, records_by_stamp
from efficientsam3_ros.evaluation.scoring import pool_overall, score
from efficientsam3_ros.pipeline.results import FrameResult, Instance
from efficientsam3_ros.ros import messages

log = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
DEFAULT_NEW_TRACK_THRESHOLDS = (0.3, 0.35, 0.4, 0.5)


@dataclass
class StoredFrame:
    """One frame's detections with their masks bit-packed (a 640 x 480 mask: 38 kB instead of 307)."""

    stamp_ns: int
    image_size: tuple[int, int]
    concepts: dict[int, str]
    detections: list[tuple[Instance, np.ndarray]]  # (instance without its mask, packed mask)

    @classmethod
    def pack(cls, stamp_ns: int, result: FrameResult) -> StoredFrame:
        return cls(
            stamp_ns,
            result.image_size,
            dict(result.concepts),
            [
                (dataclasses.replace(i, mask=np.zeros((0, 0), bool)), np.packbits(i.mask))
                for i in result.instances
            ],
        )

    def above(self, score_threshold: float) -> list[Instance]:
        """The detections a segmenter at ``score_threshold`` would have passed on (strictly above, as it does)."""
        h, w = self.image_size
        return [
            dataclasses.replace(inst, mask=np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool))
            for inst, bits in self.detections
            if inst.score > score_threshold
        ]


@dataclass
class SweepBag:
    """One bag, its ground truth, and the detections the single model pass stored."""

    bag: Path
    gt_path: Path
    gt: dict[int, FrameRecord] = field(default_factory=dict)
    gt_labels: list[str] = field(default_factory=list)
    frames: list[StoredFrame] = field(default_factory=list)
    failed: int = 0
    stamps_backwards: int = 0  # frames whose header stamp is earlier than the previous frame's


def frames_of(source: BagSource, image_topic: str) -> Iterator[tuple[int, np.ndarray] | Exception]:
    """(stamp, RGB) per image message in log-time order; an undecodable message yields its error
    (whatever the decoder raised, as eval-bag counts it: one bad message must not end the pass)."""
    for conn, _, raw in source.raw_messages(source.image_connections(image_topic)):
        item: tuple[int, np.ndarray] | Exception
        try:
            msg = source.deserialize(raw, conn.msgtype)
            item = header_stamp_ns(msg), messages.msg_to_rgb(msg)
        except FATAL_ERRORS:
            raise
        except Exception as err:  # noqa: BLE001 - see the docstring
            item = err
        yield item


def detect(segmenter: Any, sequence: SweepBag, image_topic: str, progress: bool = True) -> None:
    """The one model pass: every frame's detections (no tracker) stored on ``sequence``."""
    with BagSource(sequence.bag) as source:
        bar = tqdm(frames_of(source, image_topic), desc=f"detect {sequence.bag.name}", disable=not progress)
        order = StampOrder(str(sequence.bag))
        for item in bar:
            if isinstance(item, Exception):
                sequence.failed += 1
                log.warning("%s: image message skipped: %s", sequence.bag, item)
                continue
            stamp, rgb = item
            order.see(stamp)
            sequence.stamps_backwards = order.backwards
            try:
                result = segmenter.process(rgb)
            except FATAL_ERRORS:
                raise
            except Exception as err:  # noqa: BLE001 - one refused frame is counted, not fatal
                sequence.failed += 1
                log.warning("%s: frame %d refused by the model: %s", sequence.bag, stamp, err)
                continue
            sequence.frames.append(StoredFrame.pack(stamp, result))


def replay(frames: Sequence[StoredFrame], score_threshold: float, tracker: Any) -> dict[int, FrameRecord]:
    """The tracker over the stored detections at one score threshold: what eval-bag would have scored.

    The records keep the frames' (bag log-time) order, which tracking is scored in."""
    records = []
    for frame in frames:  # the tracker sees every frame, also one whose stamp repeats another's
        instances = tracker.update(frame.above(score_threshold)).instances
        result = FrameResult(instances, frame.image_size, frame.concepts, {})
        records.append(to_record(result, frame.stamp_ns))
    return records_by_stamp(records)  # a repeated stamp scores its first frame, as eval-bag does


def threshold_pairs(
    score_thresholds: Sequence[float], new_track_thresholds: Sequence[float]
) -> list[tuple[float, float]]:
    """The distinct (score, new-track) pairs to score, in order; raises ValueError when there are none.

    A detection under the score threshold never reaches the tracker, so a new-track threshold
    under it starts tracks exactly as one equal to it does: (s, nt < s) is scored as (s, s), the
    pair eval-bag's results would match, and listed once.
    """
    if not score_thresholds or not new_track_thresholds:
        raise ValueError("no threshold pairs to score: give at least one score and one new-track threshold")
    pairs = [(s, max(nt, s)) for s in sorted(score_thresholds) for nt in sorted(new_track_thresholds)]
    return list(dict.fromkeys(pairs))


def sweep(
    sequences: Sequence[SweepBag],
    concepts: Sequence[str],
    point: Any,
    score_thresholds: Sequence[float],
    new_track_thresholds: Sequence[float],
) -> list[dict[str, Any]]:
    """Pooled scores (see :func:`pool_overall`) per (score, new-track) pair; ``point`` is the model's
    ``OperatingPoint`` (its tracking rules, with each pair's new-track threshold).

    The pairs are :func:`threshold_pairs`'s (a new-track threshold under the score threshold is
    scored, and reported, as equal to it).
    """
    from efficientsam3_ros.pipeline.segmenter import make_tracker

    rows = []
    for s, nt in threshold_pairs(score_thresholds, new_track_thresholds):
        pair = dataclasses.replace(point, score_threshold=s, new_track_threshold=nt)
        runs = []
        for seq in sequences:
            pred = replay(seq.frames, s, make_tracker(True, pair))
            runs.append(score(seq.gt, pred, concepts, gt_labels=seq.gt_labels)["overall"])
        pooled = pool_overall(runs)
        pooled["criterion"] = criterion(pooled)
        rows.append({"score_threshold": s, "new_track_threshold": nt, **pooled})
    return rows


def criterion(pooled: dict[str, Any]) -> float:
    """What the sweep ranks by: the mean of mask IoU and IDF1 (a missing value counts 0).

    Mask quality and identity are what a robot's planner consumes; AP ranks detections over all
    thresholds and MOTA is dominated by the false positives of a few long tracks, so neither picks
    a threshold well on its own (models/demo/MODEL_CARD.md).
    """
    return ((pooled.get("mask_iou") or 0.0) + (pooled.get("idf1") or 0.0)) / 2
