"""What every reader shares: file lists, bad-record accounting, SAM3-style resizing, RLE decoding.

Readers index their records once (cheap checks: JSON parses, required fields, files
exist), skip and count the bad ones, and log one summary line, so a few broken
records out of millions do not kill a job, while a missing file list does (it means
the job points at the wrong place). Augmentation randomness comes from a per-sample
seed the sampler supplies, so a resumed run sees exactly the samples it would have.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ...pipeline.preprocess import PIXEL_MEAN, PIXEL_STD

K = TypeVar("K")
V = TypeVar("V")

log = logging.getLogger(__name__)

SampleRef = int | tuple[int, int]  # index, or (index, augmentation seed) from the sampler


class DataError(RuntimeError):
    """A dataset that cannot be used at all (missing file list / root / annotation file, no good records)."""


class BadRecords:
    """Counts skipped records by reason and says so once, in one line."""

    def __init__(self, name: str):
        self.name = name
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, record: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, record)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def summary(self, total: int) -> str:
        if not self.reasons:
            return f"{self.name}: {total} records, none skipped"
        parts = ", ".join(
            f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in self.reasons.items()
        )
        return f"{self.name}: skipped {self.count} of {total} records: {parts}"


def read_file_list(path: str | Path | None, root: Path) -> list[str] | None:
    """Records named in a file list (one per line, '#' comments); missing list -> DataError (fatal)."""
    if path is None:
        return None
    file = Path(path)
    if not file.is_absolute() and not file.exists():
        file = root / file
    if not file.is_file():
        raise DataError(f"file list {path} does not exist (looked in . and {root}); fix data.file_list")
    names = [line.strip() for line in file.read_text().splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def require_dir(root: str | Path, what: str) -> Path:
    path = Path(root)
    if not str(root) or not path.is_dir():
        raise DataError(f"{what}: data.root {str(root)!r} is not a folder")
    return path


def load_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] (grey and RGBA are converted)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class LeastRecentlyUsed(Generic[K, V]):
    """Values by key, made on a miss; the least recently used go first once their cost passes ``budget``.

    The one eviction rule behind the readers' caches: ``RecentImages`` counts entries,
    ``ResizedImages`` bytes. A value that alone costs more than the budget is made and returned
    but not kept (so a budget of 0 keeps nothing).
    """

    def __init__(self, budget: int, cost: Callable[[V], int]):
        self.budget = budget
        self.cost = cost
        self.held = 0  # the summed cost of what is kept
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K, make: Callable[[], V]) -> V:
        value = self._entries.get(key)
        if value is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return value
        self.misses += 1
        value = make()
        size = self.cost(value)
        if size <= self.budget:
            self._entries[key] = value
            self.held += size
            while self.held > self.budget:
                _, dropped = self._entries.popitem(last=False)
                self.held -= self.cost(dropped)
        return value


class RecentImages(LeastRecentlyUsed[Path, np.ndarray]):
    """The last few decoded images, by path.

    A grouped batch (``data.phrases_per_image``) holds each of its images once per phrase, and
    each datapoint is loaded on its own: without this, the demo's stage-3 batch of 12 datapoints
    decodes its ~4 JPEGs three times each. The cached arrays are read-only, so no caller can
    change what the next one gets; each DataLoader worker keeps its own.
    """

    def __init__(self, capacity: int = 8):
        super().__init__(capacity, cost=lambda _image: 1)

    def __call__(self, path: Path) -> np.ndarray:
        return self.get(path, lambda: _read_only(load_image(path)))


def _read_only(image: np.ndarray) -> np.ndarray:
    image.flags.writeable = False
    return image


class ResizedImages(LeastRecentlyUsed[tuple[Path, bool], "Resized"]):
    """Decoded images already resized to the model input, by (path, flipped), up to a byte budget.

    A concept dataset lists each image once per phrase, and a run passes over it many times (the
    demo teacher's 6000 steps of 12 datapoints show each of the world's 3000 images about 24
    times); decoding the JPEG and resizing it were about three quarters of the teacher's data
    time per batch. The resize is a pure function of the image, the input size, the mode and the
    flip, so a cached copy is bit for bit what a fresh one would be. ``max_bytes`` 0 keeps
    nothing. What is kept is handed out as copies (about 30 us for a 168 px image), so no caller
    can change what the next one gets. Each DataLoader worker keeps its own, so the budget counts
    per loading process.
    """

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, cost=_resized_bytes)

    @property
    def bytes(self) -> int:
        return self.held

    def resized(self, path: Path, flip: bool, make: Callable[[], Resized]) -> Resized:
        key = (path, flip)
        entry = self.get(key, make)
        return _copy_resized(entry) if key in self else entry


def _resized_bytes(entry: Resized) -> int:
    return sum(t.numel() * t.element_size() for t in (entry.pixels, entry.valid))


def _copy_resized(entry: Resized) -> Resized:
    return replace(entry, pixels=entry.pixels.clone(), valid=entry.valid.clone())


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (RLE with str/bytes counts, uncompressed RLE, or polygons) -> bool [H, W]."""
    if isinstance(segmentation, list):  # polygons
        _check_polygons(segmentation)
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unsupported segmentation {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def _check_polygons(polygons: list[Any]) -> None:
    """Each polygon a flat list of at least 3 (x, y) points, as ``frPyObjects`` needs.

    Why: for ``[[]]`` or ``[[x, y]]`` pycocotools raises a bare ``Exception``, which no
    reader catches, so one degenerate annotation stopped a run; a ValueError is counted
    as a bad record and the record is skipped.
    """
    if not polygons:
        raise ValueError("empty polygon list")
    for polygon in polygons:
        if not isinstance(polygon, list | tuple) or len(polygon) < 6 or len(polygon) % 2:
            size = len(polygon) if isinstance(polygon, list | tuple) else type(polygon).__name__
            raise ValueError(f"degenerate polygon ({size} coordinates; need an even number >= 6)")


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight xyxy (pixel-edge) boxes of [N, H, W] bool masks; empty masks give zeros."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return boxes


# ----------------------------------------------------------------------------- transform
@dataclass
class Resized:
    """An image at the model input, plus how to map annotations onto it."""

    pixels: torch.Tensor  # [3, S, S] float, SAM3-normalised
    valid: torch.Tensor  # [S, S] bool, False on letterbox padding
    scale_x: float
    scale_y: float
    flipped: bool

    def boxes(self, xyxy: np.ndarray) -> torch.Tensor:
        """Pixel xyxy in the source image -> pixel xyxy at the model input."""
        out = torch.as_tensor(np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)).clone()
        out[:, 0::2] *= self.scale_x
        out[:, 1::2] *= self.scale_y
        if self.flipped:
            size = self.pixels.shape[-1]
            out[:, [0, 2]] = size - out[:, [2, 0]]
        return out

    def points(self, xy: np.ndarray) -> torch.Tensor:
        """Pixel (x, y) in the source -> model input pixels (pixel indices, as SAM's prompt encoder takes)."""
        out = torch.as_tensor(np.asarray(xy, dtype=np.float32).reshape(-1, 2)).clone()
        out[:, 0] = (out[:, 0] + 0.5) * self.scale_x - 0.5
        out[:, 1] = (out[:, 1] + 0.5) * self.scale_y - 0.5
        if self.flipped:
            out[:, 0] = self.pixels.shape[-1] - 1 - out[:, 0]
        return out

    def masks(self, masks: np.ndarray) -> torch.Tensor:
        """[N, H, W] bool -> [N, S, S] bool on the model input (same resize, pad and flip)."""
        size = self.pixels.shape[-1]
        if len(masks) == 0:
            return torch.zeros(0, size, size, dtype=torch.bool)
        m = torch.from_numpy(np.ascontiguousarray(masks)).float()[None]
        h, w = round(m.shape[-2] * self.scale_y), round(m.shape[-1] * self.scale_x)
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0] > 0.5
        out = torch.zeros(len(masks), size, size, dtype=torch.bool)
        out[:, :h, :w] = m
        return out.flip(-1) if self.flipped else out


def resize_image(image: np.ndarray, size: int, mode: str = "stretch", flip: bool = False) -> Resized:
    """SAM3 preprocessing for training: resize to the square input (or letterbox), normalise, optional flip.

    ``stretch`` is what SAM3 and the inference pipeline do; ``letterbox`` keeps the aspect
    ratio and pads bottom/right with zeros (mid-grey after normalisation), recording the
    valid region so feature losses can ignore the padding.
    """
    height, width = image.shape[:2]
    pixels = (
        torch.from_numpy(np.array(image, dtype=np.uint8, order="C"))
        .permute(2, 0, 1)[None]
        .float()
        .div_(255.0)
    )
    if mode == "stretch":
        h, w = size, size
    elif mode == "letterbox":
        scale = size / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
    else:
        raise ValueError(f"unknown resize mode {mode!r}; use 'stretch' or 'letterbox'")
    if (h, w) != (height, width):
        pixels = F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        pixels = pixels.clamp_(0.0, 1.0)  # antialiased bilinear overshoots by a few ulps
    pixels = (pixels[0] - PIXEL_MEAN) / PIXEL_STD
    out = torch.zeros(3, size, size)
    out[:, :h, :w] = pixels
    valid = torch.zeros(size, size, dtype=torch.bool)
    valid[:h, :w] = True
    if flip:
        out, valid = out.flip(-1), valid.flip(-1)
    return Resized(out, valid, w / width, h / height, flip)


def valid_grid(valid: torch.Tensor, grid: int) -> torch.Tensor:
    """[..., S, S] bool -> [..., g, g] float: a cell counts when most of it is image."""
    v = valid.float()
    lead = v.shape[:-2]
    v = F.adaptive_avg_pool2d(v.reshape(-1, 1, *v.shape[-2:]), grid)
    return (v > 0.5).float().reshape(*lead, grid, grid)


# ----------------------------------------------------------------------------- dataset base
def split_ref(ref: SampleRef) -> tuple[int, int]:
    return (ref, int(ref)) if isinstance(ref, int) else (int(ref[0]), int(ref[1]))


class RecordDataset(Dataset):
    """Indexed records + a loader; a record that fails to load is counted and replaced by the next one."""

    name = "dataset"
    max_substitutions = 16

    def __init__(self, records: Sequence[Any], bad: BadRecords, total: int, limit: int | None = None):
        if limit is not None:
            records = list(records)[:limit]
        self.records = list(records)
        self.bad = bad
        message = bad.summary(total)
        (log.warning if bad.count else log.info)(message)
        if not self.records:
            raise DataError(f"{message}; no usable records left")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record: Any, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def record_name(self, record: Any) -> str:
        return str(record)

    def key(self, index: int) -> str:
        """The sample key of record ``index`` without loading it (feature-cache lookups)."""
        return self.record_name(self.records[index])

    def __getitem__(self, ref: SampleRef) -> dict[str, Any]:
        index, seed = split_ref(ref)
        for attempt in range(self.max_substitutions):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                return self.load(record, np.random.default_rng([seed, attempt]))
            except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
                self.bad.add(f"unreadable ({type(err).__name__})", self.record_name(record))
                log.warning("%s: skipping %s: %s", self.name, self.record_name(record), err)
        raise DataError(
            f"{self.name}: {self.max_substitutions} records in a row failed to load near index {index}"
        )


def collate_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples carry different numbers of objects; stages stack what they need themselves."""
    return batch


def stack_field(batch: list[dict[str, Any]], key: str) -> torch.Tensor:
    return torch.stack([sample[key] for sample in batch])


Collate = Callable[[list[dict[str, Any]]], Any]
