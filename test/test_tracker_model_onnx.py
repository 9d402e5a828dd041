"""The tracker's per-frame graphs export to ONNX and onnxruntime (CPU) matches PyTorch within 1e-4."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientsam3_ros.modeling.registry import get_config
from efficientsam3_ros.modeling.tracker import TrackerModel
from efficientsam3_ros.modeling.tracker_config import TrackerConfig
from efficientsam3_ros.modeling.tracker_export import StepLayout, export_onnx, tracker_graph_specs

ort = pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("memory", ["perceiver", "dense"])
def test_tracker_graphs_onnx_parity(memory: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TrackerModel(get_config("es-ev-tiny"), TrackerConfig.tiny(memory)).eval()
    # random heads score objects ~0 (absent: constant masks); push them present so the parity check bites.
    # The memory encoder's example inputs alternate present/absent scores (occlusion embedding branch).
    model.sam.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(3.0)
    layout = StepLayout(num_tracks=3, num_memory_frames=4, num_pointers=5)
    for spec in tracker_graph_specs(model, layout):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = export_onnx(spec, tmp_path / f"{spec.name}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {name: x.numpy() for name, x in zip(spec.input_names, spec.example_inputs)}
        got = session.run(None, feeds)
        with torch.no_grad():
            want = spec.module(*spec.example_inputs)
        want = want if isinstance(want, tuple) else (want,)
        assert [o.name for o in session.get_outputs()] == list(spec.output_names)
        for name, g, w in zip(spec.output_names, got, want):
            assert g.shape == tuple(w.shape), name
            assert float(np.abs(g - w.numpy()).max()) <= 1e-4, name
        if spec.name == "tracker_step":
            assert bool((want[2] > 0).all())
            assert float(want[0].std()) > 0  # masks are not constant


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
