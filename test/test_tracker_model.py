"""Tracker model: configs, full-size memory token counts, batched propagation, conditioning."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from efficientsam3_ros.modeling.memory import MemoryLayout, TrackMemory
from efficientsam3_ros.modeling.registry import get_config
from efficientsam3_ros.modeling.tracker import TrackerModel
from efficientsam3_ros.modeling.tracker_config import TrackerConfig, to_edgetam_config
from efficientsam3_ros.modeling.tracker_memory import DenseMemoryCodec, PerceiverMemoryCodec
from efficientsam3_ros.modeling.tracker_neck import TrackerFrame

pytestmark = pytest.mark.usefixtures("one_thread")


def _tracker(memory: str, prompt_previous_mask: bool = False) -> TrackerModel:
    torch.manual_seed(0)
    config = dataclasses.replace(TrackerConfig.tiny(memory), prompt_previous_mask=prompt_previous_mask)
    model = TrackerModel(get_config("es-ev-tiny"), config).eval()
    # random heads give object scores ~0; push them positive so masks and pointers are not constants
    model.sam.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(3.0)
    return model


def _frame(model: TrackerModel, idx: int, seed: int = 0) -> TrackerFrame:
    gen = torch.Generator().manual_seed(seed)
    c, g = model.config.hidden_size, model.grid_size
    return TrackerFrame(
        feat=torch.randn(1, c, g, g, generator=gen),
        pos=torch.randn(1, c, g, g, generator=gen),
        s0=torch.randn(1, c // 8, 4 * g, 4 * g, generator=gen),
        s1=torch.randn(1, c // 4, 2 * g, 2 * g, generator=gen),
        frame_idx=idx,
    )


def _box_mask(size: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown tracker memory"):
        TrackerConfig(memory="sparse")
    with pytest.raises(ValueError, match="perfect square"):
        TrackerConfig(num_latents_2d=200)
    with pytest.raises(ValueError, match="memory_dim"):
        TrackerConfig(memory_dim=32)
    assert TrackerConfig.from_dict(TrackerConfig().to_dict()) == TrackerConfig()
    with pytest.raises(ValueError, match="unknown tracker config keys"):
        TrackerConfig.from_dict({"memroy": "dense"})


def test_full_size_tokens_per_memory_frame() -> None:
    """At 1008 px (72 x 72 grid) a Perceiver memory frame is 512 tokens, a dense one 5184."""
    image = get_config("es-ev-s")
    assert image.grid_size == 72
    perceiver_cfg, dense_cfg = TrackerConfig(memory="perceiver"), TrackerConfig(memory="dense")
    assert perceiver_cfg.tokens_per_memory_frame(72) == 512
    assert dense_cfg.tokens_per_memory_frame(72) == 5184
    torch.manual_seed(0)
    memory_map = torch.randn(2, 64, 72, 72)
    pos = torch.randn(2, 64, 72, 72)
    perceiver = PerceiverMemoryCodec(to_edgetam_config(image, perceiver_cfg), 72).eval()
    dense = DenseMemoryCodec(72, 64)
    with torch.no_grad():
        assert perceiver(memory_map, pos).shape == (2, 512, 64)
        assert dense(memory_map, pos).shape == (2, 5184, 64)
    assert perceiver.spatial_pos.shape == (512, 64) and dense.spatial_pos.shape == (5184, 64)
    assert perceiver.window_input == 80  # 72 does not tile into 16 windows; resized to 16 x 5
    assert torch.count_nonzero(perceiver.spatial_pos[:256]) == 0  # global latents carry no position


@pytest.mark.parametrize("grid", [14, 16])  # 14: resized to 16, the 4 x 4 windows' next multiple; 16: as is
def test_perceiver_codec_batches_the_window_branch_as_transformers_runs_it_per_map(grid: int) -> None:
    edgetam = to_edgetam_config(get_config("es-ev-tiny"), TrackerConfig.tiny("perceiver"))
    torch.manual_seed(0)
    codec = PerceiverMemoryCodec(edgetam, grid).eval()
    dim = edgetam.perceiver_resampler_hidden_size
    maps, pos = torch.randn(3, dim, grid, grid), torch.randn(3, dim, grid, grid)
    with torch.no_grad():
        batched = codec(maps, pos)
        windowed = torch.nn.functional.interpolate(maps, size=(codec.window_input,) * 2, mode="bilinear")
        per_map = [codec.resampler._forward_2d(windowed[i : i + 1])[0] for i in range(3)]
        latents_1d, _ = codec.resampler._forward_1d(maps, pos)
    reference = torch.cat([latents_1d, torch.cat(per_map)], dim=1)
    assert batched.shape == (3, codec.tokens_per_frame, dim)
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])  # each map its own latents


@pytest.mark.parametrize("memory", ["perceiver", "dense"])
def test_propagate_shapes_and_memory_growth(memory: str) -> None:
    model = _tracker(memory)
    size, side = model.image_config.image_size, 4 * model.grid_size
    with torch.inference_mode():
        tracks = [model.new_track() for _ in range(2)]
        model.condition(tracks[0], _frame(model, 0), _box_mask(size, 10, 10, 60, 60))
        model.condition(tracks[1], _frame(model, 0), _box_mask(size, 50, 40, 100, 90))
        for idx in range(1, 4):
            out = model.propagate(tracks, _frame(model, idx, seed=idx))
    assert out.mask_logits.shape == (2, side, side)
    assert out.object_score_logits.shape == (2,) and out.iou_scores.shape == (2,)
    assert torch.isfinite(out.mask_logits).all()
    assert not torch.equal(out.mask_logits[0], out.mask_logits[1])  # different objects, different masks
    assert [len(t) for t in tracks] == [4, 4]  # 1 conditioning + 3 tracked frames
    layout = tracks[0].gather(4)
    assert layout.features.shape[1:] == (model.tokens_per_memory_frame, 64)
    assert layout.tpos_index.tolist() == [6, 2, 1, 0]  # conditioning slot, then oldest -> newest
    assert layout.pointer_offsets.tolist() == [4.0, 1.0, 2.0, 3.0]


def _entry(frame_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory tokens and a pointer that say which frame they came from."""
    return torch.full((2, 3), float(frame_idx)), torch.full((4,), float(frame_idx))


def _read(layout: MemoryLayout) -> tuple[list[int], list[int], dict[int, float]]:
    """(frames of the memory rows, their temporal rows, {pointer's frame: its offset})."""
    frames = [int(f[0, 0]) for f in layout.features]
    pointers = {int(p[0]): o for p, o in zip(layout.pointers, layout.pointer_offsets.tolist())}
    assert len(pointers) == layout.pointers.shape[0]  # no frame's pointer twice
    return frames, layout.tpos_index.tolist(), pointers


def test_conditioning_frames_pushed_out_are_still_read_as_recent_memory() -> None:
    """SAM3 (sam3_tracker_base._prepare_memory_conditioned_features; transformers'
    Sam3TrackerVideoModel._gather_memory_frame_outputs and _get_object_pointers) attends to the
    max_cond_frames conditioning frames closest to the tracked frame; one left out still counts as a
    recent frame (temporal row offset - 1) among the last num_maskmem - 1 frames and as a pointer
    among the last max_object_pointers - 1 frames. A track re-conditioned on every frame (the demo's
    memory_tracking) relies on that."""
    memory = TrackMemory(num_maskmem=7, max_cond_frames=4, max_object_pointers=16)
    for f in range(6):
        memory.add_conditioning(f, *_entry(f))
    frames, tpos, pointers = _read(memory.gather(6))
    # selected: 2..5 at the conditioning row (6); frames 0, 1 at offsets 6, 5 -> rows 5, 4
    assert frames == [2, 3, 4, 5, 0, 1] and tpos == [6, 6, 6, 6, 5, 4]
    assert pointers == {5: 1.0, 4: 2.0, 3: 3.0, 2: 4.0, 1: 5.0, 0: 6.0}

    # a pushed-out frame outside num_maskmem - 1 frames but inside max_object_pointers - 1:
    # only its pointer is read
    memory = TrackMemory(num_maskmem=7, max_cond_frames=4, max_object_pointers=16)
    for f in range(4):
        memory.add_conditioning(f, *_entry(f))
    for f in range(4, 9):
        memory.add_tracked(f, *_entry(f))
    memory.add_conditioning(9, *_entry(9))
    frames, tpos, pointers = _read(memory.gather(10))
    assert frames == [1, 2, 3, 9, 4, 5, 6, 7, 8] and tpos == [6, 6, 6, 6, 5, 4, 3, 2, 1]
    assert pointers == {9: 1.0, 3: 7.0, 2: 8.0, 1: 9.0, 8: 2.0, 7: 3.0, 6: 4.0, 5: 5.0, 4: 6.0, 0: 10.0}
    # and once it is older than max_object_pointers - 1 frames, nothing of it is read
    for f in range(10, 16):
        memory.add_tracked(f, *_entry(f))
    frames, _, pointers = _read(memory.gather(16))
    assert 0 not in frames and 0 not in pointers and pointers[1] == 15.0


@pytest.mark.parametrize(("memory", "prompt"), [("perceiver", False), ("dense", False), ("perceiver", True)])
def test_batched_equals_one_by_one_with_mixed_ages(memory: str, prompt: bool) -> None:
    """Batching over tracks (grouped by memory layout) must not change any track's result."""
    model = _tracker(memory, prompt)
    size = model.image_config.image_size
    with torch.inference_mode():
        tracks = [model.new_track() for _ in range(3)]
        model.condition(tracks[0], _frame(model, 0), _box_mask(size, 10, 10, 60, 60))
        model.condition(tracks[1], _frame(model, 0), _box_mask(size, 30, 30, 90, 100))
        model.propagate(tracks[:2], _frame(model, 1, seed=1))
        model.condition(tracks[2], _frame(model, 1, seed=1), _box_mask(size, 0, 50, 40, 110))
        singles = copy.deepcopy(tracks)
        frame = _frame(model, 2, seed=2)
        batched = model.propagate(tracks, frame)
        one_by_one = [model.propagate([t], frame) for t in singles]
    for i, single in enumerate(one_by_one):
        torch.testing.assert_close(batched.mask_logits[i], single.mask_logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            batched.object_score_logits[i], single.object_score_logits[0], atol=1e-4, rtol=0
        )
    for a, b in zip(tracks, singles):
        for x, y in zip(a.tensors(), b.tensors()):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_condition_empty_mask_stores_no_object_pointer() -> None:
    model = _tracker("perceiver")
    size = model.image_config.image_size
    with torch.inference_mode():
        empty, full = model.new_track(), model.new_track()
        model.condition(empty, _frame(model, 0), torch.zeros(size, size))
        model.condition(full, _frame(model, 0), _box_mask(size, 10, 10, 60, 60).float())
    torch.testing.assert_close(empty.cond[0][2], model.sam.no_object_pointer[0])
    assert not torch.allclose(full.cond[0][2], model.sam.no_object_pointer[0])
    assert not torch.allclose(empty.cond[0][1], full.cond[0][1])  # the mask reaches the memory


def test_previous_mask_prompt_names_the_object() -> None:
    """With prompt_previous_mask a track keeps its last non-empty mask and the decoder reads it.

    Two tracks with the same memory but different kept masks must propagate differently; that
    is what lets a tracker trained from scratch tell objects apart (models/demo/MODEL_CARD.md).
    """
    model = _tracker("perceiver", prompt_previous_mask=True)
    size, side = model.image_config.image_size, 4 * model.grid_size
    with torch.inference_mode():
        track = model.new_track()
        model.condition(track, _frame(model, 0), _box_mask(size, 10, 10, 60, 60))
        kept = track.prompt_mask
        assert kept is not None and kept.dtype == torch.bool and kept.shape == (side, side)
        scale = side / size
        rows, cols = kept.nonzero().unbind(1)
        assert rows.min() >= int(10 * scale) - 1 and rows.max() <= int(60 * scale) + 1
        assert cols.min() >= int(10 * scale) - 1 and cols.max() <= int(60 * scale) + 1
        other = copy.deepcopy(track)
        other.prompt_mask = torch.zeros_like(kept)
        other.prompt_mask[-10:, -10:] = True  # same memory, another place named
        frame = _frame(model, 1, seed=1)
        out = model.propagate([track, other], frame)
    assert not torch.allclose(out.mask_logits[0], out.mask_logits[1])
    new_mask = out.mask_logits[0] > 0
    if new_mask.any():  # the kept mask follows the track's own output
        assert torch.equal(track.prompt_mask, new_mask)
    plain = _tracker("perceiver")
    with torch.inference_mode():
        untouched = plain.new_track()
        plain.condition(untouched, _frame(plain, 0), _box_mask(size, 10, 10, 60, 60))
    assert untouched.prompt_mask is None  # SAM3's trackers keep nothing extra


def test_previous_mask_prompt_keeps_the_last_mask_when_the_object_is_lost() -> None:
    model = _tracker("perceiver", prompt_previous_mask=True)
    model.sam.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(-30.0)  # every frame: absent
    size = model.image_config.image_size
    with torch.inference_mode():
        track = model.new_track()
        model.condition(track, _frame(model, 0), _box_mask(size, 10, 10, 60, 60))
        kept = track.prompt_mask.clone()
        out = model.propagate([track], _frame(model, 1, seed=1))
    assert not (out.mask_logits > 0).any()
    assert torch.equal(track.prompt_mask, kept)


def test_step_graph_refuses_a_prompt_it_was_not_built_for() -> None:
    for prompt in (False, True):
        model = _tracker("perceiver", prompt)
        size = model.image_config.image_size
        with torch.inference_mode():
            track = model.new_track()
            model.condition(track, _frame(model, 0), _box_mask(size, 10, 10, 60, 60))
            layout = track.gather(1)
            frame = _frame(model, 1, seed=1)
            args = [frame.feat, frame.pos, frame.s0, frame.s1, layout.features[None].float()]
            args += [layout.tpos_index[None], layout.pointers[None], layout.pointer_offsets[None]]
            if not prompt:  # a prompt given to a SAM3-style step
                args.append(torch.zeros(1, 1, 4 * model.grid_size, 4 * model.grid_size))
            with pytest.raises(ValueError, match="prompt_masks must be given exactly"):
                model.step_graph(*args)


def test_propagate_requires_conditioning() -> None:
    model = _tracker("dense")
    with pytest.raises(RuntimeError, match="no conditioning frame"):
        model.propagate([model.new_track()], _frame(model, 1))


def test_encode_frame_uses_image_model_trunk() -> None:
    """The tracker neck reads the image model's trunk feature: no second trunk run."""
    from efficientsam3_ros.modeling import build_model

    torch.manual_seed(0)
    image_model = build_model("es-ev-tiny")
    model = TrackerModel(image_model.config, TrackerConfig.tiny("perceiver")).eval()
    with torch.inference_mode():
        features = image_model.encode_image(torch.randn(1, 3, 112, 112))
        frame = model.encode_frame(features, frame_idx=5)
        again = model.encode_frame(features.last_hidden_state, frame_idx=5)
    c, g = model.config.hidden_size, model.grid_size
    assert frame.feat.shape == (1, c, g, g) and frame.pos.shape == (1, c, g, g)
    assert frame.s0.shape == (1, c // 8, 4 * g, 4 * g) and frame.s1.shape == (1, c // 4, 2 * g, 2 * g)
    assert frame.frame_idx == 5
    torch.testing.assert_close(frame.feat, again.feat)


def test_encode_frames_equals_encode_frame_per_image() -> None:
    """Training encodes a whole clip in one neck call; each frame must be what encode_frame gives."""
    from efficientsam3_ros.modeling import build_model

    torch.manual_seed(0)
    image_model = build_model("es-ev-tiny")
    model = TrackerModel(image_model.config, TrackerConfig.tiny("perceiver")).eval()
    with torch.inference_mode():
        tokens = image_model.encode_image(torch.randn(3, 3, 112, 112)).last_hidden_state
        frames = model.encode_frames(tokens, [4, 5, 6])
        singles = [model.encode_frame(tokens[i : i + 1], frame_idx=4 + i) for i in range(3)]
    assert [f.frame_idx for f in frames] == [4, 5, 6]
    for batched, single in zip(frames, singles):
        for name in ("feat", "pos", "s0", "s1"):
            torch.testing.assert_close(getattr(batched, name), getattr(single, name), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(frames[0].feat, frames[1].feat)  # the images differ, so must their features
    with pytest.raises(ValueError, match="3 images but 2 frame indices"):
        model.encode_frames(tokens, [0, 1])
    with pytest.raises(ValueError, match=r"encode_frames\(\) takes several"):
        model.encode_frame(tokens, 0)


@pytest.mark.parametrize("prompt", [False, True])
def test_condition_tracks_and_propagate_on_many_frames_equal_one_track_at_a_time(prompt: bool) -> None:
    """Stage 2 conditions and advances the tracks of several clips together, each on its own frame.

    Every track must end with what ``condition`` and ``propagate`` give it alone, whatever its mask's
    kind (bool, probability, logits, empty)."""
    model = _tracker("perceiver", prompt)
    size = model.image_config.image_size
    masks = torch.stack(
        [
            _box_mask(size, 10, 10, 60, 60).float(),  # bool as float: a probability mask
            _box_mask(size, 30, 30, 90, 100).float() * 8 - 4,  # logits: object where > 0
            torch.zeros(size, size),  # empty: the no-object pointer
            _box_mask(size, 0, 50, 40, 110).float() * 0.7 + 0.2,  # probabilities: cut at 0.5
        ]
    )
    shared_start, shared_next = _frame(model, 0, seed=0), _frame(model, 1, seed=10)
    starts = [shared_start, _frame(model, 0, seed=1), shared_start, _frame(model, 0, seed=2)]
    nexts = [shared_next, _frame(model, 1, seed=11), shared_next, _frame(model, 1, seed=12)]
    with torch.inference_mode():
        tracks = [model.new_track() for _ in range(4)]
        alone = [model.new_track() for _ in range(4)]
        conditioned = model.condition_tracks(tracks, starts, masks)
        conditioned_alone = [model.condition(t, f, m) for t, f, m in zip(alone, starts, masks)]
        advanced = model.propagate(tracks, nexts)
        advanced_alone = [model.propagate([t], f) for t, f in zip(alone, nexts)]
    for i in range(4):
        for together, single in ((conditioned, conditioned_alone[i]), (advanced, advanced_alone[i])):
            torch.testing.assert_close(together.mask_logits[i], single.mask_logits[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(together.iou_scores[i], single.iou_scores[0], atol=1e-4, rtol=1e-4)
    for together, single in zip(tracks, alone):
        for x, y in zip(together.tensors(), single.tensors(), strict=True):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tracks[2].cond[0][2], model.sam.no_object_pointer[0])
    assert not torch.allclose(advanced.mask_logits[0], advanced.mask_logits[1])  # own frames, own masks
    # bool masks, every track on one frame (the graphs broadcast it instead of stacking copies)
    bool_masks = torch.stack([_box_mask(size, 5, 5, 50, 70), _box_mask(size, 60, 20, 110, 80)])
    with torch.inference_mode():
        pair, pair_alone = [model.new_track() for _ in range(2)], [model.new_track() for _ in range(2)]
        together = model.condition_tracks(pair, [shared_start] * 2, bool_masks)
        alone = [model.condition(t, shared_start, m) for t, m in zip(pair_alone, bool_masks)]
        assert model.condition_tracks([], [], bool_masks[:0]).mask_logits.shape[0] == 0
    for i in range(2):
        torch.testing.assert_close(together.mask_logits[i], alone[i].mask_logits[0], atol=1e-4, rtol=1e-4)
        for x, y in zip(pair[i].tensors(), pair_alone[i].tensors(), strict=True):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="got 1 frames for 4 tracks"):
        model.propagate(tracks, nexts[:1])
    with pytest.raises(ValueError, match="masks \\[N, h, w\\]"):
        model.condition_tracks(tracks[:2], starts[:2], masks)


@pytest.mark.parametrize("memory", ["perceiver", "dense"])
def test_tracks_stay_on_the_models_device(memory: str) -> None:
    """Nothing the tracker computes with may be made on the host: on a GPU a host tensor in the
    graphs stops the first conditioning or propagation (the memory's temporal indices and pointer
    offsets once were). The meta device stands in for the GPU here: it refuses host tensors as
    CUDA does, and runs without one."""
    model = _tracker(memory).to("meta")
    c, g = model.config.hidden_size, model.grid_size

    def frame(idx: int) -> TrackerFrame:
        shapes = ((1, c, g, g), (1, c, g, g), (1, c // 8, 4 * g, 4 * g), (1, c // 4, 2 * g, 2 * g))
        return TrackerFrame(*(torch.empty(shape, device="meta") for shape in shapes), frame_idx=idx)

    size = model.image_config.image_size
    tracks = [model.new_track() for _ in range(2)]
    masks = torch.zeros(2, size, size, dtype=torch.bool, device="meta")
    with torch.inference_mode():
        model.condition_tracks(tracks, [frame(0), frame(0)], masks)
        for idx in (1, 2):
            out = model.propagate(tracks, frame(idx))
    assert out.mask_logits.device.type == "meta" and out.mask_logits.shape == (2, 4 * g, 4 * g)
    assert all(t.device.type == "meta" for track in tracks for t in track.tensors())


def test_step_graph_matches_propagate() -> None:
    """The exported graph is the same computation propagate() runs (no hidden Python-side state)."""
    torch.manual_seed(0)
    model = TrackerModel(get_config("es-ev-tiny"), TrackerConfig.tiny("perceiver")).eval()
    model.sam.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(3.0)
    from efficientsam3_ros.modeling.tracker_neck import TrackerFrame

    c, g = model.config.hidden_size, model.grid_size
    frame = TrackerFrame(
        torch.randn(1, c, g, g),
        torch.randn(1, c, g, g),
        torch.randn(1, c // 8, 4 * g, 4 * g),
        torch.randn(1, c // 4, 2 * g, 2 * g),
        frame_idx=0,
    )
    mask = torch.zeros(112, 112, dtype=torch.bool)
    mask[10:60, 10:60] = True
    with torch.inference_mode():
        track = model.new_track()
        model.condition(track, frame, mask)
        frame.frame_idx = 1
        layout = track.gather(1)
        direct = model.step_graph(
            frame.feat,
            frame.pos,
            frame.s0,
            frame.s1,
            layout.features[None],
            layout.tpos_index[None],
            layout.pointers[None],
            layout.pointer_offsets[None],
        )
        out = model.propagate([track], frame)
    torch.testing.assert_close(out.mask_logits[0], direct[0][0, 0])


def test_a_model_config_sizes_its_own_tracker() -> None:
    """The demo models carry a small tracker (ModelConfig.tracker); a from-scratch one starts with fan-in weights."""
    from efficientsam3_ros.modeling.tracker import build_tracker

    demo = get_config("demo-student")
    tracker = build_tracker(demo, memory="perceiver")
    assert tracker.config.hidden_size == 64 and tracker.tokens_per_memory_frame == 32
    assert tracker.tokens_per_memory_frame < demo.grid_size**2  # the Perceiver compresses the 12x12 grid
    assert build_tracker(get_config("es-ev-s"), memory="perceiver").config.hidden_size == 256  # SAM3's sizes
    # fan-in init: a 64-wide Linear has std ~ 1/sqrt(3 * 64), far above transformers' 0.02
    weight = tracker.sam.mask_decoder.transformer.layers[0].self_attn.q_proj.weight
    assert weight.std() > 0.05
    misspelt = copy.deepcopy(demo)
    misspelt.tracker = {"hiden_size": 64}
    with pytest.raises(ValueError, match="tracker config keys"):
        build_tracker(misspelt)
