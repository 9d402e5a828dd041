"""Read rosbag2 recordings (sqlite3 or mcap, any metadata version rosbags reads) without ROS.

Why a wrapper around rosbags' AnyReader: the evaluator needs three kinds of failure kept
apart, because each is handled differently:

* the bag cannot be opened at all (truncated footer, malformed database): :class:`BagOpenError`;
* the requested topic is missing or not an image: :class:`TopicNotFoundError`, whose message
  lists the topics the bag does have;
* reading stops part-way (a truncated file discovered while iterating): :class:`BagReadError`,
  raised from the iterator so the caller can flush what it has.

A single message that does not deserialize is *not* fatal: :meth:`BagSource.deserialize`
raises :class:`MessageError` and the caller counts the frame as failed.

Bags written by ROS 2 Humble (metadata version 5, sqlite3) embed no message definitions;
they are read with the standard ROS 2 Humble types plus this package's messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection
from rosbags.typesys import Stores

from efficientsam3_ros.ros import messages

IMAGE_TYPES = (messages.IMAGE, messages.COMPRESSED_IMAGE)


class BagError(RuntimeError):
    """Base of the bag errors the evaluator reports instead of a traceback."""


class BagOpenError(BagError):
    """The bag (directory or storage file) cannot be opened."""


class BagReadError(BagError):
    """Reading stopped part-way through the bag (truncated or corrupt storage file)."""


class MessageError(BagError):
    """One message could not be deserialized; the rest of the bag is still readable."""


class TopicNotFoundError(BagError):
    """The requested topic is not in the bag, or does not carry the expected type."""


@dataclass
class BagInfo:
    """What the evaluator reports about its input bag."""

    path: Path
    storage: str  # "sqlite3" or "mcap"
    version: int | None  # rosbag2 metadata version; None for a bare storage file
    topics: dict[str, tuple[str, int]] = field(default_factory=dict)  # topic -> (type, message count)
    embeds_definitions: bool = True

    def describe_topics(self) -> str:
        """One line per topic, "name (type, N msgs)", for error messages."""
        if not self.topics:
            return "  (the bag has no topics)"
        return "\n".join(
            f"  {name} ({typ}, {count} msgs)" for name, (typ, count) in sorted(self.topics.items())
        )


def detect_storage(path: Path) -> str:
    """Storage plugin of a bag directory or storage file, from its metadata or its files' suffix."""
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    meta = path / "metadata.yaml"
    if meta.exists():
        try:
            info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
            return str(info["storage_identifier"])
        except (yaml.YAMLError, KeyError, TypeError):
            pass
    return "mcap" if any(path.glob("*.mcap")) else "sqlite3"


def metadata_version(path: Path) -> int | None:
    """rosbag2 metadata version of a bag directory (None for a bare file or unreadable metadata)."""
    meta = path / "metadata.yaml"
    if not meta.is_file():
        return None
    try:
        return int(yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]["version"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def header_stamp_ns(msg: Any) -> int:
    """A message header's stamp as integer nanoseconds, ``sec * 1e9 + nanosec``.

    Why not compare (sec, nanosec) pairs: some recorders write unnormalised stamps such
    as sec=0, nanosec=2000000000; the sum makes them the same instant as sec=2, nanosec=0,
    and two distinct stamps never collide.
    """
    return messages.stamp_to_ns(msg.header)


class BagSource:
    """An open rosbag2 bag; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.typestore = messages.get_typestore(Stores.ROS2_HUMBLE)
        self._reader: AnyReader | None = None
        self.info = BagInfo(self.path, detect_storage(self.path), metadata_version(self.path))

    def __enter__(self) -> BagSource:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open the bag, or raise :class:`BagOpenError` saying why (missing, truncated, corrupt)."""
        if not self.path.exists():
            raise BagOpenError(f"bag {self.path} does not exist")
        try:
            reader = AnyReader([self.path], default_typestore=self.typestore)
            reader.open()
        except Exception as err:  # rosbags raises several types (ReaderError, FileNotFoundError, apsw errors)
            raise BagOpenError(
                f"cannot open bag {self.path} ({self.info.storage}): {err}. "
                "The storage file may be truncated (recording killed, copy interrupted) or corrupt; "
                "`ros2 bag reindex` (sqlite3) or `mcap recover` (mcap) can often repair it."
            ) from err
        self._reader = reader
        self.info.topics = {
            name: (topic.msgtype or "?", int(topic.msgcount)) for name, topic in reader.topics.items()
        }
        self.info.embeds_definitions = any(c.msgdef.data for c in reader.connections)

    def close(self) -> None:
        """Close the bag (safe to call twice)."""
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise BagError("bag is not open")
        return self._reader

    def connections(self, topic: str, types: tuple[str, ...], what: str) -> list[Connection]:
        """The connections of ``topic``, which must carry one of ``types``; else a listing error."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        if not conns:
            wanted = [t for t, (typ, _) in self.info.topics.items() if typ in types]
            hint = (
                f" {what.capitalize()} topics in it: {', '.join(sorted(wanted))}."
                if wanted
                else f" It has no {what} topic."
            )
            raise TopicNotFoundError(
                f"topic {topic!r} is not in bag {self.path}.{hint} Topics in the bag:\n{self.info.describe_topics()}"
            )
        bad = sorted({c.msgtype for c in conns if c.msgtype not in types})
        if bad:
            raise TopicNotFoundError(
                f"topic {topic!r} in bag {self.path} has type {', '.join(bad)}, not {' or '.join(types)}. "
                f"Topics in the bag:\n{self.info.describe_topics()}"
            )
        return conns

    def image_connections(self, topic: str) -> list[Connection]:
        """Connections of an Image or CompressedImage topic (raises :class:`TopicNotFoundError`)."""
        return self.connections(topic, IMAGE_TYPES, "image")

    def message_count(self, conns: list[Connection]) -> int:
        """Messages on ``conns`` according to the bag's index (for the progress bar)."""
        return sum(int(c.msgcount) for c in conns)

    def raw_messages(self, conns: list[Connection]) -> Iterator[tuple[Connection, int, bytes]]:
        """Yield (connection, log time ns, raw CDR) in log-time order; :class:`BagReadError` if reading breaks."""
        count = 0
        iterator = self.reader.messages(connections=conns)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except Exception as err:  # storage-level failure: truncated page, bad chunk, I/O error
                raise BagReadError(
                    f"reading bag {self.path} failed after {count} messages on {conns[0].topic}: "
                    f"{type(err).__name__}: {err}. The storage file is probably truncated or corrupt."
                ) from err
            count += 1
            yield item

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """Deserialize one message, or raise :class:`MessageError` (the message is corrupt)."""
        try:
            return self.reader.deserialize(raw, msgtype)
        except Exception as err:  # rosbags raises AnyReaderError, also IndexError/struct.error on short data
            raise MessageError(
                f"cannot deserialize {msgtype} ({len(raw)} bytes): {type(err).__name__}: {err}"
            ) from err
