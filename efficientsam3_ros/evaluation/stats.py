"""Run statistics for the report: per-stage latency, instances over time, track lifetimes.

Latencies come from the pipeline's own ``FrameResult.timings_ms`` (per stage), so the
numbers describe the model, not the bag decoding or the progress bar around it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from efficientsam3_ros.evaluation.records import FrameRecord

STAGES = ("preprocess", "encode", "detect", "track", "post")


def latency_stats(timings: list[dict[str, float]]) -> dict[str, dict[str, float | int]]:
    """p50/p90/p99/mean latency (ms) and FPS (1000 / mean) per stage and for the sum of stages ("total").

    A stage missing from every frame is left out; "total" is the pipeline's own ``total``
    when it reports one, else the sum of the stages it reports.
    """
    series: dict[str, list[float]] = defaultdict(list)
    for t in timings:
        for stage in STAGES:
            if stage in t:
                series[stage].append(float(t[stage]))
        total = t.get("total", sum(float(t[s]) for s in STAGES if s in t))
        series["total"].append(float(total))
    out: dict[str, dict[str, float | int]] = {}
    for stage in (*STAGES, "total"):
        values = np.asarray(series.get(stage, []), dtype=np.float64)
        if values.size == 0:
            continue
        mean = float(values.mean())
        out[stage] = {
            "frames": int(values.size),
            "mean_ms": mean,
            "p50_ms": float(np.percentile(values, 50)),
            "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)),
            "max_ms": float(values.max()),
            "fps": 1000.0 / mean if mean > 0 else float("inf"),
        }
    return out


def instances_over_time(frames: list[FrameRecord], concepts: list[str]) -> dict[str, Any]:
    """Instance count per concept per processed frame, with time in seconds from the first frame."""
    labels = list(concepts)
    labels += sorted({i.label for f in frames for i in f.instances} - set(labels))  # labels not asked for
    counts: dict[str, list[int]] = {label: [] for label in labels}
    for frame in frames:
        per: dict[str, int] = defaultdict(int)
        for inst in frame.instances:
            per[inst.label] += 1
        for label in labels:
            counts[label].append(int(per.get(label, 0)))
    t0 = frames[0].stamp_ns if frames else 0
    return {"t_s": [(f.stamp_ns - t0) / 1e9 for f in frames], "counts": counts}


def track_lifetimes(frames: list[FrameRecord]) -> dict[str, Any]:
    """Per track: concept, first/last stamp, frames seen and span in seconds; plus summary numbers.

    Why: short-lived tracks and many tracks per object are the visible symptoms of id
    switches and flicker even when no ground truth is available.
    """
    tracks: dict[tuple[str, int], dict[str, Any]] = {}
    for frame in frames:
        for inst in frame.instances:
            if inst.track_id < 0:
                continue
            key = (inst.label, inst.track_id)
            entry = tracks.setdefault(
                key,
                {
                    "label": inst.label,
                    "track_id": inst.track_id,
                    "first_stamp_ns": frame.stamp_ns,
                    "frames": 0,
                },
            )
            entry["last_stamp_ns"] = frame.stamp_ns
            entry["frames"] += 1
    items = sorted(tracks.values(), key=lambda e: (e["first_stamp_ns"], e["track_id"]))
    for e in items:
        e["duration_s"] = (e["last_stamp_ns"] - e["first_stamp_ns"]) / 1e9
    lengths = [e["frames"] for e in items]
    return {
        "count": len(items),
        "median_frames": float(np.median(lengths)) if lengths else None,
        "mean_frames": float(np.mean(lengths)) if lengths else None,
        "tracks": items,
    }
