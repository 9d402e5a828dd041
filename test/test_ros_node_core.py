"""The ROS-free node core driven frame by frame with rosbags messages through the tiny real model."""

from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
import pytest

from efficientsam3_ros.ros import messages
from efficientsam3_ros.ros.core import ACTIVE, INACTIVE, UNCONFIGURED, NodeCore

pipeline = pytest.importorskip(
    "efficientsam3_ros.pipeline", reason="the pipeline (ConceptSegmenter) is needed"
)

TS = messages.get_typestore()
H, W = 48, 64


def tiny_factory(config):
    """The real ConceptSegmenter with the tiny random-weight model (what the node loads, minus the zoo)."""
    return pipeline.ConceptSegmenter.from_name("es-ev-tiny", checkpoint=None, backend="auto", device="cpu")


def image_msg(stamp_ns: int = 1, frame_id: str = "cam", encoding: str = "rgb8", seed: int = 0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    pixels = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    return messages.numpy_to_image_msg(pixels, encoding, messages.make_header(stamp_ns, frame_id), TS)


def compressed_msg(stamp_ns: int = 1):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(buf, format="PNG")
    return TS.types[messages.COMPRESSED_IMAGE](
        header=messages.make_header(stamp_ns, "cam"),
        format="png",
        data=np.frombuffer(buf.getvalue(), np.uint8).copy(),
    )


def make_core(**overrides) -> NodeCore:
    # random tiny model: thresholds at 0 so that every query is published and starts a track
    values = {"score_threshold": 0.0, "track_new_threshold": 0.0, "concepts": ["person", "red mug"]}
    values.update(overrides)
    core = NodeCore(values, segmenter_factory=tiny_factory, typestore=TS)
    core.configure()
    core.activate()
    return core


@pytest.fixture(scope="module")
def core():
    return make_core()


def instances_of(outputs, topic="instances"):
    found = [o.msg for o in outputs if o.topic == topic]
    assert len(found) == 1, [o.topic for o in outputs]
    return found[0]


def test_image_frame_produces_a_serializable_instance_array(core):
    assert core.state == ACTIVE
    assert core.on_message("", image_msg(1_234_567_890_123, "camera_optical")) is False
    outputs = core.process_next()
    msg = instances_of(outputs)
    assert msg.header.frame_id == "camera_optical"
    assert messages.stamp_to_ns(msg.header) == 1_234_567_890_123
    assert (msg.height, msg.width) == (H, W)
    assert dict(zip(msg.concept_ids.tolist(), msg.concept_labels)) == core.concepts()
    assert set(core.concepts().values()) == {"person", "red mug"}
    assert msg.inference_time_ms > 0
    assert len(msg.instances) > 0, "score_threshold 0 keeps every query of the random model"
    back = messages.deserialize(messages.serialize(msg, TS), messages.CONCEPT_INSTANCE_ARRAY, TS)
    decoded = messages.msg_to_instances(back)
    assert all(inst.mask.shape == (H, W) for inst in decoded)
    assert {inst.label for inst in decoded} <= {"person", "red mug"}
    assert core.process_next() is None  # nothing queued


def test_bgr_and_compressed_and_raw_cdr_inputs(core):
    core.on_message("", image_msg(2, encoding="bgr8"))
    assert instances_of(core.process_next()).header.stamp.nanosec == 2
    core.on_message("", compressed_msg(3))
    assert instances_of(core.process_next()).header.stamp.nanosec == 3
    raw = messages.serialize(image_msg(4), TS)
    core.on_message("", raw, messages.IMAGE)  # what a raw rclpy subscription delivers
    assert instances_of(core.process_next()).header.stamp.nanosec == 4


def test_latest_frame_wins_through_the_core(core):
    dropped_before = core.scheduler.counters[""].dropped
    assert core.on_message("", image_msg(10)) is False
    assert core.on_message("", image_msg(11)) is True
    assert core.on_message("", image_msg(12)) is True
    msg = instances_of(core.process_next())
    assert msg.header.stamp.nanosec == 12
    assert core.process_next() is None
    assert core.scheduler.counters[""].dropped - dropped_before == 2


def test_bad_frames_are_dropped_counted_and_warned_once(core, caplog):
    before = core.cameras[""].stats.bad_frames
    bad = image_msg(20)
    bad.encoding = "nv24"
    short = image_msg(21)
    short.step = 3
    with caplog.at_level(logging.WARNING, logger="efficientsam3_ros.node"):
        for frame in (bad, bad, short):
            core.on_message("", frame)
            assert core.process_next() == []
        core.on_message("", b"\x00\x01\x00\x00garbage", messages.IMAGE)
        assert core.process_next() == []
    assert core.cameras[""].stats.bad_frames - before == 4
    warnings = [r.message for r in caplog.records if "dropping frame" in r.message]
    assert sum("nv24" in w for w in warnings) == 1, "the same warning is throttled"
    core.on_message("", image_msg(22))
    assert instances_of(core.process_next()).header.stamp.nanosec == 22  # still works afterwards


@pytest.mark.parametrize("encoding", ["yuyv", "nv12", "bayer_gbrg8"])
def test_a_cameras_own_encoding_is_segmented(core, encoding):
    """A UVC webcam's yuyv, a Jetson camera's nv12, a machine-vision camera's Bayer mosaic: each
    frame is processed (no conversion node in front), with the input's header."""
    from efficientsam3_ros.ros.convert import rgb_to_raw

    rgb = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    msg = messages.numpy_to_image_msg(
        rgb_to_raw(rgb, encoding), encoding, messages.make_header(31, "cam"), TS
    )
    bad_before = core.cameras[""].stats.bad_frames
    core.on_message("", msg)
    assert instances_of(core.process_next()).header.stamp.nanosec == 31
    assert core.cameras[""].stats.bad_frames == bad_before


def test_model_error_is_counted_not_raised(core, monkeypatch):
    seg = core.cameras[""].segmenter

    def boom(image):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(seg, "process", boom)
    core.on_message("", image_msg(30))
    assert core.process_next() == []
    assert core.cameras[""].stats.errors >= 1
    status = core.diagnostics(0).status[0]
    assert status.level == 2 and "out of memory" in status.message


def test_services_validate_inputs():
    core = make_core(max_concepts=3, max_phrase_length=10, max_exemplar_boxes=2)
    ok = core.set_concepts(["cup", "bottle"])
    assert ok.success and len(ok.concept_ids) == 2
    assert core.list_concepts().labels == ["cup", "bottle"]
    appended = core.set_concepts(["chair"], append=True)
    assert appended.success and appended.concept_ids[0] not in ok.concept_ids
    for labels, append, fragment in [
        ([], False, "no concepts"),
        ([""], False, "empty"),
        (["   "], False, "empty"),
        (["x" * 11], False, "max_phrase_length"),
        (["a", "b", "c", "d"], False, "max_concepts"),
        (["table"], True, "max_concepts"),
        (["a", "a"], False, "twice"),
        (["bad\nphrase"], False, "control character U+000A"),
        (["red\u200bmug"], False, "U+200B (ZERO WIDTH SPACE) at position 3"),
        (["\ufeffmug"], False, "U+FEFF"),
        (["mug\u202e"], False, "U+202E"),
        (["nul\x00"], False, "U+0000"),
        (["cup"], True, "already active"),
    ]:
        result = core.set_concepts(labels, append=append)
        assert not result.success and fragment in result.message, (labels, result.message)
        assert result.concept_ids == []
    assert len(core.concepts()) == 3, "failed requests change nothing"

    assert not core.remove_concepts([]).success
    bad = core.remove_concepts([999])
    assert not bad.success and "999" in bad.message
    chair = appended.concept_ids[0]
    assert core.remove_concepts([chair]).success and chair not in core.concepts()

    cid = ok.concept_ids[0]
    early = core.add_exemplar("", cid, [1, 1, 10, 10], [True])
    assert not early.success and "no frame" in early.message
    core.on_message("", image_msg(40))
    core.process_next()
    for boxes, positive, fragment in [
        ([1, 1, 10], [True], "multiple of 4"),
        ([1, 1, 10, 10], [True, False], "flags"),
        ([1, 1, 10, 10] * 3, [True] * 3, "max_exemplar_boxes"),
        ([0, 0, W + 1, 10], [True], "outside"),
        ([-1, 0, 10, 10], [True], "outside"),
        ([10, 10, 5, 20], [True], "inverted"),
        ([float("nan"), 0, 1, 1], [True], "NaN"),
        ([], [], "no boxes"),
    ]:
        result = core.add_exemplar("", cid, boxes, positive)
        assert not result.success and fragment in result.message, (boxes, result.message)
    assert not core.add_exemplar("", 999, [1, 1, 10, 10], [True]).success
    assert not core.add_exemplar("nope", cid, [1, 1, 10, 10], [True]).success
    good = core.add_exemplar("", cid, [1, 1, 10, 10, 20, 20, 30, 40], [True, False])
    assert good.success, good.message
    more = core.add_exemplar("", cid, [2, 2, 12, 12], [True])  # boxes accumulate over calls
    assert not more.success and "the concept already holds 2" in more.message, more.message
    assert core.cameras[""].segmenter.exemplar_count(cid) == 2, "a refused call adds nothing"
    core.on_message("", image_msg(41))
    assert instances_of(core.process_next()).header.stamp.nanosec == 41  # exemplars feed the next frame

    assert core.reset_tracking("").success
    assert not core.reset_tracking("rear").success


def test_parameters_dynamic_and_static():
    core = make_core()
    seg = core.cameras[""].segmenter
    ok, reason = core.set_parameters({"score_threshold": 0.25, "mask_threshold": 0.75, "max_rate_hz": 5.0})
    assert ok, reason
    assert seg.score_threshold == 0.25
    assert seg.mask_threshold == 0.75  # a probability, as the parameter is
    assert core.scheduler.max_rate_hz == 5.0
    ok, reason = core.set_parameters({"model": "es-rv-s"})
    assert not ok and "unconfigured" in reason
    ok, reason = core.set_parameters({"score_threshold": 2.0})
    assert not ok and "<= 1.0" in reason
    assert seg.score_threshold == 0.25, "a refused change applies nothing"
    # -1 (the defaults): the model's own operating point (the tiny model carries SAM3's)
    ok, reason = core.set_parameters({"mask_threshold": 0.0})
    assert not ok and "mask_threshold must be >= 0.001" in reason  # a cut at 0 keeps every pixel
    seg.model.config.operating_point = dataclasses.replace(
        seg.model.config.operating_point, mask_threshold=0.2
    )
    ok, reason = core.set_parameters(
        {"score_threshold": -1.0, "track_new_threshold": -1.0, "mask_threshold": -1.0}
    )
    assert ok, reason
    point = seg.model.config.operating_point
    assert seg.score_threshold == point.score_threshold == 0.5
    assert seg.mask_threshold == point.mask_threshold == 0.2  # the model's own, not a constant
    assert seg.tracker.config.new_det_threshold == point.new_track_threshold == 0.7
    ok, _ = core.set_parameters({"concepts": ["dog"]})
    assert ok and list(core.concepts().values()) == ["dog"]
    ok, reason = core.set_parameters({"concepts": [""]})
    assert not ok and "empty" in reason
    ok, _ = core.set_parameters({"concepts": []})
    assert ok and core.concepts() == {}
    core.on_message("", image_msg(50))
    msg = instances_of(core.process_next())
    assert len(msg.instances) == 0 and len(msg.concept_ids) == 0


def test_label_and_overlay_images():
    core = make_core(publish_label_image=True, publish_overlay=True, label_image_encoding="32SC1")
    core.on_message("", image_msg(60))
    outputs = core.process_next()
    topics = {o.topic: o.msg for o in outputs}
    assert set(topics) == {"instances", "label_image", "overlay"}
    label = topics["label_image"]
    assert (label.encoding, label.height, label.width) == ("32SC1", H, W)
    assert label.header.stamp.nanosec == 60
    from efficientsam3_ros.ros.convert import image_msg_to_array

    overlay = topics["overlay"]
    assert (overlay.encoding, overlay.height, overlay.width, overlay.step) == ("rgb8", H, W, W * 3)
    messages.serialize(label, TS)
    messages.serialize(overlay, TS)
    assert image_msg_to_array(overlay).shape == (H, W, 3)


def test_lifecycle_transitions_and_cleanup():
    core = NodeCore({"concepts": ["person"]}, segmenter_factory=tiny_factory)
    assert core.state == UNCONFIGURED
    assert core.on_message("", image_msg()) is True  # refused before configure
    assert not core.list_concepts().success
    core.configure()
    assert core.state == INACTIVE
    assert core.on_message("", image_msg()) is True  # refused until active
    assert core.process_next() is None
    core.activate()
    core.on_message("", image_msg(70))
    assert core.process_next()
    core.on_message("", image_msg(71))
    core.deactivate()
    assert core.process_next() is None, "deactivate discards the waiting frame"
    with pytest.raises(RuntimeError):
        core.deactivate()
    ok, _ = core.set_parameters({"model": "es-ev-tiny"})
    assert not ok
    core.cleanup()
    assert core.state == UNCONFIGURED and core.cameras == {}
    assert not core.set_concepts(["x"]).success
    ok, reason = core.set_parameters({"input_size": 64})
    assert ok, reason
    core.configure()
    assert list(core.concepts().values()) == ["person"]


def test_bad_initial_concepts_fail_configure():
    core = NodeCore({"concepts": ["x" * 100]}, segmenter_factory=tiny_factory)
    with pytest.raises(ValueError, match="max_phrase_length"):
        core.configure()


def test_multi_camera_own_state_and_namespaces():
    core = make_core(image_topics=["front/image", "rear/image"])
    assert set(core.cameras) == {"front", "rear"}
    front, rear = core.cameras["front"].segmenter, core.cameras["rear"].segmenter
    assert front is not rear, "each camera has its own segmenter state"
    assert front.concepts == rear.concepts
    assert [t[:2] for t in core.input_topics()] == [("front", "front/image"), ("rear", "rear/image")]
    assert "rear/instances" in core.output_topics()
    core.on_message("front", image_msg(80, "front_cam"))
    core.on_message("rear", image_msg(81, "rear_cam"))
    core.on_message("front", image_msg(82, "front_cam"))  # replaces 80
    got = {}
    for _ in range(2):
        outputs = core.process_next()
        for o in outputs:
            got[o.topic] = o.msg
    assert set(got) == {"front/instances", "rear/instances"}
    assert got["front/instances"].header.stamp.nanosec == 82
    assert got["rear/instances"].header.frame_id == "rear_cam"
    assert core.scheduler.counters["front"].dropped == 1 and core.scheduler.counters["rear"].dropped == 0
    added = core.set_concepts(["cat"], append=True)
    assert added.success and front.concepts == rear.concepts
    assert not core.add_exemplar("", 0, [1, 1, 5, 5], [True]).success  # must name a camera
    assert core.add_exemplar("rear", 0, [1, 1, 5, 5], [True]).success
    assert core.reset_tracking("").success and core.reset_tracking("front").success
    diag = core.diagnostics(5)
    assert len(diag.status) == 2
    messages.serialize(diag, TS)


def test_diagnostics_report_rates_drops_and_backend():
    core = make_core(stats_window=10)
    for i in range(3):
        core.on_message("", image_msg(90 + i))
        core.on_message("", image_msg(95 + i))  # replaces the one before
        core.process_next()
    diag = core.diagnostics(123)
    back = messages.deserialize(messages.serialize(diag, TS), messages.DIAGNOSTIC_ARRAY, TS)
    status = back.status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert values["frames_received"] == "6" and values["frames_dropped"] == "3"
    assert values["frames_processed"] == "3"
    assert values["backend"] == core.backend_info()["backend"]
    assert float(values["latency_p50_ms"]) > 0 and float(values["fps"]) > 0
    assert status.level in (0, 1)
    core.deactivate()
    assert core.diagnostics(0).status[0].level == 3  # STALE when inactive


def test_stamp_watch_says_when_stamps_jump():
    from efficientsam3_ros.ros.time_jumps import StampWatch

    s = 1_000_000_000
    watch = StampWatch()
    assert watch.observe(100 * s, 1.0, 5.0) is None  # the first stamp
    assert watch.observe(99_500_000_000, 1.0, 5.0) is None  # back 0.5 s: jitter, not a loop
    assert "went back 9.500 s" in watch.observe(90 * s, 1.0, 5.0)
    assert watch.observe(0, 1.0, 5.0) is None and watch.last_ns == 90 * s  # an unfilled header
    assert "no image for 6.000 s" in watch.observe(96 * s, 1.0, 5.0)
    assert watch.observe(50 * s, 0.0, 0.0) is None and watch.observe(500 * s, 0.0, 0.0) is None  # 0: never


def test_tracks_are_forgotten_when_a_cameras_stamps_jump(caplog):
    """ros2 bag play --loop: the stamps go back to the recording's start, and the previous pass's
    tracks (ids, memories) must not continue into the new one; a long pause resets when asked to."""
    core = make_core(track_reset_gap_s=10.0)
    camera = core.cameras[""]
    resets = []
    real_reset = camera.segmenter.reset
    camera.segmenter.reset = lambda: (resets.append(camera.stats.processed), real_reset())
    s = 1_000_000_000

    def send(stamp_ns: int) -> None:
        core.on_message("", image_msg(stamp_ns))
        assert instances_of(core.process_next()).header.stamp.nanosec == stamp_ns % s

    send(100 * s)
    send(100 * s + s // 10)
    with caplog.at_level(logging.INFO, logger="efficientsam3_ros.node"):
        send(90 * s)  # the loop starts over
    assert resets == [2], "reset before the first frame of the new pass"
    assert any("went back 10.100 s" in r.message for r in caplog.records)
    send(90 * s - s // 2)  # back 0.5 s: under track_reset_time_jump_s
    send(101 * s)  # a pause of 11.5 s: over track_reset_gap_s
    send(0)  # a header nobody stamped: neither a jump nor remembered
    assert resets == [2, 4]
    status = core.diagnostics(0).status[0]
    assert {kv.key: kv.value for kv in status.values}["tracking_resets"] == "2"
    ok, why = core.set_parameters({"track_reset_time_jump_s": 0.0, "track_reset_gap_s": 0.0})
    assert ok, why
    send(10 * s)
    send(900 * s)
    assert resets == [2, 4], "0 turns both off"


def test_tracking_parameters_reach_the_tracker_at_run_time():
    core = make_core()
    ok, why = core.set_parameters(
        {
            "track_new_threshold": 0.9,
            "max_tracks": 3,
            "track_max_missed_frames": 4,
            "track_stale_mask_frames": 2,
        }
    )
    assert ok, why
    for seg in core._segmenters():
        cfg = seg.tracker.config
        assert (cfg.new_det_threshold, cfg.max_tracks, cfg.max_missed_frames, cfg.stale_mask_frames) == (
            0.9,
            3,
            4,
            2,
        )
    ok, why = core.set_parameters({"track_match_iou": 0.05})
    assert not ok and "track_match_iou" in why
    ok, why = core.set_parameters({"track_max_missed_frames": -1, "track_match_iou": -1.0})
    assert ok, why
    for seg in core._segmenters():  # -1: back to the model's own (SAM3's 30 / 0.5 for this model)
        assert (seg.tracker.config.max_missed_frames, seg.tracker.config.assoc_iou_threshold) == (30, 0.5)


def test_node_keeps_the_models_memory_rules_unless_a_parameter_is_set(tmp_path):
    """With a memory tracker the model's memory_tracking rules hold; the -1 defaults do not undo them."""
    from efficientsam3_ros.modeling import OperatingPoint, build_model
    from efficientsam3_ros.modeling.checkpoint import save_checkpoint

    model = build_model("es-ev-tiny")
    model.config.operating_point = OperatingPoint(
        memory_tracking={"max_missed_frames": 3, "recondition_every": 1}
    )
    path = str(save_checkpoint(model, tmp_path / "model.safetensors"))

    def factory(config):
        return pipeline.ConceptSegmenter.from_name(path, backend="torch-cpu", memory="perceiver")

    core = NodeCore({"concepts": ["person"]}, segmenter_factory=factory, typestore=TS)
    core.configure()
    (seg,) = core._segmenters()
    assert (seg.tracker.config.max_missed_frames, seg.tracker.config.recondition_every) == (3, 1)
    ok, why = core.set_parameters({"track_max_missed_frames": 7})
    assert ok, why
    assert (seg.tracker.config.max_missed_frames, seg.tracker.config.recondition_every) == (7, 1)


def test_a_repeated_concept_id_is_removed_once_on_every_camera():
    core = make_core(image_topics=["front/image", "rear/image"])
    result = core.remove_concepts([0, 0])
    assert result.success and result.concept_ids == [0], result.message
    assert (
        core.cameras["front"].segmenter.concepts == core.cameras["rear"].segmenter.concepts == {1: "red mug"}
    )


def test_an_unexpected_error_in_a_service_is_answered_not_raised(core, monkeypatch, caplog):
    """rclpy would end the process on an exception from a service callback."""
    seg = core.cameras[""].segmenter

    def broken(*args, **kwargs):
        raise KeyError("simulated bug")

    monkeypatch.setattr(seg, "reset", broken)
    with caplog.at_level(logging.ERROR, logger="efficientsam3_ros.node"):
        result = core.reset_tracking("")
    assert not result.success and "internal error in reset_tracking" in result.message
    assert "KeyError" in result.message and any("reset_tracking failed" in r.message for r in caplog.records)
    assert core.list_concepts().success  # the node still answers


def test_a_decompression_bomb_is_a_bad_frame_without_opencv(core, monkeypatch, png_bomb):
    """Pillow raises DecompressionBombError (not an OSError) for a header claiming a huge image."""
    from PIL import Image

    from efficientsam3_ros.ros import convert

    def no_cv2(buffer, as_stored=False):
        raise ImportError("cv2 hidden: a plain `pip install` has no OpenCV")

    monkeypatch.setattr(convert, "_decode_cv2", no_cv2)
    with pytest.raises(Image.DecompressionBombError):  # what the frame below sends Pillow into
        Image.open(io.BytesIO(png_bomb))
    before = core.cameras[""].stats.bad_frames
    msg = compressed_msg(50)
    msg.data = np.frombuffer(png_bomb, np.uint8).copy()
    core.on_message("", msg)
    assert core.process_next() == []
    assert core.cameras[""].stats.bad_frames - before == 1
    core.on_message("", compressed_msg(51))
    assert instances_of(core.process_next()).header.stamp.nanosec == 51


def test_a_result_that_cannot_be_published_is_counted_not_raised(core, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("simulated serialization bug")

    monkeypatch.setattr(messages, "frame_result_to_msg", broken)
    errors = core.cameras[""].stats.errors
    core.on_message("", image_msg(60))
    assert core.process_next() == []
    assert core.cameras[""].stats.errors == errors + 1
    monkeypatch.undo()
    core.on_message("", image_msg(61))
    assert instances_of(core.process_next()).header.stamp.nanosec == 61


def test_max_concepts_above_the_pipelines_default_reaches_the_segmenter():
    many = [f"thing {i}" for i in range(40)]  # the pipeline alone allows 32
    core = make_core(max_concepts=64)
    assert core.set_concepts(many).success
    ok, why = core.set_parameters({"max_concepts": 50})
    assert ok, why
    assert core.cameras[""].segmenter.max_concepts == 50
    result = core.set_concepts(many + [f"more {i}" for i in range(11)])
    assert not result.success and "max_concepts=50" in result.message


def test_phrases_that_differ_only_in_whitespace_are_one_concept():
    core = make_core(max_concepts=4, max_phrase_length=12)
    before = core.concepts()
    twice = core.set_concepts(["red circle", "red  circle"])
    assert not twice.success and "twice" in twice.message and "'red circle'" in twice.message
    assert core.concepts() == before, "a refused request changes nothing"

    result = core.set_concepts(["  red \u00a0 circle ", "blue\u00a0mug"])
    assert result.success, result.message
    assert result.labels == ["red circle", "blue mug"], "the labels answered are the ones the model holds"
    assert dict(zip(result.concept_ids, result.labels)) == core.concepts()
    assert core.list_concepts().labels == result.labels

    again = core.set_concepts(["red\u00a0circle"], append=True)
    assert not again.success and "already active" in again.message, again.message
    assert again.concept_ids == [] and again.labels == []
    assert core.concepts() == dict(zip(result.concept_ids, result.labels))

    # the service's own checks still come first, with their messages
    for labels, fragment in [
        (["red\tcircle"], "control"),  # an inner tab is refused, not collapsed into a space
        (["red" + " " * 7 + "mug"], "max_phrase_length"),  # the length counts what was sent
        (["\u00a0\u00a0"], "empty"),
    ]:
        refused = core.set_concepts(labels)
        assert not refused.success and fragment in refused.message, (labels, refused.message)
    assert core.set_concepts([" red mug "], append=True).labels == ["red mug"]


def test_max_concepts_in_the_same_change_governs_the_concepts_and_a_refusal_changes_nothing():
    core = make_core(image_topics=["front/image", "rear/image"], max_concepts=2, concepts=["cup", "bottle"])
    segs = [cam.segmenter for cam in core.cameras.values()]

    def state():
        return (
            core.concepts(),
            dict(core.config.values),
            [
                (s.concepts, s.max_concepts, s.score_threshold, s.mask_threshold, s.tracker.config)
                for s in segs
            ],
        )

    ok, why = core.set_parameters({"max_concepts": 4, "concepts": ["cup", "bottle", "chair"]})
    assert ok, why
    assert sorted(core.concepts().values()) == ["bottle", "chair", "cup"]
    assert core.config.max_concepts == 4 and all(s.max_concepts == 4 for s in segs)

    before = state()
    ok, why = core.set_parameters({"max_concepts": 1, "score_threshold": 0.3})
    assert not ok and "3 active concepts" in why and "remove_concepts" in why and "together" in why, why
    assert state() == before
    for refused in [
        {
            "max_concepts": 2,
            "concepts": ["a", "b", "c"],
            "score_threshold": 0.3,
        },  # too many for the new limit
        {
            "max_concepts": 8,
            "concepts": ["a", ""],
            "mask_threshold": 0.3,
        },  # the limit was raised for a moment
        {"max_phrase_length": 3, "concepts": ["dog", "bird"]},  # the new phrase limit governs too
    ]:
        ok, why = core.set_parameters(refused)
        assert not ok and why.startswith("concepts: "), (refused, why)
        assert state() == before, refused

    ok, why = core.set_parameters({"max_concepts": 1, "concepts": ["dog"]})
    assert ok, why
    assert list(core.concepts().values()) == ["dog"] and all(s.max_concepts == 1 for s in segs)
    assert not core.set_concepts(["dog", "cat"]).success


def test_configure_warns_in_the_node_log_which_backends_were_skipped_and_why(tiny_model, caplog):
    from efficientsam3_ros.runtime import BackendUnavailable, select_backend
    from efficientsam3_ros.runtime.torch_backend import TorchBackend

    def down(model, options):
        raise BackendUnavailable(f"no GPU for {model.config.name}")

    def factory_for(requested):
        def factory(config):
            down_ones = {n: down for n in ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu")}
            torch_cpu = {"torch-cpu": lambda m, o: TorchBackend(m, o)}
            backend = select_backend(requested, tiny_model, factories={**down_ones, **torch_cpu})
            return pipeline.ConceptSegmenter(tiny_model, backend=backend)

        return factory

    def configure_lines(requested):
        core = NodeCore({"backend": "tensorrt"}, segmenter_factory=factory_for(requested), typestore=TS)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="efficientsam3_ros.node"):
            core.configure()
        return [r for r in caplog.records if r.name == "efficientsam3_ros.node" and "configured" in r.message]

    (line,) = configure_lines("tensorrt")
    assert line.levelno == logging.WARNING
    assert line.message.startswith(
        "configured 1 camera(s) on backend torch-cpu (backend parameter: tensorrt)"
    )
    reason = f"no GPU for {tiny_model.config.name}"
    for skipped in ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu"):
        assert f"{skipped}: unavailable: {reason}" in line.message
    (line,) = configure_lines("torch-cpu")  # nothing skipped: the plain line, as before
    assert (line.levelno, line.message) == (logging.INFO, "configured 1 camera(s) on backend torch-cpu")
