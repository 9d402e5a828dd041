"""``efficientsam3 export``: write the graphs (and TensorRT engines) and prove they match PyTorch.

    efficientsam3 export --model es-ev-s --out exported/es-ev-s-504 --format onnx \\
        --precision fp32 --input-size 504

writes ``<out>/{image_encoder,text_encoder,detector}.onnx`` (``--graphs tracker_step,...`` adds the
memory tracker's graphs, static at ``--tracks`` tracks; ``--tracker-checkpoint`` a stage-2 file, else random weights) (+ ``engines/`` for
``--format tensorrt``) and ``<out>/manifest.json``, then runs every graph on random inputs
against the PyTorch modules and prints max abs / relative error per output. Python code loads
the folder with ``RuntimeOptions(onnx_dir=<out>)`` (e.g. ``ConceptSegmenter.from_name(...,
options=...)``), the ROS node with its ``onnx_dir`` parameter and ``eval-bag`` /
``sweep-thresholds`` with ``--onnx-dir``: the onnxruntime and tensorrt backends read its graphs
instead of exporting into the cache, and the tensorrt backend its ``engines/`` (reused when its
precision and concept profile match ``--precision``/``--max-concepts``/``--opt-concepts``; any
other is built and added there). ``--model`` takes a name or a checkpoint path, as every other
command does. Exit codes: 0 ok,
1 parity above tolerance, 2 bad arguments or a missing dependency (one line naming the fix).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

# Parity tolerance on max |a-b| / max |b| per output: fp32 graphs should match to float
# rounding; fp16 engines to half-precision accuracy.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


class ExportError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="model name (see `efficientsam3 models`) or a checkpoint file / HF directory, which "
        "carries its own architecture and input size (e.g. models/demo/model.safetensors)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="weights to load (safetensors); random weights if omitted"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for the graphs and manifest")
    parser.add_argument(
        "--format", choices=("onnx", "tensorrt"), default="onnx", help="onnx (default) or tensorrt"
    )
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp32", help="engine precision")
    parser.add_argument(
        "--input-size", type=int, help="square input side, a multiple of 14 (default: model's)"
    )
    parser.add_argument(
        "--graphs", default="image_encoder,text_encoder,detector", help="comma-separated graphs"
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    parser.add_argument(
        "--max-concepts", type=int, default=16, help="TensorRT profile: largest concept batch"
    )
    parser.add_argument(
        "--opt-concepts", type=int, default=4, help="TensorRT profile: concept batch tuned for"
    )
    parser.add_argument(
        "--memory",
        choices=("perceiver", "dense"),
        default="perceiver",
        help="tracker memory of the tracker_* graphs (random weights unless --tracker-checkpoint)",
    )
    parser.add_argument(
        "--tracker-checkpoint",
        type=Path,
        help="a stage-2 tracker file (e.g. models/demo/tracker.safetensors) for the tracker_* graphs; "
        "its own sizes and memory kind (must match --memory); random tracker weights if omitted",
    )
    parser.add_argument(
        "--tracks",
        type=int,
        default=2,
        help="tracker_* graphs: number of tracks baked into their static shapes (default 2)",
    )
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity check")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ExportError as err:
        print(f"efficientsam3 export: error: {err}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> list[str]:
    from .graphs import GRAPHS

    config = _model_config(args)
    if config is not None and args.input_size is not None:
        try:
            config.with_image_size(args.input_size)
        except ValueError as err:
            raise ExportError(f"--input-size: {err}") from None
    if args.opset < 17:
        raise ExportError(f"--opset {args.opset} is too old; use 17 or newer (default 18)")
    if args.tracks < 1:
        raise ExportError("--tracks must be >= 1")
    if not 1 <= args.opt_concepts <= args.max_concepts:
        raise ExportError("need 1 <= --opt-concepts <= --max-concepts")
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown or not graphs:
        raise ExportError(f"unknown --graphs {unknown}; known: {', '.join(GRAPHS)}")
    for flag, path in (("--checkpoint", args.checkpoint), ("--tracker-checkpoint", args.tracker_checkpoint)):
        if path is not None and not path.is_file():
            raise ExportError(f"{flag} {path} does not exist")
    if args.format == "tensorrt":
        from .base import BackendUnavailable
        from .trt_backend import import_tensorrt

        try:
            import_tensorrt()
        except BackendUnavailable as err:
            raise ExportError(f"--format tensorrt: {err}; or export --format onnx here") from None
    return graphs


def _model_config(args: argparse.Namespace) -> Any:
    """The architecture ``--model`` names, checked before anything is built (None: a zoo entry,
    whose architecture may come with its weights).

    A checkpoint path is resolved as every other command resolves it (its metadata or sidecar
    config), so the demo model exports at the 336 px it ships with, not its registry name's 168.
    """
    from ..modeling import get_config, list_models
    from ..modeling.checkpoint_files import CheckpointError
    from ..zoo import load_zoo
    from ..zoo.resolve import config_for_path

    path = Path(args.model).expanduser()
    if path.exists():
        if args.checkpoint is not None:
            raise ExportError(f"--model {args.model} is already a checkpoint; leave out --checkpoint")
        try:
            return config_for_path(path)
        except CheckpointError as err:
            raise ExportError(str(err)) from None
    if args.model in list_models():
        return get_config(args.model)
    if args.model in load_zoo():
        return None
    raise ExportError(
        f"unknown model {args.model!r} (--model): not a file, a registry name or a zoo name "
        "(see `efficientsam3 models`)"
    )


def _build(args: argparse.Namespace) -> Any:
    """The model to export, with its weights: :func:`resolve_model`, the loader every command uses."""
    from ..modeling.checkpoint_files import CheckpointError
    from ..zoo.resolve import resolve_model

    checkpoint = str(args.checkpoint) if args.checkpoint is not None else None
    try:
        return resolve_model(args.model, checkpoint, input_size=args.input_size)
    except (CheckpointError, ValueError) as err:
        raise ExportError(str(err)) from None


def _tracker_for(model: Any, args: argparse.Namespace) -> Any:
    """The tracker the tracker_* graphs export: a stage-2 file, else random weights of the model's size."""
    from ..modeling import load_tracker
    from ..modeling.checkpoint_files import CheckpointError
    from ..modeling.tracker import build_tracker

    if args.tracker_checkpoint is None:
        return build_tracker(model.config, memory=args.memory)
    try:
        return load_tracker(args.tracker_checkpoint, model.config, args.memory)
    except CheckpointError as err:
        raise ExportError(f"--tracker-checkpoint: {err}") from None


def _run(args: argparse.Namespace) -> int:
    graphs = _validate(args)
    import torch
    from tqdm import tqdm

    from .export import export_graph, format_parity, parity_check
    from .graphs import get_graph
    from .onnx_cache import file_sha256, weights_sha256

    torch.manual_seed(0)
    t0 = time.perf_counter()
    with tqdm(total=1, desc=f"build {args.model}", unit="model", file=sys.stderr) as bar:
        model = _build(args)
        bar.update()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sources: dict[str, Any] = {"image": model}
    if any(get_graph(n).source == "tracker" for n in graphs):
        sources["tracker"] = _tracker_for(model, args)
    tracks = args.tracks
    paths: dict[str, Path] = {}
    for name in tqdm(graphs, desc="export onnx", unit="graph", file=sys.stderr):
        spec = get_graph(name)
        try:
            paths[name] = export_graph(
                spec,
                sources[spec.source],
                out / f"{name}.onnx",
                opset=args.opset,
                exporter=args.exporter,
                **({"num_concepts": tracks} if spec.source == "tracker" else {}),
            )
        except Exception as err:
            if args.exporter != "dynamo":
                raise
            # torch.export cannot trace every graph (the detector's data-dependent shapes with
            # torch 2.14); the default exporter can, so say that instead of a long traceback
            root = err
            while root.__cause__ is not None:  # torch.onnx wraps torch.export's own error
                root = root.__cause__
            first = re.sub(r"\x1b\[[0-9;]*m", "", (str(root).strip().splitlines() or [""])[0])
            raise ExportError(
                f"--exporter dynamo could not export {name} ({type(root).__name__}: {first[:160]}); "
                "the default --exporter torchscript exports every graph"
            ) from None

    runners = _onnx_runners(paths)
    tolerance = TOLERANCE["fp32"]
    engines: dict[str, str] = {}
    if args.format == "tensorrt":
        runners, engines = _trt_runners(paths, args)
        tolerance = TOLERANCE[args.precision]

    rows = []
    if not args.no_parity:
        jobs = [(n, k) for n in graphs for k in _parity_sizes(get_graph(n), args.opt_concepts, tracks)]
        for name, k in tqdm(jobs, desc=f"parity vs torch ({args.format})", unit="check", file=sys.stderr):
            spec = get_graph(name)
            rows += parity_check(spec, sources[spec.source], runners[name], num_concepts=k)
        print(format_parity(rows))

    manifest = {
        "model": args.model,
        "input_size": model.config.image_size,
        "config": model.config.to_dict(),
        "format": args.format,
        "precision": args.precision if args.format == "tensorrt" else "fp32",
        "opset": args.opset,
        "graphs": {n: {"file": p.name, "sha256": file_sha256(p)} for n, p in paths.items()},
        "engines": engines,
        "parity": [r.__dict__ for r in rows],
        "checkpoint": str(args.checkpoint or "") or (args.model if Path(args.model).exists() else None),
        "weights_sha256": weights_sha256(model),  # what a backend given this folder checks
        "tracker": (
            {
                "memory": args.memory,
                "tracks": tracks,
                "checkpoint": str(args.tracker_checkpoint or "") or None,
            }
            if "tracker" in sources
            else None
        ),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=list))
    print(f"wrote {len(paths)} graphs to {out} in {time.perf_counter() - t0:.1f} s")
    worst = max((r.max_rel for r in rows), default=0.0)
    if worst > tolerance:
        print(f"parity FAILED: worst relative error {worst:.2e} > {tolerance:.0e}", file=sys.stderr)
        return 1
    return 0


def _parity_sizes(spec: Any, opt_concepts: int, tracks: int) -> tuple[int, ...]:
    """Example sizes to check: both ends of a dynamic concept axis; a static tracker graph's own N."""
    if spec.source == "tracker":
        return (tracks,)
    return (1, opt_concepts) if spec.dynamic_inputs else (1,)


def _onnx_runners(paths: dict[str, Path]) -> dict[str, Any]:
    import onnxruntime as ort

    runners = {}
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = tuple(
            i.name for i in session.get_inputs()
        )  # the exported interface (check_graph verified it)

        def run(inputs: tuple, s: Any = session, names: tuple = names) -> list:
            return s.run(None, {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)})

        runners[name] = run
    return runners


def _trt_runners(paths: dict[str, Path], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    import onnx
    import tensorrt as trt
    import torch
    from tqdm import tqdm

    from .engine_cache import EngineCache
    from .trt_backend import TrtRunner, build_engine, engine_key, profile_shapes, timing_cache_path

    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    # The layout and keys TensorRTBackend reads with RuntimeOptions(onnx_dir=args.out).
    cache = EngineCache(args.out / "engines")
    timing = timing_cache_path(args.out / "engines", trt.__version__, gpu)
    runners, engines = {}, {}
    for name, path in tqdm(
        paths.items(), desc=f"build TensorRT {args.precision}", unit="engine", file=sys.stderr
    ):
        shapes = profile_shapes(path, name, 1, args.opt_concepts, args.max_concepts)
        key = engine_key(path, shapes, trt.__version__, gpu, args.precision)
        data, _ = cache.get_or_build(
            name, key, lambda p=path, s=shapes: build_engine(p, args.precision, s, timing)
        )
        engines[name] = cache.paths(name, key)[0].name
        runner = TrtRunner(data, device)
        names = tuple(i.name for i in onnx.load(str(path), load_external_data=False).graph.input)

        def run(inputs: tuple, r: TrtRunner = runner, names: tuple = names) -> list:
            return r(dict(zip(names, inputs)))

        runners[name] = run
    return runners, engines
