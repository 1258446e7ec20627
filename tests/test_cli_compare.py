"""``camr explain`` with several methods: OUTPUT/<method>/ per method plus compare.html, exit codes, --json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app
from cam_runtime.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "models" / "fixtures" / "shapes"
IMAGES = ROOT / "models" / "fixtures" / "shapes-test" / "images"
HOSTILE = "<img src=x onerror=alert(1)>.png"

runner = CliRunner()


def invoke(*args: object):
    """Run camr in-process."""
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """Three fixture images, one of them under a file name made to break HTML if it were not escaped."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("0000_star.png", "0001_circle.png"):
        shutil.copy(IMAGES / name, folder / name)
    try:
        shutil.copy(IMAGES / "0005_cross.png", folder / HOSTILE)
    except OSError:  # a filesystem that refuses '<', '>' (e.g. Windows): a plain name instead
        shutil.copy(IMAGES / "0005_cross.png", folder / "0005_cross.png")
    return folder


def input_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_two_methods_write_one_folder_each_like_single_runs(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "cam", "--method", "gradcampp", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cam", "compare.html", "gradcam++"]
    for method in ("cam", "gradcam++"):
        single = tmp_path / f"single-{method}"
        assert invoke("explain", inputs, "-m", FIXTURE, "-o", single, "--method", method, "-q").exit_code == 0
        # Exactly what a single-method run writes, file for file, and the same results.
        assert files_under(out / method) == files_under(single)
        compared = json.loads((out / method / "report.json").read_text())
        alone = json.loads((single / "report.json").read_text())
        assert compared["method"] == alone["method"] == method
        assert [(r["key"], r["top_k"], [t["boxes"] for t in r["targets"]]) for r in compared["images"]] == \
               [(r["key"], r["top_k"], [t["boxes"] for t in r["targets"]]) for r in alone["images"]]
        assert (out / method / "report.html").is_file() and (out / method / "report.csv").is_file()


def test_compare_page_has_every_input_and_method_escaped_and_offline(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "cam,gradcam++,eigencam", "-k", "2",
                    "-q")
    assert result.exit_code == 0, result.output
    page = (out / "compare.html").read_text(encoding="utf-8")
    names = input_names(inputs)
    for method in ("cam", "gradcam++", "eigencam"):
        assert f"<th>{method}</th>" in page
        # -k 2: two overlay thumbnails in every cell of the method's column, linked to the method's own files.
        assert page.count(f"alt='{method} overlay 1'") == len(names)
        assert page.count(f"alt='{method} overlay 2'") == len(names)
        report = json.loads((out / method / "report.json").read_text())
        for record in report["images"]:
            href = quote(f"{method}/{record['targets'][0]['overlay']}", safe="/")
            assert f"href='{href}'" in page
            top = record["top_k"][0]
            assert f"top-1: {top['label']} ({top['class_id']}) {top['probability'] * 100:.1f}%" in page
    for name in names:
        assert f">{name.replace('<', '&lt;').replace('>', '&gt;')}</td>" in page
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    # Offline: every image is inline, nothing is fetched, no script is needed.
    assert re.findall(r"src='([^']*)'", page) and all(s.startswith("data:image/") for s in
                                                       re.findall(r"src='([^']*)'", page))
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # The timing table: one row per method with a link to its report.
    for method in ("cam", "gradcam++", "eigencam"):
        assert re.search(rf"<tr><td>{re.escape(method)}</td><td class='num'>{len(names)}</td><td class='num'>0</td>",
                         page)
    assert page.count(">report.html</a>") == 3


def test_a_broken_image_fails_in_every_method_and_exits_1(inputs: Path, tmp_path: Path) -> None:
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "cam,layercam", "-q")
    assert result.exit_code == 1, result.output
    for method in ("cam", "layercam"):
        summary = json.loads((out / method / "report.json").read_text())["summary"]
        assert summary["failed"] == 1 and summary["ok"] == len(input_names(inputs)) - 1
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert page.count("<td class='failed'>") == 2  # the broken row, one cell per method
    assert "broken.png" in page
    assert result.stderr.count("failed: ") == 2  # -q still reports each failure, once per method


def test_method_all_runs_every_method_and_warns_about_scorecam(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", inputs / "0000_star.png", "-m", FIXTURE, "-o", out, "--method", "all")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(METHODS)
    assert "scorecam runs 128 masked forward passes" in result.stderr
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert all(f"<th>{method}</th>" in page for method in METHODS)
    assert f"compare: {out / 'compare.html'}" in result.stderr


def test_json_lines_carry_the_method(inputs: Path, tmp_path: Path) -> None:
    (inputs / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "hirescam,cam", "--json", "-q")
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    n = len(input_names(inputs))
    assert [line["method"] for line in lines] == ["hirescam"] * n + ["cam"] * n
    failed = [line for line in lines if line["status"] == "failed"]
    assert [line["method"] for line in failed] == ["hirescam", "cam"]
    # The files stay exactly as a single run writes them (a failed record has no method there).
    records = json.loads((out / "cam" / "report.json").read_text())["images"]
    assert [r["method"] for r in records if r["status"] == "failed"] == [None]


@pytest.mark.parametrize("spec", [["--method", "cam,nope"], ["--method", "cam", "--method", "nope"]])
def test_unknown_method_is_one_line_exit_2_and_writes_nothing(inputs: Path, tmp_path: Path,
                                                              spec: list[str]) -> None:
    out = tmp_path / "out"
    result = invoke("explain", inputs, "-m", FIXTURE, "-o", out, *spec)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown CAM method 'nope'")
    assert not out.exists()


def test_existing_outputs_are_refused_before_anything_is_written(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "gradcam").mkdir(parents=True)
    (out / "gradcam" / "report.json").write_text("{}")
    result = invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "cam,gradcam", "-q")
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert not (out / "cam").exists() and not (out / "compare.html").exists()
    assert invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "cam,gradcam", "-q",
                  "--force").exit_code == 0
    before = (out / "compare.html").read_bytes()
    again = invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "cam,gradcam", "-q")
    assert again.exit_code == 2 and (out / "compare.html").read_bytes() == before
    resumed = invoke("explain", inputs, "-m", FIXTURE, "-o", out, "--method", "cam,gradcam", "-q",
                     "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    assert all(r["resumed"] for r in json.loads((out / "cam" / "report.json").read_text())["images"])


def test_one_method_keeps_the_single_run_layout(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for spec in (["--method", "gradcam"], ["--method", "gradcam,gradcam"]):
        result = invoke("explain", inputs, "-m", FIXTURE, "-o", out, *spec, "-q", "--force")
        assert result.exit_code == 0, result.output
        assert not (out / "compare.html").exists() and not [p for p in out.iterdir() if p.is_dir()]
        assert json.loads((out / "report.json").read_text())["method"] == "gradcam"


def test_several_methods_refuse_a_video(tmp_path: Path) -> None:
    result = invoke("explain", tmp_path / "clip.mp4", "-m", FIXTURE, "-o", tmp_path / "out", "--method", "all")
    assert result.exit_code == 2 and "takes one --method" in result.stderr
