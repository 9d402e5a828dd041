"""The zoo manifest (``models/zoo.yaml``): names, sources, formats, digests, licences.

Kept as data so that adding a released checkpoint is a YAML edit, reviewed like any
other change, and so ``efficientsam3 models list`` needs no network and no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ZOO_ENV = "EFFICIENTSAM3_ZOO"
FORMATS = ("original", "hf", "efficientsam3_ros")
# Every key an entry may have: a misspelt one (``sha_256``) is refused, not dropped, since a
# dropped digest or file name silently turns off the check or the source it was meant to be.
ENTRY_KEYS = frozenset(
    {
        "description",
        "architecture",
        "format",
        "source",
        "overrides",
        "params",
        "size",
        "sha256",
        "gated",
        "license",
    }
)
SOURCE_KEYS = frozenset({"hub", "file", "revision", "local"})


class ZooError(RuntimeError):
    """A zoo problem the user can fix; the message is one line that says how."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    format: str
    hub_repo: str | None = None
    hub_file: str | None = None  # None for a whole HF-format repo
    revision: str | None = None
    local: str | None = None  # a path instead of a hub source
    architecture: str | None = None  # registry name (None: read from the HF config.json)
    overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields to change
    description: str = ""
    params: int | None = None
    size: str | None = None
    sha256: str | None = None
    gated: bool = False
    license: str = ""

    @property
    def is_directory(self) -> bool:
        return self.format == "hf"

    @property
    def source_text(self) -> str:
        if self.local:
            return self.local
        return f"{self.hub_repo}/{self.hub_file}" if self.hub_file else f"{self.hub_repo}"

    @property
    def file_name(self) -> str:
        """What a hand-placed copy is called (the hub file's base name, or the entry's directory)."""
        if self.hub_file:
            return Path(self.hub_file).name
        if self.local:
            return Path(self.local).name
        return self.name


def default_zoo_path() -> Path:
    """``$EFFICIENTSAM3_ZOO``, else ``models/zoo.yaml`` of the source tree, else the installed share copy."""
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env).expanduser()
    return shipped_path("zoo.yaml")


def shipped_path(relative: str) -> Path:
    """``models/<relative>`` as shipped: the source tree's (editable installs), else the copy a
    colcon build installs to ``share/efficientsam3_ros/models``; the source-tree path if neither exists."""
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "models" / relative, here.parents[1] / "models" / relative]
    candidates += [Path(p) / "share" / "efficientsam3_ros" / "models" / relative for p in _prefixes()]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


def _prefixes() -> list[str]:
    import sys

    prefixes = [sys.prefix]
    prefixes += os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
    return [p for p in prefixes if p]


def _check_keys(name: str, where: str, raw: Any, allowed: frozenset[str]) -> None:
    """``raw`` is a mapping with only ``allowed`` keys (a YAML slip must not pass as an empty field)."""
    if not isinstance(raw, dict):
        raise ZooError(f"zoo entry {name!r}: {where} must be a mapping of keys, got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise ZooError(
            f"zoo entry {name!r}: unknown key(s) in {where}: {', '.join(unknown)} (a typo?); "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _local_path(local: str | None, base: Path) -> str | None:
    """``source.local`` as an absolute path: ``~`` expanded, a relative path read beside the zoo file."""
    return str(base / Path(local).expanduser()) if local else None


def _flag(name: str, key: str, value: Any) -> bool:
    """A YAML boolean; a quoted "false" would otherwise read as true (``bool("false")``)."""
    if not isinstance(value, bool):
        raise ZooError(f"zoo entry {name!r}: {key} must be true or false (unquoted), got {value!r}")
    return value


def _entry(name: str, raw: dict[str, Any], base: Path) -> ZooEntry:
    _check_keys(name, "the entry", raw, ENTRY_KEYS)
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise ZooError(f"zoo entry {name!r}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    source = raw.get("source") or {}
    _check_keys(name, "source", source, SOURCE_KEYS)
    if not (source.get("hub") or source.get("local")):
        raise ZooError(f"zoo entry {name!r}: source needs 'hub' (and 'file') or 'local'")
    if fmt != "hf" and source.get("hub") and not source.get("file"):
        raise ZooError(f"zoo entry {name!r}: a {fmt} checkpoint on the hub needs source.file")
    if fmt != "hf" and not raw.get("architecture"):
        raise ZooError(f"zoo entry {name!r}: format {fmt} needs an architecture (a registry model name)")
    sha = raw.get("sha256")
    if sha is not None and (
        len(str(sha)) != 64 or any(c not in "0123456789abcdef" for c in str(sha).lower())
    ):
        raise ZooError(f"zoo entry {name!r}: sha256 must be 64 hex digits")
    return ZooEntry(
        name=name,
        format=fmt,
        hub_repo=source.get("hub"),
        hub_file=source.get("file"),
        revision=source.get("revision"),
        local=_local_path(source.get("local"), base),
        architecture=raw.get("architecture"),
        overrides=dict(raw.get("overrides") or {}),
        description=raw.get("description", ""),
        params=raw.get("params"),
        size=raw.get("size"),
        sha256=str(sha).lower() if sha else None,
        gated=_flag(name, "gated", raw.get("gated", False)),
        license=raw.get("license", ""),
    )


def load_zoo(path: str | Path | None = None) -> dict[str, ZooEntry]:
    """All zoo entries by name (an empty zoo when the manifest is not installed)."""
    path = Path(path) if path is not None else default_zoo_path()
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise ZooError(f"{path}: 'models' must be a mapping of name -> entry")
    base = path.expanduser().resolve().parent
    return {name: _entry(name, raw or {}, base) for name, raw in models.items()}


def get_entry(name: str, zoo: dict[str, ZooEntry] | None = None) -> ZooEntry:
    zoo = load_zoo() if zoo is None else zoo
    try:
        return zoo[name]
    except KeyError:
        raise ZooError(f"no zoo model {name!r}; zoo models: {', '.join(zoo) or '(none installed)'}") from None
