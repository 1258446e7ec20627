"""Provider selection: shortcuts, provider lists passed through to onnxruntime, missing ones refused, fallbacks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cam_runtime.engine import CamEngine
from cam_runtime.errors import InvalidArgumentError, ProviderNotAvailableError
from cam_runtime.providers import CPU, CUDA, DEFAULT_CUDA_OPTIONS, provider_name, resolve_providers

OPENVINO = "OpenVINOExecutionProvider"


@pytest.fixture
def cuda_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])


def test_provider_lists_pass_through_with_shortcuts_expanded(cuda_and_cpu: None) -> None:
    assert resolve_providers(providers=["cpu"]) == [CPU]
    assert resolve_providers(providers=[CPU, ("CPUExecutionProvider", {"x": "1"})]) == [CPU, (CPU, {"x": "1"})]
    # CUDA gets the tuned defaults, then the caller's options key by key
    tuned = resolve_providers(cuda_options=DEFAULT_CUDA_OPTIONS, providers=[("cuda", {"device_id": "1"}), "cpu"])
    assert tuned[0] == (CUDA, {**DEFAULT_CUDA_OPTIONS, "device_id": "1"}) and tuned[1] == CPU
    assert provider_name(("coreml", {})) == "CoreMLExecutionProvider"


def test_a_missing_requested_provider_is_refused_with_the_available_ones(cuda_and_cpu: None) -> None:
    with pytest.raises(ProviderNotAvailableError, match=r"TensorrtExecutionProvider .*CUDAExecutionProvider, "
                                                         r"CPUExecutionProvider"):
        resolve_providers(providers=["TensorrtExecutionProvider", CUDA, CPU])
    with pytest.raises(ProviderNotAvailableError, match=r"cam-runtime\[openvino\]"):
        resolve_providers("openvino")
    for bad in ([], "CPUExecutionProvider", [("cpu",)], [42]):
        with pytest.raises(InvalidArgumentError):
            resolve_providers(providers=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="device must be one of"):
        resolve_providers("tpu")


def test_device_shortcuts_put_cpu_behind(cuda_and_cpu: None) -> None:
    assert resolve_providers("cuda")[1] == CPU
    assert resolve_providers("CPU") == [CPU]


def test_engine_runs_on_a_passed_provider_list(tiny_nchw: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    by_list = CamEngine.load(tiny_nchw, providers=[("CPUExecutionProvider", {"arena_extend_strategy":
                                                                            "kSameAsRequested"})])
    by_device = CamEngine.load(tiny_nchw, device="cpu")
    assert by_list.providers == [CPU]
    a = by_list.explain(photo_arrays["coffee"], method="gradcam++")[0]
    b = by_device.explain(photo_arrays["coffee"], method="gradcam++")[0]
    np.testing.assert_array_equal(a.targets[0].raw, b.targets[0].raw)


@pytest.mark.openvino
def test_openvino_provider_matches_cpu(tiny_nchw: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    """Runs where onnxruntime-openvino is the installed onnxruntime (its own CI step)."""
    import onnxruntime

    if OPENVINO not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-openvino is not the installed onnxruntime (the openvino extra's CI step runs this)")
    on_openvino = CamEngine.load(tiny_nchw, device="openvino")
    assert on_openvino.providers[0] == OPENVINO
    cpu = CamEngine.load(tiny_nchw, device="cpu")
    for method in ("cam", "gradcam++", "scorecam"):
        a = on_openvino.explain(photo_arrays["coffee"], method=method)[0]
        b = cpu.explain(photo_arrays["coffee"], method=method)[0]
        assert a.top_k[0].class_id == b.top_k[0].class_id
        np.testing.assert_allclose(a.targets[0].raw, b.targets[0].raw, rtol=1e-3, atol=1e-4)
    if os.environ.get("CAMR_REQUIRE_OPENVINO"):
        assert OPENVINO in onnxruntime.get_available_providers()
