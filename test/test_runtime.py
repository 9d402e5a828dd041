"""Backends, the fallback chain and the TensorRT engine cache (logic tested without a GPU)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientsam3_ros.runtime import (
    AUTO_ORDER,
    Backend,
    BackendUnavailable,
    EngineCache,
    EngineKey,
    FallbackChain,
    ImageFeatures,
    RuntimeOptions,
    candidate_names,
    select_backend,
)
from efficientsam3_ros.runtime.torch_backend import TorchBackend

HAS_CUDA = torch.cuda.is_available()


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------ engine cache
KEY = EngineKey(
    onnx_sha256="a" * 64, trt_version="10.3.0", gpu_name="Orin", precision="fp16", profile="k:1/4/16"
)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(EngineKey)])
def test_engine_key_changes_when_any_part_changes(field):
    changed = dataclasses.replace(KEY, **{field: getattr(KEY, field) + "x"})
    assert changed.digest() != KEY.digest()
    cache = EngineCache("/nonexistent")
    assert cache.paths("detector", changed)[0] != cache.paths("detector", KEY)[0]


class CountingBuilder:
    def __init__(self, payload: bytes = b"ENGINE" * 1000):
        self.payload, self.calls = payload, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload


def test_engine_cache_builds_once_then_reuses(tmp_path):
    cache, build = EngineCache(tmp_path), CountingBuilder()
    assert cache.get_or_build("detector", KEY, build) == (build.payload, True)
    assert cache.get_or_build("detector", KEY, build) == (build.payload, False)
    assert build.calls == 1
    sidecar = json.loads(cache.paths("detector", KEY)[1].read_text())
    assert sidecar["engine_size"] == len(build.payload) and sidecar["key"] == dataclasses.asdict(KEY)


def _truncate(engine, sidecar):
    engine.write_bytes(engine.read_bytes()[:100])


def _flip_byte(engine, sidecar):
    data = bytearray(engine.read_bytes())
    data[10] ^= 0xFF
    engine.write_bytes(bytes(data))


def _stale_key(engine, sidecar):
    meta = json.loads(sidecar.read_text())
    meta["key"]["trt_version"] = "8.6.1"
    sidecar.write_text(json.dumps(meta))


def _drop_sidecar(engine, sidecar):
    sidecar.unlink()


def _garbage_sidecar(engine, sidecar):
    sidecar.write_text("{not json")


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _stale_key, _drop_sidecar, _garbage_sidecar])
def test_damaged_cache_entry_is_rebuilt_never_used(tmp_path, caplog, damage):
    cache, build = EngineCache(tmp_path), CountingBuilder()
    cache.get_or_build("detector", KEY, build)
    damage(*cache.paths("detector", KEY))
    assert cache.load("detector", KEY) is None  # verified before any bytes are handed out
    with caplog.at_level(logging.WARNING):
        data, built = cache.get_or_build("detector", KEY, build)
    assert built and data == build.payload and build.calls == 2
    assert cache.load("detector", KEY) == build.payload


def test_engine_cache_refuses_empty_engine(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        EngineCache(tmp_path).get_or_build("detector", KEY, lambda: b"")


# ------------------------------------------------------------------------------ selection
def test_candidate_order():
    assert candidate_names("auto") == list(AUTO_ORDER)
    assert AUTO_ORDER == ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")
    assert candidate_names("torch-cuda") == ["torch-cuda", "onnxruntime-cpu", "torch-cpu"]
    assert candidate_names("onnxruntime") == ["onnxruntime-cuda", "onnxruntime-cpu", "torch-cpu"]
    assert candidate_names("torch") == ["torch-cuda", "torch-cpu"]
    with pytest.raises(ValueError, match="unknown backend"):
        candidate_names("openvino")


def test_detector_output_leaves_the_masks_where_they_were_computed():
    """Every query's mask, [K, Q, 4g, 4g], is up to a GB a frame at 1008 px; copying it to the host
    cost a GPU frame about 1 s with 16 concepts. The masks stay on their device (the meta device
    stands in for a GPU here), the small outputs come to the CPU as float32."""
    from efficientsam3_ros.runtime.base import detector_output

    masks = torch.empty(2, 5, 8, 8, dtype=torch.float16, device="meta")
    out = detector_output(masks, np.zeros((2, 5, 4), np.float16), torch.zeros(2, 5), torch.zeros(2, 1))
    assert out.pred_masks.device.type == "meta" and out.pred_masks.dtype == torch.float32
    for small in (out.pred_boxes, out.pred_logits, out.presence_logits):
        assert small.device.type == "cpu" and small.dtype == torch.float32


@pytest.fixture(scope="module")
def frame(tiny_model):
    torch.manual_seed(3)
    pixels = torch.rand(1, 3, 112, 112) * 2 - 1
    ids, mask = tiny_model.tokenize(["red mug", "person", "chair", "door"])
    with torch.no_grad():
        ref = tiny_model.detect(
            tiny_model.encode_image(pixels),
            tiny_model.encode_concepts(["red mug", "person", "chair", "door"]),
        )
    return pixels, ids, mask, ref


def _run(backend: Backend, frame) -> None:
    pixels, ids, mask, ref = frame
    feats = backend.encode_image(pixels)
    embeds = backend.encode_text(ids, mask)
    out = backend.detect(feats, embeds, mask)
    assert embeds.device.type == "cpu" and out.pred_boxes.device.type == "cpu"
    assert out.pred_logits.device.type == "cpu" and out.presence_logits.device.type == "cpu"
    for a, b in zip(
        (out.pred_masks.cpu(), out.pred_boxes, out.pred_logits, out.presence_logits),
        (ref.pred_masks, ref.pred_boxes, ref.pred_logits, ref.presence_logits),
    ):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(HAS_CUDA, reason="checks the choice on a machine without a GPU")
def test_auto_on_a_cpu_machine_picks_onnxruntime_cpu_and_says_why(tiny_model, frame, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="efficientsam3_ros.runtime"):
        backend = select_backend("auto", tiny_model, RuntimeOptions(cache_dir=tmp_path))
    info = backend.info
    assert info["backend"] == "onnxruntime-cpu"
    skipped = [reason.split(":")[0] for reason in info["fallbacks"]]
    assert skipped == ["tensorrt", "onnxruntime-cuda", "torch-cuda"]
    assert info["remaining"] == ["torch-cpu"]
    assert "using onnxruntime-cpu" in caplog.text
    _run(backend, frame)
    # second start reuses the cached graphs (no new export)
    exported = sorted(p.name for p in tmp_path.rglob("*.onnx"))
    select_backend("onnxruntime-cpu", tiny_model, RuntimeOptions(cache_dir=tmp_path), fallback=False)
    assert sorted(p.name for p in tmp_path.rglob("*.onnx")) == exported


@pytest.mark.parametrize(
    "memory_format, channels_last", [("auto", True), ("channels_last", True), ("contiguous", False)]
)
def test_torch_cpu_backend_matches_the_model(tiny_model, frame, memory_format, channels_last):
    """In either layout (auto: channels-last for a student on the CPU), with the caller's model left as it was."""
    backend = TorchBackend(tiny_model, RuntimeOptions(memory_format=memory_format), device="cpu")
    assert backend.name == "torch-cpu"
    layout = torch.channels_last if channels_last else torch.contiguous_format
    convs = [p for p in backend.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=layout) for p in convs)
    assert all(p.is_contiguous() for p in tiny_model.parameters())  # the model the ORT fallback exports
    assert (backend.model is tiny_model) == (not channels_last)
    for (name, ours), theirs in zip(backend.model.named_parameters(), tiny_model.parameters(), strict=True):
        assert (ours is theirs) == (not channels_last or ours.dim() != 4), name  # only convs are copied
    _run(backend, frame)


def test_memory_format_auto_is_channels_last_only_where_it_was_measured_faster():
    from efficientsam3_ros.modeling import get_config
    from efficientsam3_ros.modeling.memory_format import resolve_memory_format

    student, teacher = get_config("demo-student"), get_config("demo-teacher")
    assert resolve_memory_format("auto", student, "cpu") is torch.channels_last
    assert resolve_memory_format("auto", student, torch.device("cpu")) is torch.channels_last
    assert resolve_memory_format("auto", teacher, "cpu") is torch.preserve_format  # a ViT: 5 % slower
    assert resolve_memory_format("auto", student, "cuda:0") is torch.preserve_format  # not measured
    assert resolve_memory_format("auto", student, "cpu", convolves_images=False) is torch.preserve_format
    assert resolve_memory_format("channels_last", teacher, "cuda") is torch.channels_last
    assert resolve_memory_format("contiguous", student, "cpu") is torch.contiguous_format
    with pytest.raises(ValueError, match=r"memory_format.*'nhwc'.*channels_last"):
        RuntimeOptions(memory_format="nhwc")


class FlakyBackend(Backend):
    """Works for ``ok_calls`` calls, then raises like a GPU that fell over."""

    name = "flaky-gpu"

    def __init__(self, inner: Backend, ok_calls: int):
        self.inner, self.ok_calls, self.calls = inner, ok_calls, 0
        self.closed = False

    def _tick(self) -> None:
        self.calls += 1
        if self.calls > self.ok_calls:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        self._tick()
        return self.inner.encode_image(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self._tick()
        return self.inner.encode_text(input_ids, attention_mask)

    def detect(self, features, embeds, mask, boxes=None, box_labels=None):
        self._tick()
        if embeds.shape[0] == 0:
            raise ValueError("no concepts")
        return self.inner.detect(features, embeds, mask, boxes, box_labels)

    def close(self) -> None:
        self.closed = True


def test_backend_failing_mid_run_hands_over_to_the_next(tiny_model, frame, caplog):
    torch_cpu = TorchBackend(tiny_model)
    flaky = FlakyBackend(torch_cpu, ok_calls=2)  # encode_image + encode_text work, detect fails
    chain = FallbackChain([("flaky-gpu", lambda: flaky), ("torch-cpu", lambda: torch_cpu)])
    assert chain.info["backend"] == "flaky-gpu" and chain.info["fallbacks"] == []
    with caplog.at_level(logging.WARNING):
        _run(chain, frame)  # the detect call is retried on torch-cpu and still returns the right result
    info = chain.info
    assert info["backend"] == "torch-cpu" and flaky.closed
    assert len(info["fallbacks"]) == 1 and "illegal memory access" in info["fallbacks"][0]
    assert "handing over" in caplog.text


class DeadCudaTensor(torch.Tensor):
    """Stands in for a CUDA tensor after a lasting CUDA error: every op on it, a copy included, raises."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class DeadGpuBackend(Backend):
    """A GPU backend whose context died: its image features are unreadable, its detector raises."""

    name = "tensorrt"

    def __init__(self, model):
        self.model = model

    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        return ImageFeatures(tuple(torch.zeros(1).as_subclass(DeadCudaTensor) for _ in range(3)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return TorchBackend(self.model).encode_text(input_ids, attention_mask)

    def run_detector(self, features, embeds, mask):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_dead_gpu_inputs_lose_one_frame_not_the_next_backend(tiny_model, frame, tmp_path, caplog):
    """The dead GPU's features cannot be copied to the CPU: that frame is lost (raised), but
    onnxruntime-cpu, which never got them, is not blamed and closed, and serves the next frame."""
    from efficientsam3_ros.runtime.ort_backend import OnnxRuntimeBackend

    pixels, ids, mask, _ = frame
    options = RuntimeOptions(cache_dir=tmp_path)
    chain = FallbackChain(
        [
            ("tensorrt", lambda: DeadGpuBackend(tiny_model)),
            ("onnxruntime-cpu", lambda: OnnxRuntimeBackend(tiny_model, options, "cpu")),
            ("torch-cpu", lambda: pytest.fail("onnxruntime-cpu was blamed for the dead GPU's tensors")),
        ]
    )
    embeds = chain.encode_text(ids, mask)
    feats = chain.encode_image(pixels)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="call is lost.*onnxruntime-cpu"):
        chain.detect(feats, embeds, mask)
    info = chain.info
    assert info["backend"] == "onnxruntime-cpu" and info["remaining"] == ["torch-cpu"]
    assert len(info["fallbacks"]) == 1 and info["fallbacks"][0].startswith("tensorrt: failed at run time")
    _run(chain, frame)  # the next frame works on onnxruntime-cpu
    assert chain.info["backend"] == "onnxruntime-cpu" and len(chain.info["fallbacks"]) == 1


def test_hand_over_retries_with_the_inputs_on_the_cpu(tiny_model, frame):
    """A readable input (a GPU that ran out of memory) reaches the next backend as a CPU copy."""
    seen: list[torch.device] = []

    class Recording(TorchBackend):
        def run_detector(self, features, embeds, mask):
            seen.extend([*(f.device for f in features.fpn), embeds.device, mask.device])
            return super().run_detector(features, embeds, mask)

    class OnMeta(ImageFeatures):  # stands in for features left on a GPU: .to("cpu") gives real ones
        def to(self, device, dtype=None):
            return real.to(device, dtype)

    pixels, ids, mask, ref = frame
    cpu = TorchBackend(tiny_model)
    real = cpu.encode_image(pixels)
    flaky = FlakyBackend(cpu, ok_calls=0)
    chain = FallbackChain([("flaky-gpu", lambda: flaky), ("torch-cpu", lambda: Recording(tiny_model))])
    out = chain.detect(OnMeta(tuple(f.to("meta") for f in real.fpn)), cpu.encode_text(ids, mask), mask)
    torch.testing.assert_close(out.pred_logits, ref.pred_logits, rtol=1e-3, atol=1e-4)
    assert seen and all(d.type == "cpu" for d in seen)


def test_torch_cpu_detects_on_half_features_from_torch_cuda(tiny_model, frame):
    """torch-cuda under fp16 autocast hands over half features; the fp32 CPU backend must take them."""
    pixels, ids, mask, _ = frame
    cpu = TorchBackend(tiny_model, device="cpu")
    feats, embeds = cpu.encode_image(pixels), cpu.encode_text(ids, mask)
    ref = cpu.detect(feats, embeds, mask)
    half = ImageFeatures(tuple(f.half() for f in feats.fpn), feats.trunk.half())
    out = cpu.detect(half, embeds, mask)
    torch.testing.assert_close(out.pred_logits, ref.pred_logits, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes, atol=5e-2, rtol=5e-2)


def test_ort_tensorrt_engine_cache_differs_per_weights(tmp_path):
    """ORT's TensorRT EP names engines by file name and node names, not weights: two checkpoints
    (same graph names) must get two engine folders; one graph, one setting, one folder."""
    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.runtime.onnx_cache import cached_graphs
    from efficientsam3_ros.runtime.ort_backend import ort_tensorrt_options

    options = RuntimeOptions(cache_dir=tmp_path / "cache")
    found = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("es-ev-tiny")
        path = cached_graphs(model, ["text_encoder"], tmp_path / "graphs")["text_encoder"]
        found.append((model, path, ort_tensorrt_options("text_encoder", path, model, options)))
    (m0, p0, a), (_, p1, b) = found
    assert p0.name == p1.name and p0.read_bytes() != p1.read_bytes()
    assert a["trt_engine_cache_path"] != b["trt_engine_cache_path"]
    assert Path(a["trt_engine_cache_path"]).is_dir()  # made, parents and all
    assert a["trt_timing_cache_path"] == b["trt_timing_cache_path"]  # kernel timings are shared
    assert ort_tensorrt_options("text_encoder", p0, m0, options) == a
    fp32 = dataclasses.replace(options, precision="fp32")
    assert (
        ort_tensorrt_options("text_encoder", p0, m0, fp32)["trt_engine_cache_path"]
        != a["trt_engine_cache_path"]
    )


def test_exemplar_boxes_give_the_model_result_on_every_backend(tiny_model, frame, tmp_path):
    """Box prompts run the (not exported) geometry encoder through PyTorch, from any backend."""
    from efficientsam3_ros.runtime.ort_backend import OnnxRuntimeBackend

    pixels, ids, mask, _ = frame
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.3]]]).expand(4, 1, 4)
    labels = torch.ones(4, 1, dtype=torch.long)
    with torch.no_grad():
        concepts = tiny_model.encode_concepts(["red mug", "person", "chair", "door"])
        ref = tiny_model.detect(tiny_model.encode_image(pixels), concepts, boxes, labels)
    torch_cpu = TorchBackend(tiny_model)
    ort_cpu = OnnxRuntimeBackend(tiny_model, RuntimeOptions(cache_dir=tmp_path))
    for backend in (torch_cpu, ort_cpu):
        out = backend.detect(backend.encode_image(pixels), concepts.embeds, mask, boxes, labels)
        torch.testing.assert_close(out.pred_logits, ref.pred_logits, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(out.pred_masks, ref.pred_masks, rtol=1e-3, atol=1e-4)
    plain = torch_cpu.detect(torch_cpu.encode_image(pixels), concepts.embeds, mask)
    assert not torch.allclose(plain.pred_logits, ref.pred_logits)  # the boxes were not ignored


def test_caller_errors_are_not_fallbacks(tiny_model):
    flaky = FlakyBackend(TorchBackend(tiny_model), ok_calls=10)
    chain = FallbackChain([("flaky-gpu", lambda: flaky), ("never", lambda: pytest.fail("must not start"))])
    with pytest.raises(ValueError, match="no concepts"):
        chain.detect(ImageFeatures((torch.zeros(1),) * 3), torch.zeros(0, 32, 32), torch.zeros(0, 32))
    assert chain.info["backend"] == "flaky-gpu"


def test_last_backend_failing_raises_and_none_starting_is_reported(tiny_model, frame):
    chain = FallbackChain([("flaky-gpu", lambda: FlakyBackend(TorchBackend(tiny_model), ok_calls=0))])
    with pytest.raises(RuntimeError, match="illegal memory access"):
        chain.encode_image(frame[0])

    def unavailable():
        raise BackendUnavailable("no GPU here")

    with pytest.raises(BackendUnavailable, match="no GPU here"):
        FallbackChain([("a", unavailable), ("b", unavailable)])


def test_select_backend_uses_injected_factories(tiny_model, tmp_path):
    def down(model, options):
        raise BackendUnavailable("simulated driver missing")

    chain = select_backend(
        "torch-cuda",
        tiny_model,
        RuntimeOptions(cache_dir=tmp_path),
        factories={"torch-cuda": down, "onnxruntime-cpu": down, "torch-cpu": lambda m, o: TorchBackend(m, o)},
    )
    assert chain.info["backend"] == "torch-cpu"
    assert [r.split(":")[0] for r in chain.info["fallbacks"]] == ["torch-cuda", "onnxruntime-cpu"]


def test_runtime_options_validate():
    with pytest.raises(ValueError, match="precision"):
        RuntimeOptions(precision="int8")
    with pytest.raises(ValueError, match="opt_concepts"):
        RuntimeOptions(max_concepts=2, opt_concepts=4)


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_torch_cuda_backend_matches_cpu_fp32(tiny_model, frame):
    _run(TorchBackend(tiny_model, RuntimeOptions(precision="fp32"), device="cuda"), frame)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_onnxruntime_cuda_backend_matches(tiny_model, frame, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider (pip install onnxruntime-gpu)")
    from efficientsam3_ros.runtime.ort_backend import OnnxRuntimeBackend

    _run(OnnxRuntimeBackend(tiny_model, RuntimeOptions(cache_dir=tmp_path), provider="cuda"), frame)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and _has_tensorrt()), reason="needs a CUDA GPU and TensorRT")
def test_tensorrt_backend_builds_caches_and_matches(tiny_model, frame, tmp_path):
    from efficientsam3_ros.runtime.trt_backend import TensorRTBackend

    options = RuntimeOptions(cache_dir=tmp_path, precision="fp32", max_concepts=3, opt_concepts=2)
    _run(TensorRTBackend(tiny_model, options), frame)  # 4 concepts > max 3: exercises chunking
    engines = sorted(p.name for p in (tmp_path / "engines").glob("*.engine"))
    assert len(engines) == 3
    TensorRTBackend(tiny_model, options)  # reuses the cache
    assert sorted(p.name for p in (tmp_path / "engines").glob("*.engine")) == engines


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_torch_cuda_fp16_hands_over_to_torch_cpu_within_the_frame(tiny_model, frame):
    """Real half CUDA features (fp16 autocast) reach torch-cpu after torch-cuda fails in detect."""
    pixels, ids, mask, ref = frame
    cuda = TorchBackend(tiny_model, RuntimeOptions(precision="fp16"), device="cuda")
    flaky = FlakyBackend(cuda, ok_calls=2)  # encode_image + encode_text on the GPU, detect fails
    chain = FallbackChain([("torch-cuda", lambda: flaky), ("torch-cpu", lambda: TorchBackend(tiny_model))])
    feats = chain.encode_image(pixels)
    assert feats.device.type == "cuda" and feats.fpn[0].dtype == torch.float16
    out = chain.detect(feats, chain.encode_text(ids, mask), mask)
    assert chain.info["backend"] == "torch-cpu"
    torch.testing.assert_close(out.pred_logits, ref.pred_logits, atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_onnxruntime_tensorrt_engines_follow_the_weights(tmp_path):
    """Two checkpoints, one cache: each onnxruntime-tensorrt backend runs its own weights' engine."""
    ort = pytest.importorskip("onnxruntime")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without TensorrtExecutionProvider (onnxruntime-gpu + TensorRT libraries)")
    from efficientsam3_ros.modeling import build_model
    from efficientsam3_ros.runtime.ort_backend import OnnxRuntimeBackend

    options = RuntimeOptions(cache_dir=tmp_path, precision="fp32", max_concepts=4, opt_concepts=2)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("es-ev-tiny")
        ids, mask = model.tokenize(["red mug", "person"])
        got = OnnxRuntimeBackend(model, options, provider="tensorrt").encode_text(ids, mask)
        torch.testing.assert_close(got, TorchBackend(model).encode_text(ids, mask), rtol=1e-2, atol=1e-3)
    assert len(list((tmp_path / "ort_trt").glob("text_encoder-*"))) == 2


# ------------------------------------------------------------------ devices and caches
def _fake_engine_build() -> tuple[list[int], object]:
    calls: list[int] = []

    def build() -> bytes:
        calls.append(1)
        return b"engine bytes"

    return calls, build


def test_an_engine_built_beside_a_read_only_export_lands_in_the_spare_cache(tmp_path, caplog):
    """onnx_dir on a read-only filesystem (here: a folder that cannot be made): the built engine is
    kept, stored in the cache instead, and found there on the next start (before: the backend
    failed to start after a build of minutes, and built again every start)."""
    (tmp_path / "ro").write_text("a file, so nothing can be created under it")
    export, spare = EngineCache(tmp_path / "ro" / "engines"), EngineCache(tmp_path / "cache" / "engines")
    key = EngineKey("sha", "10.0", "gpu", "fp16", "p")
    calls, build = _fake_engine_build()
    with caplog.at_level(logging.WARNING):
        assert export.get_or_build("detector", key, build, spare=spare) == (b"engine bytes", True)
    assert "cannot cache the detector engine" in caplog.text
    assert spare.load("detector", key) == b"engine bytes"
    assert export.get_or_build("detector", key, build, spare=spare) == (b"engine bytes", False)
    assert len(calls) == 1


def test_an_engine_that_can_be_cached_nowhere_is_still_used(tmp_path, caplog):
    (tmp_path / "ro").write_text("")
    cache = EngineCache(tmp_path / "ro" / "engines")
    calls, build = _fake_engine_build()
    with caplog.at_level(logging.WARNING):
        data, built = cache.get_or_build("detector", EngineKey("s", "v", "g", "fp16", "p"), build)
    assert (data, built) == (b"engine bytes", True)
    assert "built again at the next start" in caplog.text


@pytest.mark.parametrize(
    "requested, device, expected, cuda_device",
    [
        ("auto", None, "auto", 0),
        ("auto", "cpu", "cpu", 0),  # before: auto still took the GPU
        ("onnxruntime", "cpu", "cpu", 0),
        ("torch", "cpu", "torch-cpu", 0),
        ("onnxruntime-cpu", "cpu", "onnxruntime-cpu", 0),
        ("auto", "cuda", "auto", 0),
        ("auto", "cuda:1", "auto", 1),  # before: every GPU backend ran on GPU 0
        ("tensorrt", "cuda:2", "tensorrt", 2),
    ],
)
def test_a_device_becomes_a_choice_of_backends_and_a_gpu(requested, device, expected, cuda_device):
    from efficientsam3_ros.runtime.fallback import backend_for_device

    name, options = backend_for_device(requested, device, RuntimeOptions())
    assert (name, options.cuda_device) == (expected, cuda_device)


@pytest.mark.parametrize("requested, device", [("tensorrt", "cpu"), ("torch-cuda", "cpu"), ("auto", "gpu")])
def test_a_device_that_contradicts_the_backend_is_refused(requested, device):
    from efficientsam3_ros.runtime.fallback import backend_for_device

    with pytest.raises(ValueError, match="device"):
        backend_for_device(requested, device, RuntimeOptions())


def test_a_gpu_backend_named_by_index_starts_on_that_gpu_or_says_which_exist(tiny_model):
    """torch-cuda on cuda:<options.cuda_device>; an index past the last GPU is unavailable, named."""
    from efficientsam3_ros.runtime.fallback import make_backend

    missing = torch.cuda.device_count() if HAS_CUDA else 3
    with pytest.raises(BackendUnavailable, match="cuda" if HAS_CUDA else "no CUDA device"):
        make_backend("torch-cuda", tiny_model, RuntimeOptions(cuda_device=missing))


def test_the_start_line_is_a_warning_when_the_backend_asked_for_did_not_start(tiny_model, caplog):
    def broken(model, options):
        raise BackendUnavailable("no engine here")

    with caplog.at_level(logging.INFO, logger="efficientsam3_ros.runtime"):
        select_backend("tensorrt", tiny_model, factories={"tensorrt": broken, "onnxruntime-cuda": broken})
    started = [r for r in caplog.records if "backend: using" in r.getMessage()]
    assert len(started) == 1 and started[0].levelno == logging.WARNING
    assert "skipped: tensorrt: unavailable: no engine here" in started[0].getMessage()


def _one_input_graph(path: Path, size: int) -> None:
    """A real ONNX graph whose only input is ``pixels`` [1, 3, size, size] (an Identity)."""
    import onnx
    from onnx import TensorProto, helper

    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, size, size])
    graph = helper.make_graph([helper.make_node("Identity", ["pixels"], ["out"])], "g", [pixels], [out])
    onnx.save(helper.make_model(graph), str(path))


def test_graphs_copied_without_a_manifest_are_checked_for_their_input_size(tiny_model, tmp_path):
    """Without manifest.json the image encoder's own input says its size: a graph of another size
    is refused at start (before: accepted, then every frame failed in onnxruntime)."""
    from efficientsam3_ros.runtime.onnx_cache import graphs_from_dir

    size = tiny_model.config.image_size
    _one_input_graph(tmp_path / "image_encoder.onnx", size + 56)
    with pytest.raises(ValueError, match=f"takes {size + 56}x{size + 56} px images, this model {size} px"):
        graphs_from_dir(tmp_path, ["image_encoder"], tiny_model)
    _one_input_graph(tmp_path / "image_encoder.onnx", size)
    assert graphs_from_dir(tmp_path, ["image_encoder"], tiny_model) == {
        "image_encoder": tmp_path / "image_encoder.onnx"
    }


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_torch_cuda_uses_the_models_own_copy_whatever_the_gpu_is_called(tiny_model):
    """A model already on cuda:0 is not copied again for "cuda" (before: cuda != cuda:0, a second copy)."""
    model = TorchBackend(tiny_model, device="cuda").model
    for device in ("cuda", "cuda:0"):
        backend = TorchBackend(model, RuntimeOptions(memory_format="contiguous"), device=device)
        assert backend.device == torch.device("cuda", 0) and backend.model is model
