"""The rclpy node itself; runs where ROS 2 is installed (colcon test in CI), skipped elsewhere."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy", reason="rclpy comes with a ROS 2 installation, not from PyPI")
pytest.importorskip("efficientsam3_ros.msg", reason="the package's interfaces must be built with colcon")

from efficientsam3_ros.msg import ConceptInstanceArray  # noqa: E402
from efficientsam3_ros.srv import AddExemplar, ListConcepts, SetConcepts  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

TINY = [
    Parameter("model", value="es-ev-tiny"),
    Parameter("device", value="cpu"),
    Parameter("concepts", value=["person", "red mug"]),
    Parameter("score_threshold", value=0.0),
]


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def _spin_until(executor, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def _image(node, stamp_sec=1):
    msg = Image()
    msg.header.stamp.sec = stamp_sec
    msg.header.frame_id = "cam"
    msg.height, msg.width, msg.encoding, msg.step = 48, 64, "rgb8", 64 * 3
    msg.data = np.random.default_rng(0).integers(0, 256, 48 * 64 * 3, dtype=np.uint8).tobytes()
    return msg


def _call(executor, client, request):
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(request)
    assert _spin_until(executor, future.done, 30.0)
    return future.result()


def test_plain_node_segments_published_images_and_answers_services(ros):
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    from efficientsam3_ros.ros.node import ConceptSegmentationNode

    node = ConceptSegmentationNode(parameter_overrides=TINY)
    helper = rclpy.create_node("helper")
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    executor.add_node(helper)
    received = []
    helper.create_subscription(ConceptInstanceArray, "instances", received.append, 10)
    pub = helper.create_publisher(Image, "image", qos_profile_sensor_data)
    try:
        assert _spin_until(executor, lambda: pub.get_subscription_count() > 0, 10.0)
        for i in range(20):
            pub.publish(_image(helper, stamp_sec=i + 1))
            if _spin_until(executor, lambda: bool(received), 2.0):
                break
        assert received, "no ConceptInstanceArray arrived"
        msg = received[0]
        assert (msg.height, msg.width) == (48, 64) and msg.header.frame_id == "cam"
        assert set(msg.concept_labels) == {"person", "red mug"}

        listed = _call(executor, helper.create_client(ListConcepts, "list_concepts"), ListConcepts.Request())
        assert listed.success and set(listed.labels) == {"person", "red mug"}
        bad = SetConcepts.Request(labels=[""], append=False)
        answer = _call(executor, helper.create_client(SetConcepts, "set_concepts"), bad)
        assert not answer.success and answer.message
        box = AddExemplar.Request(
            camera="", concept_id=int(listed.concept_ids[0]), boxes_xyxy=[0.0, 0.0, 999.0, 5.0]
        )
        box.positive = [True]
        answer = _call(executor, helper.create_client(AddExemplar, "add_exemplar"), box)
        assert not answer.success and "outside" in answer.message

        result = node.set_parameters([Parameter("score_threshold", value=0.9)])[0]
        assert result.successful
        result = node.set_parameters([Parameter("model", value="es-rv-s")])[0]
        assert not result.successful
        # rclpy's own parameter: left to rclpy, not refused as unknown
        assert node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful
        # -1 ("the model's own") lies in the declared range; the gap below the minimum does not
        assert node.set_parameters([Parameter("mask_threshold", value=-1.0)])[0].successful
        assert not node.set_parameters([Parameter("mask_threshold", value=-0.5)])[0].successful
    finally:
        node.wiring.shutdown()
        executor.shutdown()
        node.destroy_node()
        helper.destroy_node()


def test_lifecycle_node_transitions(ros):
    from lifecycle_msgs.msg import State

    from efficientsam3_ros.ros.node import ConceptSegmentationLifecycleNode

    node = ConceptSegmentationLifecycleNode(parameter_overrides=TINY)
    try:
        assert node.wiring.core.state == "unconfigured"
        node.trigger_configure()
        assert node.wiring.core.state == "inactive"
        node.trigger_activate()
        assert node.wiring.core.state == "active" and node.wiring._subscriptions
        node.trigger_deactivate()
        assert node.wiring.core.state == "inactive" and not node.wiring._subscriptions
        node.trigger_cleanup()
        assert node.wiring.core.state == "unconfigured" and node.wiring.core.cameras == {}
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED
    finally:
        node.wiring.shutdown()
        node.destroy_node()
