"""Import weight: ``import cam_runtime`` and ``camr --help`` load no heavy or optional package (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "cv2", "onnxruntime")
"""Loaded only when something needs them (an engine, an image, a map)."""
OPTIONAL = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxscript", "torch", "pytorch_grad_cam", "fastapi", "uvicorn",
            "starlette", "multipart", "ray", "pyarrow", "openvino", "scipy", "PIL", "prometheus_client", "httpx",
            "selenium")
"""Extras: never imported by the package itself or by the CLI's help."""


def loaded_after(code: str) -> list[str]:
    """Top-level packages among HEAVY + OPTIONAL that are in sys.modules after running ``code``."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY + OPTIONAL)!r})))")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_cam_runtime_is_light() -> None:
    assert loaded_after("import cam_runtime; cam_runtime.__version__") == []


@pytest.mark.parametrize("argv", [["--help"], ["explain", "--help"], ["evaluate", "--help"], ["serve", "--help"],
                                  ["import", "--help"], ["video", "--help"], ["--version"]])
def test_cli_help_loads_nothing_heavy(argv: list[str]) -> None:
    code = (f"import sys; sys.argv = ['camr', *{argv!r}]\nfrom cam_runtime.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass")
    assert loaded_after(code) == []


def test_public_names_load_on_first_use() -> None:
    loaded = loaded_after("from cam_runtime import CamEngine, overlay, DifferenceTarget\nassert callable(overlay)")
    assert set(HEAVY) - {"onnxruntime"} <= set(loaded)  # the engine's modules need NumPy and OpenCV
    assert not set(loaded) & set(OPTIONAL)


def test_unknown_attribute_is_an_attribute_error() -> None:
    import cam_runtime

    with pytest.raises(AttributeError, match="no_such_name"):
        cam_runtime.no_such_name  # noqa: B018
    assert "CamEngine" in dir(cam_runtime)
    assert set(cam_runtime.__all__) <= set(dir(cam_runtime))
