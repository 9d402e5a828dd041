"""When a camera's image stamps say its tracks belong to another stretch of time.

Why: ``ros2 bag play --loop`` starts the recording over, and a simulator reset starts the
world over; both send stamps that go back in time, and the tracks of the previous pass would
otherwise continue with the old ids (and, with the memory tracker, the old memories) into a
scene that is not the one they followed. A long pause in the stamps (a robot parked, a camera
that reconnects) can mean the same, so a gap limit is offered too, off by default: a slow or
throttled camera has long gaps that mean nothing.

Ages inside the tracker count processed frames; this is the one place stamp time is read.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_S = 1_000_000_000


@dataclass
class StampWatch:
    """The last stamp one camera sent, and the test that says when to forget its tracks."""

    last_ns: int | None = None

    def observe(self, stamp_ns: int, back_limit_s: float, gap_limit_s: float) -> str | None:
        """Record ``stamp_ns``; return why the tracks should be forgotten first, or None.

        ``back_limit_s``: stamps going back by more than this reset (0: never).
        ``gap_limit_s``: stamps moving forward by more than this reset (0: never).
        A zero stamp is a header nobody filled in: it is neither checked nor remembered.
        """
        if stamp_ns == 0:
            return None
        previous, self.last_ns = self.last_ns, stamp_ns
        if previous is None:
            return None
        step_s = (stamp_ns - previous) / NS_PER_S
        if back_limit_s > 0 and -step_s > back_limit_s:
            return f"image stamps went back {-step_s:.3f} s (more than {back_limit_s:g} s: a bag loop or a reset)"
        if gap_limit_s > 0 and step_s > gap_limit_s:
            return f"no image for {step_s:.3f} s of stamp time (more than {gap_limit_s:g} s)"
        return None
