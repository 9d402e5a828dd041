"""Per-camera runtime statistics and the diagnostic_msgs/DiagnosticArray that reports them.

Why here and not in the node: fps, latency percentiles and drop counts are plain
arithmetic that tests check exactly, and the bag evaluator can reuse them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import messages

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


@dataclass
class CameraStats:
    """Rolling statistics of one camera: completion times, latencies and failure counts."""

    window: int = 200
    done_times: deque = field(default_factory=deque)  # clock time each frame finished
    latencies_ms: deque = field(default_factory=deque)  # arrival at the node -> results ready
    inference_ms: deque = field(default_factory=deque)  # model time
    processed: int = 0
    bad_frames: int = 0  # could not be converted (encoding, size, step, decode)
    errors: int = 0  # the model raised
    tracking_resets: int = 0  # tracks forgotten because the image stamps jumped (not reset_tracking calls)
    last_error: str = ""

    def record(self, done_time: float, latency_ms: float, inference_ms: float) -> None:
        """Add one processed frame."""
        for buf, value in (
            (self.done_times, done_time),
            (self.latencies_ms, latency_ms),
            (self.inference_ms, inference_ms),
        ):
            buf.append(float(value))
            while len(buf) > self.window:
                buf.popleft()
        self.processed += 1

    def fps(self) -> float:
        """Frames per second over the window (0 with fewer than two frames)."""
        if len(self.done_times) < 2:
            return 0.0
        span = self.done_times[-1] - self.done_times[0]
        return (len(self.done_times) - 1) / span if span > 0 else 0.0

    def latency_percentiles(self, quantiles: tuple[int, ...] = (50, 90, 99)) -> dict[int, float]:
        """Latency percentiles in ms over the window (NaN when empty)."""
        if not self.latencies_ms:
            return {q: float("nan") for q in quantiles}
        values = np.percentile(np.asarray(self.latencies_ms), quantiles)
        return {q: float(v) for q, v in zip(quantiles, values)}

    def mean_inference_ms(self) -> float:
        """Mean model time in ms over the window (NaN when empty)."""
        return float(np.mean(self.inference_ms)) if self.inference_ms else float("nan")


def camera_status(
    name: str,
    stats: CameraStats,
    received: int,
    dropped: int,
    backend_info: dict | None,
    active: bool,
    hardware_id: str = "",
    typestore: Any = None,
) -> Any:
    """Build one DiagnosticStatus for a camera.

    Level: STALE when inactive or nothing was processed yet, ERROR when the last frame
    failed in the model, WARN when a backend fallback is in use or frames were bad,
    OK otherwise. Values are strings, as DiagnosticStatus requires.
    """
    ts = typestore or messages.get_typestore()
    info = backend_info or {}
    fallbacks = list(info.get("fallbacks", []) or [])
    pct = stats.latency_percentiles()
    values = {
        "fps": f"{stats.fps():.2f}",
        "latency_p50_ms": f"{pct[50]:.1f}",
        "latency_p90_ms": f"{pct[90]:.1f}",
        "latency_p99_ms": f"{pct[99]:.1f}",
        "inference_mean_ms": f"{stats.mean_inference_ms():.1f}",
        "frames_received": str(received),
        "frames_processed": str(stats.processed),
        "frames_dropped": str(dropped),
        "frames_bad": str(stats.bad_frames),
        "model_errors": str(stats.errors),
        "tracking_resets": str(stats.tracking_resets),
        "backend": str(info.get("backend", "none")),
        "fallbacks": "; ".join(map(str, fallbacks)) or "none",
    }
    if not active:
        level, message = STALE, "inactive"
    elif stats.last_error:
        level, message = ERROR, f"model error: {stats.last_error}"
    elif fallbacks:
        level, message = WARN, f"running on fallback backend {values['backend']}"
    elif stats.bad_frames:
        level, message = WARN, f"{stats.bad_frames} bad input frames"
    elif stats.processed == 0:
        level, message = STALE, "no frames processed yet"
    else:
        level, message = OK, f"{values['fps']} fps on {values['backend']}"
    kv = ts.types["diagnostic_msgs/msg/KeyValue"]
    return ts.types["diagnostic_msgs/msg/DiagnosticStatus"](
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[kv(key=k, value=v) for k, v in values.items()],
    )


def diagnostic_array(statuses: list[Any], stamp_ns: int, typestore: Any = None) -> Any:
    """Wrap statuses in a diagnostic_msgs/DiagnosticArray stamped ``stamp_ns``."""
    ts = typestore or messages.get_typestore()
    return ts.types[messages.DIAGNOSTIC_ARRAY](header=messages.make_header(stamp_ns, "", ts), status=statuses)
