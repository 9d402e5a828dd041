"""Tests of the synthetic concept world: determinism, exactness of the ground truth, and writers
whose files read back with the real readers (pycocotools, rosbags, PIL)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from efficientsam3_ros.cli import CliError
from efficientsam3_ros.synthetic import (
    COLOURS,
    CONCEPTS,
    DEFAULT_CONCEPTS,
    Frame,
    WorldConfig,
    render_scene,
    render_video,
    write_coco,
    write_dataset,
    write_rosbag,
    write_sa1b,
    write_sav,
)
from efficientsam3_ros.synthetic import cli as world_cli
from efficientsam3_ros.synthetic.writers import CocoBuilder

# a busy world: many objects, frequent entries and exits, so every event shows up in a short video
BUSY = WorldConfig(num_objects=(4, 5), num_distractors=(2, 3), p_enter=0.2, p_leave=0.06, speed=0.02)


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _signature(frames: list[Frame]) -> list[tuple]:
    return [
        (
            f.image.tobytes(),
            f.track_map.tobytes(),
            [(o.track_id, o.concept, o.box.tobytes(), o.mask.tobytes()) for o in f.objects],
        )
        for f in frames
    ]


@pytest.fixture(scope="module")
def busy_video() -> list[Frame]:
    return render_video(3, 60, BUSY)


def test_vocabulary() -> None:
    assert len(CONCEPTS) >= 8 and len(set(CONCEPTS)) == len(CONCEPTS)
    assert {"red circle", "blue square", "green triangle", "yellow star"} <= set(CONCEPTS)
    assert set(DEFAULT_CONCEPTS) <= set(CONCEPTS) and len(DEFAULT_CONCEPTS) >= 8
    with pytest.raises(ValueError):
        WorldConfig(concepts=("pink elephant",))
    with pytest.raises(ValueError):
        WorldConfig(num_objects=(3, 1))


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a, b = render_video(11, 8), render_video(11, 8)
    assert _signature(a) == _signature(b)
    c = render_video(12, 8)
    assert a[0].image.tobytes() != c[0].image.tobytes()
    assert render_scene((5, 1)).image.tobytes() != render_scene((5, 2)).image.tobytes()
    frame = render_scene(11)
    assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
    assert frame.image.tobytes() == a[0].image.tobytes()  # a scene is the video's first frame


def test_boxes_are_tight_around_masks(busy_video: list[Frame]) -> None:
    checked = 0
    for frame in busy_video:
        for obj in frame.objects:
            ys, xs = np.nonzero(obj.mask)
            assert obj.area == ys.size > 0
            assert obj.box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            assert mask_utils.toBbox(rle).tolist() == obj.bbox_xywh
            px, py = obj.interior_point()
            assert obj.mask[int(py), int(px)]
            checked += 1
    assert checked > 100


def test_masks_are_visible_parts_and_match_pixels(busy_video: list[Frame]) -> None:
    occluded_inside = 0
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    for frame in busy_video:
        masks = frame.masks()
        assert masks.sum(axis=0).max() <= 1, "visible masks of different objects overlap"
        for obj in frame.objects:
            assert np.array_equal(frame.track_map == obj.track_id, obj.mask)
            assert 0 < obj.visibility <= 1
            # the pixels under a mask are painted in its concept's colour
            mean = frame.image[obj.mask].astype(np.float32).mean(axis=0)
            assert names[int(np.argmin(((palette - mean) ** 2).sum(1)))] == obj.concept.split(" ")[0]
            x1, y1, x2, y2 = obj.box
            inside = x1 > 0 and y1 > 0 and x2 < frame.width and y2 < frame.height
            if obj.visibility < 0.8 and inside:
                occluded_inside += 1
                # whoever hides it is drawn later (nearer): no nearer pixel belongs to a farther object
                depths = {o.track_id: o.depth for o in frame.objects}
                ring = np.zeros_like(obj.mask)
                ring[max(0, int(y1) - 2) : int(y2) + 2, max(0, int(x1) - 2) : int(x2) + 2] = True
                neighbours = set(np.unique(frame.track_map[ring & ~obj.mask]).tolist()) - {0}
                assert any(depths.get(t, 0) > obj.depth for t in neighbours)
    assert occluded_inside > 0, "the busy video should contain real occlusions"


def test_objects_enter_and_leave(busy_video: list[Frame]) -> None:
    ids_per_frame = [{o.track_id for o in f.objects} for f in busy_video]
    first, last = ids_per_frame[0], ids_per_frame[-1]
    all_ids = set().union(*ids_per_frame)
    entered = all_ids - first
    assert entered, "no object entered"
    assert first - last, "no object of the first frame left"
    assert min(entered) > max(first), "new objects must get new, larger track ids"
    for tid in entered:  # an entering object first shows up cut by the image border
        t = next(i for i, ids in enumerate(ids_per_frame) if tid in ids)
        obj = next(o for o in busy_video[t].objects if o.track_id == tid)
        x1, y1, x2, y2 = obj.box
        assert x1 == 0 or y1 == 0 or x2 == BUSY.width or y2 == BUSY.height
    left_at_border = 0  # objects that left for good, last seen cut by the image border
    for tid in all_ids - last:
        t = max(i for i, ids in enumerate(ids_per_frame) if tid in ids)
        obj = next(o for o in busy_video[t].objects if o.track_id == tid)
        x1, y1, x2, y2 = obj.box
        left_at_border += bool(x1 == 0 or y1 == 0 or x2 == BUSY.width or y2 == BUSY.height)
    assert left_at_border > 0
    concepts = {}
    for f in busy_video:  # a track keeps its concept
        for o in f.objects:
            assert concepts.setdefault(o.track_id, o.concept) == o.concept
    assert any(o.distractor for f in busy_video for o in f.objects)
    assert any(o.concept not in BUSY.concepts for f in busy_video for o in f.objects if o.distractor)


def test_sa1b_writer_reads_back(tmp_path: Path) -> None:
    paths = write_sa1b(tmp_path, seed=4, num_images=2)
    assert [p.name for p in paths] == ["sa_1.json", "sa_2.json"]
    for n, path in enumerate(paths, start=1):
        doc = json.loads(path.read_text())
        frame = render_scene((4, n))
        img = doc["image"]
        assert img == {"image_id": n, "width": 320, "height": 240, "file_name": f"sa_{n}.jpg"}
        with Image.open(tmp_path / img["file_name"]) as im:
            assert im.size == (320, 240) and im.format == "JPEG"
        assert len(doc["annotations"]) == len(frame.objects) > 0
        for ann, obj in zip(doc["annotations"], frame.objects):
            assert isinstance(ann["segmentation"]["counts"], str)
            assert np.array_equal(_decode(ann["segmentation"]), obj.mask)
            assert ann["bbox"] == obj.bbox_xywh and ann["area"] == obj.area
            x, y = ann["point_coords"][0]
            assert obj.mask[int(y), int(x)]
            assert ann["crop_box"] == [0.0, 0.0, 320.0, 240.0]
            assert {"predicted_iou", "stability_score", "id"} <= set(ann)


def test_sav_writer_reads_back(tmp_path: Path) -> None:
    (path,) = write_sav(
        tmp_path, seed=2, num_videos=1, num_frames=20, config=BUSY, annotate_every=2, absent="null"
    )
    doc = json.loads(path.read_text())
    frames = render_video((2, 1), 20, BUSY)
    assert path.name == "sav_000001_manual.json"
    assert sorted((tmp_path / "sav_000001").iterdir())[-1].name == "00019.jpg"
    assert doc["video_frame_count"] == 20 and doc["video_width"] == 320 and doc["video_height"] == 240
    assert len(doc["masklet"]) == 10 and doc["annotated_frame_indices"] == list(range(0, 20, 2))
    n = doc["masklet_num"]
    assert doc["masklet_id"] == list(range(n)) and all(len(row) == n for row in doc["masklet"])
    nulls = 0
    for k, row in enumerate(doc["masklet"]):
        frame = frames[2 * k]
        by_id = {o.track_id: o for o in frame.objects}
        for j, rle in enumerate(row):
            obj = by_id.get(doc["masklet_track_id"][j])
            if rle is None:
                nulls += 1
                assert obj is None
            else:
                assert np.array_equal(_decode(rle), obj.mask)
                assert obj.concept == doc["masklet_concept"][j]
    assert nulls > 0, "objects entering or leaving must leave null entries"
    for j, f in enumerate(doc["masklet_first_appeared_frame"]):
        assert doc["masklet"][int(f)][j] is not None and all(r[j] is None for r in doc["masklet"][: int(f)])


@pytest.mark.parametrize("per_phrase", [True, False])
def test_coco_and_saco_writers_read_back(tmp_path: Path, per_phrase: bool) -> None:
    path = write_coco(tmp_path, seed=9, num_images=3, per_phrase=per_phrase)
    coco = COCO(str(path))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert cats == {i + 1: c for i, c in enumerate(CONCEPTS)}
    frames = [render_scene((9, n)) for n in (1, 2, 3)]
    negatives = 0
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(tmp_path / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        frame = frames[img["image_index"]] if per_phrase else frames[img["id"] - 1]
        expected = frame.of_concept(img["text_input"]) if per_phrase else frame.objects
        assert len(anns) == len(expected)
        negatives += per_phrase and not anns
        for ann, obj in zip(anns, expected):
            assert cats[ann["category_id"]] == obj.concept
            assert ann["iscrowd"] == 0 and ann["bbox"] == obj.bbox_xywh
            assert np.array_equal(coco.annToMask(ann).astype(bool), obj.mask)
    if per_phrase:
        assert negatives == 3, "each image gets one negative noun phrase"
    again = write_coco(tmp_path / "again", seed=9, num_images=3, per_phrase=per_phrase)
    assert again.read_bytes() == path.read_bytes()
    assert (tmp_path / "again/images/000002.jpg").read_bytes() == (
        tmp_path / "images/000002.jpg"
    ).read_bytes()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_rosbag_writer_reads_back(tmp_path: Path, storage: str) -> None:
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    n = 12
    bag_dir, gt_path = write_rosbag(tmp_path, seed=5, num_frames=n, config=BUSY, storage=storage, fps=20.0)
    frames = render_video(5, n, BUSY)
    gt = json.loads(gt_path.read_text())
    assert gt["info"]["topic"] == "/camera/image_raw" and gt["info"]["storage"] == storage
    images = sorted(gt["images"], key=lambda i: i["frame_index"])
    assert [int(i["file_name"]) for i in images] == list(range(n))
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with Reader(bag_dir) as reader:
        conns = [c for c in reader.connections if c.topic == "/camera/image_raw"]
        assert len(conns) == 1 and conns[0].msgtype == "sensor_msgs/msg/Image"
        assert reader.message_count == n
        for i, (conn, stamp, raw) in enumerate(reader.messages(connections=conns)):
            msg = typestore.deserialize_cdr(raw, conn.msgtype)
            header_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            assert header_ns == stamp == images[i]["stamp_ns"]
            assert (msg.height, msg.width, msg.encoding, msg.step) == (240, 320, "rgb8", 960)
            assert bytes(msg.data) == frames[i].image.tobytes()
    assert images[1]["stamp_ns"] - images[0]["stamp_ns"] == 50_000_000

    again_bag, again_gt = write_rosbag(
        tmp_path / "again", seed=5, num_frames=n, config=BUSY, storage=storage, fps=20.0
    )
    assert again_gt.read_bytes() == gt_path.read_bytes()
    for f in bag_dir.iterdir():  # the bag itself is byte-reproducible too
        assert (again_bag / f.name).read_bytes() == f.read_bytes()

    coco = COCO(str(gt_path))
    for img in images:
        frame = frames[img["frame_index"]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert [a["track_id"] for a in anns] == [o.track_id for o in frame.objects]
        for ann, obj in zip(anns, frame.objects):
            assert CONCEPTS[ann["category_id"] - 1] == obj.concept
            assert np.array_equal(coco.annToMask(ann).astype(bool), obj.mask)


@pytest.mark.parametrize("encoding", ["yuyv", "nv12", "bayer_rggb8", "bgr16"])
def test_rosbag_writer_writes_a_cameras_encoding(tmp_path: Path, encoding: str) -> None:
    """--encoding lays the rendered frames out as a camera would; they decode back to the frames
    (lossless for bgr16, and off only where chroma subsampling or demosaicing blurs an edge)."""
    from rosbags.rosbag2 import Reader

    from efficientsam3_ros.ros import messages

    n = 3
    bag_dir, gt_path = write_rosbag(tmp_path, seed=5, num_frames=n, config=BUSY, encoding=encoding)
    assert json.loads(gt_path.read_text())["info"]["encoding"] == encoding
    frames = render_video(5, n, BUSY)
    typestore = messages.get_typestore()
    with Reader(bag_dir) as reader:
        decoded = [
            messages.msg_to_rgb(typestore.deserialize_cdr(raw, conn.msgtype))
            for conn, _, raw in reader.messages()
        ]
    assert len(decoded) == n
    for frame, rgb in zip(frames, decoded):
        error = np.abs(rgb.astype(int) - frame.image)
        if encoding == "bgr16":
            assert error.max() == 0
        else:
            assert error.mean() < 4 and np.percentile(error, 90) <= 4, (encoding, error.mean())


def test_cli_refuses_a_size_the_encoding_cannot_hold(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    world_cli.add_arguments(parser)
    args = parser.parse_args(["rosbag", str(tmp_path / "w"), "--encoding", "nv12", "--size", "33x32"])
    with pytest.raises(CliError, match="nv12 does not fit --size 33x32.*even width and height"):
        world_cli.run(args)
    assert not (tmp_path / "w").exists()


def test_cli_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    world_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "saco",
            str(tmp_path),
            "--num",
            "2",
            "--seed",
            "3",
            "--size",
            "160x120",
            "--concepts",
            "red circle,blue star",
        ]
    )
    assert world_cli.run(args) == 0
    assert str(tmp_path / "annotations.json") in capsys.readouterr().out
    doc = json.loads((tmp_path / "annotations.json").read_text())
    assert doc["info"]["concepts"] == ["red circle", "blue star"]
    assert {(i["width"], i["height"]) for i in doc["images"]} == {(160, 120)}
    with pytest.raises(ValueError):
        write_dataset("nope", tmp_path)


def test_saco_negatives_are_the_hardest_absent_targets_first() -> None:
    """A frame's negatives are absent target phrases sharing a word with what is there, before any other."""
    frame = render_scene((4, 1))
    present = {o.concept for o in frame.objects}
    words = {w for c in present for w in c.split()}
    builder = CocoBuilder(per_phrase=True, negatives_per_image=3, seed=4, targets=DEFAULT_CONCEPTS)
    builder.add(frame, "000001.jpg")
    negatives = [im["text_input"] for im in builder.images if im["text_input"] not in present]
    assert len(negatives) == 3 and len(set(negatives)) == 3
    hard_targets = [c for c in DEFAULT_CONCEPTS if c not in present and set(c.split()) & words]
    expected_from_targets = min(3, len(hard_targets))
    assert sum(c in hard_targets for c in negatives) == expected_from_targets
    assert all(set(c.split()) & words for c in negatives[:expected_from_targets])
    with pytest.raises(ValueError, match="negatives_per_image"):
        CocoBuilder(per_phrase=True, negatives_per_image=-1)


def test_world_cli_writes_the_requested_negatives(tmp_path: Path) -> None:
    main = world_cli.main
    assert main(["saco", str(tmp_path), "--seed", "3", "--num", "2", "--negatives", "2"]) == 0
    doc = json.loads((tmp_path / "annotations.json").read_text())
    positive = {a["image_id"] for a in doc["annotations"]}
    assert sum(im["id"] not in positive for im in doc["images"]) == 4
    assert doc["info"]["negatives_per_image"] == 2
    with pytest.raises(SystemExit):
        main(["saco", str(tmp_path / "x"), "--negatives", "-1"])


def _exit_code(main: object, argv: list[str]) -> int:
    """What the shell would see: argparse's errors exit through SystemExit, the command's return."""
    try:
        return main(argv)  # type: ignore[operator]
    except SystemExit as stop:
        return int(stop.code)


@pytest.mark.parametrize("door", ["efficientsam3 world", "python -m efficientsam3_ros.synthetic"])
@pytest.mark.parametrize(
    "argv",
    [
        ["coco", "--objects", "5", "2"],  # WorldConfig's range check
        ["coco", "--objects", "-1", "2"],
        ["coco", "--size", "8x8"],
        ["coco", "--p-enter", "2"],
        ["sav", "--annotate-every", "0"],
        ["rosbag", "--fps", "0"],  # divided by in the timestamps
        ["sav", "--fps", "0"],
        ["coco", "--seed", "-1"],  # numpy refuses it
        ["coco", "--num", "-1"],  # wrote an empty dataset and exited 0
        ["sav", "--frames", "0"],
    ],
    ids=" ".join,
)
def test_world_cli_refuses_bad_options_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], door: str
) -> None:
    """Bad options end in exit code 2 and one error line, no traceback, and nothing written."""
    from efficientsam3_ros.cli import main as efficientsam3

    out = tmp_path / "out"
    kind, options = argv[0], argv[1:]
    if door == "efficientsam3 world":
        code = _exit_code(efficientsam3, ["world", kind, str(out), *options])
    else:
        code = _exit_code(world_cli.main, [kind, str(out), *options])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    # argparse puts its usage synopsis above a bad flag's error; the error itself is one line
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert not out.exists()
