"""Export of the detector graphs: onnx.checker, PyTorch parity in onnxruntime CPU, caching, CLI.

One tiny model, each graph exported once per module (the slow part, ~10 s on 2 cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from efficientsam3_ros.runtime import export as export_mod
from efficientsam3_ros.runtime import onnx_cache
from efficientsam3_ros.runtime.export import check_graph, export_graph, parity_check
from efficientsam3_ros.runtime.graphs import DETECTOR_GRAPHS, GRAPHS, GraphSpec, get_graph, register_graph

ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {name: export_graph(get_graph(name), tiny_model, out / f"{name}.onnx") for name in DETECTOR_GRAPHS}


def _session_runner(path: Path, spec: GraphSpec):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]  # the exported interface (check_graph verified it)
    return lambda inputs: session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})


@pytest.mark.parametrize("name", DETECTOR_GRAPHS)
def test_graph_passes_checker_and_declares_its_interface(exported, name):
    proto = check_graph(exported[name], get_graph(name))
    assert proto.opset_import[0].version >= 17
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    for inp, axes in get_graph(name).dynamic_inputs.items():
        for axis, label in axes.items():
            assert dims[inp][axis] == label, f"{name}.{inp} axis {axis} is not the dynamic {label!r} axis"


@pytest.mark.parametrize("name", DETECTOR_GRAPHS)
@pytest.mark.parametrize("concepts", [1, 5])
def test_graph_matches_pytorch_in_onnxruntime_cpu(tiny_model, exported, name, concepts):
    spec = get_graph(name)
    rows = parity_check(spec, tiny_model, _session_runner(exported[name], spec), num_concepts=concepts)
    assert [r.output for r in rows] == list(spec.output_names)
    for row in rows:
        assert row.max_abs <= ATOL, row
        if spec.dynamic_inputs and name != "image_encoder":
            assert row.shape[0] == concepts  # all K concepts came out of ONE run


def test_graph_wrappers_equal_the_model_api(tiny_model):
    """The exported functions are the model's own: encode_image levels and detect() outputs."""
    torch.manual_seed(1)
    pixels = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ref_feats = tiny_model.encode_image(pixels)
        *fpn, trunk = get_graph("image_encoder").build(tiny_model)(pixels)
        concepts = tiny_model.encode_concepts(["red mug", "person", "chair"])
        ref = tiny_model.detect(ref_feats, concepts)
        got = get_graph("detector").build(tiny_model)(*fpn, concepts.embeds, concepts.mask)
    assert len(fpn) == 3
    for a, b in zip(fpn, ref_feats.fpn_hidden_states[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the trunk output is exactly what the tracker neck reads (encode_image's last_hidden_state)
    torch.testing.assert_close(trunk, ref_feats.last_hidden_state, rtol=0, atol=0)
    for a, b in zip(got, (ref.pred_masks, ref.pred_boxes, ref.pred_logits, ref.presence_logits)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("detr_level_scale", [1.0, 2.0])
def test_high_res_student_graphs_match_the_model_in_onnxruntime(tmp_path, high_res_tiny, detr_level_scale):
    """The demo student's knobs: the exported image encoder carries the fusion (non-zero here),
    and with ``detr_level_scale`` 2 its third level and the detector graph's input are the 2x grid."""
    model = high_res_tiny(detr_level_scale=detr_level_scale)
    with torch.no_grad():
        for param in model.detector.vision_encoder.high_res_fusion.parameters():
            param.normal_()
        pixels = torch.rand(1, 3, 112, 112) * 2 - 1
        ref = model.encode_image(pixels)
        *fpn, trunk = get_graph("image_encoder").build(model)(pixels)
        concepts = model.encode_concepts(["red mug", "person"])
        ref_det = model.detect(ref, concepts)
        got_det = get_graph("detector").build(model)(*fpn, concepts.embeds, concepts.mask)
    g = model.config.grid_size
    assert [f.shape[-1] for f in fpn] == [4 * g, 2 * g, int(detr_level_scale * g)]
    for a, b in zip(fpn, ref.fpn_hidden_states[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(trunk, ref.last_hidden_state, rtol=0, atol=0)
    expected = (ref_det.pred_masks, ref_det.pred_boxes, ref_det.pred_logits, ref_det.presence_logits)
    for a, b in zip(got_det, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for name in ("image_encoder", "detector"):
        spec = get_graph(name)
        path = export_graph(spec, model, tmp_path / f"{name}.onnx")
        for row in parity_check(spec, model, _session_runner(path, spec), num_concepts=2):
            assert row.max_abs <= ATOL, row


def test_box_scoring_detector_graph_matches_the_model_in_onnxruntime(tmp_path, box_scoring_tiny):
    """The box-scoring head (modeling.box_scoring) is in the exported detector, as grid_sample."""
    model = box_scoring_tiny({"roi_size": 3, "hidden_size": 16})
    with torch.no_grad():
        torch.nn.init.normal_(model.box_scoring.roi_mlp[-1].weight)
        features = model.encode_image(torch.rand(1, 3, 112, 112) * 2 - 1)
        concepts = model.encode_concepts(["red mug", "person"])
        ref = model.detect(features, concepts)
        got = get_graph("detector").build(model)(
            *features.fpn_hidden_states[:3], concepts.embeds, concepts.mask
        )
    torch.testing.assert_close(got[2], ref.pred_logits, rtol=1e-5, atol=1e-5)
    spec = get_graph("detector")
    path = export_graph(spec, model, tmp_path / "detector.onnx")
    assert "GridSample" in {node.op_type for node in onnx.load(str(path)).graph.node}
    rows = parity_check(spec, model, _session_runner(path, spec), num_concepts=3)
    assert rows and all(row.max_abs <= ATOL for row in rows), rows


def test_check_graph_rejects_a_graph_with_other_names(exported):
    spec = get_graph("text_encoder")
    wrong = GraphSpec("text_encoder", spec.build, ("ids", "mask"), spec.output_names, spec.example_inputs)
    with pytest.raises(ValueError, match="expected"):
        check_graph(exported["text_encoder"], wrong)


def test_adding_a_graph_is_a_declaration(tiny_model, tmp_path):
    class Presence(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.proj = model.detector.text_projection

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x).sigmoid()

    dim = tiny_model.detector.text_projection.in_features
    spec = GraphSpec(
        "toy_head",
        Presence,
        ("x",),
        ("y",),
        lambda m, k: (torch.randn(k, dim),),
        {"x": {0: "concepts"}, "y": {0: "concepts"}},
    )
    register_graph(spec)
    try:
        with pytest.raises(ValueError, match="twice"):
            register_graph(spec)
        path = export_graph(get_graph("toy_head"), tiny_model, tmp_path / "toy.onnx")
        rows = parity_check(spec, tiny_model, _session_runner(path, spec), num_concepts=3)
        assert rows[0].shape == (3, tiny_model.config.fpn_dim) and rows[0].max_abs <= ATOL
    finally:
        GRAPHS.pop("toy_head")


def test_onnx_cache_exports_once_and_rekeys_on_new_weights(tiny_model, tmp_path, monkeypatch, exported):
    calls: list[str] = []

    def fake_export(spec, model, path, **_):  # copy instead of re-exporting: this tests the cache logic
        calls.append(spec.name)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(exported[spec.name].read_bytes())
        return path

    monkeypatch.setattr(onnx_cache, "export_graph", fake_export)
    first = onnx_cache.cached_graphs(tiny_model, ["text_encoder"], tmp_path)
    second = onnx_cache.cached_graphs(tiny_model, ["text_encoder"], tmp_path)
    assert first == second and calls == ["text_encoder"]
    key = onnx_cache.graph_cache_key(tiny_model, opset=18, exporter="torchscript")
    assert key != onnx_cache.graph_cache_key(tiny_model, opset=17, exporter="torchscript")
    original = onnx_cache.weights_sha256(tiny_model)
    p = next(tiny_model.parameters())
    saved = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
        try:
            assert onnx_cache.weights_sha256(tiny_model) != original
            assert onnx_cache.graph_cache_key(tiny_model, opset=18, exporter="torchscript") != key
        finally:
            p.copy_(saved)  # the model is shared by other tests
    assert onnx_cache.weights_sha256(tiny_model) == original


def test_graph_cache_key_follows_transformers_version(tiny_model, monkeypatch):
    """Graphs are traces of transformers' SAM3 code and our wrappers: an upgrade of either re-exports
    (and so, through the graph sha256, rebuilds TensorRT engines)."""
    import transformers

    import efficientsam3_ros

    key = onnx_cache.graph_cache_key(tiny_model, opset=18, exporter="torchscript", weights="w")
    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    upgraded = onnx_cache.graph_cache_key(tiny_model, opset=18, exporter="torchscript", weights="w")
    assert upgraded != key
    monkeypatch.setattr(efficientsam3_ros, "__version__", "9.9.9")
    assert onnx_cache.graph_cache_key(tiny_model, opset=18, exporter="torchscript", weights="w") != upgraded


def _export_worker(out: str, reference: str, barrier: Any, results: Any) -> None:
    """One of two processes exporting text_encoder into one folder (spawned: module-level).

    Its torch.onnx.export copies a finished graph, then waits for the other process, so both
    are between writing their temporary file and renaming it at the same time.
    """
    import shutil

    from efficientsam3_ros.modeling import build_model

    torch.set_num_threads(1)

    def slow_export(module: Any, inputs: Any, f: str, **_: Any) -> None:
        shutil.copyfile(reference, f)
        barrier.wait(timeout=120)

    torch.onnx.export = slow_export  # this child process only
    try:
        model = build_model("es-ev-tiny")
        export_graph(get_graph("text_encoder"), model, Path(out) / "text_encoder.onnx")
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which asserts on it
        results.put(f"failed: {type(exc).__name__}: {exc}")


def test_concurrent_exports_into_one_folder_both_succeed(exported, tmp_path):
    """Two nodes starting on one empty cache export the same graph at once: both must succeed
    (a shared temporary name let one rename or check the other's file away) and leave one graph."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    out = tmp_path / "cache"
    out.mkdir()
    args = (str(out), str(exported["text_encoder"]), barrier, results)
    workers = [ctx.Process(target=_export_worker, args=args) for _ in range(2)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert outcomes == ["ok", "ok"]
    check_graph(out / "text_encoder.onnx", get_graph("text_encoder"))
    assert [p.name for p in out.iterdir()] == ["text_encoder.onnx"]  # no temporary file left


def test_opset_below_17_is_refused(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_graph(get_graph("text_encoder"), tiny_model, tmp_path / "t.onnx", opset=16)


def _cli(argv: list[str]) -> int:
    from efficientsam3_ros.runtime import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_export_command_writes_graphs_and_a_parity_table(tmp_path, capsys):
    rc = _cli(
        ["--model", "es-ev-tiny", "--out", str(tmp_path), "--graphs", "text_encoder", "--input-size", "56"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "max abs" in captured.out and "text_embeds" in captured.out
    assert "export onnx" in captured.err  # tqdm progress
    onnx.checker.check_model(str(tmp_path / "text_encoder.onnx"))
    assert (tmp_path / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nope"], "unknown model"),
        (["--model", "es-ev-tiny", "--input-size", "100"], "multiple of the patch size"),
        (["--model", "es-ev-tiny", "--graphs", "decoder"], "unknown --graphs"),
        (["--model", "es-ev-tiny", "--opset", "13"], "--opset"),
    ],
)
def test_export_command_bad_arguments_give_one_line(tmp_path, capsys, argv, message):
    assert _cli([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_export_command_without_tensorrt_names_the_fix(tmp_path, capsys):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present")
    except ImportError:
        pass
    assert _cli(["--model", "es-ev-tiny", "--out", str(tmp_path), "--format", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tensorrt" in err.lower() and ("pip install" in err or "GPU" in err) and "\n" not in err


def test_tensorrt_backend_reuses_the_export_folders_graphs_and_engines(
    tiny_model, tmp_path, monkeypatch, capsys
):
    """`export --format tensorrt --out DIR`, then RuntimeOptions(onnx_dir=DIR): the backend runs DIR's
    graphs and engines, exporting and building nothing (CPU stand-in: TensorRT and the GPU are faked)."""
    import contextlib
    import dataclasses
    import json
    import sys
    import types

    from efficientsam3_ros.runtime import RuntimeOptions, trt_backend

    fake_trt = types.ModuleType("tensorrt")
    fake_trt.__version__ = "10.99.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(trt_backend, "gpu_context", lambda device: contextlib.nullcontext())
    built: list[str] = []

    def fake_build(path: Path, precision: str, shapes: Any, timing: Path | None = None) -> bytes:
        built.append(Path(path).stem)
        return f"{Path(path).stem} {precision} {sorted(shapes)}".encode()

    class FakeRunner:
        def __init__(self, data: bytes, device: torch.device):
            self.data = data

    monkeypatch.setattr(trt_backend, "build_engine", fake_build)
    monkeypatch.setattr(trt_backend, "TrtRunner", FakeRunner)
    out = tmp_path / "exported"
    argv = ["--model", "es-ev-tiny", "--out", str(out), "--format", "tensorrt", "--precision", "fp16"]
    assert _cli([*argv, "--max-concepts", "8", "--opt-concepts", "2", "--no-parity"]) == 0, (
        capsys.readouterr().err
    )
    assert sorted(built) == sorted(DETECTOR_GRAPHS)
    engines = {
        g: (out / "engines" / f).read_bytes()
        for g, f in json.loads((out / "manifest.json").read_text())["engines"].items()
    }
    built.clear()

    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the export folder's graphs were exported again")

    monkeypatch.setattr(onnx_cache, "export_graph", no_export)
    options = RuntimeOptions(
        onnx_dir=out, cache_dir=tmp_path / "cache", precision="fp16", max_concepts=8, opt_concepts=2
    )
    backend = trt_backend.TensorRTBackend(tiny_model, options)
    assert built == []  # every engine came from the export folder
    assert {g: r.data for g, r in backend.runners.items()} == engines
    assert not (tmp_path / "cache").exists()
    # another concept profile: the graphs with a concept axis get new engines, kept beside the export's
    trt_backend.TensorRTBackend(tiny_model, dataclasses.replace(options, max_concepts=4))
    with_concepts = sorted(g for g in DETECTOR_GRAPHS if get_graph(g).dynamic_inputs)
    assert sorted(built) == with_concepts == ["detector", "text_encoder"]
    assert len(list((out / "engines").glob("*.engine"))) == len(DETECTOR_GRAPHS) + len(with_concepts)


def test_an_export_folder_serves_only_the_model_it_was_exported_from(
    tiny_model, tmp_path, monkeypatch, capsys
):
    """A graph carries its weights: an export of other weights or another input size must not run instead."""
    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.runtime import RuntimeOptions
    from efficientsam3_ros.runtime.ort_backend import OnnxRuntimeBackend

    out = tmp_path / "exported"
    assert _cli(["--model", "es-ev-tiny", "--out", str(out), "--no-parity"]) == 0, capsys.readouterr().err

    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the export folder's graphs were exported again")

    monkeypatch.setattr(onnx_cache, "export_graph", no_export)
    options = RuntimeOptions(onnx_dir=out, cache_dir=tmp_path / "cache")
    ids, mask = tiny_model.tokenize(["red mug"])
    assert OnnxRuntimeBackend(tiny_model, options).encode_text(ids, mask).shape[0] == 1  # the same weights
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="other weights"):
        OnnxRuntimeBackend(build_model("es-ev-tiny"), options)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="not 56 px"):
        OnnxRuntimeBackend(build_model("es-ev-tiny", input_size=56), options)
    detector = out / "detector.onnx"
    detector.write_bytes(detector.read_bytes()[:-10])  # a truncated copy
    with pytest.raises(ValueError, match="differs from the one"):
        OnnxRuntimeBackend(tiny_model, options)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tensorrt_backend_runs_the_engines_export_built(tiny_model, tmp_path, monkeypatch, capsys):
    """Real TensorRT: the export's engines are the ones the backend runs (none rebuilt), and they match torch."""
    pytest.importorskip("tensorrt", reason="needs TensorRT (pip install tensorrt)")
    from efficientsam3_ros.runtime import RuntimeOptions, trt_backend
    from efficientsam3_ros.runtime.torch_backend import TorchBackend

    out = tmp_path / "exported"
    argv = ["--model", "es-ev-tiny", "--out", str(out), "--format", "tensorrt", "--precision", "fp32"]
    assert _cli([*argv, "--max-concepts", "4", "--opt-concepts", "2"]) == 0, capsys.readouterr().err

    def no_build(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("an engine the export built was built again")

    monkeypatch.setattr(trt_backend, "build_engine", no_build)
    options = RuntimeOptions(
        onnx_dir=out, cache_dir=tmp_path / "cache", precision="fp32", max_concepts=4, opt_concepts=2
    )
    backend = trt_backend.TensorRTBackend(tiny_model, options)
    ids, mask = tiny_model.tokenize(["red mug", "person"])
    torch.testing.assert_close(
        backend.encode_text(ids, mask), TorchBackend(tiny_model).encode_text(ids, mask), rtol=1e-3, atol=1e-4
    )


def test_parity_check_detects_a_wrong_graph(tiny_model):
    """The parity check must be able to fail: a perturbed runner is caught."""
    spec = get_graph("text_encoder")

    def wrong(inputs):
        with torch.no_grad():
            return [spec.build(tiny_model)(*inputs).numpy() + np.float32(1e-2)]

    (row,) = parity_check(spec, tiny_model, wrong, num_concepts=2)
    assert row.max_abs == pytest.approx(1e-2, rel=1e-3)


def test_exporter_module_defaults_to_a_supported_opset():
    assert export_mod.DEFAULT_OPSET >= 17


# ------------------------------------------------------------------------------ tracker graphs
@pytest.mark.parametrize("memory", ["perceiver", "dense", "perceiver+prompt"])
def test_tracker_graphs_export_through_the_registry_and_match_pytorch(tmp_path, memory):
    """tracker_step / tracker_memory_encoder are registered graphs: export_graph + parity_check work.

    "+prompt": a tracker that prompts with each track's previous mask exports one more input.
    """
    import dataclasses

    import onnx

    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.modeling.tracker import TrackerModel
    from efficientsam3_ros.modeling.tracker_config import TrackerConfig
    from efficientsam3_ros.modeling.tracker_export import (
        MEMORY_INPUTS,
        MEMORY_OUTPUTS,
        PROMPT_INPUT,
        STEP_INPUTS,
        STEP_OUTPUTS,
    )
    from efficientsam3_ros.runtime.graphs import TRACKER_GRAPHS

    torch.manual_seed(0)
    kind, _, prompt = memory.partition("+")
    config = dataclasses.replace(TrackerConfig.tiny(kind), prompt_previous_mask=bool(prompt))
    tracker = TrackerModel(build_model("es-ev-tiny").config, config).eval()
    # random heads score objects ~0; push them present so the masks are not constant
    tracker.sam.mask_decoder.pred_obj_score_head.proj_out.bias.data.fill_(3.0)
    assert (get_graph("tracker_step").input_names, get_graph("tracker_step").output_names) == (
        STEP_INPUTS,
        STEP_OUTPUTS,
    )
    memory_spec = get_graph("tracker_memory_encoder")
    assert (memory_spec.input_names, memory_spec.output_names) == (MEMORY_INPUTS, MEMORY_OUTPUTS)
    for name in TRACKER_GRAPHS:
        spec = get_graph(name)
        assert spec.source == "tracker"
        path = export_graph(spec, tracker, tmp_path / f"{name}.onnx", num_concepts=3)  # 3 tracks
        rows = parity_check(spec, tracker, _session_runner(path, spec), num_concepts=3)
        assert [r.output for r in rows] == list(spec.output_names)
        for row in rows:
            assert row.shape[0] == 3 and row.max_abs <= ATOL, row
        if name == "tracker_step":
            inputs = tuple(i.name for i in onnx.load(str(path)).graph.input)
            assert inputs == spec.inputs_for(tracker) == STEP_INPUTS + ((PROMPT_INPUT,) if prompt else ())
            mask_row = rows[0]
            assert mask_row.shape[-2:] == (4 * tracker.grid_size, 4 * tracker.grid_size)


def test_graph_spec_source_is_validated():
    spec = get_graph("text_encoder")
    with pytest.raises(ValueError, match="source"):
        GraphSpec("x", spec.build, ("a",), ("b",), spec.example_inputs, source="camera")


def test_export_command_exports_tracker_graphs(tmp_path, capsys):
    import json

    argv = ["--model", "es-ev-tiny", "--out", str(tmp_path), "--input-size", "56"]
    rc = _cli(
        [*argv, "--graphs", "tracker_step,tracker_memory_encoder", "--memory", "dense", "--tracks", "2"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "mask_logits" in captured.out and "memory_tokens" in captured.out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["tracker"] == {"memory": "dense", "tracks": 2, "checkpoint": None}
    session = ort.InferenceSession(str(tmp_path / "tracker_step.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[4].shape[0] == 2  # memory [N=2, F, T, Dm]: static track count


def test_export_command_exports_a_trained_tracker_file(tmp_path, capsys):
    """--tracker-checkpoint exports a stage-2 file with its own config (here: the previous-mask prompt)."""
    import dataclasses
    import json

    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.modeling.tracker import TrackerModel
    from efficientsam3_ros.modeling.tracker_config import TrackerConfig
    from efficientsam3_ros.modeling.tracker_export import PROMPT_INPUT
    from efficientsam3_ros.training.export import export_tracker

    torch.manual_seed(0)
    config = dataclasses.replace(TrackerConfig.tiny("perceiver"), prompt_previous_mask=True)
    image = build_model("es-ev-tiny", input_size=56).config
    tracker_file = export_tracker(TrackerModel(image, config).eval(), tmp_path / "tracker.safetensors")
    argv = ["--model", "es-ev-tiny", "--input-size", "56", "--graphs", "tracker_step"]
    argv += ["--tracker-checkpoint", str(tracker_file)]
    assert _cli([*argv, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tracker"]["checkpoint"] == str(tracker_file)
    session = ort.InferenceSession(
        str(tmp_path / "out" / "tracker_step.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[-1].name == PROMPT_INPUT
    capsys.readouterr()
    assert _cli([*argv, "--out", str(tmp_path / "dense"), "--memory", "dense"]) == 2
    assert "--tracker-checkpoint" in capsys.readouterr().err  # a perceiver file is not a dense tracker


def test_export_command_takes_a_checkpoint_path_with_its_own_input_size(tmp_path, capsys):
    """--model models/demo/model.safetensors exports at the 336 px its config carries (its registry
    name alone builds 168 px, which the shipped tracker and eval-bag --onnx-dir refuse)."""
    import json

    from efficientsam3_ros.commands.demo import demo_dir

    weights, tracker = demo_dir() / "model.safetensors", demo_dir() / "tracker.safetensors"
    argv = ["--model", str(weights), "--graphs", "tracker_step", "--memory", "perceiver"]
    argv += ["--tracker-checkpoint", str(tracker), "--tracks", "1", "--no-parity"]
    assert _cli([*argv, "--out", str(tmp_path / "demo")]) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["input_size"] == 336 and manifest["checkpoint"] == str(weights)
    capsys.readouterr()
    assert _cli([*argv, "--out", str(tmp_path / "both"), "--checkpoint", str(weights)]) == 2
    assert "leave out --checkpoint" in capsys.readouterr().err
    assert _cli(["--model", "no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_export_command_dynamo_failure_is_one_line(tmp_path, capsys):
    """torch.export cannot trace the detector with torch 2.14: the command says so in one line
    (exit 2) and names the exporter that works, instead of ending in a traceback."""
    argv = ["--model", "es-ev-tiny", "--input-size", "56", "--graphs", "detector", "--exporter", "dynamo"]
    rc = _cli([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    if rc == 0:  # a torch whose exporter traces it: the graph must then exist
        assert (tmp_path / "detector.onnx").is_file()
        return
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert "--exporter dynamo could not export detector" in last and "torchscript" in last
