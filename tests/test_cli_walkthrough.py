"""Regression tests for what a README walk-through found (issue 21): hints, quiet failures, stale outputs, labels."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from cam_runtime.cli import app
from cam_runtime.cli.bench_cmd import example_images
from tiny_models import make_tiny_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder (no TensorFlow)."""
    return make_tiny_folder(tmp_path_factory.mktemp("walk-models") / "tiny", "NHWC", seed=3)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundled example photo copied into a temporary folder."""
    folder = tmp_path_factory.mktemp("walk-images")
    return Path(shutil.copy(example_images()[0], folder / "cat.jpg"))


def invoke(*args: object):
    """Run camr in-process."""
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The single 'error: ...' line of a failed command."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# --- bug 3: --skip-existing is suggested only where it exists ----------------------------------------------------


def test_existing_output_hints_skip_existing_only_for_explain(model: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke("explain", photo, "-m", model, "-o", out, "-q").exit_code == 0
    again = invoke("explain", photo, "-m", model, "-o", out)
    assert again.exit_code == 2 and "--skip-existing" in error_line(again)

    (tmp_path / "q").mkdir()
    quantized = invoke("quantize", tmp_path / "q", "-m", model, "--calibration", photo.parent)
    assert quantized.exit_code == 2
    line = error_line(quantized)
    assert "already exists" in line and "--force" in line and "--skip-existing" not in line

    exported = invoke("export", "--weights", "random", "-o", model)
    assert exported.exit_code == 2 and "--skip-existing" not in error_line(exported)

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "evaluation.json").write_text("{}")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("filename,x0,y0,x1,y1\ncat.jpg,0,0,10,10\n")
    evaluated = invoke("evaluate", "-m", model, "-i", photo.parent, "--boxes", boxes, "-o", tmp_path / "eval")
    assert evaluated.exit_code == 2 and "--skip-existing" not in error_line(evaluated)


# --- bug 4: a calibration file is "not a folder", not "not found" -------------------------------------------------


def test_quantize_calibration_file_is_not_a_folder(model: Path, photo: Path, tmp_path: Path) -> None:
    result = invoke("quantize", tmp_path / "int8", "-m", model, "--calibration", photo)
    assert result.exit_code == 2
    line = error_line(result)
    assert "not a folder" in line and "not found" not in line
    assert not (tmp_path / "int8").exists()


def test_quantize_warns_on_few_calibration_images_and_no_held_out(model: Path, photo: Path, tmp_path: Path) -> None:
    result = invoke("quantize", tmp_path / "int8", "-m", model, "--calibration", photo.parent, "--accept-low-fidelity")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("only 1 calibration image" in w for w in warnings), result.stderr
    assert any("--held-out" in w for w in warnings), result.stderr


# --- bug 5: -q never hides failures --------------------------------------------------------------------------------


def test_quiet_still_reports_each_failure_on_stderr(model: Path, photo: Path, tmp_path: Path) -> None:
    result = invoke("explain", tmp_path / "nothere.jpg", photo, "-m", model, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nothere.jpg" in lines[0] and lines[0].startswith("failed: "), result.stderr
    assert result.stdout == ""


# --- bug 6 --------------------------------------------------------------------------------------------------------


def test_bench_help_keeps_the_bracketed_default() -> None:
    result = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "default: the bundled examples" in " ".join(result.stdout.split())


def test_report_method_is_the_canonical_name(model: Path, photo: Path, tmp_path: Path) -> None:
    result = invoke("explain", photo, "-m", model, "-o", tmp_path / "out", "--method", "gradcampp", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "gradcam++"
    assert {r["method"] for r in report["images"]} == {"gradcam++"}


def test_demo_rerun_with_fewer_targets_removes_stale_overlays(model: Path, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(model, "models/resnet50-random")
    assert invoke("demo", "--weights", "random", "-k", "2").exit_code == 0
    assert list(Path("outputs").glob("*.overlay-2.jpg"))
    result = invoke("demo", "--weights", "random", "-k", "1")
    assert result.exit_code == 0, result.output
    assert not list(Path("outputs").glob("*.overlay-2.jpg"))
    assert len(list(Path("outputs").glob("*.overlay-1.jpg"))) == len(example_images())
    assert "camr explain YOUR_IMAGE.jpg -m models/resnet50-random" in result.stdout


def test_unknown_architecture_lists_only_exportable_ones(tmp_path: Path) -> None:
    pytest.importorskip("export.exporter")
    from export.architectures import ARCHITECTURES, SUPPORTED

    result = invoke("export", "--arch", "resnet18", "--weights", "random", "-o", tmp_path / "m")
    assert result.exit_code == 2
    line = error_line(result)
    assert "unknown architecture 'resnet18'" in line and all(name in line for name in SUPPORTED)
    refused = [name for name, a in ARCHITECTURES.items() if a.refused]
    assert refused and not any(f" {name}," in line or line.endswith(name) for name in refused)


def test_model_option_naming_a_file(photo: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# not a model\n")
    result = invoke("explain", photo, "-m", readme, "-o", tmp_path / "out")
    assert result.exit_code == 2
    line = error_line(result)
    assert "is a file, not a model folder" in line and "not found" not in line


def test_output_option_naming_a_file(model: Path, photo: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    result = invoke("explain", photo, "-m", model, "-o", target)
    assert result.exit_code == 2
    line = error_line(result)
    assert "is a file, not a folder" in line and "File exists" not in line
    assert target.read_text() == "keep me"


# --- friction 1: the default model folder is missing but a demo folder exists ---------------------------------------


def test_missing_default_model_points_at_the_demo_folder(model: Path, photo: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(model, "models/resnet50-random")
    result = invoke("explain", photo)
    assert result.exit_code == 2
    assert "did you mean -m models/resnet50-random" in error_line(result)


# --- friction 4 ---------------------------------------------------------------------------------------------------


def test_top_k_and_class_exclude_each_other(model: Path, photo: Path, tmp_path: Path) -> None:
    result = invoke("explain", photo, "-m", model, "-o", tmp_path / "out", "-k", "2", "--class", "0")
    assert result.exit_code == 2
    assert "--top-k and --class exclude each other" in error_line(result)
    assert not (tmp_path / "out").exists()


def test_scorecam_warns_that_it_is_slow(model: Path, photo: Path, tmp_path: Path) -> None:
    result = invoke("explain", photo, "-m", model, "-o", tmp_path / "out", "--method", "score-cam", "-q")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning: scorecam") and "longer" in line for line in result.stderr.splitlines()), \
        result.stderr


# --- friction 2: labels match like people type them -------------------------------------------------------------


@pytest.fixture(scope="module")
def cat_engine(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model whose labels look like ImageNet's WordNet lemmas."""
    from cam_runtime import CamEngine

    labels = ["tabby", "Egyptian_cat", "tiger_cat", "crane", "crane"]
    folder = make_tiny_folder(tmp_path_factory.mktemp("cats") / "cats", "NHWC", seed=1, labels=labels)
    return CamEngine.load(folder, device="cpu")


@pytest.mark.parametrize(("spec", "expected"), [
    ("Egyptian cat", 1), ("egyptian_cat", 1), ("EGYPTIAN-CAT", 1), ("  egyptian   cat ", 1),
    ("tabby, tabby cat", 0), ("tiger cat, Panthera tigris", 2), ("2", 2),
])
def test_labels_match_case_and_separator_insensitively(cat_engine, spec: str, expected: int) -> None:
    assert cat_engine.class_id(spec) == expected


def test_unknown_label_suggests_close_matches_and_ambiguity_stays_an_error(cat_engine) -> None:
    from cam_runtime.errors import UnknownClassError

    with pytest.raises(UnknownClassError, match="did you mean 'Egyptian_cat'"):
        cat_engine.class_id("egyptain cat")
    with pytest.raises(UnknownClassError, match=r"no such label$"):
        cat_engine.class_id("zebra")
    with pytest.raises(UnknownClassError, match="ambiguous"):
        cat_engine.class_id("Crane")
    with pytest.raises(UnknownClassError, match="no such label"):
        cat_engine.class_id("tabby, tiger cat")  # two different classes: refuse rather than guess


def test_cli_class_with_spaces(model: Path, photo: Path, tmp_path: Path) -> None:
    result = invoke("explain", photo, "-m", model, "-o", tmp_path / "out", "--class", "Triangle", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["targets"][0]["label"] == "triangle"


# --- friction 6: usage errors are one line -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["explain", "x.jpg", "--nope"], ["explain"], ["bogus"], ["explain", "-k", "0", "x"]])
def test_usage_errors_are_one_line(args: list[str]) -> None:
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "cam_runtime", *args], capture_output=True, text=True, env=env,
                          cwd=root, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], proc.stderr
    assert proc.stdout == ""


# --- friction 5: info shows what a derived folder is ----------------------------------------------------------------


def test_info_on_a_derived_folder_shows_variant_source_settings_and_fidelity(model: Path, photo: Path,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "int8"
    assert invoke("quantize", out, "-m", model, "--calibration", photo.parent, "--accept-low-fidelity").exit_code == 0
    data = json.loads(invoke("info", out, "--json").stdout)
    prov = data["provenance"]
    assert prov["variant"] == "int8" and prov["derived_from"]["path"] == str(model)
    assert prov["quantization"]["calibration_images"] == 1
    assert prov["fidelity"]["sets"]["calibration"]["images"] == 1
    text = runner.invoke(app, ["info", str(out)], env={"COLUMNS": "200"}).stdout
    assert "variant" in text and "top-1 agreement" in text and "no held-out set" in text


# --- README commands run as written (those that need no network or ImageNet weights) -------------------------------


def readme_commands() -> list[list[str]]:
    """``camr`` lines of the README's Command line block that use the committed fixture model."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("#", 1)[0])[1:] for line in lines
            if line.startswith("camr ") and "models/fixtures/" in line]


def test_readme_fixture_commands_run_as_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    commands = readme_commands()
    assert commands, "the README's command block no longer uses the fixture model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "fixtures", tmp_path / "models" / "fixtures")
    monkeypatch.chdir(tmp_path)
    for args in commands:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    assert (tmp_path / "eval" / "evaluation.json").is_file()
