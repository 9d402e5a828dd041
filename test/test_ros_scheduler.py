"""Latest-frame-wins scheduling: drop counting, fairness across cameras, rate limiting, close."""

from __future__ import annotations

import threading
import time

import pytest

from efficientsam3_ros.ros.scheduler import LatestFrameScheduler


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latest_frame_wins_and_replaced_frames_are_dropped():
    sched = LatestFrameScheduler(["cam"])
    assert sched.submit("cam", 1) is False
    assert sched.submit("cam", 2) is True
    assert sched.submit("cam", 3) is True
    camera, pending = sched.take()
    assert (camera, pending.frame) == ("cam", 3)
    assert sched.take() is None  # nothing queued behind it
    c = sched.counters["cam"]
    assert (c.received, c.dropped, c.taken) == (3, 2, 1)


def test_busy_worker_never_builds_a_queue():
    sched = LatestFrameScheduler(["cam"])
    for i in range(1000):
        sched.submit("cam", i)
    assert sched.take()[1].frame == 999
    assert sched.take() is None
    assert sched.counters["cam"].dropped == 999


def test_cameras_are_served_oldest_waiting_first():
    clock = FakeClock()
    sched = LatestFrameScheduler(["a", "b"], clock=clock)
    sched.submit("b", "b1")
    clock.now += 0.01
    sched.submit("a", "a1")
    clock.now += 0.01
    sched.submit("b", "b2")  # replaces b1; b now waits since b2 arrived, after a
    assert sched.take()[0] == "a"
    assert sched.take()[0] == "b"
    assert sched.counters["b"].dropped == 1 and sched.counters["a"].dropped == 0


def test_max_rate_limits_work_per_camera():
    clock = FakeClock()
    sched = LatestFrameScheduler(["cam"], max_rate_hz=10.0, clock=clock)
    sched.submit("cam", 1)
    assert sched.take()[1].frame == 1
    sched.submit("cam", 2)
    assert sched.take() is None  # due 0.1 s after the last start
    clock.now += 0.05
    sched.submit("cam", 3)  # replaces 2 while rate-limited
    assert sched.take() is None
    clock.now += 0.05
    assert sched.take()[1].frame == 3
    assert sched.counters["cam"].dropped == 1
    sched.max_rate_hz = 0.0
    sched.submit("cam", 4)
    assert sched.take()[1].frame == 4


def test_negative_rate_is_rejected():
    with pytest.raises(ValueError):
        LatestFrameScheduler(["cam"], max_rate_hz=-1)
    with pytest.raises(ValueError):
        LatestFrameScheduler([])


def test_close_discards_and_counts_and_reopen_accepts():
    sched = LatestFrameScheduler(["cam"])
    sched.submit("cam", 1)
    sched.close()
    assert sched.take(timeout=None) is None  # returns at once when closed
    assert sched.submit("cam", 2) is True
    assert sched.counters["cam"].dropped == 2
    sched.reopen()
    sched.submit("cam", 3)
    assert sched.take()[1].frame == 3


def test_take_blocks_until_a_frame_arrives():
    sched = LatestFrameScheduler(["cam"])
    got = []
    worker = threading.Thread(target=lambda: got.append(sched.take(timeout=5.0)))
    worker.start()
    time.sleep(0.05)
    sched.submit("cam", "x")
    worker.join(2.0)
    assert got and got[0][1].frame == "x"


def test_take_times_out():
    sched = LatestFrameScheduler(["cam"])
    start = time.monotonic()
    assert sched.take(timeout=0.05) is None
    assert time.monotonic() - start >= 0.04


def test_concurrent_producers_count_every_frame():
    sched = LatestFrameScheduler(["a", "b"])
    taken = []
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            item = sched.take(timeout=0.01)
            if item:
                taken.append(item)

    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=lambda c=c: [sched.submit(c, i) for i in range(500)]) for c in "ab"]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    time.sleep(0.05)
    stop.set()
    consumer.join()
    for cam in "ab":
        c = sched.counters[cam]
        waiting = int(sched.waiting()[cam])
        assert c.received == 500
        assert c.taken + c.dropped + waiting == 500
