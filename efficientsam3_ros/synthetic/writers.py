"""Writers from the concept world to the real dataset formats the trainers and evaluators read.

Why: stage 1 trains on SA-1B, stage 2 on SA-V, stage 3 on SA-Co, and the bag evaluator on
rosbag2 recordings. Writing synthetic data in exactly those formats lets every loader and
evaluator run end to end (and in CI) with an exact answer, before any real data exists.

All JSON masks are COCO RLE with ``str`` counts (pycocotools' ``encode`` output, decoded
to ASCII). Boxes in JSON are COCO ``[x, y, w, h]`` in pixels and equal pycocotools'
``toBbox`` of the RLE. Each writer is deterministic: the same arguments give the same
files (JPEG encoding included, for a given Pillow build).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from efficientsam3_ros.synthetic.world import CONCEPTS, Frame, GTObject, WorldConfig, iter_video, render_scene

from ..pipeline.results import mask_to_rle

KINDS: tuple[str, ...] = ("sa1b", "sav", "saco", "coco", "rosbag")
JPEG_QUALITY = 95
DEFAULT_TOPIC = "/camera/image_raw"
DEFAULT_START_NS = 1_700_000_000_000_000_000  # a fixed epoch stamp keeps bags byte-reproducible


def categories() -> list[dict[str, Any]]:
    """COCO categories: every concept of the world, id = index in CONCEPTS + 1, name = the noun phrase.

    All 36 are always listed, so category ids agree between every file this module writes.
    """
    return [
        {"id": i + 1, "name": c, "supercategory": c.split(" ", 1)[1], "colour": c.split(" ", 1)[0]}
        for i, c in enumerate(CONCEPTS)
    ]


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)


def _dump(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")))


def _coco_annotation(obj: GTObject, ann_id: int, image_id: int) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.concept_id + 1,
        "segmentation": mask_to_rle(obj.mask),
        "bbox": obj.bbox_xywh,
        "area": obj.area,
        "iscrowd": 0,
    }


def _json_seed(seed: int | Sequence[int]) -> int | list[int]:
    """The seed as JSON can hold it: a numpy integer (``np.arange`` loops) is not JSON serialisable."""
    if isinstance(seed, int | np.integer):
        return int(seed)
    return [int(s) for s in seed]


#: The fastest frame rate a rosbag can carry: round(i * 1e9 / fps) gives every frame its own
#: nanosecond stamp up to it (the evaluator keys ground-truth frames by stamp).
MAX_ROSBAG_FPS = 1e9


def _check_fps(fps: float, most: float = math.inf) -> None:
    """Refuse a frame rate before anything is written: stamps and durations divide by it."""
    if not (math.isfinite(fps) and 0 < fps <= most):
        bound = f"(0, {most:g}]" if math.isfinite(most) else "> 0"
        raise ValueError(f"fps must be a finite number {bound}, got {fps}")


def _config_info(config: WorldConfig, seed: int) -> dict[str, Any]:
    info = asdict(config)
    info["seed"] = _json_seed(seed)
    info["generator"] = "efficientsam3_ros.synthetic"
    return info


# --------------------------------------------------------------------------- SA-1B


def write_sa1b(
    out_dir: str | Path, seed: int = 0, num_images: int = 8, config: WorldConfig | None = None
) -> list[Path]:
    """SA-1B layout: ``sa_<n>.jpg`` + ``sa_<n>.json`` per image (n from 1). Returns the JSON paths.

    Image n is ``render_scene((seed, n), config)``. Annotations are class-agnostic as in SA-1B;
    the noun phrase is kept in an extra ``"concept"`` key that SA-1B readers ignore.
    """
    cfg = config or WorldConfig()
    out = Path(out_dir)
    paths = []
    ann_id = 1
    for n in range(1, num_images + 1):
        frame = render_scene((seed, n), cfg)
        name = f"sa_{n}.jpg"
        _save_jpeg(frame.image, out / name)
        anns = []
        for obj in frame.objects:
            px, py = obj.interior_point()
            anns.append(
                {
                    "id": ann_id,
                    "segmentation": mask_to_rle(obj.mask),
                    "bbox": obj.bbox_xywh,
                    "area": obj.area,
                    "point_coords": [[px, py]],
                    "predicted_iou": 1.0,
                    "stability_score": 1.0,
                    "crop_box": [0.0, 0.0, float(frame.width), float(frame.height)],
                    "concept": obj.concept,
                }
            )
            ann_id += 1
        doc = {
            "image": {"image_id": n, "width": frame.width, "height": frame.height, "file_name": name},
            "annotations": anns,
        }
        path = out / f"sa_{n}.json"
        _dump(doc, path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- SA-V


def _size_bucket(area: float) -> str:
    return "small" if area < 32**2 else ("medium" if area < 96**2 else "large")


def sav_annotation(
    frames: Sequence[Frame],
    video_id: str,
    fps: float = 24.0,
    annotate_every: int = 1,
    absent: str = "empty",
) -> dict[str, Any]:
    """The ``<video_id>_manual.json`` document of one video.

    ``masklet[k][j]`` is the RLE of masklet j on annotated frame k (= video frame
    ``k * annotate_every``); ``absent`` says what stands there when the object is not
    visible: ``"empty"`` (an all-zero RLE, as released SA-V files have and SAM 2's loader expects; the
    default) or ``"null"`` (JSON null, smaller). This package's reader takes both alike.
    """
    if absent not in ("null", "empty"):
        raise ValueError("absent must be 'null' or 'empty'")
    _check_fps(fps)
    if not frames:
        raise ValueError("no frames")
    if annotate_every < 1:
        raise ValueError("annotate_every must be >= 1")
    h, w = frames[0].height, frames[0].width
    annotated = list(range(0, len(frames), annotate_every))
    tracks: dict[int, str] = {}
    for t in annotated:
        for o in frames[t].objects:
            tracks.setdefault(o.track_id, o.concept)
    track_ids = sorted(tracks)
    empty = mask_to_rle(np.zeros((h, w), dtype=bool)) if absent == "empty" else None
    masklet: list[list[dict[str, Any] | None]] = []
    areas: dict[int, list[int]] = {tid: [] for tid in track_ids}
    seen: dict[int, list[bool]] = {tid: [] for tid in track_ids}
    for t in annotated:
        by_id = {o.track_id: o for o in frames[t].objects}
        row: list[dict[str, Any] | None] = []
        for tid in track_ids:
            obj = by_id.get(tid)
            seen[tid].append(obj is not None)
            if obj is None:
                row.append(empty)
            else:
                areas[tid].append(obj.area)
                row.append(mask_to_rle(obj.mask))
        masklet.append(row)
    size_abs = [float(np.mean(areas[tid])) for tid in track_ids]
    first = [seen[tid].index(True) for tid in track_ids]
    changes = [
        int(np.count_nonzero(np.diff(np.array(seen[tid][f:], dtype=np.int8))))
        for tid, f in zip(track_ids, first)
    ]
    n = len(track_ids)
    return {
        "video_id": video_id,
        "video_duration": len(frames) / fps,
        "video_frame_count": float(len(frames)),
        "video_height": float(h),
        "video_width": float(w),
        "video_resolution": float(h * w),
        "video_environment": "Synthetic",
        "video_split": "train",
        "masklet": masklet,
        "masklet_id": list(range(n)),
        "masklet_size_rel": [a / (h * w) for a in size_abs],
        "masklet_size_abs": size_abs,
        "masklet_size_bucket": [_size_bucket(a) for a in size_abs],
        "masklet_visibility_changes": changes,
        "masklet_first_appeared_frame": [float(f) for f in first],
        "masklet_frame_count": [len(annotated)] * n,
        "masklet_edited_frame_count": [sum(seen[tid]) for tid in track_ids],
        "masklet_type": ["manual"] * n,
        "masklet_stability_score": [None] * n,
        "masklet_num": n,
        # extras (not in SA-V): what the synthetic world knows besides the masks
        "masklet_track_id": track_ids,
        "masklet_concept": [tracks[tid] for tid in track_ids],
        "annotated_frame_indices": annotated,
        "fps": fps,
    }


def write_sav(
    out_dir: str | Path,
    seed: int = 0,
    num_videos: int = 2,
    num_frames: int = 24,
    config: WorldConfig | None = None,
    fps: float = 24.0,
    annotate_every: int = 1,
    absent: str = "empty",
) -> list[Path]:
    """SA-V layout: ``<video_id>/<frame:05d>.jpg`` frames + ``<video_id>_manual.json``. Returns the JSON paths.

    Video v (from 1) is ``render_video((seed, v), num_frames, config)`` and is named ``sav_<v:06d>``.
    """
    _check_fps(fps)  # here too: sav_annotation runs only after a video's frames are written
    cfg = config or WorldConfig()
    out = Path(out_dir)
    paths = []
    for v in range(1, num_videos + 1):
        video_id = f"sav_{v:06d}"
        frames = []
        for frame in iter_video((seed, v), num_frames, cfg):
            _save_jpeg(frame.image, out / video_id / f"{frame.index:05d}.jpg")
            frames.append(frame)
        path = out / f"{video_id}_manual.json"
        _dump(sav_annotation(frames, video_id, fps=fps, annotate_every=annotate_every, absent=absent), path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- SA-Co / COCO


class CocoBuilder:
    """Builds a COCO instances document frame by frame (so long videos never hold every mask at once).

    Plain COCO (``per_phrase=False``): one ``images`` entry per frame, every visible object annotated.
    SA-Co style (``per_phrase=True``): one ``images`` entry per (image, noun phrase) pair carrying
    ``"text_input"``; the positive pairs are the concepts present, plus ``negatives_per_image``
    absent concepts with no annotations, as SA-Co marks negatives. A pair's annotations are
    exactly the instances of its phrase, so pycocotools' COCOeval works per category.

    Negatives are drawn hardest first: absent ``targets`` (the phrases users of the world
    prompt with) that share a colour or shape word with a present object, then any absent
    concept sharing a word, then any absent concept. Why: a deployed model is prompted with
    every target on every frame, so "orange cross" on a frame holding an orange circle is the
    mistake that costs; a negative drawn at random from all 36 phrases seldom teaches it.
    """

    def __init__(
        self,
        per_phrase: bool = False,
        negatives_per_image: int = 1,
        concepts: Sequence[str] | None = None,
        seed: int = 0,
        track_ids: bool = False,
        targets: Sequence[str] = (),
    ) -> None:
        if negatives_per_image < 0:
            raise ValueError(f"negatives_per_image must be >= 0, got {negatives_per_image}")
        self.per_phrase = per_phrase
        self.negatives_per_image = negatives_per_image
        self.pool = list(concepts or CONCEPTS)
        self.targets = set(targets)
        self.rng = np.random.default_rng([seed, 0x5AC0])
        self.track_ids = track_ids
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._frames = 0

    def _annotate(self, objects: Iterable[GTObject], image_id: int) -> None:
        for obj in objects:
            ann = _coco_annotation(obj, len(self.annotations) + 1, image_id)
            if self.track_ids:
                ann["track_id"] = obj.track_id
            self.annotations.append(ann)

    def add(self, frame: Frame, file_name: str, **image_fields: Any) -> None:
        """Add one frame; ``image_fields`` are copied into its ``images`` entries."""
        base = {"file_name": file_name, "width": frame.width, "height": frame.height, **image_fields}
        index = self._frames
        self._frames += 1
        if not self.per_phrase:
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, **base})
            self._annotate(frame.objects, image_id)
            return
        present = sorted({o.concept for o in frame.objects}, key=CONCEPTS.index)
        for phrase in present + self._negatives(present):
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, **base, "text_input": phrase, "image_index": index})
            self._annotate(frame.of_concept(phrase), image_id)

    def _negatives(self, present: list[str]) -> list[str]:
        """``negatives_per_image`` absent phrases, hardest tier first (see the class docstring)."""
        words = {w for c in present for w in c.split(" ")}
        absent = [c for c in self.pool if c not in present]
        hard = [c for c in absent if set(c.split(" ")) & words]
        tiers = [[c for c in hard if c in self.targets], [c for c in hard if c not in self.targets]]
        tiers.append([c for c in absent if c not in hard])
        picked: list[str] = []
        for tier in tiers:
            k = min(self.negatives_per_image - len(picked), len(tier))
            if k > 0:
                picked += [
                    tier[j] for j in sorted(self.rng.choice(len(tier), size=k, replace=False).tolist())
                ]
        return sorted(picked, key=CONCEPTS.index)

    def document(self, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """The finished COCO dict (``info`` first when given)."""
        doc: dict[str, Any] = {"info": info} if info is not None else {}
        doc.update(images=self.images, annotations=self.annotations, categories=categories())
        return doc


def write_coco(
    out_dir: str | Path,
    seed: int = 0,
    num_images: int = 8,
    config: WorldConfig | None = None,
    per_phrase: bool = True,
    negatives_per_image: int = 1,
) -> Path:
    """``images/<n:06d>.jpg`` + ``annotations.json``; SA-Co style when ``per_phrase`` (the default), else plain COCO.

    Image n (from 1) is ``render_scene((seed, n), config)``. Returns the JSON path.
    """
    cfg = config or WorldConfig()
    out = Path(out_dir)
    builder = CocoBuilder(
        per_phrase=per_phrase, negatives_per_image=negatives_per_image, seed=seed, targets=cfg.concepts
    )
    for n in range(1, num_images + 1):
        frame = render_scene((seed, n), cfg)
        name = f"images/{n:06d}.jpg"
        _save_jpeg(frame.image, out / name)
        builder.add(frame, name)
    info = {
        "description": "SA-Co-style synthetic concept world" if per_phrase else "synthetic concept world",
        **_config_info(cfg, seed),
    }
    if per_phrase:
        info["negatives_per_image"] = negatives_per_image
    doc = builder.document(info)
    path = out / "annotations.json"
    _dump(doc, path)
    return path


def write_saco(
    out_dir: str | Path,
    seed: int = 0,
    num_images: int = 8,
    config: WorldConfig | None = None,
    negatives_per_image: int = 1,
) -> Path:
    """SA-Co-style concept dataset: :func:`write_coco` with one entry per (image, noun phrase) pair."""
    return write_coco(
        out_dir,
        seed=seed,
        num_images=num_images,
        config=config,
        per_phrase=True,
        negatives_per_image=negatives_per_image,
    )


# --------------------------------------------------------------------------- rosbag2


def write_rosbag(
    out_dir: str | Path,
    seed: int = 0,
    num_frames: int = 30,
    config: WorldConfig | None = None,
    storage: str = "sqlite3",
    topic: str = DEFAULT_TOPIC,
    fps: float = 10.0,
    start_ns: int = DEFAULT_START_NS,
    frame_id: str = "camera",
    encoding: str = "rgb8",
) -> tuple[Path, Path]:
    """A rosbag2 of ``sensor_msgs/msg/Image`` at ``out_dir/bag`` plus its ground truth ``out_dir/gt.json``.

    Frame i is stamped ``start_ns + round(i * 1e9 / fps)`` in both the header and the bag
    record, and its pixels are exactly ``render_video(seed, num_frames, config)[i].image``,
    laid out as ``encoding`` says (rgb8 by default; a camera's yuyv, nv12 or bayer_rggb8 to
    test a pipeline on what that camera publishes: lossy, see ros.pixel_formats).
    ``storage`` is ``"sqlite3"`` or ``"mcap"``; ``fps`` in (0, 1e9] (distinct stamps).
    An existing ``out_dir/bag`` is refused with FileExistsError before anything is written.
    Returns ``(bag_dir, gt_json)``.
    """
    from rosbags.typesys import Stores, get_typestore

    from ..ros.convert import array_to_image_fields, check_layout, rgb_to_raw
    from ..ros.messages import bag_writer

    cfg = config or WorldConfig()
    check_layout(encoding, cfg.height, cfg.width)  # an unknown encoding, an odd size for YUV: before writing
    _check_fps(fps, MAX_ROSBAG_FPS)
    out = Path(out_dir)
    bag_dir = out / "bag"
    if bag_dir.exists():  # rosbags refuses too, but with its own error type; nothing is written yet
        raise FileExistsError(f"{bag_dir} exists already; a bag is never overwritten")
    bag = bag_writer(bag_dir, storage)  # refuses an unknown storage before anything is written
    out.mkdir(parents=True, exist_ok=True)
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    ImageMsg = typestore.types["sensor_msgs/msg/Image"]
    Header = typestore.types["std_msgs/msg/Header"]
    Time = typestore.types["builtin_interfaces/msg/Time"]

    builder = CocoBuilder(track_ids=True)
    with bag as writer:
        conn = writer.add_connection(topic, ImageMsg.__msgtype__, typestore=typestore)
        for frame in iter_video(seed, num_frames, cfg):
            stamp = start_ns + round(frame.index * 1e9 / fps)
            header = Header(
                stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id
            )
            msg = ImageMsg(
                header=header, **array_to_image_fields(rgb_to_raw(frame.image, encoding), encoding)
            )
            writer.write(conn, stamp, typestore.serialize_cdr(msg, ImageMsg.__msgtype__))
            builder.add(frame, f"{frame.index:06d}", frame_index=frame.index, stamp_ns=stamp)

    info = {
        "description": "ground truth of a synthetic concept-world rosbag2",
        "bag": "bag",
        "topic": topic,
        "storage": storage,
        "encoding": encoding,
        "frame_id": frame_id,
        "fps": fps,
        "start_ns": start_ns,
        "num_frames": num_frames,
        **_config_info(cfg, seed),
    }
    doc = builder.document(info)
    gt_path = out / "gt.json"
    _dump(doc, gt_path)
    return bag_dir, gt_path


# --------------------------------------------------------------------------- dispatcher


def write_dataset(
    kind: str,
    out_dir: str | Path,
    seed: int = 0,
    num: int | None = None,
    num_frames: int | None = None,
    config: WorldConfig | None = None,
    **kwargs: Any,
) -> list[Path]:
    """Write one dataset of ``kind`` (one of :data:`KINDS`) and return the paths of the files that describe it.

    ``num`` is the number of images (sa1b, saco, coco) or videos (sav); ``num_frames`` the
    frames per video (sav, rosbag). Other keyword arguments go to the specific writer.
    """
    if kind == "sa1b":
        return write_sa1b(out_dir, seed, num if num is not None else 8, config, **kwargs)
    if kind == "sav":
        return write_sav(
            out_dir,
            seed,
            num if num is not None else 2,
            num_frames if num_frames is not None else 24,
            config,
            **kwargs,
        )
    if kind in ("saco", "coco"):
        per_phrase = kwargs.pop("per_phrase", kind == "saco")
        return [
            write_coco(out_dir, seed, num if num is not None else 8, config, per_phrase=per_phrase, **kwargs)
        ]
    if kind == "rosbag":
        return list(
            write_rosbag(out_dir, seed, num_frames if num_frames is not None else 30, config, **kwargs)
        )
    raise ValueError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
