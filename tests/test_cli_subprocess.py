"""Real ``camr`` processes: a nested folder with a broken file and a non-image, reports that agree, offline HTML,
no TensorFlow in the runtime commands, a killed run that resumes, and one real export."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cam_runtime.cli.bench_cmd import example_images
from tiny_models import make_tiny_folder

REPO = Path(__file__).resolve().parents[1]
TF_MODULES = ("tensorflow", "keras", "tf2onnx")
OPTIONAL_MODULES = (*TF_MODULES, "torch", "onnxscript", "pytorch_grad_cam", "ray", "pyarrow")
"""Extras that the runtime commands (explain, info, import --help) must not import (onnx is a dependency: loading a
model checks its graph with it, see docs/security.md; ``import cam_runtime`` and ``--help`` still do not load it)."""


def camr(*args: object, cwd: Path | None = None, timeout: float = 120,
         stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m cam_runtime`` as a real process (stdout is a pipe, not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cam_runtime", *map(str, args)], cwd=cwd, env=env,
                          input=stdin, capture_output=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder."""
    return make_tiny_folder(tmp_path_factory.mktemp("sp-models") / "tiny", "NHWC", seed=5)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested folders: same-named photos in two subfolders, a deep PNG, a unicode name, a broken JPEG,
    a text file named .jpg and a .txt file that the walker must ignore."""
    root = tmp_path_factory.mktemp("sp-tree") / "photos"
    photos = example_images()
    for sub, photo in (("a", photos[0]), ("b", photos[1])):
        (root / sub).mkdir(parents=True)
        shutil.copy(photo, root / sub / "same.jpg")
    (root / "a" / "deep").mkdir()
    cv2.imwrite(str(root / "a" / "deep" / "same.png"), cv2.imread(str(photos[2])))
    shutil.copy(photos[0], root / "ünï cödé photo.jpg")
    (root / "broken.jpg").write_bytes(photos[1].read_bytes()[:2000])
    (root / "b" / "not-an-image.jpg").write_text("this is text, not a JPEG")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.links.append(value)


@pytest.fixture(scope="module")
def folder_run(model: Path, tree: Path, tmp_path_factory: pytest.TempPathFactory):
    """One recursive run over the tree."""
    out = tmp_path_factory.mktemp("sp-out") / "out"
    result = camr("explain", tree, "--recursive", "-m", model, "-o", out, "-k", "2", "--save-heatmaps")
    return result, out


def test_folder_run_exit_code_and_outputs(folder_run, tree: Path) -> None:
    result, out = folder_run
    assert result.returncode == 1, result.stderr.decode()
    assert result.stdout == b""  # no progress bar and nothing else when stdout is not a terminal
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["summary"] == {"total": 6, "ok": 4, "failed": 2, "resumed": 0}
    failed = {Path(r["source"]).name: r["error_type"] for r in report["images"] if r["status"] == "failed"}
    assert failed == {"broken.jpg": "ImageDecodeError", "not-an-image.jpg": "ImageDecodeError"}
    assert all("notes.txt" not in r["source"] for r in report["images"])
    overlays = [t["overlay"] for r in report["images"] for t in r["targets"]]
    assert len(overlays) == len(set(overlays)) == 8  # same-named inputs in a/ and b/ do not collide
    for record in report["images"]:
        if record["status"] != "ok":
            continue
        original = cv2.imread(record["source"])
        assert (record["width"], record["height"]) == (original.shape[1], original.shape[0])
        for target in record["targets"]:
            overlay = cv2.imread(str(out / target["overlay"]))
            assert overlay is not None and overlay.shape == original.shape
            assert np.load(out / target["heatmap"], allow_pickle=False).shape == original.shape[:2]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    assert not [p for p in files if p.name.endswith(".tmp")]
    assert "2 failed" in result.stderr.decode() or "failed" in result.stderr.decode()


def test_reports_agree(folder_run) -> None:
    _, out = folder_run
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    with open(out / "report.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = []
    for record in report["images"]:
        for rank, target in enumerate(record["targets"] or [None], start=1):
            expected.append((record["source"], record["status"], str(rank) if target else "",
                             str(target["class_id"]) if target else "", target["overlay"] if target else "",
                             record["error_type"] or ""))
    got = [(r["source"], r["status"], r["target_rank"], r["class_id"], r["overlay"], r["error_type"]) for r in rows]
    assert got == expected
    for row, record in zip(rows, (r for r in report["images"] for _ in (r["targets"] or [None])), strict=True):
        if record["targets"]:
            top = record["top_k"]
            assert row["top_k"].split(";")[0].split(":")[0] == str(top[0]["class_id"])
            assert float(row["inference_ms"]) == pytest.approx(record["timings_ms"]["inference"])


def test_html_is_offline_and_links_only_existing_files(folder_run) -> None:
    _, out = folder_run
    page = (out / "report.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    local = [link for link in parser.links if not link.startswith("data:")]
    assert not [link for link in local if "://" in link or link.startswith("/")]
    assert all((out / unquote(link)).is_file() for link in local), local
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    overlays = {t["overlay"] for r in report["images"] for t in r["targets"]}
    assert overlays <= {unquote(link) for link in local}
    assert sum(link.startswith("data:image/jpeg;base64,") for link in parser.links) >= 4 + 8
    assert "broken.jpg" in page and "ImageDecodeError" in page


def test_runtime_commands_never_import_tensorflow(model: Path, tmp_path: Path) -> None:
    photo = example_images()[0]
    code = (
        "import sys\n"
        "from cam_runtime.cli import main\n"
        f"sys.argv = ['camr', 'explain', {str(photo)!r}, '-m', {str(model)!r}, '-o', {str(tmp_path / 'o')!r}, '-q']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"sys.argv = ['camr', 'info', {str(model)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "sys.argv = ['camr', 'import', '--help']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"loaded = [m for m in {OPTIONAL_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('clean')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip().endswith("clean")


def test_stdin_and_json_lines_in_a_real_process(model: Path, tmp_path: Path) -> None:
    photo = example_images()[1]
    result = camr("explain", "-", "-m", model, "-o", tmp_path / "o", "--json", stdin=photo.read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    (line,) = result.stdout.decode().splitlines()
    record = json.loads(line)
    assert record["source"] == "<stdin>" and record["status"] == "ok"
    assert (tmp_path / "o" / record["targets"][0]["overlay"]).is_file()


def test_killed_run_leaves_complete_files_and_resumes(model: Path, tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(150):
        cv2.imwrite(str(src / f"img{i:03d}.png"), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cam_runtime", "explain", str(src), "-m", str(model), "-o",
                             str(out), "-b", "1", "--format", "png", "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*.json"))) < 10 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = list(out.glob("img*.json"))
    assert done, "the run was killed before writing anything"
    for overlay in out.glob("*.png"):
        assert cv2.imread(str(overlay)) is not None, overlay  # complete or absent, never half-written
    for record_file in done:
        json.loads(record_file.read_text())
    resumed = camr("explain", src, "-m", model, "-o", out, "-b", "1", "--format", "png", "--skip-existing", "-q")
    assert resumed.returncode == 0, resumed.stderr.decode()
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["ok"] == 150
    if len(done) < 150:
        assert 0 < report["summary"]["resumed"] < 150
    assert not list(out.glob("*.tmp"))


@pytest.mark.tensorflow
def test_export_info_explain_with_a_small_real_model(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    folder = tmp_path / "mnv2"
    exported = camr("export", "--arch", "mobilenetv2", "--weights", "random", "--input-size", "96", "-o", folder,
                    timeout=300)
    assert exported.returncode == 0, exported.stderr.decode()[-2000:]
    assert "exported" in exported.stdout.decode()
    info = camr("info", folder, "--json")
    assert info.returncode == 0
    assert json.loads(info.stdout)["num_classes"] == 1000
    again = camr("export", "--arch", "mobilenetv2", "--weights", "random", "-o", folder)
    assert again.returncode == 2 and b"already exists" in again.stderr
    result = camr("explain", example_images()[0], "-m", folder, "-o", tmp_path / "o", "-k", "3")
    assert result.returncode == 0, result.stderr.decode()
    record = json.loads((tmp_path / "o" / "report.json").read_text())["images"][0]
    assert len(record["top_k"]) == 3 and record["targets"][0]["label"] == record["top_k"][0]["label"]
