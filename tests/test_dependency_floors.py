"""Dependency floors and onnxruntime's telemetry: pyproject says what the lowest-versions CI step really tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[1]


def _pins() -> dict[str, str]:
    text = (ROOT / ".ci" / "lowest-constraints.txt").read_text(encoding="utf-8")
    return dict(line.split("==") for line in text.splitlines() if line and not line.startswith("#"))


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    floors = {}
    for spec in [*project["dependencies"], *project["optional-dependencies"]["cpu"]]:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9.]+)", spec)
        assert match, f"{spec}: runtime dependencies need a plain >= floor"
        floors[match.group(1)] = match.group(2)
    return floors


def test_floors_equal_the_tested_pins() -> None:
    pins, floors = _pins(), _floors()
    assert set(floors) == set(pins)
    for name, floor in floors.items():
        assert _release(pins[name]) == _release(floor), (name, floor, pins[name])


def _release(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_requires_python_matches_onnxruntime_floor() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11"  # onnxruntime 1.27 has wheels for 3.11+ only


def test_onnxruntime_telemetry_is_off(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    home = tmp_path / "home"
    home.mkdir()
    code = ("import sys; sys.path.insert(0, 'tests'); import cam_runtime; from tiny_models import make_tiny_folder;"
            f"from cam_runtime import CamEngine; CamEngine.load(make_tiny_folder({str(tmp_path / 'm')!r}, 'NHWC'))")
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            env={**env, "HOME": str(home), "PYTHONPATH": str(ROOT)},
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert not list(home.rglob("*")), "something wrote under HOME"
    # A HOME that cannot be written (here: a file) must not print onnxruntime's telemetry warning.
    result = subprocess.run([sys.executable, "-c", code.replace(str(tmp_path / "m"), str(tmp_path / "m2"))],
                            cwd=ROOT, env={**env, "HOME": "/dev/null", "PYTHONPATH": str(ROOT)},
                            capture_output=True, timeout=120, check=False)
    assert result.returncode == 0 and b"telemetry" not in result.stderr, result.stderr.decode()
