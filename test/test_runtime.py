"""Backends, the fallback chain and the TensorRT engine cache (logic tested without a GPU)."""

from __future__ import annotations

import dataclasses
import json
import logging

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
    assert embeds.device.type == "cpu" and out.pred_masks.device.type == "cpu"
    for a, b in zip(
        (out.pred_masks, out.pred_boxes, out.pred_logits, out.presence_logits),
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
