"""Teacher feature cache for stage-1 image distillation: fp16 safetensors shards + a JSON index.

The teacher trunk (446M parameters, 2.3 TMACs per 1008 px image) costs ~200x the
student; its output for an unaugmented image never changes, so it is computed once
and read back every epoch. Layout in the cache folder:

* ``shard-<s:06d>.safetensors``: samples ``[s*N, (s+1)*N)`` of the dataset, one fp16
  ``[C, g, g]`` tensor per sample key; the metadata carries the cache fingerprint.
* ``index.json``: fingerprint (teacher, the sha256 of its weights, input size, resize mode,
  the resolved data root, keys), grid, channels and which shard holds each key; written
  last, by rank 0, after every rank is done.

Several ranks fill it together: shard ``s`` belongs to rank ``s % world_size`` and each
rank writes only its own shards (temp file + ``os.replace``), so no two processes ever
write one file. Filling is resumable: a shard whose file exists with the right
fingerprint is skipped, so a killed fill continues where it stopped -- with any
number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..modeling.checkpoint_files import CheckpointError as FileCheckError
from ..modeling.checkpoint_files import check_safetensors
from .distributed import DistContext

log = logging.getLogger(__name__)

INDEX = "index.json"


class CacheError(RuntimeError):
    """The cache folder does not match this run (other teacher / size / dataset) or is incomplete."""


def fingerprint(
    keys: list[str],
    teacher: str,
    input_size: int,
    resize: str,
    teacher_weights: str = "",
    data_root: str = "",
) -> str:
    """What the cached features depend on. Why the weights and the root: with only the teacher's
    name, a cache filled from one checkpoint (or dataset folder with the same file names) was
    silently reused after ``model.teacher_checkpoint`` (or ``data.root``) changed."""
    digest = hashlib.sha256(
        json.dumps([teacher, input_size, resize, keys, teacher_weights, data_root]).encode()
    )
    return digest.hexdigest()[:32]


def weights_identity(path: str | Path | None, seed: int) -> str:
    """Names the teacher's weights: ``sha256:<hex>`` of its checkpoint (file, or every file of an
    HF directory by relative name), or the seed its random weights were drawn from.

    Why the whole file and not its size and header: two trainings of one architecture can
    share both, and the cache would then serve the other teacher's features. Hashing reads
    the file once more (~1 GB/s: ~4 s for SAM3's 3.4 GB, against minutes to fill a cache).
    """
    if not path:
        return f"random (run.seed {seed})"
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.safetensors"


def _shard_ok(path: Path, expected: str) -> bool:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("fingerprint") == expected
    except Exception:  # a half-written or foreign file: recompute it
        return False


@torch.no_grad()
def fill_cache(
    folder: str | Path,
    dataset: Dataset,
    keys: list[str],
    teacher: Any,
    ctx: DistContext,
    *,
    teacher_name: str,
    input_size: int,
    resize: str,
    shard_size: int = 256,
    batch_size: int = 8,
    teacher_weights: str = "",
    data_root: str = "",
) -> Path:
    """Compute the missing shards of this rank, then (rank 0) write the index. All ranks must call it.

    ``teacher_weights``: :func:`weights_identity` of the teacher; ``data_root``: the resolved
    dataset folder. Both are part of the fingerprint.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(keys, teacher_name, input_size, resize, teacher_weights, data_root)
    index_path = folder / INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") != fp:
            now = {
                "teacher": teacher_name,
                "teacher_weights": teacher_weights,
                "input_size": input_size,
                "resize": resize,
                "data_root": data_root,
            }
            differs = [f"{k} {index.get(k)!r} -> {v!r}" for k, v in now.items() if index.get(k) != v]
            raise CacheError(
                f"feature cache {folder} was built for another teacher, teacher weights, input size or dataset "
                f"({'; '.join(differs) or 'other sample keys'}; fingerprint {index.get('fingerprint')} != {fp}); "
                "point options.feature_cache elsewhere or delete it"
            )
        missing = check_shards(folder, index)
        if not missing:
            return index_path
        log.warning("feature cache %s: %d shard(s) missing (%s): refilling", folder, len(missing), missing[0])
    num_shards = (len(keys) + shard_size - 1) // shard_size
    device = next(teacher.parameters()).device
    grid = channels = None
    for shard in range(ctx.rank, num_shards, ctx.world_size):
        path = folder / _shard_name(shard)
        if path.is_file() and _shard_ok(path, fp):
            continue
        lo, hi = shard * shard_size, min(len(keys), (shard + 1) * shard_size)
        tensors: dict[str, torch.Tensor] = {}
        for start in range(lo, hi, batch_size):
            samples = [dataset[i] for i in range(start, min(hi, start + batch_size))]
            pixels = torch.stack([s["pixels"] for s in samples]).to(device)
            features = teacher.trunk_features(pixels).to(torch.float16).cpu()
            for j, sample in enumerate(samples):  # an unreadable record was replaced by its neighbour
                tensors[sample["key"]] = features[j].contiguous()
            channels, grid = features.shape[1], features.shape[-1]
        tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
        save_file(tensors, str(tmp), metadata={"fingerprint": fp})
        os.replace(tmp, path)
        log.info("feature cache: rank %d wrote %s (%d samples)", ctx.rank, path.name, len(tensors))
    ctx.barrier()
    if ctx.is_main:
        shards: dict[str, list[str]] = {}
        for shard in range(num_shards):
            path = folder / _shard_name(shard)
            if not _shard_ok(path, fp):
                raise CacheError(f"feature cache shard {path} is missing or stale after filling")
            with safe_open(str(path), framework="pt") as handle:
                shards[path.name] = list(handle.keys())
                first = handle.get_slice(shards[path.name][0]).get_shape() if shards[path.name] else None
            if first is not None:
                channels, grid = first[0], first[-1]
        index = {
            "version": 1,
            "fingerprint": fp,
            "teacher": teacher_name,
            "teacher_weights": teacher_weights,
            "data_root": data_root,
            "input_size": input_size,
            "resize": resize,
            "dtype": "float16",
            "channels": channels,
            "grid": grid,
            "num_samples": len(keys),
            "shards": shards,
        }
        tmp = index_path.with_name(f"{INDEX}.tmp.{os.getpid()}")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_path)
    ctx.barrier()
    return index_path


def check_shards(folder: Path, index: dict[str, Any]) -> list[str]:
    """The index's shards that are missing; a damaged one (header unreadable, size or keys off) raises.

    Why: the index was trusted, so a shard truncated or deleted after the fill (a full disk, a
    cleanup) crashed training at the first batch that read it, possibly hours in. Reads headers only.
    """
    missing = []
    for name, keys in index.get("shards", {}).items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        try:
            header, _ = check_safetensors(path)
        except (FileCheckError, OSError) as err:
            detail = str(err).removeprefix(f"{path}: ").removesuffix(" (re-download it)")
            raise CacheError(
                f"feature cache shard {path} is damaged ({detail}); delete it to refill"
            ) from None
        absent = [key for key in keys if key not in header]
        if absent:
            raise CacheError(
                f"feature cache shard {path} lacks {len(absent)} of its {len(keys)} samples "
                f"(e.g. {absent[0]!r}); delete it to refill"
            )
    return missing


class FeatureCache:
    """Read side: ``cache[key]`` -> fp16 [C, g, g]; shard files are opened lazily (per loader worker)."""

    def __init__(self, folder: str | Path, expected_fingerprint: str | None = None):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise CacheError(f"feature cache {self.folder} has no {INDEX}; it was never completed")
        self.index = json.loads(index_path.read_text())
        if expected_fingerprint is not None and self.index["fingerprint"] != expected_fingerprint:
            raise CacheError(f"feature cache {self.folder} does not match this run's teacher/dataset")
        missing = check_shards(self.folder, self.index)
        if missing:
            raise CacheError(
                f"feature cache shard {self.folder / missing[0]} is missing ({len(missing)} of "
                f"{len(self.index['shards'])} listed in {INDEX}); run the stage again to refill it"
            )
        self.where = {key: shard for shard, keys in self.index["shards"].items() for key in keys}
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def __getitem__(self, key: str) -> torch.Tensor:
        shard = self.where[key]
        handle = self._handles.get(shard)
        if handle is None:
            handle = safe_open(str(self.folder / shard), framework="pt")
            self._handles[shard] = handle
        return handle.get_tensor(key)

    def __getstate__(self) -> dict[str, Any]:  # loader workers reopen their own handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


class CachedFeatures(Dataset):
    """Wraps an image dataset: each sample gains ``teacher`` = its cached fp16 trunk feature."""

    def __init__(self, dataset: Dataset, cache: FeatureCache):
        self.dataset = dataset
        self.cache = cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, ref: Any) -> dict[str, Any]:
        sample = self.dataset[ref]
        sample["teacher"] = self.cache[sample["key"]]
        return sample
