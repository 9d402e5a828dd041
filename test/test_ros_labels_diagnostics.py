"""Label image rendering and diagnostics statistics (pure arithmetic, checked exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from efficientsam3_ros.pipeline.results import Instance
from efficientsam3_ros.ros import messages
from efficientsam3_ros.ros.diagnostics import OK, STALE, WARN, CameraStats, camera_status
from efficientsam3_ros.ros.labels import label_image


def _inst(mask, score, track_id=-1):
    return Instance(0, "x", score, np.zeros(4, np.float32), mask, track_id)


def test_label_image_ids_overlap_and_background():
    a = np.zeros((4, 5), bool)
    a[:, :3] = True
    b = np.zeros((4, 5), bool)
    b[:, 2:4] = True
    out = label_image([_inst(a, 0.9, 7), _inst(b, 0.5, 3)], (4, 5))
    assert out.dtype == np.uint16
    assert out[0].tolist() == [7, 7, 7, 3, 0], "the higher score wins the overlap; 0 is background"
    untracked = label_image([_inst(a, 0.2), _inst(b, 0.1)], (4, 5), "32SC1")
    assert untracked.dtype == np.int32 and untracked[0].tolist() == [1, 1, 1, 2, 0]


def test_label_image_mono16_wraps_without_hitting_zero():
    m = np.ones((2, 2), bool)
    assert label_image([_inst(m, 1.0, 65535)], (2, 2))[0, 0] == 65535
    assert label_image([_inst(m, 1.0, 65536)], (2, 2))[0, 0] == 1
    assert label_image([_inst(m, 1.0, 70000)], (2, 2), "32SC1")[0, 0] == 70000


def test_label_image_rejects_bad_input():
    with pytest.raises(ValueError):
        label_image([], (2, 2), "mono8")
    with pytest.raises(ValueError):
        label_image([_inst(np.ones((3, 3), bool), 1.0)], (2, 2))


def test_stats_fps_percentiles_and_window():
    stats = CameraStats(window=5)
    assert stats.fps() == 0.0 and math.isnan(stats.latency_percentiles()[50])
    for i in range(10):
        stats.record(done_time=i * 0.1, latency_ms=float(i), inference_ms=2.0)
    assert stats.processed == 10
    assert len(stats.latencies_ms) == 5
    assert stats.fps() == pytest.approx(10.0)
    assert stats.latency_percentiles()[50] == pytest.approx(7.0)
    assert stats.mean_inference_ms() == pytest.approx(2.0)


def test_camera_status_levels_and_values():
    ts = messages.get_typestore()
    stats = CameraStats()
    assert camera_status("c", stats, 0, 0, {}, active=True, typestore=ts).level == STALE
    stats.record(0.0, 10.0, 5.0)
    stats.record(0.5, 20.0, 5.0)
    status = camera_status(
        "c", stats, 5, 3, {"backend": "torch-cpu", "fallbacks": []}, active=True, typestore=ts
    )
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == OK
    assert values["fps"] == "2.00" and values["frames_dropped"] == "3" and values["frames_received"] == "5"
    assert values["backend"] == "torch-cpu" and values["fallbacks"] == "none"
    fallback = {"backend": "onnxruntime", "fallbacks": ["tensorrt: no engine"]}
    status = camera_status("c", stats, 5, 3, fallback, active=True, typestore=ts)
    assert status.level == WARN and "tensorrt: no engine" in {kv.value for kv in status.values}
    assert camera_status("c", stats, 5, 3, fallback, active=False, typestore=ts).level == STALE
