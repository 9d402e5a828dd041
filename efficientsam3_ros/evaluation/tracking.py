"""Multi-object tracking metrics (MOTA, IDF1, id switches) from motmetrics, with mask IoU.

motmetrics does the CLEAR-MOT and ID bookkeeping; this module only feeds it one
distance matrix per frame: 1 - mask IoU, and "no match possible" (NaN) below the
IoU threshold or across concepts, so a mug is never matched to a person.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import motmetrics as mm
import numpy as np

from efficientsam3_ros.evaluation.masks import iou_matrix
from efficientsam3_ros.evaluation.records import FrameRecord, InstanceRecord, normalise_label

METRICS = [
    "mota",
    "motp",
    "idf1",
    "idp",
    "idr",
    "num_switches",
    "num_false_positives",
    "num_misses",
    "num_objects",
    "num_unique_objects",
    "mostly_tracked",
    "mostly_lost",
    "num_fragmentations",
]


class _IdMap:
    """Numeric ids for motmetrics (1.4 stores ids as floats): one per (concept, track), fresh for untracked."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], int] = {}
        self.next = 1

    def __call__(self, inst: InstanceRecord) -> int:
        if inst.track_id < 0:  # an untracked prediction is an identity of its own
            self.next += 1
            return self.next - 1
        key = (normalise_label(inst.label), int(inst.track_id))
        if key not in self.ids:
            self.ids[key] = self.next
            self.next += 1
        return self.ids[key]


def _distances(gt: list[InstanceRecord], pred: list[InstanceRecord], iou_threshold: float) -> np.ndarray:
    dist = 1.0 - iou_matrix(gt, pred)
    same = np.array(
        [[normalise_label(g.label) == normalise_label(p.label) for p in pred] for g in gt], dtype=bool
    ).reshape(len(gt), len(pred))
    dist[(~same) | (dist > 1.0 - iou_threshold)] = np.nan
    return dist


def tracking_metrics(
    gt: dict[int, FrameRecord],
    pred: dict[int, FrameRecord],
    concepts: Iterable[str],
    iou_threshold: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """CLEAR-MOT and identity metrics per concept and "overall", over frames in both inputs.

    Frames are scored in ``pred``'s order, which must be the order the tracker saw them (eval-bag
    and the sweep build it in bag log-time order): identity switches are counted between
    consecutive frames the tracker processed, so re-sorting by stamp would invent switches when
    header stamps go backwards in a recording.

    Ground-truth identities are the annotations' ``track_id`` (unique per concept);
    a prediction's identity is its tracker id.
    """
    concepts = list(concepts)
    keys = {normalise_label(c): c for c in concepts}
    stamps = [s for s in pred if s in gt]  # processing order
    accs = {c: mm.MOTAccumulator(auto_id=True) for c in [*concepts, "overall"]}
    gt_ids, hyp_ids = _IdMap(), _IdMap()
    for stamp in stamps:
        all_g = [x for x in gt[stamp].instances if normalise_label(x.label) in keys]
        all_p = [x for x in pred[stamp].instances if normalise_label(x.label) in keys]
        groups = {"overall": (all_g, all_p)}
        for key, concept in keys.items():
            groups[concept] = (
                [x for x in all_g if normalise_label(x.label) == key],
                [x for x in all_p if normalise_label(x.label) == key],
            )
        for name, (g, p) in groups.items():
            accs[name].update(
                [gt_ids(x) for x in g], [hyp_ids(x) for x in p], _distances(g, p, iou_threshold)
            )

    mh = mm.metrics.create()
    out: dict[str, dict[str, Any]] = {}
    for name, acc in accs.items():
        summary = mh.compute(acc, metrics=METRICS, name=name)
        row = summary.iloc[0].to_dict()
        out[name] = {k: _plain(v, integer=k.startswith(("num_", "mostly_"))) for k, v in row.items()}
        out[name]["frames"] = len(stamps)
    return out


def _plain(value: Any, integer: bool = False) -> float | int | None:
    """JSON-friendly scalar: numpy types to Python, counts to int, NaN (undefined, e.g. no objects) to None."""
    value = float(value)
    if np.isnan(value):
        return None
    return int(round(value)) if integer else value
