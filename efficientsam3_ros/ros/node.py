"""rclpy wiring of the concept segmentation node; the ONLY module that imports rclpy.

All behaviour lives in :class:`~efficientsam3_ros.ros.core.NodeCore`. This module
declares parameters from :mod:`.params`, subscribes with ``raw=True`` (the core
deserializes CDR with rosbags, exactly like the bag evaluator), runs the core's
worker on a thread, publishes the CDR bytes the core's messages serialize to, and
forwards services and parameter changes.

Two flavours: :class:`ConceptSegmentationLifecycleNode` (configure loads the model,
activate subscribes, deactivate unsubscribes, cleanup frees the GPU) and
:class:`ConceptSegmentationNode`, which configures and activates itself at start.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from efficientsam3_ros.msg import ConceptInstanceArray
from efficientsam3_ros.srv import AddExemplar, ListConcepts, RemoveConcepts, ResetTracking, SetConcepts

from . import messages
from .core import NodeCore
from .params import PARAMS, ParamSpec, read_values, split_own

NODE_NAME = "concept_segmentation_node"
_MSG_CLASSES = {
    messages.IMAGE: Image,
    messages.COMPRESSED_IMAGE: CompressedImage,
    messages.CONCEPT_INSTANCE_ARRAY: ConceptInstanceArray,
}
_PARAM_TYPES = {
    "bool": Parameter.Type.BOOL,
    "int": Parameter.Type.INTEGER,
    "float": Parameter.Type.DOUBLE,
    "str": Parameter.Type.STRING,
    "str_list": Parameter.Type.STRING_ARRAY,
}


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """A ParameterDescriptor with the table's description, type and range (shown by `ros2 param describe`)."""
    desc = ParameterDescriptor(
        name=spec.name,
        type=_PARAM_TYPES[spec.kind].value,
        description=spec.description,
        additional_constraints=(
            ("one of: " + ", ".join(spec.choices) if spec.choices else "")
            + ("" if spec.dynamic else " static: change only while unconfigured")
        ).strip(),
    )
    limits = spec.declared_range()
    if spec.kind == "float" and limits is not None:
        desc.floating_point_range = [
            FloatingPointRange(from_value=float(limits[0]), to_value=float(limits[1]))
        ]
    if spec.kind == "int" and limits is not None:
        desc.integer_range = [IntegerRange(from_value=int(limits[0]), to_value=int(limits[1]), step=1)]
    return desc


class _Wiring:
    """Connects one rclpy node (lifecycle or plain) to a NodeCore."""

    def __init__(self, node: Node):
        self.node = node
        self._declare_parameters()
        self.core = NodeCore(self._read_parameters(), logger=node.get_logger())
        self._publishers: dict[str, Any] = {}
        self._subscriptions: list[Any] = []
        self._services: list[Any] = []
        self._diag_pub = None
        self._diag_timer = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._service_group = ReentrantCallbackGroup()
        self._sub_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        node.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        for spec in PARAMS:
            if spec.default == []:
                # rclpy infers BYTE_ARRAY from an empty list; declare the type instead
                # (the parameter stays unset unless overridden; _read_parameters gives []).
                self.node.declare_parameter(spec.name, _PARAM_TYPES[spec.kind], _descriptor(spec))
            else:
                self.node.declare_parameter(spec.name, spec.default, _descriptor(spec))

    def _read_parameters(self) -> dict[str, Any]:
        return read_values(self._value_or_none)

    def _value_or_none(self, name: str) -> Any:
        # a parameter declared by type only and never set raises rather than giving None
        try:
            return self.node.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: (list(p.value) if isinstance(p.value, (list, tuple)) else p.value) for p in params}
        changes, _rclpy_own = split_own({k: ([] if v is None else v) for k, v in changes.items()})
        if not changes:
            return SetParametersResult(successful=True)
        ok, reason = self.core.set_parameters(changes)
        if ok and "diagnostics_period_s" in changes and self._diag_timer is not None:
            self._start_diagnostics_timer()
        return SetParametersResult(successful=ok, reason=reason)

    # ------------------------------------------------------------------ lifecycle
    def configure(self) -> None:
        """Load the model(s), create publishers and services."""
        self.core.configure()
        for topic, typename in self.core.output_topics().items():
            self._publishers[topic] = self.node.create_publisher(_MSG_CLASSES[typename], topic, 10)
        self._diag_pub = self.node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        group = self._service_group
        self._services = [
            self.node.create_service(SetConcepts, "set_concepts", self._set_concepts, callback_group=group),
            self.node.create_service(
                RemoveConcepts, "remove_concepts", self._remove_concepts, callback_group=group
            ),
            self.node.create_service(
                ListConcepts, "list_concepts", self._list_concepts, callback_group=group
            ),
            self.node.create_service(AddExemplar, "add_exemplar", self._add_exemplar, callback_group=group),
            self.node.create_service(
                ResetTracking, "reset_tracking", self._reset_tracking, callback_group=group
            ),
        ]
        self._start_diagnostics_timer()

    def activate(self) -> None:
        """Subscribe to the cameras and start the worker."""
        self.core.activate()
        cfg = self.core.config
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=int(cfg.qos_depth),
            reliability=ReliabilityPolicy.BEST_EFFORT
            if cfg.qos_reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE,
        )
        for camera, topic, typename in self.core.input_topics():
            self._subscriptions.append(
                self.node.create_subscription(
                    _MSG_CLASSES[typename],
                    topic,
                    lambda raw, c=camera, t=typename: self.core.on_message(c, raw, t),
                    qos,
                    callback_group=self._sub_group,
                    raw=True,
                )
            )
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="efficientsam3_worker", daemon=True)
        self._worker.start()

    def deactivate(self) -> None:
        """Unsubscribe and stop the worker (the frame in flight finishes)."""
        for sub in self._subscriptions:
            self.node.destroy_subscription(sub)
        self._subscriptions = []
        self.core.deactivate()
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    def cleanup(self) -> None:
        """Destroy publishers and services and free the model (and GPU memory)."""
        if self._diag_timer is not None:
            self.node.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for srv in self._services:
            self.node.destroy_service(srv)
        self._services = []
        for pub in self._publishers.values():
            self.node.destroy_publisher(pub)
        self._publishers = {}
        if self._diag_pub is not None:
            self.node.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        self.core.cleanup()

    def shutdown(self) -> None:
        """Whatever state we are in, stop cleanly."""
        if self._worker is not None:
            self.deactivate()
        if self.core.state != "unconfigured":
            self.cleanup()

    # ------------------------------------------------------------------ work
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                outputs = self.core.process_next(timeout=0.1)
                for out in outputs or []:
                    pub = self._publishers.get(out.topic)
                    if pub is not None:
                        pub.publish(messages.serialize(out.msg, self.core.typestore))
            except Exception as err:  # noqa: BLE001 - the worker must outlive any one frame
                self.node.get_logger().error(f"frame worker: {type(err).__name__}: {err}")

    def _start_diagnostics_timer(self) -> None:
        if self._diag_timer is not None:
            self.node.destroy_timer(self._diag_timer)
        period = float(self.core.config.diagnostics_period_s)
        self._diag_timer = self.node.create_timer(
            period, self._publish_diagnostics, callback_group=self._timer_group
        )

    def _publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        stamp = self.node.get_clock().now().nanoseconds
        msg = self.core.diagnostics(stamp, hardware_id=self.node.get_fully_qualified_name())
        self._diag_pub.publish(messages.serialize(msg, self.core.typestore))

    # ------------------------------------------------------------------ services
    @staticmethod
    def _fill(response: Any, result: Any) -> Any:
        response.success = bool(result.success)
        response.message = str(result.message)
        if hasattr(response, "concept_ids"):
            response.concept_ids = [int(i) for i in result.concept_ids]
        if hasattr(response, "labels"):
            response.labels = list(result.labels)
        return response

    def _set_concepts(self, request: Any, response: Any) -> Any:
        return self._fill(response, self.core.set_concepts(list(request.labels), bool(request.append)))

    def _remove_concepts(self, request: Any, response: Any) -> Any:
        return self._fill(response, self.core.remove_concepts(list(request.concept_ids)))

    def _list_concepts(self, request: Any, response: Any) -> Any:
        return self._fill(response, self.core.list_concepts())

    def _add_exemplar(self, request: Any, response: Any) -> Any:
        result = self.core.add_exemplar(
            request.camera, int(request.concept_id), list(request.boxes_xyxy), list(request.positive)
        )
        return self._fill(response, result)

    def _reset_tracking(self, request: Any, response: Any) -> Any:
        return self._fill(response, self.core.reset_tracking(request.camera))


class ConceptSegmentationLifecycleNode(LifecycleNode):
    """Managed node: configure loads the model, activate subscribes, deactivate unsubscribes, cleanup frees."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        self.wiring = _Wiring(self)

    def _run(self, name: str, action: Callable[[], None]) -> TransitionCallbackReturn:
        """Run a lifecycle step; a failure is logged and reported as FAILURE, never raised."""
        try:
            action()
        except Exception as err:  # a transition must report, not raise
            self.get_logger().error(f"{name} failed: {type(err).__name__}: {err}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        return self._run("configure", self.wiring.configure)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = self._run("activate", self.wiring.activate)
        return result if result != TransitionCallbackReturn.SUCCESS else super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        result = self._run("deactivate", self.wiring.deactivate)
        return result if result != TransitionCallbackReturn.SUCCESS else super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        return self._run("cleanup", self.wiring.cleanup)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        return self._run("shutdown", self.wiring.shutdown)


class ConceptSegmentationNode(Node):
    """Plain node: configures and activates itself at construction."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        self.wiring = _Wiring(self)
        self.wiring.configure()
        self.wiring.activate()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``--no-lifecycle`` (before --ros-args) selects the plain node."""
    argv = list(sys.argv if argv is None else argv)
    plain = "--no-lifecycle" in argv
    argv = [a for a in argv if a not in ("--no-lifecycle", "--lifecycle")]
    rclpy.init(args=argv)
    node = None
    executor = MultiThreadedExecutor(num_threads=4)
    try:
        node = ConceptSegmentationNode() if plain else ConceptSegmentationLifecycleNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.wiring.shutdown()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
