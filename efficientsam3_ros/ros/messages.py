"""The package's ROS messages without ROS: a rosbags typestore and builders.

One module serves the live node, the offline bag evaluator and the tests:

* :func:`get_typestore` returns a rosbags ``Typestore`` holding the standard ROS 2
  types plus this package's messages and service request/response types, so
  messages built here serialize with ``typestore.serialize_cdr`` and can be written
  to (or read from) rosbag2 files.
* :func:`frame_result_to_msg` / :func:`msg_to_frame_result` convert between the
  pipeline's :class:`~efficientsam3_ros.pipeline.results.FrameResult` and
  ``efficientsam3_ros/msg/ConceptInstanceArray`` (masks as COCO RLE strings).
* :func:`msg_to_rgb` (re-exported from :mod:`.convert`) turns a sensor_msgs/Image
  or CompressedImage into the pipeline's RGB input; :func:`numpy_to_image_msg`
  goes the other way for overlay and label images.
* :func:`bag_writer` is the one rosbag2 writer setup (metadata version, storage plugin)
  for every bag this package writes (eval-bag results, synthetic world bags).

Example (bag evaluator)::

    from efficientsam3_ros.ros import messages as m
    ts = m.get_typestore()
    rgb = m.msg_to_rgb(ts.deserialize_cdr(raw, m.IMAGE))
    out = m.frame_result_to_msg(segmenter.process(rgb), header=image_msg.header, typestore=ts)
    raw_out = m.serialize(out, ts)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as _rosbags_typestore
from rosbags.typesys.store import Typestore

from ..pipeline.results import FrameResult, Instance, TrackState, rle_to_mask
from .convert import (
    BadFrameError,
    FrameError,
    UnsupportedEncodingError,
    array_to_image_fields,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    msg_to_rgb,
)
from .interfaces import MSG_DEFINITIONS, SRV_DEFINITIONS

__all__ = [
    "PACKAGE",
    "CONCEPT_INSTANCE",
    "CONCEPT_INSTANCE_ARRAY",
    "IMAGE",
    "COMPRESSED_IMAGE",
    "HEADER",
    "DIAGNOSTIC_ARRAY",
    "DEFAULT_STORE",
    "FrameError",
    "BadFrameError",
    "UnsupportedEncodingError",
    "interface_types",
    "srv_typenames",
    "register_types",
    "get_typestore",
    "make_header",
    "stamp_to_ns",
    "instance_to_msg",
    "frame_result_to_msg",
    "msg_to_instances",
    "msg_to_frame_result",
    "numpy_to_image_msg",
    "serialize",
    "deserialize",
    "BAG_VERSION",
    "BAG_STORAGES",
    "SQLITE_URI_CHARS",
    "sqlite_path_problem",
    "sqlite_uri_chars_text",
    "bag_writer",
    "msg_to_rgb",
    "image_msg_to_rgb",
    "compressed_msg_to_rgb",
]

PACKAGE = "efficientsam3_ros"
CONCEPT_INSTANCE = f"{PACKAGE}/msg/ConceptInstance"
CONCEPT_INSTANCE_ARRAY = f"{PACKAGE}/msg/ConceptInstanceArray"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
HEADER = "std_msgs/msg/Header"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"

# Standard types are identical across Humble/Jazzy for everything used here.
DEFAULT_STORE = Stores.LATEST

# rosbag2 metadata version of the bags this package writes. Not 9: version 9 writes each topic's
# offered_qos_profiles as a YAML list, and Humble's rosbag2 reads that field as a string for any
# version >= 4, so it cannot open such a bag ("yaml-cpp: bad conversion"; ros2/rosbag2#2013, caused
# by ros2/rosbag2#1476). Version 8 writes it as a string, and Jazzy reads version 8 too.
BAG_VERSION = 8
BAG_STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


def interface_types() -> dict[str, Any]:
    """Parse the package's .msg and .srv definitions into a rosbags types dict.

    A service ``Foo`` becomes two message types, ``efficientsam3_ros/srv/Foo_Request``
    and ``efficientsam3_ros/srv/Foo_Response`` (the names rosidl gives them).
    """
    types: dict[str, Any] = {}
    for name, text in MSG_DEFINITIONS.items():
        types.update(get_types_from_msg(text, f"{PACKAGE}/msg/{name}"))
    for name, text in SRV_DEFINITIONS.items():
        request, response = split_srv(text)
        for suffix, part in (("Request", request), ("Response", response)):
            parsed = get_types_from_msg(part, f"{PACKAGE}/srv/{name}_{suffix}")
            # rosbags normalises every name to <pkg>/msg/...; put services back under srv/.
            types.update({key.replace("/srv/msg/", "/srv/"): value for key, value in parsed.items()})
    return types


def split_srv(text: str) -> tuple[str, str]:
    """Split a .srv definition at its ``---`` line into (request, response) message texts."""
    lines = text.splitlines(keepends=True)
    separators = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(separators) != 1:
        raise ValueError(f"a .srv definition needs exactly one '---' line, found {len(separators)}")
    cut = separators[0]
    return "".join(lines[:cut]), "".join(lines[cut + 1 :])


def srv_typenames(name: str) -> tuple[str, str]:
    """Return the (request, response) type names of service ``name``, e.g. ``"SetConcepts"``."""
    return f"{PACKAGE}/srv/{name}_Request", f"{PACKAGE}/srv/{name}_Response"


def register_types(typestore: Typestore) -> Typestore:
    """Add this package's message and service types to ``typestore`` (idempotent) and return it."""
    missing = {k: v for k, v in interface_types().items() if k not in typestore.types}
    if missing:
        typestore.register(missing)
    return typestore


@cache
def get_typestore(base: Stores = DEFAULT_STORE) -> Typestore:
    """Return a (cached, shared) typestore for ``base`` with this package's types registered.

    Pass ``Stores.ROS2_HUMBLE`` etc. to match a bag written by a particular distro.
    """
    return register_types(_rosbags_typestore(base))


def make_header(stamp: int | Any = 0, frame_id: str = "", typestore: Typestore | None = None) -> Any:
    """Build a std_msgs/Header from a stamp in nanoseconds (or a Time-like object) and a frame id."""
    ts = typestore or get_typestore()
    time_cls = ts.types["builtin_interfaces/msg/Time"]
    if isinstance(stamp, (int, np.integer)):
        sec, nanosec = divmod(int(stamp), 1_000_000_000)
        if not -(2**31) <= sec < 2**31:  # builtin_interfaces/Time's sec is an int32
            raise ValueError(
                f"stamp {int(stamp)} ns is outside what a ROS header can hold (sec must fit a 32-bit "
                f"signed integer, got sec={sec}); the input message's header stamp is probably corrupt"
            )
        time = time_cls(sec=sec, nanosec=nanosec)
    else:
        time = time_cls(sec=int(stamp.sec), nanosec=int(stamp.nanosec))
    return ts.types[HEADER](stamp=time, frame_id=str(frame_id))


def stamp_to_ns(header: Any) -> int:
    """Return a Header's stamp as integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _copy_header(header: Any, typestore: Typestore) -> Any:
    """Rebuild ``header`` (rosbags, rclpy or any look-alike) as a message of ``typestore``."""
    if header is None:
        return make_header(0, "", typestore)
    return make_header(header.stamp, getattr(header, "frame_id", ""), typestore)


def instance_to_msg(instance: Instance, typestore: Typestore | None = None) -> Any:
    """Build an ``efficientsam3_ros/msg/ConceptInstance`` from a pipeline Instance (mask -> COCO RLE)."""
    ts = typestore or get_typestore()
    rle = instance.rle()
    height, width = rle["size"]
    box = np.asarray(instance.box_xyxy, dtype=np.float32).reshape(4)
    return ts.types[CONCEPT_INSTANCE](
        concept_id=int(instance.concept_id),
        label=str(instance.label),
        track_id=int(instance.track_id),
        state=int(TrackState(instance.state)),
        score=float(instance.score),
        box_xyxy=box.copy(),
        mask_height=int(height),
        mask_width=int(width),
        mask_rle=rle["counts"],
    )


def frame_result_to_msg(
    result: FrameResult,
    header: Any = None,
    typestore: Typestore | None = None,
    inference_time_ms: float | None = None,
) -> Any:
    """Build an ``efficientsam3_ros/msg/ConceptInstanceArray`` for one processed frame.

    ``header`` is the input image's header (stamp and frame_id are copied; any object
    with ``stamp.sec``, ``stamp.nanosec`` and ``frame_id`` works). The inference time
    defaults to the ``total`` entry of ``result.timings_ms``, else the sum of its stages.
    """
    ts = typestore or get_typestore()
    height, width = (int(v) for v in result.image_size)
    if inference_time_ms is None:
        timings = result.timings_ms or {}
        inference_time_ms = float(timings["total"]) if "total" in timings else float(sum(timings.values()))
    concept_ids = sorted(result.concepts)
    return ts.types[CONCEPT_INSTANCE_ARRAY](
        header=_copy_header(header, ts),
        height=height,
        width=width,
        concept_ids=np.asarray(concept_ids, dtype=np.int32),
        concept_labels=[str(result.concepts[i]) for i in concept_ids],
        instances=[instance_to_msg(inst, ts) for inst in result.instances],
        inference_time_ms=float(inference_time_ms),
    )


def msg_to_instances(msg: Any) -> list[Instance]:
    """Decode the instances of a ConceptInstanceArray (or a list of ConceptInstance) back to pipeline Instances."""
    items = getattr(msg, "instances", msg)
    out = []
    for item in items:
        mask = rle_to_mask({"size": [int(item.mask_height), int(item.mask_width)], "counts": item.mask_rle})
        out.append(
            Instance(
                concept_id=int(item.concept_id),
                label=str(item.label),
                score=float(item.score),
                box_xyxy=np.asarray(item.box_xyxy, dtype=np.float32).reshape(4).copy(),
                mask=mask,
                track_id=int(item.track_id),
                state=TrackState(int(item.state)),
            )
        )
    return out


def msg_to_frame_result(msg: Any) -> FrameResult:
    """Decode a ConceptInstanceArray back to a FrameResult (timings hold only ``total``)."""
    concepts = {int(i): str(label) for i, label in zip(msg.concept_ids, msg.concept_labels)}
    return FrameResult(
        instances=msg_to_instances(msg),
        image_size=(int(msg.height), int(msg.width)),
        concepts=concepts,
        timings_ms={"total": float(msg.inference_time_ms)},
    )


def numpy_to_image_msg(
    image: np.ndarray, encoding: str, header: Any = None, typestore: Typestore | None = None
) -> Any:
    """Build a sensor_msgs/Image from a numpy image already laid out as ``encoding`` (rgb8, mono16, 32SC1, ...)."""
    ts = typestore or get_typestore()
    return ts.types[IMAGE](header=_copy_header(header, ts), **array_to_image_fields(image, encoding))


# Characters rosbags cannot have in a sqlite3 bag's path: it opens the database as the SQLite URI
# ``file:<path>``, where "#" starts a fragment and "?" a query (the rest of the path is cut off,
# so a writer writes to another file) and "%" starts a %XX escape. mcap storage is unaffected.
SQLITE_URI_CHARS = "#?%"


def sqlite_path_problem(path: str | Path) -> str | None:
    """Why rosbags cannot open a sqlite3 database at ``path`` (see SQLITE_URI_CHARS), or None."""
    bad = [c for c in SQLITE_URI_CHARS if c in str(path)]
    if not bad:
        return None
    return (
        f"the path contains {' and '.join(repr(c) for c in bad)}, which SQLite reads as URI syntax "
        "(rosbags opens sqlite3 files as 'file:<path>'), so a different file would be opened"
    )


def sqlite_uri_chars_text() -> str:
    """The refused characters as a message lists them: "'#', '?' or '%'"."""
    quoted = [repr(c) for c in SQLITE_URI_CHARS]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def bag_writer(path: str | Path, storage: str = "sqlite3") -> Writer:
    """An unopened rosbags ``Writer`` for ``path`` that Humble and Jazzy can both open (see BAG_VERSION).

    ``storage`` is ``"sqlite3"`` or ``"mcap"``; the directory must not exist yet. A sqlite3 bag's
    path must not contain "#", "?" or "%" (:func:`sqlite_path_problem`): ValueError.
    """
    if storage not in BAG_STORAGES:
        raise ValueError(f"storage must be one of {sorted(BAG_STORAGES)}, got {storage!r}")
    if storage == "sqlite3" and (problem := sqlite_path_problem(path)):
        raise ValueError(
            f"cannot write a sqlite3 bag at {path}: {problem}. "
            f"Use a path without {sqlite_uri_chars_text()}, or mcap storage."
        )
    return Writer(Path(path), version=BAG_VERSION, storage_plugin=BAG_STORAGES[storage])


def serialize(msg: Any, typestore: Typestore | None = None) -> bytes:
    """Serialize a rosbags message object to CDR bytes (its type is read from ``__msgtype__``)."""
    ts = typestore or get_typestore()
    return bytes(ts.serialize_cdr(msg, msg.__msgtype__))


def deserialize(raw: bytes | memoryview, typename: str, typestore: Typestore | None = None) -> Any:
    """Deserialize CDR bytes into a rosbags message object of ``typename``."""
    ts = typestore or get_typestore()
    return ts.deserialize_cdr(raw, typename)
