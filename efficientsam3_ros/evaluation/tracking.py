"""Multi-object tracking metrics (MOTA, IDF1, id switches) from motmetrics, with mask IoU.

motmetrics does the CLEAR-MOT and ID bookkeeping; this module only feeds it one
distance matrix per frame: 1 - mask IoU, and "no match possible" (NaN) below the
IoU threshold or across concepts, so a mug is never matched to a person.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import motmetrics as mm
import numpy as np

from efficientsam3_ros.evaluation.masks import iou_matrix
from efficientsam3_ros.evaluation.records import (
    FrameRecord,
    InstanceRecord,
    normalise_label,
    unique_concepts,
)

log = logging.getLogger(__name__)

#: motmetrics' ratios (floats) and counts (ints in the report)
RATIOS = ["mota", "motp", "idf1", "idp", "idr"]
COUNTS = [
    "num_switches",
    "num_false_positives",
    "num_misses",
    "num_objects",
    "num_unique_objects",
    "mostly_tracked",
    "mostly_lost",
    "num_fragmentations",
    "idtp",  # the identity counts IDF1 is made of: what lets several sequences pool (pool_overall)
    "idfp",
    "idfn",
]
METRICS = RATIOS + COUNTS


class _IdMap:
    """Numeric ids for motmetrics (1.4 stores ids as floats): one per (concept, track), fresh for untracked."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], int] = {}
        self.next = 1

    def __call__(self, inst: InstanceRecord) -> int:
        if inst.track_id < 0:  # an untracked prediction is an identity of its own
            return self.fresh()
        key = (normalise_label(inst.label), int(inst.track_id))
        if key not in self.ids:
            self.ids[key] = self.fresh()
        return self.ids[key]

    def fresh(self) -> int:
        self.next += 1
        return self.next - 1

    def frame(self, instances: list[InstanceRecord]) -> tuple[list[int], int]:
        """Ids of one frame's instances, and how many repeated an id already used in the frame.

        A repeat gets an identity of its own: motmetrics needs ids unique per frame (a repeated
        ground-truth id raised KeyError, a repeated prediction id counted its overlap twice and
        pushed IDF1 over 1).
        """
        ids: list[int] = []
        repeats = 0
        for inst in instances:
            i = self(inst)
            if i in ids:
                i, repeats = self.fresh(), repeats + 1
            ids.append(i)
        return ids, repeats


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
    concepts = unique_concepts(concepts)
    keys = {normalise_label(c): c for c in concepts}
    stamps = [s for s in pred if s in gt]  # processing order
    accs = {c: mm.MOTAccumulator(auto_id=True) for c in [*concepts, "overall"]}
    gt_ids, hyp_ids = _IdMap(), _IdMap()
    repeats = {"ground-truth": 0, "predicted": 0}
    for stamp in stamps:
        # crowd regions are COCO ignore areas, not objects; motmetrics has no such notion
        all_g = [x for x in gt[stamp].instances if normalise_label(x.label) in keys and not x.iscrowd]
        all_p = [x for x in pred[stamp].instances if normalise_label(x.label) in keys]
        groups = {"overall": (all_g, all_p)}
        for key, concept in keys.items():
            groups[concept] = (
                [x for x in all_g if normalise_label(x.label) == key],
                [x for x in all_p if normalise_label(x.label) == key],
            )
        for name, (g, p) in groups.items():
            (g_ids, g_rep), (p_ids, p_rep) = gt_ids.frame(g), hyp_ids.frame(p)
            if name == "overall":
                repeats["ground-truth"] += g_rep
                repeats["predicted"] += p_rep
            accs[name].update(g_ids, p_ids, _distances(g, p, iou_threshold))
    for side, n in repeats.items():
        if n:
            log.warning(
                "%d %s instance(s) repeat a (concept, track id) already used in their frame; "
                "each is scored as an identity of its own",
                n,
                side,
            )

    mh = mm.metrics.create()
    out: dict[str, dict[str, Any]] = {}
    for name, acc in accs.items():
        summary = mh.compute(acc, metrics=METRICS, name=name)
        row = summary.iloc[0].to_dict()
        out[name] = {k: _plain(v, integer=k in COUNTS) for k, v in row.items()}
        out[name]["frames"] = len(stamps)
    return out


def _plain(value: Any, integer: bool = False) -> float | int | None:
    """JSON-friendly scalar: numpy types to Python, counts to int, undefined to None.

    Undefined is NaN (e.g. IDF1 with nothing on either side) or infinite: MOTA divides by the
    ground-truth count, so false positives without ground truth made it -inf.
    """
    value = float(value)
    if not np.isfinite(value):
        return None
    return int(round(value)) if integer else value
