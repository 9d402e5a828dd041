"""Opening checkpoint files safely and lazily, and writing them reproducibly.

Every format is read without executing pickled code (safetensors, or ``torch.load`` with
``weights_only=True``) and checked for truncation before any model is built: a
safetensors header must account for exactly the bytes on disk, and a torch zip must
have its central directory. Tensors are fetched one at a time (safetensors / mmap),
so planning a 3 GB checkpoint costs names and shapes, not memory. Files this package
writes (:func:`write_safetensors`) depend only on their tensors and metadata, so the same
weights always have the same sha256.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
STATE_DICT_WRAPPERS = ("model", "state_dict", "module")
# safetensors dtype -> (torch's name, bytes per element); others (sub-byte floats) are left to safetensors
SAFETENSORS_DTYPES = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "C64": ("complex64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F64": ("float64", 8),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, unsafe, or not matching the model."""


@dataclass
class OpenCheckpoint:
    """A checkpoint's tensors by name, fetched lazily."""

    path: Path
    kind: str  # "safetensors" | "torch" | "hf-dir"
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # key -> torch dtype name ("float32"); may be empty
    _files: dict[str, Path] = field(default_factory=dict, repr=False)  # key -> safetensors file
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # torch.load result

    def keys(self) -> Iterator[str]:
        return iter(self.shapes)

    def get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        from safetensors import safe_open

        with safe_open(str(self._files[key]), framework="pt") as f:
            return f.get_tensor(key)


def check_safetensors(path: Path) -> tuple[dict[str, Any], int]:
    """Validate a safetensors file's header against its size; returns (header, header length)."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too small for a safetensors file (truncated?)")
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n <= 0 or 8 + n > size:
            raise CheckpointError(
                f"{path}: safetensors header length {n} exceeds the file ({size} bytes): truncated or not safetensors"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    _check_entries(path, header)
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path}: safetensors data should end at byte {8 + n + end} but the file has {size}: "
            "truncated or corrupt (re-download it)"
        )
    return header, n


def _check_entries(path: Path, header: Any) -> None:
    """Each tensor's dtype and shape must account for exactly its byte range.

    Why: a damaged header whose total still matches the file size (a flipped dtype, a lost
    offset) would pass the size check, plan and ``verify`` cleanly, then fail inside safetensors
    at load time with a message that names neither the file nor the tensor.
    """
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object): re-download it")
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape = info["dtype"], [int(d) for d in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: corrupt safetensors header entry for tensor {key!r}: re-download it"
            ) from None
        itemsize = SAFETENSORS_DTYPES.get(dtype, (None, None))[1]
        if itemsize is not None and (start < 0 or end - start != math.prod(shape) * itemsize):
            raise CheckpointError(
                f"{path}: tensor {key!r} is {dtype} {shape} ({math.prod(shape) * itemsize} bytes) but its "
                f"header gives it bytes {start}..{end}: corrupt (re-download it)"
            )


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """``safetensors.torch.save_file``, then the header's metadata put in sorted key order.

    Why: safetensors writes ``__metadata__`` in the iteration order of a Rust hash map, which
    changes from call to call, so saving the same weights twice gave files with different
    checksums, and a reproduced model could not be checked by its sha256. The tensors' own
    order and bytes are already fixed. The header is rewritten in place: the same JSON in
    another key order has the same length, so no offset moves and the file stays valid.
    """
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    with path.open("r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(ordered) > length:  # cannot happen for safetensors' compact JSON; keep its valid file
            return path
        f.seek(8)
        f.write(ordered.ljust(length, b" "))  # safetensors pads its header with spaces too
    return path


def check_torch_zip(path: Path, full: bool = False) -> None:
    """A torch checkpoint is a zip; a truncated one has no central directory. ``full`` also checks CRCs."""
    try:
        with zipfile.ZipFile(path) as zf:
            if full:
                bad = zf.testzip()
                if bad is not None:
                    raise CheckpointError(
                        f"{path}: member {bad} fails its CRC check: corrupt (re-download it)"
                    )
    except zipfile.BadZipFile as err:
        raise CheckpointError(
            f"{path}: not a complete torch zip checkpoint ({err}): truncated or corrupt"
        ) from None


def open_file(path: str | Path, full_check: bool = False) -> OpenCheckpoint:
    """Open one checkpoint file (safetensors or torch) after checking it is whole."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        magic = f.read(8)
    if path.suffix in SAFETENSORS_SUFFIXES or (
        len(magic) == 8 and magic[:2] != b"PK" and _looks_safetensors(path)
    ):
        return _open_safetensors([path], path, kind="safetensors")
    if magic[:2] == b"PK":
        check_torch_zip(path, full=full_check)
        return _open_torch(path, mmap=True)
    if magic[:1] == b"\x80":  # legacy (non-zip) torch.save format: no mmap, still weights_only
        return _open_torch(path, mmap=False)
    raise CheckpointError(f"{path}: neither safetensors nor a torch checkpoint (first bytes {magic[:4]!r})")


def _looks_safetensors(path: Path) -> bool:
    try:
        check_safetensors(path)
        return True
    except CheckpointError:
        return False


def _open_safetensors(files: list[Path], path: Path, kind: str) -> OpenCheckpoint:
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, Path] = {}
    metadata: dict[str, str] = {}
    dtypes: dict[str, str] = {}
    for file in files:
        header, _ = check_safetensors(file)
        metadata.update(header.get("__metadata__") or {})
        for key, info in header.items():
            if key == "__metadata__":
                continue
            shapes[key] = tuple(int(d) for d in info["shape"])
            dtypes[key] = SAFETENSORS_DTYPES.get(info["dtype"], (str(info["dtype"]).lower(), None))[0]
            where[key] = file
    return OpenCheckpoint(path=path, kind=kind, shapes=shapes, metadata=metadata, dtypes=dtypes, _files=where)


def _open_torch(path: Path, mmap: bool) -> OpenCheckpoint:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError variants
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: cannot be read safely (weights_only=True): {message}. "
            "A truncated download, or a file that needs arbitrary pickled code: convert it to safetensors"
        ) from None
    state = _unwrap(obj, path)
    return OpenCheckpoint(
        path=path,
        kind="torch",
        shapes={k: tuple(v.shape) for k, v in state.items()},
        dtypes={k: dtype_name(v.dtype) for k, v in state.items()},
        _tensors=state,
    )


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``, the names :attr:`OpenCheckpoint.dtypes` holds."""
    return str(dtype).removeprefix("torch.")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """``{"model": sd}`` / ``{"state_dict": sd}`` / a bare state_dict -> the state_dict, tensors only."""
    if isinstance(obj, dict):
        for wrapper in STATE_DICT_WRAPPERS:
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(
            f"{path}: no state_dict inside (expected a dict of tensors, or one under 'model')"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return obj


def open_hf_directory(path: str | Path) -> OpenCheckpoint:
    """An HF model directory: ``model.safetensors`` or the shards named by its index."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({path / name for name in weight_map.values()})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"{index}: not a safetensors index ({type(err).__name__}: {err}); download it again"
            ) from None
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"{path}: no *.safetensors weights in this directory")
        files = shards
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: weight shards missing: {[f.name for f in missing]}")
    return _open_safetensors(files, path, kind="hf-dir")


def open_checkpoint(path: str | Path, full_check: bool = False) -> OpenCheckpoint:
    """A file (safetensors / torch) or an HF directory, checked and opened lazily."""
    p = Path(path)
    if p.is_dir():
        return open_hf_directory(p)
    return open_file(p, full_check=full_check)
