"""The .msg/.srv files parse with rosbags, match the embedded copy, and round-trip through CDR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.typesys import Stores, get_types_from_msg

from efficientsam3_ros.pipeline.results import FrameResult, Instance, TrackState
from efficientsam3_ros.ros import _interface_gen, interfaces, messages

ROOT = Path(__file__).resolve().parents[1]
MSG_FILES = sorted((ROOT / "msg").glob("*.msg"))
SRV_FILES = sorted((ROOT / "srv").glob("*.srv"))


def test_expected_interfaces_exist():
    assert {p.stem for p in MSG_FILES} == {"ConceptInstance", "ConceptInstanceArray"}
    assert {p.stem for p in SRV_FILES} == {
        "SetConcepts",
        "RemoveConcepts",
        "ListConcepts",
        "AddExemplar",
        "ResetTracking",
    }


@pytest.mark.parametrize("path", MSG_FILES, ids=lambda p: p.name)
def test_msg_parses_with_rosbags(path):
    types = get_types_from_msg(path.read_text(), f"efficientsam3_ros/msg/{path.stem}")
    assert f"efficientsam3_ros/msg/{path.stem}" in types


@pytest.mark.parametrize("path", SRV_FILES, ids=lambda p: p.name)
def test_srv_splits_and_parses_with_rosbags(path):
    request, response = messages.split_srv(path.read_text())
    response_types = get_types_from_msg(response, f"efficientsam3_ros/msg/{path.stem}_Response")
    fields = response_types[f"efficientsam3_ros/msg/{path.stem}_Response"][1]
    names = [f[0] for f in fields]
    assert names[:2] == ["success", "message"], "every service answers success + message"
    get_types_from_msg(request, f"efficientsam3_ros/msg/{path.stem}_Request")


def test_split_srv_rejects_missing_separator():
    with pytest.raises(ValueError, match="---"):
        messages.split_srv("int32 a\n")


def test_embedded_definitions_match_files():
    msgs, srvs = _interface_gen.collect(ROOT)
    assert msgs == interfaces.MSG_DEFINITIONS, "run: python -m efficientsam3_ros.ros._interface_gen"
    assert srvs == interfaces.SRV_DEFINITIONS, "run: python -m efficientsam3_ros.ros._interface_gen"


def test_track_state_constants_match_results():
    ts = messages.get_typestore()
    cls = ts.types[messages.CONCEPT_INSTANCE]
    for state in TrackState:
        assert getattr(cls, f"STATE_{state.name}") == int(state)
    text = interfaces.MSG_DEFINITIONS["ConceptInstance"]
    declared = {
        line.split()[1].split("=")[0] for line in text.splitlines() if line.startswith("uint8 STATE_")
    }
    assert declared == {f"STATE_{s.name}" for s in TrackState}


def test_typestore_has_every_type_and_is_cached():
    ts = messages.get_typestore()
    assert ts is messages.get_typestore()
    for name in interfaces.SRV_DEFINITIONS:
        for typename in messages.srv_typenames(name):
            assert typename in ts.types
    assert messages.register_types(ts) is ts  # idempotent
    humble = messages.get_typestore(Stores.ROS2_HUMBLE)
    assert messages.CONCEPT_INSTANCE_ARRAY in humble.types


def _result(h=48, w=64):
    rng = np.random.default_rng(0)
    masks = [np.zeros((h, w), bool), rng.random((h, w)) > 0.5, np.ones((h, w), bool)]
    masks[0][10:20, 5:30] = True
    instances = [
        Instance(1, "red mug", 0.91, np.array([5, 10, 30, 20], np.float32), masks[0], 7, TrackState.NEW),
        Instance(2, "person", 0.5, np.array([0, 0, w, h], np.float32), masks[1], 8, TrackState.PREDICTED),
        Instance(2, "person", 0.25, np.array([1.5, 2.5, 3.5, 4.5], np.float32), masks[2]),
    ]
    return FrameResult(
        instances, (h, w), {1: "red mug", 2: "person", 5: "ümlaut"}, {"encode": 3.0, "detect": 2.5}
    )


def test_frame_result_round_trips_through_cdr():
    ts = messages.get_typestore()
    result = _result()
    msg = messages.frame_result_to_msg(
        result, messages.make_header(1_700_000_000_123_456_789, "cam_front"), ts
    )
    raw = messages.serialize(msg, ts)
    back = messages.deserialize(raw, messages.CONCEPT_INSTANCE_ARRAY, ts)
    assert back.header.frame_id == "cam_front"
    assert messages.stamp_to_ns(back.header) == 1_700_000_000_123_456_789
    assert (back.height, back.width) == (48, 64)
    assert back.inference_time_ms == pytest.approx(5.5)
    decoded = messages.msg_to_frame_result(back)
    assert decoded.concepts == result.concepts
    assert decoded.image_size == result.image_size
    assert len(decoded.instances) == 3
    for got, want in zip(decoded.instances, result.instances):
        assert np.array_equal(got.mask, want.mask)
        assert np.allclose(got.box_xyxy, want.box_xyxy)
        assert (got.concept_id, got.label, got.track_id, got.state) == (
            want.concept_id,
            want.label,
            want.track_id,
            want.state,
        )
        assert got.score == pytest.approx(want.score, abs=1e-6)


def test_mask_rle_is_plain_pycocotools():
    from pycocotools import mask as mask_utils

    result = _result()
    msg = messages.frame_result_to_msg(result)
    inst = msg.instances[1]
    decoded = mask_utils.decode(
        {"size": [inst.mask_height, inst.mask_width], "counts": inst.mask_rle.encode()}
    )
    assert np.array_equal(decoded.astype(bool), result.instances[1].mask)
    assert len(inst.mask_rle) < result.instances[1].mask.size  # compact: smaller than one byte per pixel


def test_explicit_inference_time_and_total_timing():
    result = _result()
    assert messages.frame_result_to_msg(result, inference_time_ms=12.0).inference_time_ms == 12.0
    result.timings_ms["total"] = 9.0
    assert messages.frame_result_to_msg(result).inference_time_ms == 9.0


def test_empty_result_and_missing_header():
    msg = messages.frame_result_to_msg(FrameResult([], (10, 20), {}))
    raw = messages.serialize(msg)
    back = messages.deserialize(raw, messages.CONCEPT_INSTANCE_ARRAY)
    assert back.instances == [] and list(back.concept_ids) == [] and back.header.frame_id == ""


@pytest.mark.parametrize("name", sorted(interfaces.SRV_DEFINITIONS))
def test_service_types_round_trip(name):
    ts = messages.get_typestore()
    for typename in messages.srv_typenames(name):
        cls = ts.types[typename]
        kwargs = {}
        for field, desc in ts.fielddefs[typename][1]:
            kind, spec = desc
            if kind.name == "SEQUENCE":
                base = spec[0][1][0]
                kwargs[field] = ["a", "b"] if base == "string" else np.array([1, 0], dtype=_NP[base])
            else:
                base = spec[0]
                kwargs[field] = "x" if base == "string" else (True if base == "bool" else 3)
        msg = cls(**kwargs)
        back = ts.deserialize_cdr(ts.serialize_cdr(msg, typename), typename)
        for field in kwargs:
            assert np.array_equal(np.asarray(getattr(back, field)), np.asarray(kwargs[field])), (
                typename,
                field,
            )


_NP = {"int32": np.int32, "float32": np.float32, "bool": np.bool_, "uint8": np.uint8, "int64": np.int64}


def test_numpy_to_image_msg_round_trip():
    img = np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 1000
    msg = messages.numpy_to_image_msg(img, "mono16", messages.make_header(5, "x"))
    back = messages.deserialize(messages.serialize(msg), messages.IMAGE)
    assert (back.height, back.width, back.step, back.encoding) == (6, 5, 10, "mono16")
    from efficientsam3_ros.ros.convert import image_msg_to_array

    assert np.array_equal(image_msg_to_array(back), img)
