"""Latest-frame-wins scheduling of camera frames onto one worker.

Why: a model slower than the camera must never build a queue (latency would grow
without bound). Each camera has a single waiting slot; a new frame replaces the
waiting one, which is counted as dropped. One worker takes the oldest-waiting
camera's frame next (fair round robin across cameras), and ``max_rate_hz`` spaces
the frames each camera processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class CameraCounters:
    """Frame counts of one camera since start (or the last reset)."""

    received: int = 0
    dropped: int = 0  # replaced while waiting, or discarded by close()/clear()
    taken: int = 0  # handed to the worker


@dataclass
class Pending:
    """A frame waiting in a camera's slot."""

    frame: Any
    arrival: float  # clock time when it was submitted


class LatestFrameScheduler:
    """One waiting slot per camera, drained by one worker, optionally rate limited.

    Thread-safe: ``submit`` is called from subscription callbacks, ``take`` from the
    worker thread. ``clock`` is injectable so tests drive time by hand.
    """

    def __init__(
        self, cameras: list[str], max_rate_hz: float = 0.0, clock: Callable[[], float] = time.monotonic
    ):
        if not cameras:
            raise ValueError("the scheduler needs at least one camera")
        self._clock = clock
        self._cond = threading.Condition()
        self._slots: dict[str, Pending | None] = dict.fromkeys(cameras)
        self._last_start: dict[str, float | None] = dict.fromkeys(cameras)
        self.counters: dict[str, CameraCounters] = {c: CameraCounters() for c in cameras}
        self._closed = False
        self.max_rate_hz = max_rate_hz

    @property
    def cameras(self) -> list[str]:
        """The camera names, in configuration order."""
        return list(self._slots)

    @property
    def max_rate_hz(self) -> float:
        """Most frames per second each camera processes; 0 disables the limit."""
        return self._max_rate_hz

    @max_rate_hz.setter
    def max_rate_hz(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"max_rate_hz must be >= 0, got {value}")
        with self._cond:
            self._max_rate_hz = float(value)
            self._cond.notify_all()

    def submit(self, camera: str, frame: Any) -> bool:
        """Put ``frame`` in ``camera``'s slot; return True when it replaced (dropped) a waiting frame."""
        with self._cond:
            counters = self.counters[camera]
            counters.received += 1
            if self._closed:
                counters.dropped += 1
                return True
            replaced = self._slots[camera] is not None
            if replaced:
                counters.dropped += 1
            self._slots[camera] = Pending(frame, self._clock())
            self._cond.notify_all()
            return replaced

    def _ready_at(self, camera: str) -> float:
        last = self._last_start[camera]
        if self._max_rate_hz <= 0 or last is None:
            return float("-inf")
        return last + 1.0 / self._max_rate_hz

    def _pick(self, now: float) -> tuple[str | None, float | None]:
        """Return (camera whose frame is due, earliest future due time if none is due yet)."""
        best, best_arrival, wake = None, None, None
        for camera, pending in self._slots.items():
            if pending is None:
                continue
            ready = self._ready_at(camera)
            if ready > now:
                wake = ready if wake is None else min(wake, ready)
            elif best_arrival is None or pending.arrival < best_arrival:
                best, best_arrival = camera, pending.arrival
        return best, wake

    def take(self, timeout: float | None = 0.0) -> tuple[str, Pending] | None:
        """Remove and return the next due (camera, pending frame), waiting up to ``timeout`` seconds.

        ``timeout=0`` polls, ``None`` waits until a frame is due or the scheduler closes.
        Returns None on timeout or when closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                camera, wake = self._pick(now)
                if camera is not None:
                    pending = self._slots[camera]
                    assert pending is not None
                    self._slots[camera] = None
                    self._last_start[camera] = now
                    self.counters[camera].taken += 1
                    return camera, pending
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if wake is not None:
                    until_due = max(wake - now, 0.001)
                    remaining = until_due if remaining is None else min(remaining, until_due)
                self._cond.wait(remaining)
            return None

    def clear(self) -> None:
        """Discard waiting frames (counted as dropped) and forget rate-limit history."""
        with self._cond:
            for camera, pending in self._slots.items():
                if pending is not None:
                    self.counters[camera].dropped += 1
                self._slots[camera] = None
                self._last_start[camera] = None

    def close(self) -> None:
        """Stop: discard waiting frames and wake the worker; later submits count as dropped."""
        self.clear()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Accept frames again after close() (lifecycle re-activation)."""
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        """True after close() until reopen()."""
        return self._closed

    def waiting(self) -> dict[str, bool]:
        """Which cameras have a frame waiting (for tests and diagnostics)."""
        with self._cond:
            return {c: p is not None for c, p in self._slots.items()}
