"""Write the evaluator's results bag: ConceptInstanceArray (+ optional overlay images) per frame.

Why a rosbag2 and not a JSON dump: the results can then be replayed next to the input
with ``ros2 bag play`` and inspected with ``ros2 bag info`` / RViz like live output. The
package's message definitions are embedded (rosbags generates them from the typestore),
so a machine without this package installed can still read the bag.

Each message is written with the input image's bag log time, and its header carries the
input image's stamp (normalised: sec=0, nanosec=2e9 becomes sec=2, nanosec=0) and frame_id.
The writer is closed (index and metadata.yaml written) on every exit path the caller
takes, so a stopped run still leaves a valid, playable bag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Writer

from efficientsam3_ros.pipeline.results import FrameResult
from efficientsam3_ros.ros import messages

STORAGES = messages.BAG_STORAGES  # the storages the results bag can be written in


def output_topic(image_topic: str, suffix: str) -> str:
    """``/camera/image_raw`` + ``instances`` -> ``/camera/image_raw/instances``."""
    return f"{image_topic.rstrip('/')}/{suffix}"


class ResultsWriter:
    """A rosbag2 writer for one image topic's results; use as a context manager or open()/close()."""

    def __init__(
        self,
        path: str | Path,
        image_topic: str,
        storage: str = "sqlite3",
        overlay: bool = False,
        custom_data: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.storage = storage
        self.typestore = messages.get_typestore()
        self.instances_topic = output_topic(image_topic, "instances")
        self.overlay_topic = output_topic(image_topic, "overlay") if overlay else None
        self.custom_data = custom_data or {}
        self.count = 0
        self._writer: Writer | None = None
        self._instances: Connection | None = None
        self._overlay: Connection | None = None

    def __enter__(self) -> ResultsWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the bag directory and its connections (fails if it exists or the storage is unknown)."""
        writer = messages.bag_writer(self.path, self.storage)
        for key, value in self.custom_data.items():
            writer.set_custom_data(key, str(value))
        writer.open()
        self._writer = writer
        self._instances = writer.add_connection(
            self.instances_topic, messages.CONCEPT_INSTANCE_ARRAY, typestore=self.typestore
        )
        if self.overlay_topic:
            self._overlay = writer.add_connection(
                self.overlay_topic, messages.IMAGE, typestore=self.typestore
            )

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        """The input's stamp, normalised (ValueError when its seconds do not fit an int32)."""
        return messages.make_header(int(stamp_ns), frame_id, self.typestore)

    def write_frame(
        self,
        result: FrameResult,
        stamp_ns: int,
        log_time_ns: int,
        frame_id: str = "",
        overlay: np.ndarray | None = None,
    ) -> None:
        """Write one frame's ConceptInstanceArray (and its rgb8 overlay, when given and enabled).

        Both messages are built and serialized before either is written, so a frame whose result
        cannot be represented (e.g. a stamp beyond builtin_interfaces/Time's int32 seconds: ValueError)
        leaves nothing in the bag and the caller can count it as one failed frame.
        """
        assert self._writer is not None and self._instances is not None, "writer is not open"
        header = self._header(stamp_ns, frame_id)
        raw = messages.serialize(
            messages.frame_result_to_msg(result, header=header, typestore=self.typestore), self.typestore
        )
        raw_overlay = None
        if overlay is not None and self._overlay is not None:
            msg = messages.numpy_to_image_msg(overlay, "rgb8", header=header, typestore=self.typestore)
            raw_overlay = messages.serialize(msg, self.typestore)
        self._writer.write(self._instances, int(log_time_ns), raw)
        self.count += 1
        if raw_overlay is not None and self._overlay is not None:
            self._writer.write(self._overlay, int(log_time_ns), raw_overlay)

    def close(self) -> None:
        """Flush: write the storage index and metadata.yaml (safe to call twice)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
