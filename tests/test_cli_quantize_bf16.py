"""``camr quantize --precision bf16``: a bf16 folder run by OpenVINO's runtime, or one clear line why not.

The tests marked ``openvino`` need the openvino package (the openvino / openvino-runtime extras; .ci/run's
openvino step runs them) and skip with the reason elsewhere; the one writing a folder also needs a CPU that
OpenVINO reports BF16 for (AVX512-BF16 or AMX).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="the openvino package (openvino extra) is not installed")


@pytest.fixture
def image_sets(tmp_path: Path, photo_arrays: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """A calibration folder (two photos) and a held-out folder (one other photo)."""
    folders = []
    for name, photos in (("calib", ["coffee", "chelsea"]), ("held", ["astronaut"])):
        root = tmp_path / name
        root.mkdir()
        for photo in photos:
            cv2.imwrite(str(root / f"{photo}.png"), cv2.cvtColor(photo_arrays[photo], cv2.COLOR_RGB2BGR))
        folders.append(root)
    return folders[0], folders[1]


def _quantize(model: Path, out: Path, sets: tuple[Path, Path], *extra: str) -> object:
    args = ["quantize", str(out), "--model", str(model), "--calibration", str(sets[0]), "--held-out", str(sets[1]),
            "--precision", "bf16", *extra]
    return CliRunner().invoke(app, args)


def test_missing_openvino_is_one_line_and_writes_nothing(tiny_nchw: Path, image_sets: tuple[Path, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails as if it were not installed
    result = _quantize(tiny_nchw, tmp_path / "bf16", image_sets)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--precision bf16 needs openvino" in lines[0]
    assert "cam-runtime[openvino-runtime]" in lines[0]
    assert not (tmp_path / "bf16").exists()


@pytest.mark.openvino
@needs_openvino
def test_refused_where_the_cpu_lacks_bf16(tiny_nchw: Path, image_sets: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cam_runtime.derive.bf16  # noqa: F401 (imported before the patch, so it does not keep the fake)
    from cam_runtime import openvino_runtime as ovr

    monkeypatch.setattr(ovr, "cpu_capabilities", lambda: ["FP32", "INT8"])
    result = _quantize(tiny_nchw, tmp_path / "bf16", image_sets)
    assert result.exit_code == 2, result.output
    assert "bf16 is not available on this CPU" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bf16").exists()


@pytest.mark.openvino
@needs_openvino
def test_writes_a_verified_bf16_folder(tiny_nchw: Path, image_sets: tuple[Path, Path], tmp_path: Path,
                                       photo_arrays: dict[str, np.ndarray]) -> None:
    from cam_runtime import openvino_runtime as ovr
    from cam_runtime.engine import CamEngine

    if not ovr.bf16_available():
        pytest.skip(f"OpenVINO reports no native BF16 on this CPU ({ovr.cpu_capabilities()})")
    out = tmp_path / "bf16"
    result = _quantize(tiny_nchw, out, image_sets, "--min-top1", "0", "--min-correlation", "0.9", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["precision"] == "bf16" and report["details"]["runtime"] == "openvino"
    assert set(report["fidelity"]) == {"calibration", "held-out"}
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["variant"] == "bf16"
    assert manifest["fidelity"]["thresholds"] == {"min_top1_agreement": 0.0,
                                                               "min_mean_map_correlation": 0.9}
    loaded = CamEngine.load(out)  # the folder asks for OpenVINO bf16 itself
    assert loaded.providers == ["OpenVINORuntime"] and loaded.session.precision == "bf16"
    fp32 = CamEngine.load(tiny_nchw, device="cpu")
    a, b = loaded.explain(photo_arrays["coffee"])[0], fp32.explain(photo_arrays["coffee"])[0]
    assert np.corrcoef(a.targets[0].raw.ravel(), b.targets[0].raw.ravel())[0, 1] > 0.9

    # No thresholds given: bf16's own (tighter) defaults, recorded in the manifest.
    lenient = _quantize(tiny_nchw, tmp_path / "defaults", image_sets, "--accept-low-fidelity", "--quiet")
    assert lenient.exit_code == 0, lenient.output
    recorded = json.loads((tmp_path / "defaults" / "manifest.json").read_text(encoding="utf-8"))
    assert recorded["fidelity"]["thresholds"] == {"min_top1_agreement": 0.99,
                                                               "min_mean_map_correlation": 0.999}
