"""Edge cases of the synthetic concept world found in review: seeds, options the renderer cannot
honour, bag stamps, the ``world`` command on an existing output, cross-process determinism, and
exact read-back through the training readers and the evaluator's ground-truth loader.

The references here are independent of the writers: masks come from the world's own label map
(``Frame.track_map``) and stamps from the documented formula, not from the files under test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from efficientsam3_ros.synthetic import (
    CONCEPTS,
    Frame,
    WorldConfig,
    render_scene,
    render_video,
    write_coco,
    write_rosbag,
    write_sa1b,
    write_sav,
)
from efficientsam3_ros.synthetic import cli as world_cli

SMALL = WorldConfig(
    width=64, height=64, num_objects=(3, 4), num_distractors=(1, 2), p_enter=0.3, p_leave=0.1, speed=0.03
)


# --------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("kind", [np.int64, np.int32, np.uint16])
def test_a_numpy_integer_seed_is_the_same_seed_as_the_int(tmp_path: Path, kind: type) -> None:
    """``for seed in np.arange(n)`` is the natural loop; it raised TypeError ('not iterable') and the
    writers could not put the seed into their JSON."""
    a, b = render_scene(kind(3), SMALL), render_scene(3, SMALL)
    assert a.image.tobytes() == b.image.tobytes()
    assert [o.track_id for o in a.objects] == [o.track_id for o in b.objects]
    path = write_coco(tmp_path, seed=kind(3), num_images=1, config=SMALL)
    info = json.loads(path.read_text())["info"]
    assert info["seed"] == 3
    assert path.read_bytes() == write_coco(tmp_path / "int", seed=3, num_images=1, config=SMALL).read_bytes()


# --------------------------------------------------------------------------- config


def test_world_config_refuses_noise_the_renderer_cannot_draw() -> None:
    """noise > 127 failed only at render time with numpy's 'low is out of bounds for int8'."""
    with pytest.raises(ValueError, match="noise"):
        WorldConfig(noise=200)
    with pytest.raises(ValueError, match="noise"):
        WorldConfig(noise=-1)
    frame = render_scene(0, WorldConfig(width=32, height=32, noise=127))
    assert frame.image.dtype == np.uint8


def test_world_config_refuses_objects_wider_than_the_frame() -> None:
    """A circumradius over the short side made the first spawn fail with 'high - low < 0'."""
    with pytest.raises(ValueError, match="scale_range"):
        WorldConfig(scale_range=(0.9, 1.2))
    frames = render_video(0, 3, WorldConfig(width=48, height=32, scale_range=(0.9, 1.0)))
    assert all(f.objects for f in frames)  # a frame-filling object is still drawn and annotated


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("fps", [0.0, -10.0, math.nan, math.inf, 2e9])
def test_rosbag_refuses_a_frame_rate_without_distinct_increasing_stamps(tmp_path: Path, fps: float) -> None:
    """Stamps are ``start + round(i * 1e9 / fps)``: fps 0 divided by zero, and fps over 1e9 gave
    several frames one stamp, which the evaluator's ground-truth reader refuses (stamps key frames)."""
    with pytest.raises(ValueError, match="fps"):
        write_rosbag(tmp_path, num_frames=3, config=SMALL, fps=fps)
    assert not (tmp_path / "bag").exists()


def test_rosbag_at_the_fastest_frame_rate_keeps_stamps_distinct(tmp_path: Path) -> None:
    from efficientsam3_ros.evaluation.ground_truth import load_ground_truth

    _, gt = write_rosbag(tmp_path, num_frames=4, config=SMALL, fps=1e9)
    frames, _ = load_ground_truth(gt)
    assert sorted(frames) == [1_700_000_000_000_000_000 + i for i in range(4)]


@pytest.mark.parametrize("fps", [0.0, -1.0, math.nan])
def test_sav_refuses_a_non_positive_frame_rate(tmp_path: Path, fps: float) -> None:
    """fps 0 raised ZeroDivisionError from video_duration after every frame was written."""
    with pytest.raises(ValueError, match="fps"):
        write_sav(tmp_path, num_videos=1, num_frames=2, config=SMALL, fps=fps)


# --------------------------------------------------------------------------- command line


def _run_world(argv: list[str]) -> int:
    try:
        return world_cli.main(argv)
    except SystemExit as stop:  # argparse errors
        return int(stop.code)


def test_world_cli_refuses_an_existing_bag_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second ``world rosbag OUT`` ended in rosbags' WriterError traceback and exit code 1."""
    out = tmp_path / "w"
    assert _run_world(["rosbag", str(out), "--frames", "2", "--size", "32x32"]) == 0
    gt_before = (out / "gt.json").read_bytes()
    capsys.readouterr()
    assert _run_world(["rosbag", str(out), "--frames", "3", "--size", "32x32"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "exists" in err
    assert (out / "gt.json").read_bytes() == gt_before  # nothing overwritten


def test_world_cli_refuses_a_frame_rate_the_writer_cannot_stamp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--fps 2e9 passed the CLI's own check (> 0) and write_rosbag's ValueError came out as a
    traceback with exit code 1; argparse now refuses it with the other bad options."""
    out = tmp_path / "w"
    assert _run_world(["rosbag", str(out), "--frames", "2", "--size", "32x32", "--fps", "2e9"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--fps: must be in (0, 1e9]" in err, err
    assert not out.exists()


def test_world_cli_refuses_a_sqlite_path_rosbags_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w#1"
    assert _run_world(["rosbag", str(out), "--frames", "2", "--size", "32x32"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert _run_world(["rosbag", str(out), "--frames", "2", "--size", "32x32", "--storage", "mcap"]) == 0


def test_world_cli_reports_an_unwritable_output_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OUT_DIR that is a file raised FileExistsError / NotADirectoryError with a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run_world(["sa1b", str(blocker), "--num", "1", "--size", "32x32"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- determinism

_DIGEST = """
import hashlib, random, sys, tempfile
from pathlib import Path
import numpy as np
np.random.seed(1234); random.seed(99); np.random.rand(7)   # a caller that touched the global RNGs
from efficientsam3_ros.synthetic import WorldConfig, write_dataset
cfg = WorldConfig(width=48, height=40, p_enter=0.3, p_leave=0.1)
h = hashlib.sha256()
with tempfile.TemporaryDirectory() as d:
    for kind in ("sa1b", "sav", "saco", "rosbag"):
        write_dataset(kind, f"{d}/{kind}", seed=5, num=2, num_frames=None if kind == "sa1b" else 6, config=cfg)
    for p in sorted(Path(d).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode()); h.update(p.read_bytes())
print(h.hexdigest())
"""


def test_outputs_are_byte_identical_across_processes_and_hash_seeds() -> None:
    """Nothing may depend on PYTHONHASHSEED (set/dict order of str), thread counts or global RNGs."""
    digests = set()
    for hash_seed, threads in (("0", "1"), ("4242", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": threads}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


# --------------------------------------------------------------------------- readers


def _expected_mask(frame: Frame, track_id: int) -> np.ndarray:
    """The reference: the world's label map, independent of the RLE the writers produce."""
    return frame.track_map == track_id


def test_training_readers_give_back_the_worlds_ground_truth(tmp_path: Path) -> None:
    """SA-1B, SA-V (annotated every 2nd frame) and SA-Co files read through the training readers
    equal the label map of the frames they came from (square frames: the reader's resize is identity)."""
    from efficientsam3_ros.training.data.coco import ConceptDataset
    from efficientsam3_ros.training.data.sa1b import SA1BDataset
    from efficientsam3_ros.training.data.sav import SAVDataset

    rng = np.random.default_rng(0)
    write_sa1b(tmp_path / "sa1b", seed=1, num_images=2, config=SMALL)
    sa1b = SA1BDataset(tmp_path / "sa1b", 64, decode_masks=True)
    assert len(sa1b.records) == 2
    for record in sa1b.records:
        frame = render_scene((1, int(record["json"].stem.split("_")[1])), SMALL)
        sample = sa1b.load(record, rng)
        expected = np.stack([_expected_mask(frame, o.track_id) for o in frame.objects])
        assert np.array_equal(sample["masks"].numpy(), expected)
        tight = []
        for mask in expected:  # pixel-edge xyxy: x2 = last column + 1
            ys, xs = np.nonzero(mask)
            tight.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert np.array_equal(sample["boxes"].numpy(), np.array(tight, dtype=np.float32))

    write_sav(tmp_path / "sav", seed=2, num_videos=1, num_frames=12, config=SMALL, annotate_every=2)
    sav = SAVDataset(tmp_path / "sav", 64, clip_length=3, max_objects=16)
    (record,) = sav.records
    frames = render_video((2, 1), 12, SMALL)
    track_ids = json.loads(record["json"].read_text())["masklet_track_id"]
    assert record["frames"] == list(range(0, 12, 2))
    for _ in range(4):
        sample = sav.load(record, rng)
        start = int(sample["key"].rsplit(":", 1)[1])
        for k in range(3):
            frame = frames[record["frames"][start + k]]
            for j, m in enumerate(sample["object_ids"].tolist()):
                assert np.array_equal(sample["masks"][k, j].numpy(), _expected_mask(frame, track_ids[m]))

    write_coco(tmp_path / "saco", seed=3, num_images=2, config=SMALL, negatives_per_image=2)
    saco = ConceptDataset(tmp_path / "saco", 64, style="saco")
    scenes = [render_scene((3, n), SMALL) for n in (1, 2)]
    negatives = 0
    for record in saco.records:
        frame = scenes[int(record["image"].stem) - 1]
        sample = saco.load(record, rng)
        ids = [o.track_id for o in frame.objects if o.concept == sample["phrase"]]
        negatives += not ids
        assert sample["masks"].shape[0] == len(ids)
        for mask, tid in zip(sample["masks"].numpy(), ids):
            assert np.array_equal(mask, _expected_mask(frame, tid))
    assert negatives == 4


def test_evaluator_reads_the_bag_ground_truth_back(tmp_path: Path) -> None:
    """gt.json through the bag evaluator's reader: one frame per stamp, labels, track ids, masks."""
    from pycocotools import mask as mask_utils

    from efficientsam3_ros.evaluation.ground_truth import load_ground_truth

    _, gt = write_rosbag(tmp_path, seed=4, num_frames=10, config=SMALL, fps=7.0)
    frames, labels = load_ground_truth(gt)
    assert labels == list(CONCEPTS)
    video = render_video(4, 10, SMALL)
    assert sorted(frames) == [1_700_000_000_000_000_000 + round(i * 1e9 / 7.0) for i in range(10)]
    for stamp, frame in zip(sorted(frames), video):
        record = frames[stamp]
        assert record.image_size == (64, 64)
        assert [(i.label, i.track_id) for i in record.instances] == [
            (o.concept, o.track_id) for o in frame.objects
        ]
        for instance in record.instances:
            rle = dict(instance.rle)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode()
            got = mask_utils.decode(rle).astype(bool)
            assert np.array_equal(got, _expected_mask(frame, instance.track_id))
