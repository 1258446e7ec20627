"""The IOBinding path gives the same results as plain ``session.run``; CUDA options and CPU/GPU agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cam_runtime import CamEngine
from cam_runtime.providers import CUDA, DEFAULT_CUDA_OPTIONS, available_providers, cuda_provider_options

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "models" / "fixtures" / "shapes"
SHAPES_IMAGES = ROOT / "models" / "fixtures" / "shapes-test" / "images"
HAS_CUDA = CUDA in available_providers()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDAExecutionProvider unavailable (install onnxruntime-gpu "
                                                      "on a machine with a GPU)")


@pytest.fixture(scope="session")
def folders(tiny_nhwc: Path, tiny_nchw: Path) -> dict[str, Path]:
    """The folders the agreement tests run on."""
    return {"nhwc": tiny_nhwc, "nchw": tiny_nchw, "shapes": SHAPES}


@pytest.fixture(scope="session")
def cpu_engines(folders: dict[str, Path]) -> dict[str, CamEngine]:
    """One CPU engine per folder, with device maps so every output can be fetched both ways."""
    return {name: CamEngine.load(path, device="cpu", threads=1, device_maps=True) for name, path in folders.items()}


def batch_for(engine: CamEngine, n: int, seed: int = 0) -> np.ndarray:
    """A random batch in the engine's input layout."""
    return np.random.default_rng(seed).normal(size=(n, *engine._input_shape())).astype(np.float32)


class CountingSession:
    """Delegates to an onnxruntime session and counts which run method was used."""

    def __init__(self, session: object) -> None:
        self._session = session
        self.calls = {"run": 0, "run_with_iobinding": 0}

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self._session, name)
        if name in self.calls:
            self.calls[name] += 1
        return attribute


def both_ways(engine: CamEngine, call: str, *args: object) -> tuple:
    """``engine.<call>(*args)`` with plain run and with IOBinding (checked to go through each)."""
    original = engine.session
    counting = engine.session = CountingSession(original)
    try:
        engine.io_binding = False
        plain = getattr(engine, call)(*args)
        assert counting.calls == {"run": 1, "run_with_iobinding": 0}
        engine.io_binding = True
        bound = getattr(engine, call)(*args)
        assert counting.calls == {"run": 1, "run_with_iobinding": 1}
    finally:
        engine.io_binding = False
        engine.session = original
    return plain, bound


@pytest.mark.parametrize("name", ["nhwc", "nchw", "shapes"])
@pytest.mark.parametrize("n", [1, 7])
def test_run_identical_on_cpu(cpu_engines: dict[str, CamEngine], name: str, n: int) -> None:
    engine = cpu_engines[name]
    (probs, feats), (probs_b, feats_b) = both_ways(engine, "run", batch_for(engine, n, seed=n))
    assert probs_b.dtype == np.float32 and feats_b.shape == feats.shape
    np.testing.assert_array_equal(probs_b, probs)
    np.testing.assert_array_equal(feats_b, feats)


@pytest.mark.parametrize("name", ["nhwc", "shapes"])
def test_probabilities_and_device_maps_identical_on_cpu(cpu_engines: dict[str, CamEngine], name: str) -> None:
    engine = cpu_engines[name]
    batch = batch_for(engine, 5, seed=2)
    plain, bound = both_ways(engine, "predict_probabilities", batch)
    np.testing.assert_array_equal(bound, plain)
    plain_maps, bound_maps = both_ways(engine, "run_device_maps", batch, 3)
    np.testing.assert_array_equal(bound_maps.maps, plain_maps.maps)
    np.testing.assert_array_equal(bound_maps.classes, plain_maps.classes)
    np.testing.assert_array_equal(bound_maps.probabilities, plain_maps.probabilities)


def test_explain_identical_with_io_binding(folders: dict[str, Path]) -> None:
    images = sorted(SHAPES_IMAGES.glob("*.png"))[:6]
    plain = CamEngine.load(folders["shapes"], device="cpu", threads=1)
    bound = CamEngine.load(folders["shapes"], device="cpu", threads=1, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    # Score-CAM also runs predict_probabilities (its masked passes) through the binding.
    for method, options in (("cam", {}), ("scorecam", {"max_channels": 8})):
        for mine, ref in zip(bound.explain(images, method=method, top_k=2, batch_size=4, **options),
                             plain.explain(images, method=method, top_k=2, batch_size=4, **options),
                             strict=True):
            for target, ref_target in zip(mine.targets, ref.targets, strict=True):
                np.testing.assert_array_equal(target.raw, ref_target.raw)
                assert target.boxes == ref_target.boxes


def test_io_binding_argument_checked(folders: dict[str, Path]) -> None:
    from cam_runtime.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="io_binding must be True, False or 'auto'"):
        CamEngine.load(folders["nhwc"], device="cpu", io_binding=1.5)  # type: ignore[arg-type]


def test_cuda_options_defaults_and_overrides() -> None:
    options = cuda_provider_options({"prefer_nhwc": "0", "device_id": 1})
    assert options["prefer_nhwc"] == "0" and options["device_id"] == 1
    assert options["cudnn_conv_use_max_workspace"] == DEFAULT_CUDA_OPTIONS["cudnn_conv_use_max_workspace"] == "1"
    assert cuda_provider_options(None) == DEFAULT_CUDA_OPTIONS
    assert cuda_provider_options() is not DEFAULT_CUDA_OPTIONS  # callers may mutate their copy


@pytest.mark.cuda
@needs_cuda
def test_cuda_session_gets_the_default_options(folders: dict[str, Path]) -> None:
    engine = CamEngine.load(folders["shapes"], device="cuda", cuda_options={"cudnn_conv_algo_search": "HEURISTIC"})
    assert engine.providers[0] == CUDA
    options = engine.session.get_provider_options()[CUDA]
    assert options["cudnn_conv_use_max_workspace"] == "1"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["use_tf32"] == "0" and options["prefer_nhwc"] == "1"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", ["nhwc", "nchw", "shapes"])
def test_cuda_iobinding_matches_cuda_run_and_cpu(folders: dict[str, Path], cpu_engines: dict[str, CamEngine],
                                                 name: str) -> None:
    gpu = CamEngine.load(folders[name], device="cuda", io_binding="auto")
    assert gpu.io_binding and gpu.providers[0] == CUDA
    batch = batch_for(gpu, 16, seed=5)
    (probs, feats), (probs_b, feats_b) = both_ways(gpu, "run", batch)
    np.testing.assert_allclose(probs_b, probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats_b, feats, rtol=1e-4, atol=1e-5)
    cpu_probs, cpu_feats = cpu_engines[name].run(batch)
    assert np.corrcoef(probs.ravel(), cpu_probs.ravel())[0, 1] >= 0.999
    assert np.corrcoef(feats.ravel(), cpu_feats.ravel())[0, 1] >= 0.999
