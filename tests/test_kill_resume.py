"""Kill ``camr explain`` mid-run (SIGKILL, SIGTERM, SIGINT): every file on disk is complete, and
``--skip-existing`` finishes the rest with outputs identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app
from tiny_models import make_tiny_folder

REPO = Path(__file__).resolve().parents[1]
GOOD_IMAGES = 200
BAD_IMAGES = ("broken.png", "empty.jpg", "text.gif")
TEMP_PREFIX = ".camr-"


def explain_args(src: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", str(src), "-m", str(model), "-o", str(out), "-b", "1", "--format", "png", "-q",
            "--threads", "1", *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A model, a folder of images (three of them bad) and the outputs of an uninterrupted run."""
    root = tmp_path_factory.mktemp("kill_resume")
    model = make_tiny_folder(root / "model")
    src = root / "images"
    src.mkdir()
    rng = np.random.default_rng(8)
    for i in range(GOOD_IMAGES):
        cv2.imwrite(str(src / f"img_{i:03d}.png"), rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
    (src / "broken.png").write_bytes((src / "img_000.png").read_bytes()[:100])
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.gif").write_text("not an image")
    reference = root / "reference"
    result = CliRunner().invoke(app, explain_args(src, model, reference))
    assert result.exit_code == 1, result.output  # some inputs failed, the rest were done
    return model, src, reference


def outputs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if not p.name.startswith(TEMP_PREFIX)}


def records(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.json") if p.name != "report.json" and not p.name.startswith(TEMP_PREFIX)]


def start_and_interrupt(src: Path, model: Path, out: Path, sig: signal.Signals, after: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cam_runtime", *explain_args(src, model, out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and (not out.is_dir() or len(records(out)) < after):
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


def check_complete(out: Path, reference: Path) -> int:
    """Every visible output equals the uninterrupted run's file; returns how many images were done."""
    ref = outputs(reference)
    done = 0
    for name, path in outputs(out).items():
        if name.startswith("report."):
            continue
        assert name in ref, f"unexpected output {name}"
        if name.endswith(".png"):
            assert cv2.imread(str(path)) is not None, name
            assert path.read_bytes() == ref[name].read_bytes(), f"{name} differs from the uninterrupted run"
        else:
            record = json.loads(path.read_text())
            assert record["status"] in ("ok", "failed")
            done += 1
            for target in record.get("targets", []):
                assert (out / target["overlay"]).is_file(), "a record is written only after its overlays"
    return done


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_interrupted_run_leaves_complete_outputs_and_resumes(setup: tuple[Path, Path, Path], tmp_path: Path,
                                                             sig: signal.Signals) -> None:
    model, src, reference = setup
    out = tmp_path / "out"
    proc = start_and_interrupt(src, model, out, sig, after=20)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    done = check_complete(out, reference)
    assert 20 <= done < GOOD_IMAGES

    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        if (out / "report.json").exists():  # an earlier report may exist; it must still parse
            json.loads((out / "report.json").read_text())
    else:
        # Graceful: temp files removed, a report of exactly the images done, one error line for Ctrl-C.
        assert proc.returncode == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM), stderr
        assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
        report = json.loads((out / "report.json").read_text())
        assert sum(image["status"] == "ok" for image in report["images"]) == done
        assert all("\n" not in (image["error"] or "") for image in report["images"])
        if sig == signal.SIGINT:
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr

    resumed = CliRunner().invoke(app, explain_args(src, model, out, "--skip-existing"))
    assert resumed.exit_code == 1, resumed.output  # the three bad images still fail, everything else is done
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["ok"] == GOOD_IMAGES and report["summary"]["failed"] == len(BAD_IMAGES)
    assert 0 < report["summary"]["resumed"] <= done
    assert set(outputs(out)) == set(outputs(reference))
    assert check_complete(out, reference) == GOOD_IMAGES  # failed images get no record file
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_repeated_kills_then_resume(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, src, reference = setup
    out = tmp_path / "out"
    start_and_interrupt(src, model, out, signal.SIGKILL, after=10)
    first = check_complete(out, reference)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cam_runtime", *explain_args(src, model, out, "--skip-existing")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(records(out)) < first + 10:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    second = check_complete(out, reference)
    assert second >= first
    resumed = CliRunner().invoke(app, explain_args(src, model, out, "--skip-existing"))
    assert resumed.exit_code == 1, resumed.output
    assert check_complete(out, reference) == GOOD_IMAGES  # failed images get no record file
