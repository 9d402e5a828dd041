"""Tracker parameters, with SAM3 video's defaults where a streaming robot tracker can use them.

SAM3 video (transformers ``Sam3VideoConfig``) runs offline over a whole clip and holds its
output back for ``hotstart_delay`` frames, so it can delete a flaky track in hindsight and never
needs to forget a mature one. A robot cannot wait, and must keep its state bounded, so a few
rules here are the streaming counterparts of SAM3's; each field says which SAM3 value it follows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..config_utils import check_known_keys, check_scalar_types


@dataclass(frozen=True)
class TrackingConfig:
    """Association and track-lifecycle rules of :class:`~efficientsam3_ros.tracking.ConceptTracker`.

    Frozen so that one config can be shared by several trackers (one per camera) without one
    of them changing the others' behaviour mid-session.
    """

    assoc_iou_threshold: float = 0.5
    """A detection and a track of the same concept match when their mask IoU is at least this
    (SAM3 ``trk_assoc_iou_thresh`` = 0.5). Matching is one-to-one (Hungarian)."""

    new_det_threshold: float = 0.7
    """A detection may start a new track only with a score at least this (SAM3 ``new_det_thresh``)."""

    max_iou_for_new: float = 0.1
    """...and only when its IoU with every live track of its concept (including tracks born
    earlier in the same frame) is below this (SAM3 ``assoc_iou_thresh`` = 0.1). Detections that
    neither match nor qualify for birth are dropped (counted in the statistics)."""

    max_missed_frames: int = 30
    """A mature track survives this many consecutive unmatched frames, reported as PREDICTED,
    and is removed on the next one. Follows SAM3's keep-alive budget (``max_trk_keep_alive`` = 30);
    SAM3 offline never deletes a mature track, which a bounded streaming tracker cannot afford."""

    young_track_frames: int = 15
    """A track is young while fewer than this many frames have passed since its birth
    (SAM3 ``hotstart_delay`` = 15). Young tracks are held to stricter rules (below)."""

    young_track_max_missed: int = 7
    """A young track with more than this many unmatched frames in total (not necessarily
    consecutive) is removed: SAM3 removes a hot-start track on its 8th unmatched frame
    (``hotstart_unmatch_thresh`` = 8), so a false birth disappears quickly."""

    duplicate_iou: float = 0.5
    """A young track whose mask overlaps an older live track of the same concept at IoU >= this
    is a duplicate of it; the older id wins. Same threshold as association, so a duplicate is
    exactly a track that would have matched the older one's detection."""

    duplicate_frames: int = 1
    """Frames of duplication before the young track is removed. SAM3 waits 8
    (``hotstart_dup_thresh``) but hides the outputs meanwhile; streaming would publish both ids for
    that long, so the default removes at once."""

    recondition_every: int = 16
    """A track's memory is re-conditioned on a good detection at most once every this many
    frames (SAM3 ``recondition_every_nth_frame`` = 16); 0 disables reconditioning. Counted per track
    from its last conditioning (birth included), not from a global frame index, so a track that
    happens to be missed on the 16th frame is reconditioned on the next good one."""

    recondition_score: float = 0.8
    """Only a matched detection with score >= this re-conditions (SAM3 ``high_conf_thresh``)."""

    recondition_iou: float = 0.8
    """...and whose IoU with the track's prediction is >= this (SAM3 ``high_iou_thresh``), so a
    detection that has drifted off the object never rewrites its memory."""

    max_tracks: int = 64
    """Hard cap on live tracks over all concepts; births beyond it are refused, lowest score first,
    and counted. SAM3's ``max_num_objects`` = 10000 means "no cap"; every live track costs a
    Perceiver memory and a memory-attention pass per frame, so a robot needs a real one."""

    use_propagated_masks: bool = True
    """Report a matched track with the mask propagated from its memory when the pipeline supplied
    one (SAM3 outputs the tracker's masks; the detector only validates them), except on frames
    where the track is re-conditioned, which report the detection's mask as SAM3 does, and when
    the propagated mask is empty (matched through ``associate_last_mask``), which report the
    detection's so that a track never keeps an empty mask. False reports the detection's mask
    whenever a track is matched."""

    associate_last_mask: bool = False
    """Also match a detection against the track's last published mask, not only against the
    mask its memory propagated (the higher IoU of the two counts). SAM3 uses the propagated mask
    alone; a small memory tracker's propagation can be rougher than the last detection, and
    then a detection that overlaps the object well is dropped as "neither match nor new". The
    same (higher) IoU is what ``recondition_iou`` then checks."""

    stale_mask_frames: int = 0
    """An unmatched track with no propagated mask this frame (no memory tracker runs, or it gave
    none for this track) is published as PREDICTED with its last mask for at most this many
    consecutive misses; after that it stays alive, and can be re-associated, for the rest of
    ``max_missed_frames`` without being published, as ByteTrack keeps its lost tracks. 0 (the
    default) never publishes a last mask: it is stale (the object moved, left, or was a false
    birth), and each frame it is published is a false positive (on the demo world: IDF1 0.63
    publishing it for all 30 frames, 0.70 at 0). Tracks the memory tracker propagates are
    published as PREDICTED either way (SAM3 outputs the tracker's masks)."""

    iou_downsample: int = 1
    """Compute association IoUs on every n-th row and column only (n*n fewer pixels). 1 = exact.
    Masks are packed to bits and intersected with popcounts, which is already about ten times faster
    than a float32 matrix product; downsampling is for very large images or many tracks."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackingConfig:
        """Build from a YAML/ROS-parameter dict; unknown keys raise so a typo is not silently ignored."""
        check_known_keys(cls, data, "tracking parameters")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every parameter (for logs, YAML dumps and ROS parameter declaration)."""
        return asdict(self)

    def __post_init__(self) -> None:
        """Reject settings that would silently break the lifecycle (e.g. negative budgets).

        Kinds are checked here, not only in :meth:`from_dict`, because the pipeline and the node
        build the config directly: a float frame count or a string bool must fail at once, not
        on the first frame (or never, switching a rule on).
        """
        check_scalar_types(type(self), asdict(self), "tracking parameter")
        for name in ("assoc_iou_threshold", "recondition_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        # Both are compared as "IoU < this" / "IoU >= this": at 0 no track could ever be born
        # (IoU < 0), and every young track with an older one of its concept would be a duplicate.
        for name in ("max_iou_for_new", "duplicate_iou"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        for name in ("new_det_threshold", "recondition_score"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in (
            "max_missed_frames",
            "young_track_frames",
            "young_track_max_missed",
            "recondition_every",
            "stale_mask_frames",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("duplicate_frames", "max_tracks", "iou_downsample"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_iou_for_new > self.assoc_iou_threshold:
            raise ValueError(
                "max_iou_for_new must not exceed assoc_iou_threshold, otherwise a detection could both "
                f"match a track and start a new one ({self.max_iou_for_new} > {self.assoc_iou_threshold})"
            )
