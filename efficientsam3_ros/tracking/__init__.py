"""Tracking layer: association of per-frame concept detections to tracks with stable ids.

SAM3 video semantics for a streaming robot: per-concept Hungarian matching on mask IoU, births
from confident unexplained detections, occlusion survival, fast removal of flaky young tracks,
duplicate suppression and periodic memory reconditioning. No torch, no ROS: plain numpy/scipy
so the node, the bag evaluator and the tests share it.
"""

from efficientsam3_ros.tracking.config import TrackingConfig
from efficientsam3_ros.tracking.iou import PackedMasks, box_from_mask, mask_iou_matrix, packed_iou
from efficientsam3_ros.tracking.tracker import ConceptTracker, PropagatedMasks, TrackerStats, TrackUpdate

__all__ = [
    "ConceptTracker",
    "PackedMasks",
    "PropagatedMasks",
    "TrackUpdate",
    "TrackingConfig",
    "TrackerStats",
    "box_from_mask",
    "mask_iou_matrix",
    "packed_iou",
]
