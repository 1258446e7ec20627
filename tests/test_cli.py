"""In-process tests of the ``camr`` command line (typer's CliRunner): options, exit codes, outputs, reports."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from cam_runtime import __version__
from cam_runtime.cli import app
from cam_runtime.cli.bench_cmd import example_images
from tiny_models import LABELS, make_tiny_folder

runner = CliRunner()


@pytest.fixture(scope="session")
def cli_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder (no TensorFlow)."""
    return make_tiny_folder(tmp_path_factory.mktemp("cli-models") / "tiny", "NHWC", seed=3)


@pytest.fixture(scope="session")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two bundled example photos copied into a temporary folder."""
    folder = tmp_path_factory.mktemp("cli-images")
    return [Path(shutil.copy(p, folder / p.name)) for p in example_images()[:2]]


def invoke(*args: object, input: bytes | None = None):
    """Run camr in-process."""
    return runner.invoke(app, [str(a) for a in args], input=input)


def one_error_line(result) -> str:
    """The stderr of a failed command must be exactly one 'error: ...' line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- global options ---------------------------------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("command", ["", "explain", "export", "import", "info", "bench", "demo"])
def test_help_everywhere(command: str) -> None:
    for flag in ("-h", "--help"):
        result = invoke(*([command] if command else []), flag)
        assert result.exit_code == 0, result.output
        assert "Usage" in result.stdout


def test_unknown_option_is_usage_error(cli_model: Path, two_images: list[Path]) -> None:
    result = invoke("explain", two_images[0], "-m", cli_model, "--no-such-option")
    assert result.exit_code == 2


# --- explain: errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "nope"], "unknown CAM method"),
    (["--class", "giraffe"], "unknown target class"),
    (["--class", "99"], "unknown target class"),
    (["--format", "bmp"], "--format must be one of"),
    (["--colormap", "rainbowish"], "unknown colormap"),
    (["--top-k", "6"], "--top-k must be in"),
    (["--force", "--skip-existing"], "exclude each other"),
    (["--resize", "lanczos"], "--resize must be one of"),
])
def test_explain_bad_options_exit_2_and_write_nothing(cli_model: Path, two_images: list[Path], tmp_path: Path,
                                                      extra: list[str], message: str) -> None:
    out = tmp_path / "out"
    result = invoke("explain", two_images[0], "-m", cli_model, "-o", out, *extra)
    assert result.exit_code == 2
    assert message in one_error_line(result)
    assert not out.exists() or not any(out.iterdir())


def test_missing_model_is_one_line_and_debug_shows_traceback(two_images: list[Path], tmp_path: Path) -> None:
    result = invoke("explain", two_images[0], "-m", tmp_path / "nope", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "model folder not found" in one_error_line(result)
    assert "Traceback" not in result.output
    debug = invoke("--debug", "explain", two_images[0], "-m", tmp_path / "nope", "-o", tmp_path / "out")
    assert debug.exit_code == 2
    assert "Traceback" in debug.stderr


def test_no_images_found_is_usage_error(cli_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    result = invoke("explain", tmp_path / "empty", "-m", cli_model, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "--recursive" in one_error_line(result)


# --- explain: outputs -------------------------------------------------------------------------------------------


def test_explain_class_png_heatmaps(cli_model: Path, two_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", *two_images, "-m", cli_model, "-o", out, "--class", "square", "--class", "3",
                    "--format", "png", "--save-heatmaps", "--no-boxes", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["summary"] == {"total": 2, "ok": 2, "failed": 0, "resumed": 0}
    for record, path in zip(report["images"], two_images, strict=True):
        assert record["source"] == str(path)
        assert [t["class_id"] for t in record["targets"]] == [LABELS.index("square"), 3]
        original = cv2.imread(str(path))
        for target in record["targets"]:
            overlay = cv2.imread(str(out / target["overlay"]), cv2.IMREAD_UNCHANGED)
            assert target["overlay"].endswith(".png")
            assert overlay.shape == original.shape
            heat = np.load(out / target["heatmap"], allow_pickle=False)
            assert heat.shape == original.shape[:2] and heat.dtype == np.float32
            assert heat.min() >= 0.0 and heat.max() <= 1.0
        assert set(record["timings_ms"]) == {"decode", "preprocess", "inference", "maps", "write"}


def test_boxes_change_the_overlay(cli_model: Path, two_images: list[Path], tmp_path: Path) -> None:
    images = {}
    for flag in ("--boxes", "--no-boxes"):
        out = tmp_path / flag
        result = invoke("explain", two_images[0], "-m", cli_model, "-o", out, flag, "--format", "png", "-q")
        assert result.exit_code == 0, result.output
        images[flag] = cv2.imread(str(next(out.glob("*.overlay-1.png"))))
    diff = np.any(images["--boxes"] != images["--no-boxes"], axis=2)
    assert diff.any()
    green = images["--boxes"][diff]
    assert np.all(green == [0, 255, 0])  # only the box outline differs


def test_existing_outputs_refused_then_force_then_skip(cli_model: Path, two_images: list[Path],
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke("explain", *two_images, "-m", cli_model, "-o", out, "-q").exit_code == 0
    keys = [r["key"] for r in json.loads((out / "report.json").read_text())["images"]]
    overlay = out / f"{keys[0]}.overlay-1.jpg"
    before = overlay.stat().st_mtime_ns, (out / "report.json").read_bytes()
    again = invoke("explain", *two_images, "-m", cli_model, "-o", out, "-q")
    assert again.exit_code == 2
    assert "already exists" in one_error_line(again)
    assert (overlay.stat().st_mtime_ns, (out / "report.json").read_bytes()) == before

    # Resume after losing one image's outputs: only that image is explained again.
    (out / f"{keys[1]}.json").unlink()
    resumed = invoke("explain", *two_images, "-m", cli_model, "-o", out, "--skip-existing", "-q")
    assert resumed.exit_code == 0, resumed.output
    report = json.loads((out / "report.json").read_text())
    assert [r["resumed"] for r in report["images"]] == [True, False]
    assert report["summary"]["ok"] == 2
    assert overlay.stat().st_mtime_ns == before[0]

    forced = invoke("explain", *two_images, "-m", cli_model, "-o", out, "--force", "-q")
    assert forced.exit_code == 0
    assert [r["resumed"] for r in json.loads((out / "report.json").read_text())["images"]] == [False, False]


def test_json_lines_and_stdin(cli_model: Path, two_images: list[Path], tmp_path: Path) -> None:
    data = two_images[0].read_bytes()
    result = invoke("explain", "-", two_images[1], "-m", cli_model, "-o", tmp_path / "out", "--json", "-k", "2",
                    input=data)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert records[0]["source"] == "<stdin>" and records[1]["source"] == str(two_images[1])
    assert all(len(r["top_k"]) == 2 and r["status"] == "ok" for r in records)
    assert records == json.loads((tmp_path / "out" / "report.json").read_text())["images"]


def test_failures_exit_1_and_are_reported(cli_model: Path, two_images: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not really a jpeg")
    result = invoke("explain", two_images[0], bad, tmp_path / "missing.png", "-m", cli_model, "-o", tmp_path / "o")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    statuses = [(r["status"], r["error_type"]) for r in report["images"]]
    assert statuses == [("ok", None), ("failed", "ImageDecodeError"), ("failed", "ImageNotFoundError")]


# --- info / bench / export / demo --------------------------------------------------------------------------------


def test_info_reports_checksums(cli_model: Path, tmp_path: Path) -> None:
    ok = invoke("info", cli_model, "--json")
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["checksums_ok"] and "CPUExecutionProvider" in data["providers"]
    assert {f["status"] for f in data["files"].values()} == {"ok"}
    table = invoke("info", cli_model)
    assert table.exit_code == 0 and "tiny-nhwc" in table.stdout

    copy = Path(shutil.copytree(cli_model, tmp_path / "copy"))
    (copy / "labels.txt").write_text("\n".join(reversed(LABELS)) + "\n")
    (copy / "dense_bias.npy").unlink()
    bad = invoke("info", copy, "--json")
    assert bad.exit_code == 2
    statuses = {f["file"]: f["status"] for f in json.loads(bad.stdout)["files"].values()}
    assert statuses["labels.txt"] == "MISMATCH" and statuses["dense_bias.npy"] == "missing"
    assert statuses["model.onnx"] == "ok"
    assert "MISMATCH" in invoke("info", copy).stdout


def test_bench_json(cli_model: Path, two_images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = invoke("bench", *two_images, "-m", cli_model, "--runs", "4", "--throughput-images", "4",
                    "--batch-size", "2", "--json-out", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for stage in ("decode", "preprocess", "inference", "maps", "write", "total"):
        assert 0.0 <= data["batch1"][stage]["p50_ms"] <= data["batch1"][stage]["p95_ms"]
        assert stage in result.stdout
    assert data["throughput"]["images"] == 4 and data["throughput"]["images_per_s"] > 0
    assert data["batch1"]["total"]["p50_ms"] >= data["batch1"]["inference"]["p50_ms"]


def test_export_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras → ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    result = invoke("export", "--weights", "random", "-o", tmp_path / "m")
    assert result.exit_code == 2
    assert "pip install 'cam-runtime[export]'" in one_error_line(result)
    assert not (tmp_path / "m").exists()


def test_export_refuses_an_existing_folder(cli_model: Path) -> None:
    before = sorted(p.name for p in cli_model.iterdir())
    result = invoke("export", "--weights", "random", "-o", cli_model)
    assert result.exit_code == 2
    assert "already exists" in one_error_line(result)
    assert sorted(p.name for p in cli_model.iterdir()) == before


def test_demo_download_failure_never_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import export.exporter
    from export.errors import WeightsUnavailableError

    def offline(*args: object, **kwargs: object) -> None:
        raise WeightsUnavailableError("resnet50", "URL fetch failure: no network")

    monkeypatch.setattr(export.exporter, "export_model", offline)
    monkeypatch.chdir(tmp_path)
    result = invoke("demo")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    line = errors[0]
    assert "--weights random" in line and "--weights PATH" in line
    assert not Path("models/resnet50-random").exists() and not Path("outputs").exists()


def test_demo_with_an_existing_model(cli_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(cli_model, "models/resnet50-random")
    for _ in range(2):  # a second demo run replaces its own outputs
        result = invoke("demo", "--weights", "random")
        assert result.exit_code == 0, result.output
    assert "outputs/report.html" in result.stdout
    report = json.loads(Path("outputs/report.json").read_text())
    assert report["summary"]["ok"] == len(example_images()) >= 3
    assert all(Path("outputs", r["targets"][0]["overlay"]).is_file() for r in report["images"])
