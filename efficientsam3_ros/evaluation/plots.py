"""Report plots as base64 PNG strings (matplotlib, Agg backend).

Why base64: the HTML report must be one self-contained file that can be mailed or
attached to a CI run; Agg needs no display, so this works on headless robots and CI.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on robots or CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from efficientsam3_ros.evaluation.stats import STAGES  # noqa: E402


def figure_to_base64(fig: Figure) -> str:
    """Render a figure to PNG and return it base64-encoded (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def latency_plot(timings: list[dict[str, float]]) -> str | None:
    """Per-frame latency of each pipeline stage, stacked, over the processed frames."""
    stages = [s for s in STAGES if any(s in t for t in timings)]
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = list(range(len(timings)))
    ax.stackplot(x, [[float(t.get(s, 0.0)) for t in timings] for s in stages], labels=stages)
    ax.set_xlabel("processed frame")
    ax.set_ylabel("latency [ms]")
    ax.set_title("Latency per stage")
    ax.legend(loc="upper right", fontsize="small")
    return figure_to_base64(fig)


def instances_plot(series: dict[str, Any]) -> str | None:
    """Instances per concept over bag time."""
    if not series["t_s"]:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for label, counts in series["counts"].items():
        ax.step(series["t_s"], counts, where="post", label=label)
    ax.set_xlabel("time since first frame [s]")
    ax.set_ylabel("instances")
    ax.set_title("Instances per concept")
    ax.legend(loc="upper right", fontsize="small")
    return figure_to_base64(fig)


def track_lifetime_plot(lifetimes: dict[str, Any]) -> str | None:
    """Histogram of track lengths in frames."""
    lengths = [t["frames"] for t in lifetimes["tracks"]]
    if not lengths:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.hist(lengths, bins=min(30, max(1, len(set(lengths)))))
    ax.set_xlabel("track length [frames]")
    ax.set_ylabel("tracks")
    ax.set_title("Track lifetimes")
    return figure_to_base64(fig)
