"""OpenVINO's own runtime behind CamEngine (device="openvino-runtime") and the bf16 variant folder.

The tests marked ``openvino`` need the openvino package (the openvino / openvino-runtime extras) and skip with
the reason elsewhere; bf16 ones also need a CPU that OpenVINO reports BF16 for (AVX512-BF16 or AMX).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from cam_runtime import openvino_runtime as ovr
from cam_runtime.engine import CamEngine
from cam_runtime.errors import CamError, InvalidArgumentError, MissingDependencyError
from cam_runtime.providers import resolve_providers

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="the openvino package (openvino extra) is not installed")


def test_requested_only_for_openvino_runtime() -> None:
    assert ovr.requested("cpu", None, {}) is None
    assert ovr.requested("openvino", None, {}) is None  # onnxruntime's OpenVINO provider, not this runtime
    assert ovr.requested("openvino-runtime", None, {}) == {}
    assert ovr.requested("auto", [("OpenVINORuntime", {"precision": "bf16"})], {}) == {"precision": "bf16"}
    assert ovr.requested("auto", ["CPUExecutionProvider"], {}) is None
    # a bf16 folder runs on OpenVINO bf16 under auto, but an explicit device or provider list is obeyed
    assert ovr.requested("auto", None, {"variant": "bf16"}) == {"precision": "bf16"}
    assert ovr.requested("cpu", None, {"variant": "bf16"}) is None
    with pytest.raises(InvalidArgumentError, match="alone"):
        ovr.requested("auto", ["OpenVINORuntime", "CPUExecutionProvider"], {})


def test_openvino_runtime_is_not_an_onnxruntime_provider() -> None:
    with pytest.raises(InvalidArgumentError, match="not an onnxruntime provider"):
        resolve_providers("openvino-runtime")


@pytest.mark.skipif(HAVE_OPENVINO, reason="checks the message shown when openvino is missing")
def test_missing_openvino_is_one_install_line(tiny_nchw: Path) -> None:
    with pytest.raises(MissingDependencyError, match=r"cam-runtime\[openvino\]"):
        CamEngine.load(tiny_nchw, device="openvino-runtime")


@pytest.mark.openvino
@needs_openvino
@pytest.mark.parametrize("folder", ["tiny_nchw", "tiny_nhwc"])
def test_fp32_matches_onnxruntime(folder: str, request: pytest.FixtureRequest,
                                  photo_arrays: dict[str, np.ndarray]) -> None:
    path = request.getfixturevalue(folder)
    ov = CamEngine.load(path, device="openvino-runtime")
    assert ov.providers == ["OpenVINORuntime"] and ov.session.precision == "fp32"
    cpu = CamEngine.load(path, device="cpu")
    images = [photo_arrays["coffee"], photo_arrays["chelsea"], photo_arrays["astronaut"]]
    for method in ("cam", "gradcam++", "scorecam"):
        for a, b in zip(ov.explain(images, method=method, batch_size=2), cpu.explain(images, method=method),
                        strict=True):
            assert a.top_k[0].class_id == b.top_k[0].class_id
            np.testing.assert_allclose(a.targets[0].raw, b.targets[0].raw, rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(a.top_k[0].probability, b.top_k[0].probability, atol=1e-5)


@pytest.mark.openvino
@needs_openvino
def test_bf16_is_refused_where_the_cpu_lacks_it(tiny_nchw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ovr, "cpu_capabilities", lambda: ["FP32", "INT8"])
    with pytest.raises(ovr.PrecisionNotAvailableError, match="bf16 is not available"):
        CamEngine.load(tiny_nchw, providers=[("OpenVINORuntime", {"precision": "bf16"})])
    with pytest.raises(InvalidArgumentError, match="precision must be"):
        CamEngine.load(tiny_nchw, providers=[("OpenVINORuntime", {"precision": "fp8"})])


def _photo_folder(root: Path, photos: dict[str, np.ndarray], names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(root / f"{name}.png"), cv2.cvtColor(photos[name], cv2.COLOR_RGB2BGR))
    return root


@pytest.mark.openvino
@needs_openvino
def test_bf16_folder_is_verified_and_runs_on_openvino(tiny_nchw: Path, tmp_path: Path,
                                                      photo_arrays: dict[str, np.ndarray]) -> None:
    if not ovr.bf16_available():
        pytest.skip(f"OpenVINO reports no native BF16 on this CPU ({ovr.cpu_capabilities()})")
    from cam_runtime.derive.bf16 import bf16_folder

    calibration = _photo_folder(tmp_path / "calib", photo_arrays, ["coffee", "chelsea"])
    held = _photo_folder(tmp_path / "held", photo_arrays, ["astronaut"])
    result = bf16_folder(tiny_nchw, tmp_path / "bf16", calibration=calibration, held_out=held,
                         min_top1=0.0, min_correlation=0.9)
    assert result.manifest is not None and result.manifest.provenance["variant"] == "bf16"
    conversion = result.manifest.provenance["conversion"]
    assert conversion["precision"] == "bf16" and "BF16" in conversion["cpu_capabilities"]
    assert set(result.fidelity) == {"calibration", "held-out"}
    assert all(0.9 <= f.map_correlation_mean <= 1.0 for f in result.fidelity.values())
    loaded = CamEngine.load(tmp_path / "bf16")  # auto: the folder asks for OpenVINO bf16 itself
    assert loaded.providers == ["OpenVINORuntime"] and loaded.session.precision == "bf16"
    fp32 = CamEngine.load(tiny_nchw, device="cpu")
    a, b = loaded.explain(photo_arrays["coffee"])[0], fp32.explain(photo_arrays["coffee"])[0]
    assert np.corrcoef(a.targets[0].raw.ravel(), b.targets[0].raw.ravel())[0, 1] > 0.9
    # an impossible threshold refuses the folder and writes nothing
    with pytest.raises(CamError, match="bf16"):  # FidelityError (moving into a package; its base here)
        bf16_folder(tiny_nchw, tmp_path / "refused", calibration=calibration, min_correlation=1.01)
    assert not (tmp_path / "refused").exists()
