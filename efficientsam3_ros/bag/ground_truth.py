"""Ground truth from a ConceptInstanceArray topic inside the bag (``--gt-topic``).

Why: a reference run (a bigger model, the SAM3 teacher, or hand-corrected output
re-recorded with ``ros2 bag record``) already lives in bags as this package's message;
scoring against it needs no export step. Frames are keyed by the messages' header
stamps, which the node and the evaluator copy from the input image.
"""

from __future__ import annotations

from typing import Any

from efficientsam3_ros.bag.source import BagSource, MessageError
from efficientsam3_ros.evaluation.ground_truth import check_rle
from efficientsam3_ros.evaluation.records import FrameRecord, InstanceRecord
from efficientsam3_ros.ros import messages


def instance_array_to_record(msg: Any) -> FrameRecord:
    """A ConceptInstanceArray message as a scoring record (masks stay RLE, no decoding)."""
    return FrameRecord(
        stamp_ns=messages.stamp_to_ns(msg.header),
        image_size=(int(msg.height), int(msg.width)),
        instances=[
            InstanceRecord(
                label=str(i.label),
                rle={"size": [int(i.mask_height), int(i.mask_width)], "counts": str(i.mask_rle)},
                score=float(i.score),
                track_id=int(i.track_id),
                concept_id=int(i.concept_id),
            )
            for i in msg.instances
        ],
    )


def read_gt_topic(source: BagSource, topic: str) -> tuple[dict[int, FrameRecord], list[str]]:
    """Every ConceptInstanceArray on ``topic`` keyed by stamp, plus the concept labels seen.

    Raises :class:`~efficientsam3_ros.bag.source.TopicNotFoundError` (listing the bag's
    topics) when the topic is absent or of another type, and MessageError on a corrupt message or
    mask (:func:`~efficientsam3_ros.evaluation.ground_truth.check_rle`): ground truth with holes
    would silently lower every score, and a broken mask would hang scoring after the model pass.
    """
    conns = source.connections(topic, (messages.CONCEPT_INSTANCE_ARRAY,), "ConceptInstanceArray")
    frames: dict[int, FrameRecord] = {}
    labels: dict[str, None] = {}
    for conn, _, raw in source.raw_messages(conns):
        msg = source.deserialize(raw, conn.msgtype)
        record = instance_array_to_record(msg)
        for instance in record.instances:
            try:
                check_rle(instance.rle, *record.image_size)
            except ValueError as err:
                raise MessageError(
                    f"ground-truth topic {topic}, message stamped {record.stamp_ns} ns, "
                    f"instance {instance.label!r}: {err}"
                ) from None
        if record.stamp_ns in frames:
            raise MessageError(f"ground-truth topic {topic} has two messages stamped {record.stamp_ns} ns")
        frames[record.stamp_ns] = record
        labels.update(dict.fromkeys(str(x) for x in msg.concept_labels))
        labels.update(dict.fromkeys(i.label for i in record.instances))
    return frames, list(labels)
