"""ConceptSegmenter with a memory tracker: tracks propagate through memory, detections associate by IoU.

Tiny random models on a small moving synthetic scene. Random weights make the detector and the
tracker produce noise, which is what these tests want: many births, deaths and duplicates, so the
memory bookkeeping (one memory per live track, none for dead ones, bounded bytes) is exercised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientsam3_ros.modeling import TrackerModel, TrackMemory, build_tracker
from efficientsam3_ros.pipeline import ConceptSegmenter
from efficientsam3_ros.runtime import ImageFeatures
from efficientsam3_ros.runtime.torch_backend import TorchBackend
from efficientsam3_ros.synthetic import render_video
from efficientsam3_ros.synthetic.world import WorldConfig
from efficientsam3_ros.tracking import ConceptTracker, TrackingConfig

CONCEPTS = ["red mug", "person"]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """A moving synthetic scene, small so the tiny model runs it quickly."""
    return [f.image for f in render_video(3, 50, WorldConfig(width=96, height=72))]


@pytest.fixture(scope="module")
def trackers(tiny_model) -> dict[str, TrackerModel]:
    torch.manual_seed(0)
    return {m: build_tracker(tiny_model.config, memory=m) for m in ("perceiver", "dense")}


class PropagateCounter:
    """Wraps ``TrackerModel.propagate`` to record how many tracks each call batched."""

    def __init__(self, memory: TrackerModel):
        self.batches: list[int] = []
        self._inner = memory.propagate

    def __call__(self, tracks: list[TrackMemory], frame):
        self.batches.append(len(tracks))
        return self._inner(tracks, frame)


def _segmenter(
    tiny_model, memory: TrackerModel, max_tracks: int = 8, patient: bool = False
) -> ConceptSegmenter:
    config = TrackingConfig(new_det_threshold=0.0, max_tracks=max_tracks)
    if patient:  # random-weight propagation rarely matches: keep unmatched tracks alive instead
        config = TrackingConfig(
            new_det_threshold=0.0, max_tracks=max_tracks, max_missed_frames=1000, young_track_max_missed=1000
        )
    seg = ConceptSegmenter(tiny_model, score_threshold=0.0, tracker=ConceptTracker(config), memory=memory)
    seg.set_concepts(CONCEPTS)
    return seg


@pytest.fixture
def counted(monkeypatch, tiny_model, trackers) -> Iterator:
    """(segmenter factory, counter) with propagate counted on the chosen tracker."""

    def make(
        memory: str, max_tracks: int = 8, patient: bool = False
    ) -> tuple[ConceptSegmenter, PropagateCounter]:
        model = trackers[memory]
        counter = PropagateCounter(model)
        monkeypatch.setattr(model, "propagate", counter)
        return _segmenter(tiny_model, model, max_tracks, patient), counter

    yield make


@pytest.mark.parametrize("memory", ["perceiver", "dense"])
def test_tracks_propagate_through_memory_once_per_frame(counted, frames, memory):
    seg, counter = counted(memory)
    deaths = 0
    for i, image in enumerate(frames[:10]):
        live_before = seg.tracker.track_ids()
        calls_before = len(counter.batches)
        result = seg.process(image)
        # one batched propagate per frame over every live track (none before the first track exists)
        if live_before:
            assert len(counter.batches) == calls_before + 1, f"frame {i}"
            assert counter.batches[-1] == len(live_before)
        else:
            assert len(counter.batches) == calls_before
        # memories exist exactly for the live tracks, and each is conditioned
        assert seg.memory_track_ids == seg.tracker.track_ids(), f"frame {i}"
        assert all(seg._memories[t].is_conditioned for t in seg.memory_track_ids)
        assert {inst.track_id for inst in result.instances} <= set(seg.tracker.track_ids())
        assert "track" in result.timings_ms and result.timings_ms["track"] > 0.0
        deaths = seg.tracker.stats.deaths
    assert seg.propagate_calls == len(counter.batches) >= 8
    assert deaths > 0  # tracks died on the way, and their memories went with them (checked per frame)


def test_memory_bytes_stay_bounded_over_50_frames(counted, frames):
    """Long-lived tracks through 50 moving frames: bytes reach a plateau at or below the bound."""
    seg, counter = counted("perceiver", max_tracks=3, patient=True)
    bound = seg.memory.memory_bytes()  # one full track
    per_track: dict[int, list[int]] = {}
    for image in frames:
        seg.process(image)
        assert seg.memory_track_ids == seg.tracker.track_ids()
        assert seg.memory_bytes() <= len(seg.memory_track_ids) * bound <= 3 * bound
        for tid in seg.memory_track_ids:
            nbytes = seg._memories[tid].nbytes()
            assert nbytes <= bound
            per_track.setdefault(tid, []).append(nbytes)
    assert len(counter.batches) == len(frames) - 1  # a track exists from the first frame on
    # a long-lived track's memory stops growing once its bounded deques are full
    longest = max(per_track.values(), key=len)
    assert len(longest) >= 40
    assert longest[-1] == longest[-10] == max(longest) > longest[0]


def test_reset_remove_and_fork_manage_memories(counted, frames):
    seg, _ = counted("perceiver")
    for image in frames[:3]:
        seg.process(image)
    assert seg.memory_track_ids
    mug, person = seg.set_concepts(CONCEPTS)
    mug_tracks = set(seg.tracker.track_ids(mug))
    seg.remove_concepts([mug])
    assert not mug_tracks & set(seg.memory_track_ids)
    assert seg.memory_track_ids == seg.tracker.track_ids()

    other = seg.fork()
    assert other.memory is seg.memory and other._memories is not seg._memories
    other.set_concepts(CONCEPTS)
    other.process(frames[3])
    assert other.memory_track_ids == other.tracker.track_ids()
    assert seg.memory_track_ids == seg.tracker.track_ids()  # the fork's frame touched nothing here

    if seg.memory_track_ids:  # a track removed outside update() loses its memory on the next frame
        seg.tracker.remove_track(seg.memory_track_ids[0])
    seg.set_concepts(CONCEPTS)
    seg.process(frames[4])
    assert seg.memory_track_ids == seg.tracker.track_ids()

    seg.reset()
    assert seg.memory_track_ids == [] and seg.memory_bytes() == 0


def test_condition_sees_the_detection_mask_at_model_input_size(tiny_model, trackers, frames, monkeypatch):
    seg = _segmenter(tiny_model, trackers["dense"])
    seen: list[tuple[int, ...]] = []
    original = trackers["dense"].condition

    def spy(track, frame, mask):
        seen.append(tuple(mask.shape))
        return original(track, frame, mask)

    monkeypatch.setattr(trackers["dense"], "condition", spy)
    seg.process(frames[0])
    size = tiny_model.config.image_size
    assert seen and set(seen) == {(size, size)}
    assert len(seen) == len(seg.tracker.track_ids())  # one conditioning frame per birth


def test_memory_tracker_needs_the_trunk_output(tiny_model, trackers, frames):
    class NoTrunk(TorchBackend):
        def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
            return ImageFeatures(super().encode_image(pixels).fpn)  # a graph exported before `trunk`

    seg = ConceptSegmenter(
        tiny_model,
        backend=NoTrunk(tiny_model),
        score_threshold=0.0,
        tracker=ConceptTracker(TrackingConfig(new_det_threshold=0.0)),
        memory=trackers["perceiver"],
    )
    seg.set_concepts(CONCEPTS)
    with pytest.raises(RuntimeError, match="trunk"):
        seg.process(frames[0])


def test_memory_tracker_on_onnxruntime_cpu(tiny_model, trackers, frames, tmp_path):
    pytest.importorskip("onnxruntime")
    from efficientsam3_ros.runtime import RuntimeOptions
    from efficientsam3_ros.runtime.ort_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(tiny_model, RuntimeOptions(cache_dir=tmp_path))
    pixels = torch.rand(1, 3, tiny_model.config.image_size, tiny_model.config.image_size) * 2 - 1
    ort_trunk = backend.encode_image(pixels).trunk
    torch_trunk = TorchBackend(tiny_model).encode_image(pixels).trunk
    torch.testing.assert_close(ort_trunk, torch_trunk, rtol=1e-4, atol=1e-4)
    seg = ConceptSegmenter(
        tiny_model,
        backend=backend,
        score_threshold=0.0,
        tracker=ConceptTracker(TrackingConfig(new_det_threshold=0.0, max_tracks=4)),
        memory=trackers["perceiver"],
    )
    seg.set_concepts(CONCEPTS)
    for image in frames[:3]:
        seg.process(image)
        assert seg.memory_track_ids == seg.tracker.track_ids()
    assert seg.propagate_calls == 2


def test_from_name_builds_the_memory_tracker(tmp_path: Path):
    seg = ConceptSegmenter.from_name("es-ev-tiny", backend="torch-cpu", memory="dense")
    assert isinstance(seg.memory, TrackerModel) and seg.memory.config.memory == "dense"
    convs = [p for p in seg.memory.parameters() if p.dim() == 4]  # laid out as the backend's model
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert ConceptSegmenter.from_name("es-ev-tiny", backend="torch-cpu").memory is None  # default: none
    with pytest.raises(ValueError, match="memory must be one of"):
        ConceptSegmenter.from_name("es-ev-tiny", backend="torch-cpu", memory="lstm")
    with pytest.raises(ValueError, match="needs tracking"):
        ConceptSegmenter.from_name("es-ev-tiny", backend="torch-cpu", memory="perceiver", tracking=False)
    with pytest.raises(ValueError, match="needs a ConceptTracker"):
        ConceptSegmenter(seg.model, memory=seg.memory)

    from safetensors.torch import save_file

    path = tmp_path / "tracker.safetensors"
    # a laid-out tracker's state_dict holds channels-last tensors, which safetensors refuses as they are
    weights = {k: v.contiguous() for k, v in seg.memory.state_dict().items()}
    state = {k: v.clone().fill_(0.25) for k, v in weights.items() if v.is_floating_point()}
    state.update({k: v for k, v in weights.items() if not v.is_floating_point()})
    save_file(state, str(path))
    loaded = ConceptSegmenter.from_name(
        "es-ev-tiny", backend="torch-cpu", memory="dense", memory_checkpoint=str(path)
    )
    weight = next(loaded.memory.parameters())
    assert bool((weight == 0.25).all())


def test_a_models_memory_tracking_rules_reach_the_tracker(tmp_path: Path):
    """from_name reads memory_tracking from the model file's operating point and applies it only
    with a memory tracker; a new-track threshold given by the caller still wins."""
    from efficientsam3_ros.modeling import OperatingPoint, build_model
    from efficientsam3_ros.modeling.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("es-ev-tiny")
    model.config.operating_point = OperatingPoint(
        new_track_threshold=0.4, memory_tracking={"max_missed_frames": 3, "associate_last_mask": True}
    )
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    plain = ConceptSegmenter.from_name(str(path), backend="torch-cpu")
    assert plain.tracker.config == TrackingConfig(new_det_threshold=0.4)
    assert "tracking" not in plain.operating_point
    seg = ConceptSegmenter.from_name(
        str(path), backend="torch-cpu", memory="perceiver", new_track_threshold=0.2
    )
    rules = seg.tracker.config
    assert (rules.new_det_threshold, rules.max_missed_frames, rules.associate_last_mask) == (0.2, 3, True)
    assert seg.operating_point["tracking"] == rules.to_dict()  # what eval-bag's report records
