"""Training data readers on fixtures written in the real formats, bad-record handling, the sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from training_fixtures import write_datasets

from efficientsam3_ros.training.data import (
    ConceptDataset,
    DataError,
    PromptDataset,
    ResizedImages,
    ResumableBatchSampler,
    SA1BDataset,
    SAVDataset,
    resize_image,
    valid_grid,
)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("training-data"))


def test_sa1b_reader_reads_boxes_points_masks(datasets):
    ds = SA1BDataset(datasets["sa1b"], 112, decode_masks=True)
    assert len(ds) == 8 and ds.bad.count == 0
    sample = ds[0]
    assert sample["pixels"].shape == (3, 112, 112) and sample["valid"].all()
    assert sample["pixels"].min() >= -1 and sample["pixels"].max() <= 1
    n = len(sample["boxes"])
    assert n > 0 and sample["points"].shape == (n, 2) and sample["masks"].shape == (n, 112, 112)
    # each point lies inside its box, each box is (close to) its mask's box
    for box, point, mask in zip(sample["boxes"], sample["points"], sample["masks"]):
        assert box[0] - 1 <= point[0] <= box[2] + 1 and box[1] - 1 <= point[1] <= box[3] + 1
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs):
            assert abs(float(xs.min()) - float(box[0])) <= 2 and abs(float(ys.max()) + 1 - float(box[3])) <= 2


def test_sa1b_bad_records_are_counted_and_skipped(datasets, tmp_path):
    import shutil

    root = tmp_path / "sa1b"
    shutil.copytree(datasets["sa1b"], root)
    (root / "sa_1.json").write_text("{not json")
    (root / "sa_2.jpg").unlink()
    ds = SA1BDataset(root, 112)
    assert len(ds) == 6
    assert ds.bad.reasons == {"bad json": 1, "missing image": 1}
    assert "skipped 2 of 8" in ds.bad.summary(8)
    # a record that breaks after indexing (truncated JPEG) is replaced by its neighbour, and counted
    (root / "sa_3.jpg").write_bytes(b"\xff\xd8garbage")
    index = [i for i, r in enumerate(ds.records) if r["image"].name == "sa_3.jpg"][0]
    assert ds[index]["key"] != "sa_3.json"
    assert ds.bad.count == 3


def test_missing_file_list_is_fatal(datasets):
    with pytest.raises(DataError, match="file list .*does not exist"):
        SA1BDataset(datasets["sa1b"], 112, file_list="nope.txt")


def test_file_list_selects_records(datasets, tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("# two images\nsa_3.json\nsa_5.json\n")
    ds = SA1BDataset(datasets["sa1b"], 112, file_list=listing)
    assert [ds.key(i) for i in range(len(ds))] == ["sa_3.json", "sa_5.json"]


def test_sav_reader_returns_clips_of_visible_masklets(datasets):
    ds = SAVDataset(datasets["sav"], 112, clip_length=3, max_objects=2)
    assert len(ds) == 2
    clip = ds[(0, 7)]
    t, n = clip["masks"].shape[:2]
    assert clip["pixels"].shape == (3, 3, 112, 112) and t == 3 and 1 <= n <= 2
    assert clip["visible"][0].all()  # every chosen object is visible in the prompt frame
    assert torch.equal(clip["masks"], ds[(0, 7)]["masks"])  # same seed, same clip


def test_sav_reader_handles_null_and_empty_absent_masks(datasets, tmp_path):
    from training_fixtures import WORLD

    from efficientsam3_ros.synthetic import write_sav

    doc = json.loads(next(datasets["sav"].glob("*_manual.json")).read_text())
    rles = [rle for row in doc["masklet"] for rle in row]
    assert None not in rles  # the default is the released files' (and SAM 2's) all-zero RLE
    assert any(not mask_utils.decode(dict(rle, counts=rle["counts"].encode())).any() for rle in rles)
    write_sav(tmp_path, seed=2, num_videos=2, num_frames=8, config=WORLD, absent="null")  # the same clips
    empties = SAVDataset(datasets["sav"], 112, clip_length=3)
    nulls = SAVDataset(tmp_path, 112, clip_length=3)
    for a, b in zip(nulls.records, empties.records):
        assert (a["visible"] == b["visible"]).all() and a["starts"] == b["starts"]
    assert torch.equal(nulls[(1, 3)]["masks"], empties[(1, 3)]["masks"])


def test_saco_reader_has_positives_and_negatives(datasets):
    ds = ConceptDataset(datasets["saco"], 112, style="saco")
    samples = [ds[i] for i in range(len(ds))]
    assert {len(s["boxes"]) > 0 for s in samples} == {True, False}
    for s in samples:
        assert isinstance(s["phrase"], str) and s["phrase"]
        assert s["masks"].shape == (len(s["boxes"]), 112, 112)


def test_cached_resized_images_are_what_a_fresh_decode_gives(datasets):
    """data.cache_mb: the same samples bit for bit, flips included, and a hit is a copy."""
    fresh = ConceptDataset(datasets["saco"], 112, style="saco", hflip=0.5)
    cached = ConceptDataset(datasets["saco"], 112, style="saco", hflip=0.5, cache_mb=64)
    refs = [(i, seed) for seed in range(3) for i in range(len(fresh))]
    for ref in refs:
        a, b = fresh[ref], cached[ref]
        for key in ("pixels", "valid", "masks", "boxes"):
            assert torch.equal(a[key], b[key]), (ref, key)
    cache = cached.resized_images
    assert cache.hits > 0 and cache.misses > 0 and cache.hits + cache.misses == len(refs)
    assert cache.misses <= 2 * len({r["image"] for r in cached.records})  # at most once per (image, flip)
    sample = cached[refs[0]]
    sample["pixels"].zero_()  # a caller changing its copy does not change the next sample
    assert torch.equal(cached[refs[0]]["pixels"], fresh[refs[0]]["pixels"])


def test_resized_image_cache_keeps_to_its_byte_budget(datasets):
    per_image = (3 * 112 * 112) * 4 + 112 * 112  # float32 pixels + bool valid mask
    paths = sorted({r["image"] for r in ConceptDataset(datasets["saco"], 112, style="saco").records})
    assert len(paths) >= 3
    cache = ResizedImages(max_bytes=2 * per_image)
    made = []

    def make(path):
        def fresh():
            made.append(path)
            return resize_image(np.zeros((30, 40, 3), np.uint8), 112)

        return fresh

    for path in paths[:3]:
        cache.resized(path, False, make(path))
    assert cache.bytes == 2 * per_image  # the first went when the third came
    cache.resized(paths[2], False, make(paths[2]))  # a hit
    cache.resized(paths[0], False, make(paths[0]))  # evicted: made again
    assert made == [paths[0], paths[1], paths[2], paths[0]]
    off = ResizedImages(max_bytes=0)
    off.resized(paths[0], False, make(paths[0]))
    off.resized(paths[0], False, make(paths[0]))
    assert off.bytes == 0 and made[-2:] == [paths[0], paths[0]]


def test_coco_reader_uses_category_names_as_phrases(datasets):
    doc = json.loads((datasets["coco"] / "annotations.json").read_text())
    names = {c["name"] for c in doc["categories"]}
    ds = ConceptDataset(datasets["coco"], 112, style="coco", negatives_per_image=1)
    samples = [ds[i] for i in range(len(ds))]
    assert all(s["phrase"] in names for s in samples)
    negatives = [s for s in samples if len(s["boxes"]) == 0]
    assert len(negatives) == 3  # one per image


def test_missing_annotation_file_is_fatal(tmp_path):
    with pytest.raises(DataError, match="annotation file"):
        ConceptDataset(tmp_path, 112, style="coco")


def test_prompt_reader_skips_comments_and_bad_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\nred  mug\n\n" + "x" * 300 + "\nblue cup\n")
    ds = PromptDataset(path)
    assert [ds[i]["phrase"] for i in range(len(ds))] == ["red mug", "blue cup"]
    assert ds.bad.count == 1
    with pytest.raises(DataError, match="does not exist"):
        PromptDataset(tmp_path / "missing.txt")


def test_letterbox_records_the_valid_region():
    image = np.zeros((50, 100, 3), dtype=np.uint8)
    out = resize_image(image, 112, "letterbox")
    assert out.valid[:56].all() and not out.valid[56:].any()
    grid = valid_grid(out.valid, 8)
    assert grid[:4].all() and not grid[4:].any()
    boxes = out.boxes(np.array([[0, 0, 100, 50]], dtype=np.float32))
    assert torch.allclose(boxes, torch.tensor([[0.0, 0.0, 112.0, 56.0]]))
    flipped = resize_image(image, 112, "stretch", flip=True)
    assert torch.allclose(flipped.boxes(np.array([[0, 0, 10, 50]])), torch.tensor([[100.8, 0, 112, 112]]))


def test_sampler_resumes_mid_epoch_and_shards_ranks():
    full = ResumableBatchSampler(10, 3, seed=5)
    it = iter(full)
    first = [next(it) for _ in range(7)]  # crosses an epoch boundary (3 batches per epoch)
    resumed = iter(ResumableBatchSampler(10, 3, seed=5, start_batch=4))
    assert [next(resumed) for _ in range(3)] == first[4:]
    r0 = next(iter(ResumableBatchSampler(10, 2, rank=0, world_size=2)))
    r1 = next(iter(ResumableBatchSampler(10, 2, rank=1, world_size=2)))
    assert not {i for i, _ in r0} & {i for i, _ in r1}
    with pytest.raises(ValueError, match="batch"):
        ResumableBatchSampler(3, 4)


def test_grouped_sampler_keeps_an_images_phrases_together_and_still_resumes():
    keys = [f"img{i // 5}" for i in range(40)]  # 8 images x 5 phrases
    sampler = ResumableBatchSampler(40, 8, seed=3, group_keys=keys, group_size=4)
    it = iter(sampler)
    epoch = [[i for i, _ in next(it)] for _ in range(sampler.batches_per_epoch)]
    drawn = [i for batch in epoch for i in batch]
    assert len(drawn) == len(set(drawn)) == 40  # every datapoint once per epoch
    # runs of up to 4 phrases of one image sit together: a batch of 8 spans at most 4 images
    # (two runs of 4, or shorter runs), where independent draws would span about 6
    distinct = [len({keys[i] for i in batch}) for batch in epoch]
    assert max(distinct) <= 4 and sum(distinct) / len(distinct) < 3.5
    next_epoch = [[i for i, _ in next(it)] for _ in range(2)]
    resumed = iter(ResumableBatchSampler(40, 8, seed=3, start_batch=3, group_keys=keys, group_size=4))
    assert [[i for i, _ in next(resumed)] for _ in range(4)] == (epoch + next_epoch)[3:7]
    r0, r1 = (
        {
            i
            for i, _ in next(
                iter(ResumableBatchSampler(40, 8, rank=r, world_size=2, group_keys=keys, group_size=4))
            )
        }
        for r in (0, 1)
    )
    assert not r0 & r1
    with pytest.raises(ValueError, match="group_keys"):
        ResumableBatchSampler(40, 8, group_keys=keys[:-1], group_size=4)


# ----------------------------------------------------------------------------- real-format corner cases
def _write_released_sav(root, frame_ids, rows=6, size=32):
    """A video as SA-V releases it: ``*_manual.json`` with only its real fields (no
    ``annotated_frame_indices``; rows annotated at 6 fps), frame files named by their 24 fps
    video frame id. Frame ``f`` is filled with the grey level ``8 * f``, to tell files apart."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    video = root / "sav_000001"
    video.mkdir(parents=True)
    masklet = []
    for i in range(rows):
        mask = np.zeros((size, size), np.uint8)
        mask[:, 4 * i : 4 * i + 4] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        masklet.append([{"size": rle["size"], "counts": rle["counts"].decode()}])
    doc = {"video_id": "sav_000001", "video_height": size, "video_width": size, "masklet": masklet}
    (root / "sav_000001_manual.json").write_text(json.dumps({**doc, "masklet_num": 1}))
    for f in frame_ids:
        Image.fromarray(np.full((size, size, 3), 8 * f, np.uint8)).save(video / f"{f:05d}.jpg", quality=100)


def _frame_level(pixels: torch.Tensor) -> float:
    """The grey level a (uniform) input frame was read from: pixels are (level / 255 - 0.5) / 0.5."""
    return float((pixels.mean() * 0.5 + 0.5) * 255)


@pytest.mark.parametrize("layout", ["every 4th frame (SAM 2's extraction)", "all 24 fps frames"])
def test_sav_reader_pairs_released_masklet_rows_with_every_4th_video_frame(layout, tmp_path):
    frames = range(0, 24, 4) if layout.startswith("every") else range(24)
    _write_released_sav(tmp_path, frames)
    ds = SAVDataset(tmp_path, 28, clip_length=2)
    assert ds.records[0]["frames"] == [0, 4, 8, 12, 16, 20]
    for seed in range(6):
        clip = ds[(0, seed)]
        start = int(clip["key"].rsplit(":", 1)[1])
        for t in range(2):
            # row start + t is video frame 4 * (start + t), file {4 * (start + t):05d}.jpg
            assert _frame_level(clip["pixels"][t]) == pytest.approx(8 * 4 * (start + t), abs=2)


def test_sav_frame_stride_is_an_option_and_checked(tmp_path):
    _write_released_sav(tmp_path, range(6))  # a folder holding exactly the annotated frames
    ds = SAVDataset(tmp_path, 28, clip_length=2, frame_stride=1)
    clip = ds[(0, 1)]
    start = int(clip["key"].rsplit(":", 1)[1])
    assert _frame_level(clip["pixels"][1]) == pytest.approx(8 * (start + 1), abs=2)
    with pytest.raises(DataError, match="missing frames"):  # default stride 4: no 00004.jpg here
        SAVDataset(tmp_path, 28, clip_length=2)
    with pytest.raises(ValueError, match="frame_stride"):
        SAVDataset(tmp_path, 28, clip_length=2, frame_stride=0)


def _write_coco(root, annotations, categories, images=("a.jpg",), **image_fields):
    from PIL import Image

    root.mkdir(exist_ok=True)
    entries = []
    for i, name in enumerate(images, start=1):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / name)
        entries.append({"id": i, "file_name": name, "height": 32, "width": 32, **image_fields})
    doc = {"images": entries, "annotations": annotations, "categories": categories}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_coco_category_present_only_as_a_crowd_is_never_a_negative(tmp_path):
    square = [[2, 2, 20, 2, 20, 20, 2, 20]]
    crowd_rle = {"counts": [40, 200, 784], "size": [32, 32]}
    root = _write_coco(
        tmp_path / "coco",
        [
            {"id": 1, "image_id": 1, "category_id": 2, "segmentation": square, "bbox": [2, 2, 18, 18]},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": crowd_rle, "iscrowd": 1},
        ],
        [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}],
    )
    ds = ConceptDataset(root, 28, style="coco", negatives_per_image=1)
    assert sorted(str(r["phrase"]) for r in ds.records) == ["None", "dog"]  # the crowd is no instance
    negative = next(i for i, r in enumerate(ds.records) if r["phrase"] is None)
    drawn = {ds[(negative, seed)]["phrase"] for seed in range(40)}
    assert drawn == {"cat"}  # "person" is in the image (as a crowd): never drawn as absent


@pytest.mark.parametrize("polygon", [[[]], [[5, 5]], [[1, 2, 3, 4, 5]], [[1, 1, 9, 1]]])
def test_degenerate_polygon_is_a_skipped_record(polygon, tmp_path):
    square = [[2, 2, 20, 2, 20, 20, 2, 20]]
    root = _write_coco(
        tmp_path / "saco",
        [
            {"id": 1, "image_id": 1, "segmentation": polygon, "bbox": [2, 2, 18, 18]},
            {"id": 2, "image_id": 2, "segmentation": square, "bbox": [2, 2, 18, 18]},
        ],
        [],
        images=("a.jpg", "b.jpg"),
        text_input="dog",
    )
    ds = ConceptDataset(root, 28, style="saco")
    sample = ds[0]  # a.jpg's polygon cannot be decoded: its neighbour stands in
    assert sample["key"] == "b.jpg" and len(sample["boxes"]) == 1
    assert ds.bad.count == 1 and "unreadable (ValueError)" in ds.bad.reasons
