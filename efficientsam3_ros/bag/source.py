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
they are read with the standard ROS 2 Humble types plus this package's messages. So is any
type a bag stores no definition of (Jazzy records an empty definition for a type that was not
installed on the recording machine): a bag with this package's messages recorded elsewhere
still reads with ``--gt-topic``.

rosbags opens a sqlite3 file as the SQLite URI ``file:<path>``, so a sqlite3 bag whose path
contains "#", "?" or "%" is refused with :class:`BagPathError` before anything is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import apsw
import yaml
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection
from rosbags.typesys import Stores

from efficientsam3_ros.ros import messages

log = logging.getLogger(__name__)

IMAGE_TYPES = (messages.IMAGE, messages.COMPRESSED_IMAGE)
# message_definitions encodings rosbags reads; Jazzy writes "" for a type it had no definition of
DEFINITION_ENCODINGS = ("ros2msg", "ros2idl")


class BagError(RuntimeError):
    """Base of the bag errors the evaluator reports instead of a traceback."""


class BagOpenError(BagError):
    """The bag (directory or storage file) cannot be opened."""


class BagPathError(BagOpenError):
    """The bag's path is one rosbags cannot open (a sqlite3 bag under a name with "#", "?" or "%")."""


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
    # types whose stored definition is empty (Jazzy, type not installed when recording): read without it
    types_without_definition: list[str] = field(default_factory=list)

    def describe_topics(self) -> str:
        """One line per topic, "name (type, N msgs)", for error messages."""
        if not self.topics:
            return "  (the bag has no topics)"
        return "\n".join(
            f"  {name} ({typ}, {count} msgs)" for name, (typ, count) in sorted(self.topics.items())
        )


#: How each storage is usually repaired when a recording was cut short.
REPAIR_HINTS = {
    "sqlite3": "`ros2 bag reindex`",
    "mcap": "`mcap recover`",
    "rosbag1": "ROS 1's `rosbag reindex`",
}


def detect_storage(path: Path) -> str:
    """Storage of a bag: a rosbag2 directory's plugin (from its metadata or files), ``mcap`` /
    ``sqlite3`` for a bare storage file, ``rosbag1`` for a ROS 1 ``.bag`` file (rosbags reads those
    too; their messages carry their own definitions)."""
    if path.is_file():
        return {".mcap": "mcap", ".bag": "rosbag1"}.get(path.suffix, "sqlite3")
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


def sqlite_files(path: Path) -> list[Path]:
    """The sqlite3 storage files of a bag directory (or the bag itself when it is a file)."""
    return [path] if path.is_file() else sorted(path.glob("*.db3"))


def types_without_definition(path: Path) -> list[str]:
    """Types a sqlite3 bag stores an unreadable definition for (encoding not ros2msg / ros2idl).

    ROS 2 Jazzy's recorder writes such a row, with encoding "", for a topic whose type was not
    installed on the recording machine; rosbags then fails to open the whole bag (KeyError: '').
    An unreadable file or a bag without the table (metadata version < 8) gives [].
    """
    found: dict[str, None] = {}
    for db in sqlite_files(path):
        try:
            conn = apsw.Connection(
                f"file:{db}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
            )
            try:
                rows = conn.execute(
                    "SELECT topic_type FROM message_definitions WHERE encoding NOT IN (?, ?)",
                    DEFINITION_ENCODINGS,
                ).fetchall()
            finally:
                conn.close()
        except apsw.Error:  # no such table (older bag) or not a database: rosbags says what is wrong
            continue
        found.update(dict.fromkeys(str(r[0]) for r in rows))
    return list(found)


@contextmanager
def _readable_definitions_only() -> Iterator[None]:
    """While open: every new sqlite connection sees only the message_definitions rows rosbags reads.

    A TEMP view shadows the table (SQLite looks up unqualified names in temp first); the bag file
    itself is opened read-only and never changed. The types left out read with the default typestore.
    """

    def hook(conn: apsw.Connection) -> None:
        with suppress(apsw.Error):  # not a bag with that table: nothing to hide
            conn.execute(
                "CREATE TEMP VIEW IF NOT EXISTS message_definitions AS SELECT * FROM main.message_definitions "
                f"WHERE encoding IN {DEFINITION_ENCODINGS!r}"
            )

    apsw.connection_hooks.append(hook)
    try:
        yield
    finally:
        apsw.connection_hooks.remove(hook)


def header_stamp_ns(msg: Any) -> int:
    """A message header's stamp as integer nanoseconds, ``sec * 1e9 + nanosec``.

    Why not compare (sec, nanosec) pairs: some recorders write unnormalised stamps such
    as sec=0, nanosec=2000000000; the sum makes them the same instant as sec=2, nanosec=0,
    and two distinct stamps never collide.
    """
    return messages.stamp_to_ns(msg.header)


@dataclass
class StampOrder:
    """Counts header stamps earlier than the one before them, in the order the bag gives them.

    Frames are tracked and scored in that (log-time) order, so a stamp going backwards usually
    means a bad recording (a clock reset, topics merged from several bags): warned once, counted.
    """

    where: str  # the bag, for the warning
    backwards: int = 0
    last: int | None = None

    def see(self, stamp: int) -> None:
        if self.last is not None and stamp < self.last:
            self.backwards += 1
            if self.backwards == 1:
                log.warning(
                    "%s: header stamp %d ns is earlier than the previous message's (%d ns); frames are "
                    "tracked and scored in bag order, so this usually means a bad recording",
                    self.where,
                    stamp,
                    self.last,
                )
        self.last = stamp


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
        undefined: list[str] = []
        if self.info.storage == "sqlite3":
            for path in (self.path, *sqlite_files(self.path)):
                if problem := messages.sqlite_path_problem(path):
                    raise BagPathError(
                        f"cannot read sqlite3 bag {self.path}: {problem}. Rename or move the bag (or "
                        f"the folders above it) to a path without {messages.sqlite_uri_chars_text()}."
                    )
            undefined = types_without_definition(self.path)
            if undefined:
                log.warning(
                    "bag %s stores no message definition for %s (recorded where the type was not "
                    "installed); reading it without that definition: topics of a type this package "
                    "does not know cannot be decoded, the others are read as usual",
                    self.path,
                    ", ".join(undefined),
                )
        try:
            reader = AnyReader([self.path], default_typestore=self.typestore)
            if undefined:
                with _readable_definitions_only():
                    reader.open()
            else:
                reader.open()
        except Exception as err:  # rosbags raises several types (ReaderError, FileNotFoundError, apsw errors)
            raise BagOpenError(
                f"cannot open bag {self.path} ({self.info.storage}): {err}. "
                "The storage file may be truncated (recording killed, copy interrupted) or corrupt; "
                f"{REPAIR_HINTS.get(self.info.storage, 'reindexing')} can often repair it."
            ) from err
        self._reader = reader
        self.info.topics = {
            name: (topic.msgtype or "?", int(topic.msgcount)) for name, topic in reader.topics.items()
        }
        self.info.embeds_definitions = any(c.msgdef.data for c in reader.connections)
        self.info.types_without_definition = undefined

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

    def has_messages(self, conns: list[Connection]) -> bool:
        """Whether ``conns`` carry any message: the index says so, or (an index that counts 0, as
        some recorders leave it) a first message is there."""
        return self.message_count(conns) > 0 or next(self.raw_messages(conns), None) is not None

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
        """Deserialize one message, or raise :class:`MessageError` (the message is corrupt).

        A type the bag stores no definition of (rosbags' typestore for the bag then lacks it) is
        read with the standard ROS 2 types plus this package's messages.
        """
        if msgtype not in self.reader.typestore.types:
            if msgtype not in self.typestore.types:
                raise MessageError(
                    f"cannot deserialize {msgtype}: the bag stores no definition of this type and "
                    "it is neither a standard ROS 2 type nor one of this package's messages"
                )
            try:
                return self.typestore.deserialize_cdr(raw, msgtype)
            except Exception as err:
                raise MessageError(
                    f"cannot deserialize {msgtype} ({len(raw)} bytes): {type(err).__name__}: {err}"
                ) from err
        try:
            return self.reader.deserialize(raw, msgtype)
        except Exception as err:  # rosbags raises AnyReaderError, also IndexError/struct.error on short data
            raise MessageError(
                f"cannot deserialize {msgtype} ({len(raw)} bytes): {type(err).__name__}: {err}"
            ) from err
