"""Per-frame association of concept detections to tracks, and the tracks' lifecycle.

This is the bookkeeping half of SAM3 video: the model side detects every active concept each
frame and (optionally) propagates each live track's mask from its memory; this module decides
which detection continues which track, which detections start tracks, which tracks die, and
when a track's memory should be re-conditioned on a fresh detection. It holds one small record
per live track and nothing per frame, so a node can run for days at constant memory.

Rules, in the order they are applied each frame (parameters in :class:`TrackingConfig`):

1. Every live track has a prediction: the propagated mask the pipeline passed for it, else its
   last mask.
2. Per concept (never across concepts), detections and predictions are matched one-to-one by
   mask IoU with the Hungarian algorithm; a pair counts at IoU >= ``assoc_iou_threshold``.
3. A matched track is TRACKED; its memory is re-conditioned from the detection when the
   detection's score >= ``recondition_score``, its IoU >= ``recondition_iou`` and at least
   ``recondition_every`` frames passed since the track was last conditioned.
4. An unmatched track is PREDICTED. It is removed after more than ``max_missed_frames``
   consecutive misses, or, while young (age < ``young_track_frames``), after more than
   ``young_track_max_missed`` misses in total. It is reported with its propagated mask, or
   with its last mask for its first ``stale_mask_frames`` misses, else not at all.
5. An unmatched detection with score >= ``new_det_threshold`` whose IoU with every track of its
   concept (and every track born before it this frame) is < ``max_iou_for_new`` starts a track
   (NEW), highest score first, while fewer than ``max_tracks`` tracks live; the rest are refused.
   Any other unmatched detection (and any empty one) is dropped.
6. A young track (born on an earlier frame) whose mask overlaps an older live track of its
   concept at IoU >= ``duplicate_iou`` for ``duplicate_frames`` frames is removed; the older wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from efficientsam3_ros.pipeline.results import Instance, TrackState
from efficientsam3_ros.tracking.config import TrackingConfig
from efficientsam3_ros.tracking.iou import PackedMasks, box_from_mask, packed_iou

PropagatedMasks = Mapping[int, tuple[np.ndarray, float]]
"""track id -> (bool [H, W] mask at original image size, score) from the model's tracker."""


@dataclass
class _Track:
    """Everything kept about one live track: O(1) scalars and one mask, no history."""

    track_id: int
    concept_id: int
    label: str
    birth_frame: int
    score: float  # last matched detection's score
    last_conditioned: int  # frame its memory was last (re)conditioned from a detection
    mask: np.ndarray = field(init=False)  # last non-empty mask reported for the track (own, read-only)
    box: np.ndarray = field(init=False)
    missed: int = 0  # consecutive unmatched frames
    young_missed: int = 0  # unmatched frames while young, cumulative (SAM3 hot-start counting)
    dup_frames: int = 0  # frames spent duplicating an older track while young

    def keep(self, mask: np.ndarray, box: np.ndarray | None = None) -> None:
        """Make ``mask`` the track's mask, as its own read-only copy, and ``box`` (else the mask's) its box.

        A copy because the pipeline's masks are views into one [N, H, W] array per frame: a kept
        view would keep all N masks of that frame alive as long as the track lives, and a caller
        re-using its buffer would change the track. Read-only because published instances share
        it: writing into one would silently change what the next frame is matched against.
        """
        self.mask = np.array(mask, dtype=bool)
        self.mask.flags.writeable = False
        self.box = box_from_mask(self.mask) if box is None else np.array(box, dtype=np.float32)


@dataclass
class TrackerStats:
    """Session counters for diagnostics (e.g. a ROS diagnostics topic); all monotonic."""

    frames: int = 0
    births: int = 0
    refused_births: int = 0  # birth-worthy detections refused by the max_tracks cap
    dropped_detections: int = 0  # neither matched nor birth-worthy (mid score, partial overlap, empty)
    reconditions: int = 0
    removed_missed: int = 0  # mature tracks unmatched for more than max_missed_frames
    removed_young: int = 0  # young tracks unmatched too often
    removed_duplicate: int = 0  # young tracks duplicating an older one
    removed_by_request: int = 0  # reset(), remove_concept(), remove_track()
    bad_propagations: int = 0  # memory-propagated entries with a NaN / inf score, used as no propagation

    @property
    def deaths(self) -> int:
        """All removed tracks, whatever the cause."""
        return self.removed_missed + self.removed_young + self.removed_duplicate + self.removed_by_request

    def as_dict(self) -> dict[str, int]:
        """Flat dict (including ``deaths``) for logging and diagnostic messages."""
        out = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        out["deaths"] = self.deaths
        return out


@dataclass
class TrackUpdate:
    """What one frame of tracking produced, for the output and for the model's memories.

    The model side must: create a memory for every id in ``new_track_ids`` from its NEW instance,
    drop the memories of ``removed_track_ids``, and re-encode the memory of every track in
    ``recondition`` from the given detection (or from its own tracked mask, the SAM3 default
    ``recondition_on_trk_masks``; the detection passed the confidence and IoU gates either way).
    """

    frame_index: int
    instances: list[Instance]  # one per reported live track, sorted by track id
    new_track_ids: list[int] = field(default_factory=list)
    removed_track_ids: list[int] = field(default_factory=list)
    recondition: dict[int, Instance] = field(default_factory=dict)

    def memory_inputs(self) -> dict[int, Instance]:
        """Every track whose memory takes a conditioning frame now: births and reconditions."""
        new = set(self.new_track_ids)
        out = {inst.track_id: inst for inst in self.instances if inst.track_id in new}
        out.update(self.recondition)
        return out


class ConceptTracker:
    """Streaming multi-concept tracker with SAM3 video's association and lifecycle rules.

    Call :meth:`update` once per frame with all detections of all active concepts. Not thread
    safe: one tracker per camera stream.
    """

    def __init__(self, config: TrackingConfig | None = None) -> None:
        """Start an empty session; ids start at 1 (0 is kept free for "no track" in label images)."""
        self.config = config if config is not None else TrackingConfig()
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._frame = -1
        self._shape: tuple[int, int] | None = None
        self._stats = TrackerStats()

    # ------------------------------------------------------------------ inspection
    @property
    def frame_index(self) -> int:
        """Index of the last processed frame (-1 before the first)."""
        return self._frame

    @property
    def next_track_id(self) -> int:
        """The id the next birth will get; never decreases except through ``reset(reset_ids=True)``."""
        return self._next_id

    @property
    def stats(self) -> TrackerStats:
        """A copy of the session counters (a copy so callers cannot corrupt them)."""
        return replace(self._stats)

    def __len__(self) -> int:
        """Number of live tracks."""
        return len(self._tracks)

    def track_ids(self, concept_id: int | None = None) -> list[int]:
        """Live track ids, ascending, optionally of one concept only."""
        return sorted(
            tid for tid, t in self._tracks.items() if concept_id is None or t.concept_id == concept_id
        )

    # ------------------------------------------------------------------ session control
    def reset(self, reset_ids: bool = False) -> list[int]:
        """Drop every track (e.g. new scene); returns their ids so the model can free memories.

        Ids keep increasing afterwards, so a consumer never confuses an old object with a new one.
        ``reset_ids=True`` starts a fresh session instead: ids from 1, frame index and statistics
        zeroed.
        """
        removed = sorted(self._tracks)
        self._tracks.clear()
        self._shape = None
        if reset_ids:
            self._next_id = 1
            self._frame = -1
            self._stats = TrackerStats()
        else:
            self._stats.removed_by_request += len(removed)
        return removed

    def remove_concept(self, concept_id: int) -> list[int]:
        """Drop the tracks of a concept that is no longer prompted; returns their ids."""
        removed = self.track_ids(concept_id)
        for tid in removed:
            del self._tracks[tid]
        self._stats.removed_by_request += len(removed)
        return removed

    def remove_track(self, track_id: int) -> bool:
        """Drop one track (e.g. a user dismissed it); False when it was not live."""
        if self._tracks.pop(track_id, None) is None:
            return False
        self._stats.removed_by_request += 1
        return True

    # ------------------------------------------------------------------ the per-frame step
    def update(
        self, detections: Sequence[Instance], propagated: PropagatedMasks | None = None
    ) -> TrackUpdate:
        """Associate one frame's detections with the live tracks and advance every track's life.

        ``detections``: all concepts' detections of this frame (their ``track_id``/``state`` are
        ignored; they are not modified). ``propagated``: optional track id -> (mask, score) from
        the model's memory; ids that are not live are ignored, live tracks without an entry are
        predicted by their last mask. Masks must be bool (or integer 0/1) [H, W], all one size,
        and detection scores in [0, 1]; otherwise ``ValueError`` is raised and the frame is not
        counted (a size change between frames raises too: call :meth:`reset` first).
        """
        cfg = self.config
        # Everything that can refuse the frame runs before anything changes: a refused frame is
        # no frame (it must not age the tracks, advance the schedules or count in the statistics).
        det_masks = [_as_bool_mask(d.mask) for d in detections]
        _check_scores(detections)

        # 1. predictions
        bad_propagations = 0
        pred_mask: dict[int, np.ndarray] = {}
        pred_score: dict[int, float] = {}
        for tid, track in self._tracks.items():
            entry = propagated.get(tid) if propagated is not None else None
            if entry is not None and math.isfinite(float(entry[1])):
                pred_mask[tid] = _as_bool_mask(entry[0])
                pred_score[tid] = float(entry[1])
            else:
                # a NaN / inf object score (a memory model gone wrong) would be published as the
                # track's score: the track is predicted by its last mask instead, as without memory
                bad_propagations += entry is not None
                pred_mask[tid] = track.mask
        self._check_shapes(detections, propagated)
        self._frame += 1
        frame = self._frame
        self._stats.frames += 1
        self._stats.bad_propagations += bad_propagations

        # 2. per-concept association
        dets_of: dict[int, list[int]] = {}
        for i, det in enumerate(detections):
            dets_of.setdefault(det.concept_id, []).append(i)
        tracks_of: dict[int, list[int]] = {}
        for tid in sorted(self._tracks):
            tracks_of.setdefault(self._tracks[tid].concept_id, []).append(tid)

        matches: dict[int, tuple[int, float]] = {}  # track id -> (detection index, IoU)
        candidates: list[tuple[int, int, int]] = []  # (concept, detection index, row in its concept pack)
        det_packs: dict[int, PackedMasks] = {}
        for concept, det_idx in dets_of.items():
            packed = PackedMasks([det_masks[i] for i in det_idx], cfg.iou_downsample)
            det_packs[concept] = packed
            tids = tracks_of.get(concept, [])
            ious = np.zeros((len(det_idx), len(tids)))
            if tids:
                ious = packed_iou(packed, PackedMasks([pred_mask[t] for t in tids], cfg.iou_downsample))
                if cfg.associate_last_mask and pred_score:
                    last = PackedMasks([self._tracks[t].mask for t in tids], cfg.iou_downsample)
                    ious = np.maximum(ious, packed_iou(packed, last))
                gated = np.where(ious >= cfg.assoc_iou_threshold, ious, 0.0)
                rows, cols = linear_sum_assignment(gated, maximize=True)
                for r, c in zip(rows, cols):
                    if gated[r, c] > 0.0:
                        matches[tids[c]] = (det_idx[r], float(ious[r, c]))
            matched_dets = {d for d, _ in matches.values()}
            for row, i in enumerate(det_idx):
                if i in matched_dets:
                    continue
                max_iou = float(ious[row].max()) if tids else 0.0
                if (
                    packed.areas[row] > 0
                    and detections[i].score >= cfg.new_det_threshold
                    and max_iou < cfg.max_iou_for_new
                ):
                    candidates.append((concept, i, row))
                else:
                    self._stats.dropped_detections += 1

        new_ids: list[int] = []
        removed: list[int] = []
        recondition: dict[int, Instance] = {}
        out_mask: dict[int, tuple[np.ndarray, np.ndarray, float, TrackState]] = {}

        # 3./4. advance live tracks
        for tid in sorted(self._tracks):
            track = self._tracks[tid]
            young = frame - track.birth_frame < cfg.young_track_frames
            if tid in matches:
                det_i, iou = matches[tid]
                det = detections[det_i]
                track.missed = 0
                track.score = float(det.score)
                track.label = det.label
                recond = (
                    cfg.recondition_every > 0
                    and det.score >= cfg.recondition_score
                    and iou >= cfg.recondition_iou
                    and frame - track.last_conditioned >= cfg.recondition_every
                )
                if recond:
                    track.last_conditioned = frame
                    self._stats.reconditions += 1
                # An empty propagated mask (the memory lost the object; with associate_last_mask the
                # detection still matched the last mask) must not become the track's mask: _Track.mask
                # is its last non-empty one, and an empty one would let next frame's detection start a
                # duplicate track. The detection's mask is reported instead.
                propagated_ok = tid in pred_score and bool(pred_mask[tid].any())
                if cfg.use_propagated_masks and propagated_ok and not recond:
                    track.keep(pred_mask[tid])
                else:
                    track.keep(det_masks[det_i], det.box_xyxy)
                out_mask[tid] = (track.mask, track.box, track.score, TrackState.TRACKED)
                if recond:
                    recondition[tid] = _instance(track, track.score, TrackState.TRACKED)
                continue
            track.missed += 1
            if young:
                track.young_missed += 1
            if young and track.young_missed > cfg.young_track_max_missed:
                self._stats.removed_young += 1
            elif track.missed > cfg.max_missed_frames:
                self._stats.removed_missed += 1
            else:
                score = pred_score.get(tid, track.score)
                mask = pred_mask[tid]
                if tid in pred_score and mask.any():
                    track.keep(mask)
                elif tid in pred_score or track.missed > cfg.stale_mask_frames:
                    continue  # memory lost the object, or the last mask is stale: keep it, report nothing
                out_mask[tid] = (track.mask, track.box, score, TrackState.PREDICTED)
                continue
            removed.append(tid)
            del self._tracks[tid]

        # 5. births, best first, deduplicated within the frame, under the cap
        born_rows: dict[int, list[int]] = {}
        candidates.sort(key=lambda c: (-detections[c[1]].score, c[1]))
        for concept, det_i, row in candidates:
            rows = born_rows.setdefault(concept, [])
            if rows:
                pack = det_packs[concept]
                overlap = packed_iou(_subset(pack, [row]), _subset(pack, rows))
                if float(overlap.max()) >= cfg.max_iou_for_new:
                    self._stats.dropped_detections += 1
                    continue
            if len(self._tracks) >= cfg.max_tracks:
                self._stats.refused_births += 1
                continue
            det = detections[det_i]
            tid = self._next_id
            self._next_id += 1
            track = _Track(
                track_id=tid,
                concept_id=det.concept_id,
                label=det.label,
                birth_frame=frame,
                score=float(det.score),
                last_conditioned=frame,
            )
            track.keep(det_masks[det_i], det.box_xyxy)
            self._tracks[tid] = track
            rows.append(row)
            new_ids.append(tid)
            self._stats.births += 1
            out_mask[tid] = (track.mask, track.box, track.score, TrackState.NEW)

        # 6. young duplicates of older tracks
        for tid in self._remove_duplicates(frame):
            removed.append(tid)
            out_mask.pop(tid, None)
            recondition.pop(tid, None)

        instances = [
            _instance(self._tracks[tid], score, state, mask, box)
            for tid, (mask, box, score, state) in sorted(out_mask.items())
        ]
        return TrackUpdate(
            frame_index=frame,
            instances=instances,
            new_track_ids=new_ids,
            removed_track_ids=sorted(removed),
            recondition=recondition,
        )

    # ------------------------------------------------------------------ helpers
    def _remove_duplicates(self, frame: int) -> list[int]:
        """Remove young tracks that overlap an older one of their concept; older ids win."""
        cfg = self.config
        by_concept: dict[int, list[int]] = {}
        for tid in sorted(self._tracks):
            by_concept.setdefault(self._tracks[tid].concept_id, []).append(tid)
        removed: list[int] = []
        for tids in by_concept.values():
            checkable = {
                tid for tid in tids if 0 < frame - self._tracks[tid].birth_frame < cfg.young_track_frames
            }
            if len(tids) < 2 or not checkable or checkable == {tids[0]}:
                continue  # nothing young with an older track to compare against
            packed = PackedMasks([self._tracks[t].mask for t in tids], cfg.iou_downsample)
            ious = packed_iou(packed, packed)
            alive: list[int] = []  # positions in tids, ascending id = ascending age
            for pos, tid in enumerate(tids):
                track = self._tracks[tid]
                if tid in checkable and alive and float(ious[pos, alive].max()) >= cfg.duplicate_iou:
                    track.dup_frames += 1
                    if track.dup_frames >= cfg.duplicate_frames:
                        removed.append(tid)
                        continue
                alive.append(pos)
        for tid in removed:
            del self._tracks[tid]
        self._stats.removed_duplicate += len(removed)
        return removed

    def _check_shapes(self, detections: Sequence[Instance], propagated: PropagatedMasks | None) -> None:
        """All masks of a session must share one size; IoU across sizes would be meaningless."""
        shapes = {tuple(np.shape(d.mask)) for d in detections}
        if propagated is not None:
            shapes |= {tuple(np.shape(m)) for tid, (m, _) in propagated.items() if tid in self._tracks}
        if self._shape is not None:
            shapes.add(self._shape)
        if len(shapes) > 1:
            raise ValueError(
                f"all masks must have one size per session, got {sorted(shapes)}; reset() on a size change"
            )
        if shapes:
            (shape,) = shapes
            if len(shape) != 2:
                raise ValueError(f"masks must be 2-D [H, W], got shape {shape}")
            self._shape = (int(shape[0]), int(shape[1]))


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    """Bool view/copy of a binary mask; floats are refused because their threshold is ambiguous."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        return mask != 0
    raise ValueError(f"masks must be bool or integer 0/1, got {mask.dtype}; threshold them before tracking")


def _check_scores(detections: Sequence[Instance]) -> None:
    """Scores are probabilities: a NaN would continue a track and be published, an inf start one."""
    bad = [(i, d.score) for i, d in enumerate(detections) if not 0.0 <= d.score <= 1.0]
    if bad:
        raise ValueError(f"detection scores must be in [0, 1], got (index, score) {bad}")


def _subset(packed: PackedMasks, rows: list[int]) -> PackedMasks:
    """A view of some rows of a packed stack, to compare a few masks without re-packing."""
    out = PackedMasks.__new__(PackedMasks)
    out.data = packed.data[rows]
    out.areas = packed.areas[rows]
    out.num_pixels = packed.num_pixels
    return out


def _instance(
    track: _Track,
    score: float,
    state: TrackState,
    mask: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> Instance:
    """Output instance of a track: a fresh object, whose mask is the track's own read-only array."""
    return Instance(
        concept_id=track.concept_id,
        label=track.label,
        score=float(score),
        box_xyxy=track.box if box is None else box,
        mask=track.mask if mask is None else mask,
        track_id=track.track_id,
        state=state,
    )
