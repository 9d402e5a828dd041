"""TensorRT engine cache: reuse an engine only when it provably matches what would be built.

An engine is only valid for the exact ONNX graph, TensorRT version, GPU model, precision
and optimisation profile it was built with, and deserialising a truncated or foreign file
can crash the process rather than raise. So every engine file has a JSON sidecar with
its key and its own sha256 and size, and ``load`` checks all of them *before* returning
bytes; anything that does not check out is deleted and rebuilt, with a warning saying why.

The cache knows nothing about TensorRT: the builder is a callable returning bytes, which
is what lets the tests exercise the logic without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SIDECAR_VERSION = 1


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; a change in any part means another engine."""

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    precision: str
    profile: str = ""  # optimisation profile shapes, e.g. "text_embeds:1/4/16"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


class EngineCache:
    """A folder of ``<graph>-<digest>.engine`` files, each with a ``.json`` sidecar."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def paths(self, graph: str, key: EngineKey) -> tuple[Path, Path]:
        stem = f"{graph}-{key.digest()[:24]}"
        return self.root / f"{stem}.engine", self.root / f"{stem}.json"

    def load(self, graph: str, key: EngineKey) -> bytes | None:
        """The cached engine if present and verified, else None (a bad entry is removed)."""
        engine_path, sidecar_path = self.paths(graph, key)
        if not engine_path.exists() and not sidecar_path.exists():
            return None
        problem = self._verify(engine_path, sidecar_path, key)
        if problem is None:
            return engine_path.read_bytes()
        log.warning("engine cache entry %s is unusable (%s): rebuilding it", engine_path.name, problem)
        for p in (engine_path, sidecar_path):
            p.unlink(missing_ok=True)
        return None

    def store(self, graph: str, key: EngineKey, data: bytes) -> Path:
        """Write engine then sidecar atomically: a crash leaves no entry that verifies."""
        if not data:
            raise ValueError(f"refusing to cache an empty engine for {graph}")
        self.root.mkdir(parents=True, exist_ok=True)
        engine_path, sidecar_path = self.paths(graph, key)
        sidecar = {
            "version": SIDECAR_VERSION,
            "graph": graph,
            "key": asdict(key),
            "engine_sha256": hashlib.sha256(data).hexdigest(),
            "engine_size": len(data),
        }
        atomic_write(engine_path, data)
        atomic_write(sidecar_path, json.dumps(sidecar, indent=1).encode())
        return engine_path

    def get_or_build(
        self, graph: str, key: EngineKey, build: Callable[[], bytes], spare: EngineCache | None = None
    ) -> tuple[bytes, bool]:
        """(engine bytes, True if it was just built).

        ``spare`` is a second cache, looked in after this one and written to when this one cannot
        be (an export folder on a read-only filesystem): an engine takes minutes to build on a
        Jetson, so it must land somewhere, and a write failure must not throw the built engine away.
        """
        caches = [c for c in (self, spare) if c is not None]
        for cache in caches:
            data = cache.load(graph, key)
            if data is not None:
                return data, False
        data = bytes(build())
        for cache in caches:
            try:
                cache.store(graph, key, data)
                return data, True
            except OSError as exc:
                log.warning("cannot cache the %s engine in %s (%s)", graph, cache.root, exc)
        log.warning("the %s engine is not cached anywhere: it will be built again at the next start", graph)
        return data, True

    @staticmethod
    def _verify(engine_path: Path, sidecar_path: Path, key: EngineKey) -> str | None:
        if not sidecar_path.is_file():
            return "no sidecar"
        if not engine_path.is_file():
            return "sidecar without engine"
        try:
            meta = json.loads(sidecar_path.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable sidecar: {exc}"
        if meta.get("version") != SIDECAR_VERSION:
            return f"sidecar version {meta.get('version')} != {SIDECAR_VERSION}"
        if meta.get("key") != asdict(key):
            return "key mismatch (stale entry)"
        size = engine_path.stat().st_size
        if size != meta.get("engine_size"):
            return f"size {size} != recorded {meta.get('engine_size')} (truncated?)"
        digest = hashlib.sha256(engine_path.read_bytes()).hexdigest()
        if digest != meta.get("engine_sha256"):
            return "sha256 mismatch (corrupt)"
        return None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so that a crash leaves either the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
