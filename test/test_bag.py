"""The offline bag evaluator end to end: bags in both storages, real ROS 2 recordings, failures.

Runs with the tiny random model where the model itself matters (round trip, real bags, CLI)
and with instant stand-in segmenters where only the loop's behaviour is under test
(Ctrl-C, corrupt messages, truncated files, ground-truth scoring with an oracle).
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores

from efficientsam3_ros.bag import cli
from efficientsam3_ros.bag.run import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EvalConfig,
    evaluate_bag,
)
from efficientsam3_ros.pipeline.results import FrameResult, Instance, TrackState, rle_to_mask
from efficientsam3_ros.ros import messages

T0 = 1_700_000_000_000_000_000
CONCEPTS = ["red circle", "blue square"]
TS = messages.get_typestore(Stores.ROS2_HUMBLE)


# ----------------------------------------------------------------------------- helpers


def _header(stamp_ns: int):
    return messages.make_header(stamp_ns, "cam", TS)


def image_cdr(rgb: np.ndarray, stamp_ns: int, compressed: bool = False) -> bytes:
    if compressed:
        buf = io.BytesIO()
        PILImage.fromarray(rgb).save(buf, format="PNG")
        msg = TS.types[messages.COMPRESSED_IMAGE](
            header=_header(stamp_ns), format="png", data=np.frombuffer(buf.getvalue(), np.uint8)
        )
    else:
        msg = messages.numpy_to_image_msg(rgb, "rgb8", header=_header(stamp_ns), typestore=TS)
    return messages.serialize(msg, TS)


def write_bag(
    path: Path,
    storage: str = "sqlite3",
    n: int = 3,
    compressed: bool = False,
    size: tuple[int, int] = (24, 32),
    raw_override: dict[int, bytes] | None = None,
) -> list[int]:
    """A bag with ``n`` images on /cam (+ a String distractor on /chatter); returns the header stamps."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    typ = messages.COMPRESSED_IMAGE if compressed else messages.IMAGE
    rng = np.random.default_rng(0)
    stamps = [T0 + k * 100_000_000 + 7 for k in range(n)]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        cam = writer.add_connection("/cam", typ, typestore=TS)
        chat = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=TS)
        for k, stamp in enumerate(stamps):
            rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            raw = (raw_override or {}).get(k) or image_cdr(rgb, stamp, compressed)
            writer.write(
                cam, stamp + 1000, raw
            )  # log time differs from the header stamp, as in real recordings
            writer.write(
                chat, stamp + 2000, messages.serialize(TS.types["std_msgs/msg/String"](data="hi"), TS)
            )
    return stamps


def read_results(path: Path) -> list[tuple[str, int, object]]:
    """(topic, log time, message) of a results bag, read WITHOUT a default typestore:
    this only works because the package's definitions are embedded in the bag."""
    with AnyReader([path]) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def config(bag: Path, out: Path, **kw) -> EvalConfig:
    return EvalConfig(
        bag=bag,
        image_topic=kw.pop("image_topic", "/cam"),
        concepts=CONCEPTS,
        out_dir=out,
        progress=False,
        **{"model": "es-ev-tiny", **kw},
    )


class FakeSegmenter:
    """Instant stand-in: one square per concept per frame; raises where told to."""

    backend_info = {"backend": "fake", "fallbacks": []}

    def __init__(self, interrupt_at: int | None = None, fail_at: tuple[int, ...] = ()) -> None:
        self.calls = 0
        self.interrupt_at, self.fail_at = interrupt_at, fail_at

    def set_concepts(self, labels: list[str]) -> list[int]:
        self.labels = list(labels)
        return list(range(len(labels)))

    def process(self, rgb: np.ndarray) -> FrameResult:
        k, self.calls = self.calls, self.calls + 1
        if k == self.interrupt_at:
            raise KeyboardInterrupt
        if k in self.fail_at:
            raise ValueError("frame refused by the model")
        h, w = rgb.shape[:2]
        instances = []
        for cid, label in enumerate(self.labels):
            mask = np.zeros((h, w), bool)
            mask[: h // 2, cid : cid + 3] = True
            instances.append(
                Instance(
                    cid,
                    label,
                    0.9,
                    np.array([cid, 0, cid + 3, h // 2], np.float32),
                    mask,
                    cid + 1,
                    TrackState.TRACKED,
                )
            )
        timings = {"preprocess": 1.0, "encode": 2.0, "detect": 3.0, "track": 0.5, "post": 0.5, "total": 7.0}
        return FrameResult(instances, (h, w), dict(enumerate(self.labels)), timings)


class OracleSegmenter:
    """Returns the synthetic world's exact ground truth, frame by frame: the perfect model."""

    backend_info = {"backend": "oracle", "fallbacks": []}

    def __init__(self, frames, every: int = 1) -> None:
        self.frames = frames[::every]
        self.calls = 0

    def set_concepts(self, labels: list[str]) -> list[int]:
        self.labels = list(labels)
        return list(range(len(labels)))

    def process(self, rgb: np.ndarray) -> FrameResult:
        frame = self.frames[self.calls]
        self.calls += 1
        assert np.array_equal(rgb, frame.image), "frames must arrive in order"
        instances = [
            Instance(
                self.labels.index(o.concept), o.concept, 1.0, o.box, o.mask, o.track_id, TrackState.TRACKED
            )
            for o in frame.objects
            if o.concept in self.labels
        ]
        return FrameResult(
            instances, (frame.height, frame.width), dict(enumerate(self.labels)), {"encode": 1.0}
        )


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    from efficientsam3_ros.pipeline.segmenter import ConceptSegmenter

    return ConceptSegmenter(tiny_model)


# ----------------------------------------------------------------------------- round trip, tiny model


@pytest.mark.parametrize(
    "storage, compressed, model",
    [("sqlite3", False, "tiny"), ("mcap", True, "tiny"), ("sqlite3", True, "fake"), ("mcap", False, "fake")],
    ids=[
        "sqlite3-Image-tiny",
        "mcap-CompressedImage-tiny",
        "sqlite3-CompressedImage-fake",
        "mcap-Image-fake",
    ],
)
def test_round_trip(tmp_path: Path, request, storage: str, compressed: bool, model: str):
    """Both storages and both image types with the tiny model; the other two pairings with the
    instant stand-in, to keep the suite fast (the loop is the same code either way)."""
    segmenter = request.getfixturevalue("segmenter") if model == "tiny" else FakeSegmenter()
    bag = tmp_path / "in"
    stamps = write_bag(bag, storage, n=2, compressed=compressed)
    outcome = evaluate_bag(config(bag, tmp_path / "out"), segmenter=segmenter)
    assert outcome.exit_code == EXIT_OK, outcome.error
    results = tmp_path / "out" / "results"
    assert list(results.glob("*.mcap" if storage == "mcap" else "*.db3")), "results keep the input's storage"
    msgs = read_results(results)
    assert [t for t, _, _ in msgs] == ["/cam/instances"] * len(stamps)
    assert [messages.stamp_to_ns(m.header) for _, _, m in msgs] == stamps
    assert [log for _, log, _ in msgs] == [s + 1000 for s in stamps]  # input log times kept for playback
    for _, _, m in msgs:
        assert (m.height, m.width) == (24, 32) and m.header.frame_id == "cam"
        assert list(m.concept_labels) == CONCEPTS
        for inst in m.instances:
            assert rle_to_mask(
                {"size": [inst.mask_height, inst.mask_width], "counts": inst.mask_rle}
            ).shape == (24, 32)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames"] | {"wall_fps": None} == {
        "in_topic": 2,
        "total_seen": 2,
        "processed": 2,
        "skipped": 0,
        "failed": 0,
        "duplicate_stamps": 0,
        "stamps_backwards": 0,
        "wall_fps": None,
    }
    assert report["stop"]["reason"] == "completed"
    assert report["backend"]["backend"] == segmenter.backend_info["backend"]
    for stage in ("encode", "detect"):
        assert report["latency_ms"][stage]["frames"] == 2 and report["latency_ms"][stage]["p99_ms"] > 0
    assert "data:image/png;base64," in (tmp_path / "out" / "report.html").read_text()


def test_cli_main_builds_model_and_writes_overlay(tmp_path: Path, capsys):
    bag = tmp_path / "in"
    write_bag(bag, "sqlite3", n=2)
    argv = [
        str(bag),
        "--image-topic",
        "/cam",
        "--concept",
        "red circle",
        "--model",
        "es-ev-tiny",
        "--overlay",
        "--storage",
        "mcap",
        "--every",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == EXIT_OK
    assert "processed 1, skipped 1" in capsys.readouterr().out
    msgs = read_results(tmp_path / "out" / "results")
    assert list((tmp_path / "out" / "results").glob("*.mcap"))
    assert sorted(t for t, _, _ in msgs) == ["/cam/instances", "/cam/overlay"]
    overlay = next(m for t, _, m in msgs if t == "/cam/overlay")
    assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", 24, 32)


def tiny_model_cli(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    """An n-frame sqlite3 bag and the eval-bag arguments that run es-ev-tiny on it."""
    bag = tmp_path / "in"
    write_bag(bag, "sqlite3", n=n)
    return bag, [str(bag), "--image-topic", "/cam", "--concept", "red circle", "--model", "es-ev-tiny"]


def test_cli_memory_option_runs_the_memory_tracker(tmp_path: Path, capsys):
    bag, args = tiny_model_cli(tmp_path, n=3)
    out = tmp_path / "out"
    assert cli.main([*args, "--memory", "perceiver", "--no-progress", "--out", str(out)]) == EXIT_OK
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["memory"] == "perceiver"
    assert report["latency_ms"]["track"]["frames"] == 3
    with pytest.raises(SystemExit):
        cli.main([*args, "--memory", "lstm", "--out", str(tmp_path / "bad")])
    assert "invalid choice" in capsys.readouterr().err
    from efficientsam3_ros.bag.run import build_segmenter

    built = build_segmenter(
        config(bag, tmp_path / "o2", model="es-ev-tiny", backend="torch-cpu", memory="dense")
    )
    assert built.memory is not None and built.memory.config.memory == "dense"


def test_cli_memory_checkpoint_loads_the_trained_tracker(tmp_path: Path, capsys):
    """--memory-checkpoint: a stage-2 tracker file reaches the pipeline (and the report); a wrong one is refused."""
    import torch

    from efficientsam3_ros.bag.run import build_segmenter
    from efficientsam3_ros.modeling import build_tracker, get_config
    from efficientsam3_ros.training.export import export_tracker

    image_config = get_config("es-ev-tiny")
    tracker = build_tracker(image_config, memory="perceiver")
    with torch.no_grad():
        for param in tracker.parameters():
            param.fill_(0.125)
    path = export_tracker(tracker, tmp_path / "tracker.safetensors")
    bag, args = tiny_model_cli(tmp_path, n=2)
    out = tmp_path / "out"
    run_args = [*args, "--memory", "perceiver", "--memory-checkpoint", str(path), "--no-progress"]
    assert cli.main([*run_args, "--out", str(out)]) == EXIT_OK
    assert json.loads((out / "report.json").read_text())["run"]["memory_checkpoint"] == str(path)
    built = build_segmenter(
        config(
            bag,
            tmp_path / "o2",
            model="es-ev-tiny",
            backend="torch-cpu",
            memory="perceiver",
            memory_checkpoint=str(path),
        )
    )
    assert all(bool((p == 0.125).all()) for p in built.memory.parameters())
    assert (
        cli.main(
            [
                *args,
                "--memory",
                "dense",
                "--memory-checkpoint",
                str(path),
                "--no-progress",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        != EXIT_OK
    )
    assert "'perceiver'-memory tracker, not 'dense'" in capsys.readouterr().err


def test_cli_score_threshold_reaches_the_pipeline_and_is_validated(tmp_path: Path, capsys):
    from efficientsam3_ros.bag.run import build_segmenter

    bag, args = tiny_model_cli(tmp_path, n=2)
    out = tmp_path / "out"
    assert cli.main([*args, "--score-threshold", "0.3", "--no-progress", "--out", str(out)]) == EXIT_OK
    assert json.loads((out / "report.json").read_text())["run"]["score_threshold"] == 0.3
    assert cli.main([*args, "--score-threshold", "1.5", "--out", str(tmp_path / "bad")]) == EXIT_USAGE
    assert "--score-threshold must be in [0, 1]" in capsys.readouterr().err
    assert cli.main([*args, "--new-track-threshold", "-0.1", "--out", str(tmp_path / "bad")]) == EXIT_USAGE
    assert "--new-track-threshold must be in [0, 1]" in capsys.readouterr().err
    out2 = tmp_path / "out2"
    assert cli.main([*args, "--new-track-threshold", "0.4", "--no-progress", "--out", str(out2)]) == EXIT_OK
    assert json.loads((out2 / "report.json").read_text())["run"]["new_track_threshold"] == 0.4
    tracked = build_segmenter(
        config(bag, tmp_path / "o3", model="es-ev-tiny", backend="torch-cpu", new_track_threshold=0.4)
    )
    assert tracked.tracker.config.new_det_threshold == 0.4
    built = build_segmenter(
        config(bag, tmp_path / "o2", model="es-ev-tiny", backend="torch-cpu", score_threshold=0.3)
    )
    assert built.score_threshold == 0.3


def test_cli_mask_threshold_reaches_the_pipeline_and_is_validated(tmp_path: Path, capsys):
    from efficientsam3_ros.bag.run import build_segmenter

    bag, args = tiny_model_cli(tmp_path, n=2)
    out = tmp_path / "out"
    assert cli.main([*args, "--mask-threshold", "0.2", "--no-progress", "--out", str(out)]) == EXIT_OK
    assert json.loads((out / "report.json").read_text())["run"]["mask_threshold"] == 0.2
    assert cli.main([*args, "--mask-threshold", "1.2", "--out", str(tmp_path / "bad")]) == EXIT_USAGE
    assert "--mask-threshold is a mask probability strictly between 0 and 1" in capsys.readouterr().err
    default = build_segmenter(config(bag, tmp_path / "o1", model="es-ev-tiny", backend="torch-cpu"))
    assert default.mask_threshold == 0.5  # the tiny model carries SAM3's point
    built = build_segmenter(
        config(bag, tmp_path / "o2", model="es-ev-tiny", backend="torch-cpu", mask_threshold=0.2)
    )
    assert built.mask_threshold == 0.2


# ----------------------------------------------------------------------------- real ROS 2 recordings


def test_real_humble_bag_unnormalised_stamps(shared_path: Path, tmp_path: Path, segmenter):
    """metadata v5, no embedded definitions, 2x2 mono8 frames, stamps sec=0 nanosec=1e9/2e9."""
    bag = shared_path / "realbags" / "images_mono8_sqlite3"
    outcome = evaluate_bag(config(bag, tmp_path / "out", image_topic="/image"), segmenter=segmenter)
    report = outcome.report
    assert report["run"]["bag_version"] == 5 and report["run"]["bag_embeds_definitions"] is False
    frames = report["frames"]
    assert frames["total_seen"] == 3 and frames["duplicate_stamps"] == 0
    # Either processed or refused with a clear message; never a crash.
    assert frames["processed"] + frames["failed"] == 3
    assert all(f["error"] for f in report["failures"])
    msgs = read_results(tmp_path / "out" / "results")
    stamps = [messages.stamp_to_ns(m.header) for _, _, m in msgs]
    assert stamps == [0, 1_000_000_000, 2_000_000_000][: frames["processed"]]
    assert all(m.header.stamp.nanosec < 1_000_000_000 for _, _, m in msgs)  # written normalised
    assert frames["processed"] == 3, report["failures"]  # the pipeline resizes, so 2x2 frames are processed


@pytest.mark.parametrize("version", [4, 6, 8])
def test_other_metadata_versions(shared_path: Path, tmp_path: Path, version: int):
    """Versions 4 and 6 (the Humble bag's metadata relabelled: same fields) and 8 (written by rosbags)."""
    bag = tmp_path / "bag"
    if version == 8:
        with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
            cam = writer.add_connection("/image", messages.IMAGE, typestore=TS)
            for k in range(3):
                writer.write(cam, k, image_cdr(np.zeros((4, 4, 3), np.uint8), k * 1_000_000_000))
    else:
        shutil.copytree(shared_path / "realbags" / "images_mono8_sqlite3", bag, copy_function=shutil.copyfile)
        bag.chmod(0o755)
        meta = bag / "metadata.yaml"
        meta.write_text(meta.read_text().replace("version: 5", f"version: {version}"))
    outcome = evaluate_bag(config(bag, tmp_path / "out", image_topic="/image"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK, outcome.error
    assert outcome.report["run"]["bag_version"] == version
    assert outcome.report["frames"]["processed"] == 3


@pytest.mark.parametrize("name", ["test_msgs_sqlite3", "test_msgs_mcap"])
def test_real_bag_without_images_lists_topics(shared_path: Path, tmp_path: Path, name: str, capsys):
    bag = shared_path / "realbags" / name
    code = cli.main([str(bag), "--image-topic", "/image", "--concept", "x", "--out", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "/array_topic (test_msgs/msg/Arrays" in err and "/test_topic (test_msgs/msg/BasicTypes" in err
    assert "no image topic" in err
    assert not (tmp_path / "out" / "results").exists()


def test_missing_topic_lists_topics_and_writes_nothing(tmp_path: Path):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", n=1)
    fake = FakeSegmenter()
    outcome = evaluate_bag(config(bag, tmp_path / "out", image_topic="/camera"), segmenter=fake)
    assert outcome.exit_code == EXIT_USAGE
    assert "'/camera' is not in bag" in outcome.error and "Image topics in it: /cam." in outcome.error
    assert "/chatter (std_msgs/msg/String, 1 msgs)" in outcome.error
    assert fake.calls == 0 and not (tmp_path / "out").exists()
    wrong_type = evaluate_bag(config(bag, tmp_path / "out", image_topic="/chatter"), segmenter=fake)
    assert wrong_type.exit_code == EXIT_USAGE and "has type std_msgs/msg/String" in wrong_type.error


def test_existing_results_are_not_overwritten(tmp_path: Path):
    bag = tmp_path / "in"
    write_bag(bag, n=1)
    (tmp_path / "out" / "results").mkdir(parents=True)
    outcome = evaluate_bag(config(bag, tmp_path / "out"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_USAGE and "already exists" in outcome.error


# ----------------------------------------------------------------------------- stopping cleanly


def test_ctrl_c_flushes_results_and_report(tmp_path: Path):
    bag = tmp_path / "in"
    stamps = write_bag(bag, "mcap", n=5)
    outcome = evaluate_bag(config(bag, tmp_path / "out"), segmenter=FakeSegmenter(interrupt_at=2))
    assert outcome.exit_code == EXIT_INTERRUPTED
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stop"]["reason"] == "interrupted"
    assert report["stop"]["frame_index"] == 2 and report["stop"]["stamp_ns"] == stamps[2]
    assert report["frames"]["processed"] == 2
    msgs = read_results(tmp_path / "out" / "results")  # closed properly: index and metadata written
    assert [messages.stamp_to_ns(m.header) for _, _, m in msgs] == stamps[:2]
    assert "interrupted" in (tmp_path / "out" / "report.html").read_text()


def test_max_frames_stops_early_and_cleanly(tmp_path: Path):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", n=4)
    outcome = evaluate_bag(config(bag, tmp_path / "out", max_frames=2), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK
    assert outcome.report["stop"]["reason"] == "max_frames" and outcome.report["frames"]["processed"] == 2
    assert len(read_results(tmp_path / "out" / "results")) == 2


def test_bad_messages_are_counted_and_skipped(tmp_path: Path):
    bag = tmp_path / "in"
    short = messages.numpy_to_image_msg(
        np.zeros((4, 4, 3), np.uint8), "rgb8", header=_header(T0 + 1), typestore=TS
    )
    short.height = 400  # header promises more pixels than the data holds
    stamps = write_bag(
        bag, "sqlite3", n=6, raw_override={1: b"\x00\x01\x00\x00garbage", 3: messages.serialize(short, TS)}
    )
    outcome = evaluate_bag(config(bag, tmp_path / "out"), segmenter=FakeSegmenter(fail_at=(2,)))
    assert outcome.exit_code == EXIT_OK
    report = outcome.report
    assert report["frames"]["processed"] == 3 and report["frames"]["failed"] == 3
    assert [(f["index"], f["stage"]) for f in report["failures"]] == [
        (1, "decode"),
        (3, "decode"),
        (4, "model"),
    ]
    assert "frame refused by the model" in report["failures"][2]["error"]
    assert report["failures"][2]["stamp_ns"] == stamps[4]
    msgs = read_results(tmp_path / "out" / "results")
    assert [messages.stamp_to_ns(m.header) for _, _, m in msgs] == [stamps[0], stamps[2], stamps[5]]


def compressed_bomb_bag(path: Path, png: bytes, n: int = 5) -> list[int]:
    """A compressed-image bag whose message 1 is ``png`` (e.g. a header claiming 40000 x 40000 pixels)."""
    bomb = TS.types[messages.COMPRESSED_IMAGE](
        header=_header(T0 + 100_000_007), format="png", data=np.frombuffer(png, np.uint8)
    )
    return write_bag(path, n=n, compressed=True, raw_override={1: messages.serialize(bomb, TS)})


def test_an_image_the_decoder_refuses_is_one_failed_frame(tmp_path: Path, png_bomb):
    """OpenCV raises cv2.error, not a ValueError: it must fail that frame, not stop the run."""
    compressed_bomb_bag(tmp_path / "in", png_bomb)
    outcome = evaluate_bag(config(tmp_path / "in", tmp_path / "out"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK, outcome.error
    frames, failures = outcome.report["frames"], outcome.report["failures"]
    assert (frames["processed"], frames["failed"]) == (4, 1)
    assert failures[0]["index"] == 1 and failures[0]["stage"] == "decode"


def failing_decoder(monkeypatch, stamp: int) -> None:
    """Make the image decoder raise a non-FrameError (as cv2.error or struct.error are) at ``stamp``."""
    decode = messages.msg_to_rgb

    def flaky(msg):
        if messages.stamp_to_ns(msg.header) == stamp:
            raise RuntimeError("decoder gave up")
        return decode(msg)

    monkeypatch.setattr(messages, "msg_to_rgb", flaky)


def test_whatever_the_decoder_raises_is_one_failed_frame(tmp_path: Path, monkeypatch):
    stamps = write_bag(tmp_path / "in", n=3)
    failing_decoder(monkeypatch, stamps[1])
    outcome = evaluate_bag(config(tmp_path / "in", tmp_path / "out"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK, outcome.error
    assert outcome.report["frames"]["processed"] == 2
    assert outcome.report["failures"][0]["error"] == "RuntimeError: decoder gave up"


def test_truncated_sqlite_bag_keeps_partial_outputs(tmp_path: Path):
    """A storage file cut mid-page (recorder killed): opens, breaks while reading; work so far is kept."""
    bag = tmp_path / "in"
    stamps = write_bag(bag, "sqlite3", n=6, size=(40, 40))
    db = next(bag.glob("*.db3"))
    db.write_bytes(db.read_bytes()[:-2000])
    outcome = evaluate_bag(config(bag, tmp_path / "out"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_ERROR
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stop"]["reason"] == "bag_read_error"
    assert "truncated or corrupt" in report["stop"]["message"]
    processed = report["frames"]["processed"]
    assert 1 <= processed < len(stamps)
    msgs = read_results(tmp_path / "out" / "results")
    assert [messages.stamp_to_ns(m.header) for _, _, m in msgs] == stamps[:processed]


def test_truncated_mcap_bag_is_a_clear_error_with_a_report(tmp_path: Path):
    bag = tmp_path / "in"
    write_bag(bag, "mcap", n=4)
    f = next(bag.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    fake = FakeSegmenter()
    outcome = evaluate_bag(config(bag, tmp_path / "out"), segmenter=fake)
    assert outcome.exit_code == EXIT_ERROR and fake.calls == 0
    assert (
        "cannot open bag" in outcome.error
        and "truncated" in outcome.error
        and "mcap recover" in outcome.error
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stop"]["reason"] == "bag_unreadable" and report["frames"]["processed"] == 0


# ----------------------------------------------------------------------------- ground truth


@pytest.fixture(scope="module")
def synthetic_bag(tmp_path_factory):
    from efficientsam3_ros.synthetic.world import WorldConfig, render_video
    from efficientsam3_ros.synthetic.writers import write_rosbag

    cfg = WorldConfig(width=64, height=48, concepts=tuple(CONCEPTS), num_objects=(2, 3), p_leave=0.0)
    out = tmp_path_factory.mktemp("synthetic")
    bag, gt = write_rosbag(out, seed=5, num_frames=4, config=cfg, storage="mcap", topic="/cam")
    return bag, gt, render_video(5, 4, cfg)


def test_gt_json_oracle_scores_perfect(tmp_path: Path, synthetic_bag):
    bag, gt, frames = synthetic_bag
    outcome = evaluate_bag(config(bag, tmp_path / "out", gt=gt), segmenter=OracleSegmenter(frames))
    assert outcome.exit_code == EXIT_OK, outcome.error
    scores = json.loads((tmp_path / "out" / "report.json").read_text())["scores"]
    assert scores["frames_evaluated"] == 4 and scores["gt_frames_not_processed"] == 0
    for concept in CONCEPTS:
        if scores["mask_iou"][concept]["gt_instances"]:
            assert scores["mask_iou"][concept]["mean_iou"] == pytest.approx(1.0)
            assert scores["coco"][concept]["AP"] == pytest.approx(1.0)
    assert scores["tracking"]["overall"]["idf1"] == pytest.approx(1.0)
    assert scores["tracking"]["overall"]["num_switches"] == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Scores against ground truth" in html and "IDF1".lower() in html.lower()


def ros1_copy(bag: Path, out: Path) -> Path:
    """The same image messages in a ROS 1 ``.bag`` (ROS 1 serialization, headers with a seq)."""
    from rosbags.rosbag1 import Writer as Ros1Writer
    from rosbags.typesys import get_typestore

    ros1 = get_typestore(Stores.ROS1_NOETIC)
    image_type = ros1.types[messages.IMAGE]
    path = out / "camera.bag"
    with AnyReader([bag]) as reader, Ros1Writer(path) as writer:
        conn = writer.add_connection("/cam", image_type.__msgtype__, typestore=ros1)
        for seq, (_, stamp, raw) in enumerate(reader.messages()):
            msg = reader.deserialize(raw, messages.IMAGE)
            header = ros1.types["std_msgs/msg/Header"](
                seq=seq, stamp=msg.header.stamp, frame_id=msg.header.frame_id
            )
            fields = {
                name: getattr(msg, name)
                for name in ("height", "width", "encoding", "is_bigendian", "step", "data")
            }
            writer.write(
                conn, stamp, ros1.serialize_ros1(image_type(header=header, **fields), image_type.__msgtype__)
            )
    return path


def test_a_ros1_bag_is_evaluated_like_its_rosbag2_twin(tmp_path: Path, synthetic_bag):
    """ROS 1 recordings (datasets are often .bag files) are read through rosbags; the results
    bag is a rosbag2 (sqlite3 unless --storage), and the scores are the rosbag2 copy's."""
    bag, gt, frames = synthetic_bag
    ros1_bag = ros1_copy(bag, tmp_path)
    outcome = evaluate_bag(config(ros1_bag, tmp_path / "out", gt=gt), segmenter=OracleSegmenter(frames))
    assert outcome.exit_code == EXIT_OK, outcome.error
    run = outcome.report["run"]
    assert (run["storage"], run["results_storage"]) == ("rosbag1", "sqlite3")
    assert outcome.report["frames"]["processed"] == 4
    assert outcome.report["scores"]["tracking"]["overall"]["idf1"] == pytest.approx(1.0)
    assert [stamp for _, stamp, _ in read_results(tmp_path / "out" / "results")] == [
        image["stamp_ns"] for image in json.loads(gt.read_text())["images"]
    ]
    (tmp_path / "cut.bag").write_bytes(ros1_bag.read_bytes()[:3000])
    cut = evaluate_bag(config(tmp_path / "cut.bag", tmp_path / "cut"), segmenter=OracleSegmenter(frames))
    assert cut.exit_code != EXIT_OK and "rosbag reindex" in cut.error


def test_gt_with_every_scores_only_processed_frames(tmp_path: Path, synthetic_bag):
    bag, gt, frames = synthetic_bag
    outcome = evaluate_bag(
        config(bag, tmp_path / "out", gt=gt, every=2), segmenter=OracleSegmenter(frames, every=2)
    )
    scores = outcome.report["scores"]
    assert outcome.report["frames"]["skipped"] == 2
    assert scores["frames_evaluated"] == 2 and scores["gt_frames_not_processed"] == 2
    assert scores["tracking"]["overall"]["num_misses"] == 0


def test_gt_topic_in_the_bag(tmp_path: Path, synthetic_bag):
    """Ground truth recorded as ConceptInstanceArray next to the images (--gt-topic)."""
    src, _, frames = synthetic_bag
    bag = tmp_path / "with_gt"
    oracle = OracleSegmenter(frames)
    oracle.set_concepts(CONCEPTS)
    with AnyReader([src]) as reader, Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        cam = writer.add_connection("/cam", messages.IMAGE, typestore=TS)
        ref = writer.add_connection("/reference", messages.CONCEPT_INSTANCE_ARRAY, typestore=TS)
        for _, log_time, raw in reader.messages():
            writer.write(cam, log_time, raw)
            result = oracle.process(frames[oracle.calls].image)
            msg = messages.frame_result_to_msg(result, header=_header(log_time), typestore=TS)
            writer.write(ref, log_time, messages.serialize(msg, TS))
    perfect = evaluate_bag(
        config(bag, tmp_path / "a", gt_topic="/reference"), segmenter=OracleSegmenter(frames)
    )
    scores = perfect.report["scores"]
    assert scores["source"] == "topic /reference" and scores["frames_evaluated"] == 4
    assert scores["tracking"]["overall"]["idf1"] == pytest.approx(1.0)
    assert all(scores["mask_iou"][c]["mean_iou"] in (None, pytest.approx(1.0)) for c in CONCEPTS)
    fake = evaluate_bag(config(bag, tmp_path / "b", gt_topic="/reference"), segmenter=FakeSegmenter())
    assert fake.report["scores"]["tracking"]["overall"]["idf1"] < 0.5
    wrong = evaluate_bag(config(bag, tmp_path / "c", gt_topic="/cam"), segmenter=FakeSegmenter())
    assert wrong.exit_code == EXIT_USAGE and "not efficientsam3_ros/msg/ConceptInstanceArray" in wrong.error


def test_unreadable_gt_file_is_a_usage_error(tmp_path: Path):
    bag = tmp_path / "in"
    write_bag(bag, n=1)
    (tmp_path / "gt.json").write_text("{not json")
    outcome = evaluate_bag(config(bag, tmp_path / "out", gt=tmp_path / "gt.json"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_USAGE and "not valid JSON" in outcome.error
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    folder = evaluate_bag(config(bag, tmp_path / "out", gt=tmp_path), segmenter=FakeSegmenter())
    assert folder.exit_code == EXIT_USAGE and "Is a directory" in folder.error
    assert not (tmp_path / "out").exists()


def test_broken_mask_on_the_gt_topic_is_a_usage_error(tmp_path: Path):
    """Counts pycocotools cannot read would make scoring loop forever after the whole model pass."""
    bag = tmp_path / "in"
    stamps = write_bag(bag, n=1)
    reference = FakeSegmenter()
    reference.set_concepts(CONCEPTS)
    msg = messages.frame_result_to_msg(
        reference.process(np.zeros((24, 32, 3), np.uint8)), header=_header(stamps[0]), typestore=TS
    )
    msg.instances[0].mask_rle = "!!!notrle"
    with (
        AnyReader([bag]) as reader,
        Writer(tmp_path / "with_gt", version=9, storage_plugin=StoragePlugin.SQLITE3) as writer,
    ):
        cam = writer.add_connection("/cam", messages.IMAGE, typestore=TS)
        ref = writer.add_connection("/reference", messages.CONCEPT_INSTANCE_ARRAY, typestore=TS)
        for conn, log_time, raw in reader.messages():
            if conn.topic == "/cam":
                writer.write(cam, log_time, raw)
        writer.write(ref, stamps[0], messages.serialize(msg, TS))
    fake = FakeSegmenter()
    outcome = evaluate_bag(
        config(tmp_path / "with_gt", tmp_path / "out", gt_topic="/reference"), segmenter=fake
    )
    assert outcome.exit_code == EXIT_USAGE, outcome.error
    assert "/reference" in outcome.error and "not a valid COCO RLE" in outcome.error
    assert fake.calls == 0


# ----------------------------------------------------------------------------- bags we write


def humble_can_open(bag: Path) -> None:
    """metadata.yaml as ROS 2 Humble's rosbag2 reads it (version 8: every offered_qos_profiles a
    string; v9 writes YAML lists, "yaml-cpp: bad conversion" there), and rosbags still reads the bag."""
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8
    topics = [t["topic_metadata"] for t in meta["topics_with_message_count"]]
    assert topics and all(isinstance(t["offered_qos_profiles"], str) for t in topics), topics
    with AnyReader([bag]) as reader:  # no typestore given: definitions are embedded
        assert sum(1 for _ in reader.messages()) == meta["message_count"] > 0


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_results_and_world_bags_open_in_humble_and_jazzy(tmp_path: Path, storage: str):
    from efficientsam3_ros.synthetic.world import WorldConfig
    from efficientsam3_ros.synthetic.writers import write_rosbag

    write_bag(tmp_path / "in", storage, n=2)
    outcome = evaluate_bag(config(tmp_path / "in", tmp_path / "out", overlay=True), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK, outcome.error
    humble_can_open(tmp_path / "out" / "results")
    world, _ = write_rosbag(
        tmp_path / "world", num_frames=2, config=WorldConfig(width=32, height=24), storage=storage
    )
    humble_can_open(world)


def test_eval_bag_runs_an_export_folder_and_names_why_it_refuses_one(tmp_path: Path, capsys):
    """--onnx-dir: the graphs `efficientsam3 export` wrote for these weights run; another model's are refused."""
    import argparse

    import torch

    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.modeling.checkpoint import save_checkpoint
    from efficientsam3_ros.runtime import cli as export_cli

    torch.manual_seed(0)
    weights = save_checkpoint(build_model("es-ev-tiny"), tmp_path / "tiny.safetensors")
    exported = tmp_path / "exported"
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    argv = ["--model", "es-ev-tiny", "--checkpoint", str(weights), "--out", str(exported), "--no-parity"]
    assert export_cli.run(parser.parse_args(argv)) == 0, capsys.readouterr().err
    bag, args = tiny_model_cli(tmp_path, n=2)
    run_args = [
        *args,
        "--backend",
        "onnxruntime",
        "--onnx-dir",
        str(exported),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    out = tmp_path / "out"
    assert cli.main([*run_args, "--checkpoint", str(weights), "--no-progress", "--out", str(out)]) == EXIT_OK
    backend = json.loads((out / "report.json").read_text())["backend"]
    assert backend["backend"] == "onnxruntime-cpu", backend
    assert not (tmp_path / "c").exists()  # nothing exported: the folder's graphs ran
    other = tmp_path / "other"  # random es-ev-tiny weights, not the exported ones
    assert cli.main([*run_args, "--no-progress", "--out", str(other)]) == EXIT_OK
    backend = json.loads((other / "report.json").read_text())["backend"]
    assert backend["backend"].startswith("torch") and "other weights" in " ".join(backend["fallbacks"]), (
        backend
    )


# ----------------------------------------------------------------------------- paths, other recorders, nothing to do


@pytest.mark.parametrize("char", ["#", "?", "%41"])
def test_sqlite3_paths_with_uri_characters_are_refused_up_front(tmp_path: Path, char: str):
    """rosbags opens sqlite3 files as the URI file:<path>: "#"/"?" cut the path, "%41" is read as "A".
    Writing used to put the results into a stray file (exit 0); reading called a good bag corrupt."""
    bag = tmp_path / "in"
    write_bag(bag, n=2)
    fake = FakeSegmenter()
    out = tmp_path / "runs" / f"trial{char}3"
    refused = evaluate_bag(config(bag, out), segmenter=fake)
    assert refused.exit_code == EXIT_USAGE, refused.error
    assert f"contains {char[0]!r}" in refused.error and "--storage mcap" in refused.error
    assert fake.calls == 0 and not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="cannot write a sqlite3 bag"):
        messages.bag_writer(out, "sqlite3")
    mcap = evaluate_bag(config(bag, out, storage="mcap"), segmenter=fake)
    assert mcap.exit_code == EXIT_OK, mcap.error
    assert len(read_results(out / "results")) == 2
    moved = tmp_path / f"run{char}1" / "bag"
    moved.parent.mkdir()
    bag.rename(moved)
    unread = evaluate_bag(config(moved, tmp_path / "out2"), segmenter=FakeSegmenter())
    assert unread.exit_code == EXIT_USAGE
    assert f"cannot read sqlite3 bag {moved}" in unread.error and f"contains {char[0]!r}" in unread.error
    assert "Rename or move" in unread.error and not (tmp_path / "out2").exists()


class TrackIdSegmenter(FakeSegmenter):
    """One instance of the first concept per frame, with the given track id per call."""

    def __init__(self, track_ids: list[int]) -> None:
        super().__init__()
        self.track_ids = track_ids

    def process(self, rgb: np.ndarray) -> FrameResult:
        result = super().process(rgb)
        result.instances = [replace(result.instances[0], track_id=self.track_ids[self.calls - 1])]
        return result


def test_stamps_going_backwards_are_scored_in_processing_order_and_counted(tmp_path: Path, caplog):
    """Header stamps 0, 2, 1, 3 in bag order; the tracker switched ids once (ids 1, 1, 2, 2).
    Scoring in stamp order reported 3 switches and MOTA 0.25."""
    bag = tmp_path / "in"
    order = [0, 2, 1, 3]
    reference = TrackIdSegmenter([1] * 4)
    reference.set_concepts(CONCEPTS)
    rgb = np.zeros((24, 32, 3), np.uint8)
    with Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        cam = writer.add_connection("/cam", messages.IMAGE, typestore=TS)
        ref = writer.add_connection("/reference", messages.CONCEPT_INSTANCE_ARRAY, typestore=TS)
        for k, s in enumerate(order):
            stamp, log_time = T0 + s * 100_000_000, T0 + k * 100_000_000 + 5
            writer.write(cam, log_time, image_cdr(rgb, stamp))
            msg = messages.frame_result_to_msg(reference.process(rgb), header=_header(stamp), typestore=TS)
            writer.write(ref, log_time, messages.serialize(msg, TS))
    outcome = evaluate_bag(
        config(bag, tmp_path / "out", gt_topic="/reference"), segmenter=TrackIdSegmenter([1, 1, 2, 2])
    )
    assert outcome.exit_code == EXIT_OK, outcome.error
    tracking = outcome.report["scores"]["tracking"]["overall"]
    assert tracking["num_switches"] == 1 and tracking["mota"] == pytest.approx(0.75)
    assert outcome.report["frames"]["stamps_backwards"] == 1
    assert "earlier than the previous message's" in caplog.text


def jazzy_bag_without_definition(path: Path, msgtype: str, n: int = 3) -> None:
    """A sqlite3 bag as ROS 2 Jazzy records it when ``msgtype`` is not installed on the recording
    machine: that type's message_definitions row has encoding '' and no text. /cam carries n images;
    with ``msgtype`` ConceptInstanceArray, /reference carries a FakeSegmenter result per image, else
    /status (of type ``msgtype``) carries nothing."""
    import sqlite3

    with_reference = msgtype == messages.CONCEPT_INSTANCE_ARRAY
    reference = FakeSegmenter()
    reference.set_concepts(CONCEPTS)
    rgb = np.zeros((24, 32, 3), np.uint8)
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        cam = writer.add_connection("/cam", messages.IMAGE, typestore=TS)
        other = messages.CONCEPT_INSTANCE_ARRAY if with_reference else "std_msgs/msg/String"
        ref = writer.add_connection("/reference" if with_reference else "/status", other, typestore=TS)
        for k in range(n):
            stamp = T0 + k * 100_000_000
            writer.write(cam, stamp, image_cdr(rgb, stamp))
            if with_reference:
                msg = messages.frame_result_to_msg(
                    reference.process(rgb), header=_header(stamp), typestore=TS
                )
                writer.write(ref, stamp, messages.serialize(msg, TS))
    conn = sqlite3.connect(next(path.glob("*.db3")))
    with conn:
        conn.execute("UPDATE topics SET type=? WHERE type=?", (msgtype, other))
        conn.execute(
            "UPDATE message_definitions SET topic_type=?, encoding='', encoded_message_definition='' "
            "WHERE topic_type=?",
            (msgtype, other),
        )
    conn.close()


def test_a_jazzy_bag_missing_one_types_definition_is_read(tmp_path: Path, caplog):
    """rosbags raised KeyError('') at open and eval-bag called the whole bag truncated or corrupt."""
    bag = tmp_path / "in"
    jazzy_bag_without_definition(bag, "my_robot_msgs/msg/Status")
    outcome = evaluate_bag(config(bag, tmp_path / "out"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK, outcome.error
    assert outcome.report["frames"]["processed"] == 3
    assert outcome.report["run"]["bag_types_without_definition"] == ["my_robot_msgs/msg/Status"]
    assert "stores no message definition for my_robot_msgs/msg/Status" in caplog.text


def write_mcap(
    path: Path, channels: list[tuple[str, str, str, str]], items: list[tuple[int, int, bytes]]
) -> None:
    """A minimal unindexed mcap file as a recorder without rosbags would write it.

    ``channels``: (topic, type, schema encoding, schema text), ids from 1; ``items``:
    (channel index, log time, CDR). Jazzy writes schema encoding '' and no text for a type it lacks."""
    import struct

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<I", len(raw)) + raw

    def record(op: int, body: bytes) -> bytes:
        return struct.pack("<BQ", op, len(body)) + body

    magic = b"\x89MCAP0\r\n"
    out = magic + record(0x01, text("ros2") + text("test"))
    for i, (topic, typ, encoding, definition) in enumerate(channels, 1):
        data = definition.encode()
        out += record(
            0x03, struct.pack("<H", i) + text(typ) + text(encoding) + struct.pack("<I", len(data)) + data
        )
        meta = text("offered_qos_profiles") + text("")
        out += record(
            0x04, struct.pack("<HH", i, i) + text(topic) + text("cdr") + struct.pack("<I", len(meta)) + meta
        )
    for seq, (channel, log_time, raw) in enumerate(items):
        out += record(0x05, struct.pack("<HIQQ", channel + 1, seq, log_time, log_time) + raw)
    out += record(0x0F, struct.pack("<I", 0)) + record(0x02, struct.pack("<QQI", 0, 0, 0)) + magic
    path.write_bytes(out)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_gt_topic_recorded_without_this_package_installed(tmp_path: Path, storage: str):
    """The bag has no definition of ConceptInstanceArray (recorded where efficientsam3_ros was not
    installed): the package's own types read it (exit 2, KeyError, before)."""
    if storage == "mcap":
        bag = tmp_path / "in.mcap"
        reference = FakeSegmenter()
        reference.set_concepts(CONCEPTS)
        rgb = np.zeros((24, 32, 3), np.uint8)
        image_def = TS.generate_msgdef(messages.IMAGE, ros_version=2)[0]
        items = []
        for k in range(3):
            stamp = T0 + k
            items.append((0, stamp, image_cdr(rgb, stamp)))
            msg = messages.frame_result_to_msg(reference.process(rgb), header=_header(stamp), typestore=TS)
            items.append((1, stamp, messages.serialize(msg, TS)))
        channels = [
            ("/cam", messages.IMAGE, "ros2msg", image_def),
            ("/reference", messages.CONCEPT_INSTANCE_ARRAY, "", ""),
        ]
        write_mcap(bag, channels, items)
    else:
        bag = tmp_path / "in"
        jazzy_bag_without_definition(bag, messages.CONCEPT_INSTANCE_ARRAY)
    outcome = evaluate_bag(config(bag, tmp_path / "out", gt_topic="/reference"), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK, outcome.error
    scores = outcome.report["scores"]
    assert scores["frames_evaluated"] == 3 and scores["overall"]["mask_iou"] == pytest.approx(1.0)


def test_a_result_that_cannot_be_written_is_one_failed_frame(tmp_path: Path):
    """An unnormalised stamp near the int32 limit (sec=2**31-1, nanosec=2e9) decodes, but its result's
    header cannot hold it: that frame fails (stage "write"); it used to stop the whole run."""
    bad = messages.numpy_to_image_msg(
        np.zeros((24, 32, 3), np.uint8), "rgb8", header=_header(0), typestore=TS
    )
    bad.header.stamp.sec, bad.header.stamp.nanosec = 2**31 - 1, 2_000_000_000
    stamps = write_bag(tmp_path / "in", n=5, raw_override={1: messages.serialize(bad, TS)})
    outcome = evaluate_bag(config(tmp_path / "in", tmp_path / "out", overlay=True), segmenter=FakeSegmenter())
    assert outcome.exit_code == EXIT_OK, outcome.error
    frames, failures = outcome.report["frames"], outcome.report["failures"]
    assert (frames["processed"], frames["failed"]) == (4, 1)
    assert (failures[0]["index"], failures[0]["stage"]) == (1, "write")
    assert "32-bit" in failures[0]["error"] and "probably corrupt" in failures[0]["error"]
    msgs = read_results(tmp_path / "out" / "results")
    for topic in ("/cam/instances", "/cam/overlay"):  # nothing of the failed frame was written
        assert [messages.stamp_to_ns(m.header) for t, _, m in msgs if t == topic] == [
            stamps[k] for k in (0, 2, 3, 4)
        ]


def test_out_naming_an_existing_file_is_a_usage_error_before_the_model_is_built(tmp_path: Path, capsys):
    bag, args = tiny_model_cli(tmp_path, n=1)
    (tmp_path / "notes").write_text("old notes")
    for out, says in ((tmp_path / "notes", "is an existing file"), (tmp_path / "notes" / "run", "is under")):
        assert cli.main([*args, "--no-progress", "--out", str(out)]) == EXIT_USAGE
        assert says in capsys.readouterr().err
    assert (tmp_path / "notes").read_text() == "old notes"

    def no_model(config):
        raise AssertionError("the model was built")

    outcome = evaluate_bag(config(bag, tmp_path / "notes"), segmenter_factory=no_model)
    assert outcome.exit_code == EXIT_USAGE and "choose another --out" in outcome.error


def test_runs_that_evaluate_nothing_do_not_report_success(tmp_path: Path):
    bag = tmp_path / "in"
    write_bag(bag, n=3)
    for max_frames in (0, -3):
        bad = evaluate_bag(
            config(bag, tmp_path / f"m{max_frames}", max_frames=max_frames), segmenter=FakeSegmenter()
        )
        assert bad.exit_code == EXIT_USAGE and "--max-frames must be >= 1" in bad.error

    def no_model(config):
        raise AssertionError("the model was built for a topic without messages")

    write_bag(tmp_path / "empty", n=0)
    empty = evaluate_bag(config(tmp_path / "empty", tmp_path / "e"), segmenter_factory=no_model)
    assert empty.exit_code == EXIT_ERROR
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["stop"]["reason"] == "empty_topic" and "/cam has no messages" in report["stop"]["message"]
    assert report["frames"]["in_topic"] == 0 and empty.error == report["stop"]["message"]

    failing = evaluate_bag(config(bag, tmp_path / "f"), segmenter=FakeSegmenter(fail_at=(0, 1, 2)))
    assert failing.exit_code == EXIT_ERROR
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report["stop"]["reason"] == "all_frames_failed" and report["frames"]["failed"] == 3
    assert "none of the 3 image message(s)" in report["stop"]["message"]
