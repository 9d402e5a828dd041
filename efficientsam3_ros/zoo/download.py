"""Getting zoo weights onto disk: a hand-placed copy, the Hugging Face cache, or a download.

Downloads go through huggingface_hub into its cache (its own progress bar, resumable,
shared with transformers). Offline, or for a gated repo without a login, the error is
one line that names the directory where a hand-copied file will be found.

A file whose zoo entry records a ``sha256`` is checked every time it is handed out, not
only right after its download: a cached or hand-placed copy can be replaced or damaged
later. A pass is remembered by path, size, mtime and change time (``$EFFICIENTSAM3_HOME/verified.json``),
so an unchanged multi-GB file is not hashed again on every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from .manifest import ZooEntry, ZooError

log = logging.getLogger(__name__)

HOME_ENV = "EFFICIENTSAM3_HOME"
VERIFIED = "verified.json"
_CHUNK = 1 << 22
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
HUB_CONNECT_TIMEOUT_S = 5.0
"""How long the Hub's one connection check waits for an answer before the download is given up."""


def models_dir() -> Path:
    """Where hand-placed weights go: ``$EFFICIENTSAM3_HOME/models`` (default ``~/.cache/efficientsam3/models``)."""
    home = os.environ.get(HOME_ENV)
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "efficientsam3"
    return base / "models"


def manual_path(entry: ZooEntry) -> Path:
    """``<models_dir>/<name>/<file>`` for a file, ``<models_dir>/<name>/`` for an HF-format directory."""
    folder = models_dir() / entry.name
    return folder if entry.is_directory else folder / entry.file_name


def _placed(entry: ZooEntry) -> Path | None:
    if entry.local:
        path = Path(entry.local).expanduser()
        return path if path.exists() else None
    path = manual_path(entry)
    if entry.is_directory:
        return path if (path / "config.json").is_file() else None
    return path if path.is_file() else None


def find_local(entry: ZooEntry) -> Path | None:
    """A copy already on this machine (hand-placed or in the HF cache), without any network access."""
    placed = _placed(entry)
    if placed is not None:
        return placed
    if not entry.hub_repo:
        return None
    try:
        return _hub_fetch(entry, local_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        return None


def _hub_fetch(entry: ZooEntry, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    if entry.is_directory:
        folder = snapshot_download(
            entry.hub_repo,
            revision=entry.revision,
            allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json", "*.txt", "*.json"],
            local_files_only=local_only,
        )
        path = Path(folder)
        if not (path / "config.json").is_file():
            raise FileNotFoundError("config.json")
        return path
    return Path(
        hf_hub_download(entry.hub_repo, entry.hub_file, revision=entry.revision, local_files_only=local_only)
    )


def download(entry: ZooEntry) -> Path:
    """The weights of ``entry``: a local copy if there is one, else a download (progress on stderr).

    Raises ZooError (one line) when offline, gated, or the digest does not match.
    """
    local = find_local(entry)
    if local is not None:
        if entry.sha256 and local.is_file():
            verify_sha256(local, entry.sha256)
        return local
    if not entry.hub_repo:
        raise ZooError(f"{entry.name}: local weights {entry.local} do not exist")
    try:
        _check_hub_reachable()
        path = _hub_fetch(entry, local_only=False)
    except Exception as err:
        raise ZooError(offline_message(entry, err)) from None
    if entry.sha256 and path.is_file():
        verify_sha256(path, entry.sha256)
    return path


def _check_hub_reachable() -> None:
    """Raise ConnectionError when the Hub cannot be reached: its host name does not resolve, or
    nothing answers on its port (no route, a firewall, a refused connection).

    Why: offline, huggingface_hub retries its request five times with backoff (about 40 s and
    ten lines of warnings) before it gives up; a host this machine cannot resolve or connect to
    will not be fetched by retrying either. A name that resolves is not enough: on a robot's
    network without an uplink, or behind a firewall that drops the packets, the name comes from
    a local resolver and only the connection fails. Offline mode (``HF_HUB_OFFLINE``) fails at
    once by itself, and behind a proxy the proxy resolves names and connects, so neither is
    checked here. One connection attempt of :data:`HUB_CONNECT_TIMEOUT_S` at most.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode() or any(os.environ.get(var) for var in _PROXY_VARS):
        return
    url = urlsplit(constants.ENDPOINT)
    host = url.hostname
    if not host:
        return
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConnectionError(f"{host} does not resolve ({err.strerror or err}; no network?)") from None
    errors: list[str] = []
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(HUB_CONNECT_TIMEOUT_S)
                sock.connect(address)
            return
        except OSError as err:
            errors.append(
                str(err) if not isinstance(err, TimeoutError) else f"no answer in {HUB_CONNECT_TIMEOUT_S:g} s"
            )
    raise ConnectionError(
        f"{host}:{port} resolves but cannot be reached ({errors[0]}; no network or a firewall?)"
    )


def offline_message(entry: ZooEntry, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    reason = reason if len(reason) < 160 else reason[:157] + "..."
    gated = " (gated: accept the licence on its Hub page and run `hf auth login`)" if entry.gated else ""
    what = "the repo's config.json and *.safetensors" if entry.is_directory else entry.file_name
    return (
        f"cannot download {entry.name} from {_hub_host()}/{entry.source_text}{gated}: {type(err).__name__}: "
        f"{reason}. Copy {what} by hand to {manual_path(entry)} (or pass the file with --checkpoint)"
    )


def _hub_host() -> str:
    """The host downloads go to: ``HF_ENDPOINT``'s (a mirror) or huggingface.co, as huggingface_hub reads it."""
    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).netloc or "huggingface.co"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: str | Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        # the real file: in the HF cache, path is a link into blobs/, and a deleted link is
        # re-made to the same blob by the next download
        real = Path(path).resolve()
        raise ZooError(
            f"{path}: sha256 {actual} does not match the zoo's {expected}: delete {real} and download again"
        )


def verify_sha256(path: str | Path, expected: str) -> None:
    """:func:`check_sha256`, skipped when this very file (same resolved path, size, mtime and
    change time) already passed against ``expected``; a pass is recorded in ``verified.json``.

    The change time is there because copy tools (``cp -p``, ``rsync -a``) restore size and
    mtime, while any write moves the change time and nothing can set it back.
    """
    path = Path(path)
    stat = path.stat()
    key = str(path.resolve())
    record = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, expected.lower()]
    ledger = _read_verified()
    if ledger.get(key) == record:
        return
    check_sha256(path, expected)
    ledger[key] = record
    _write_verified(ledger)


def _verified_path() -> Path:
    return models_dir().parent / VERIFIED


def _read_verified() -> dict[str, list]:
    try:
        data = json.loads(_verified_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: verify again
        return {}
    return data if isinstance(data, dict) else {}


def _write_verified(ledger: dict[str, list]) -> None:
    """Temp file + rename, so a reader never sees half a ledger; a read-only home only costs re-hashing."""
    path = _verified_path()
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        log.debug("cannot record the sha256 check in %s: %s", path, err)
        tmp.unlink(missing_ok=True)
