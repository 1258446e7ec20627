"""cam_runtime.jobs.explain_folder: the folder job as a library (outputs, records, reports, resume by run identity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cam_runtime.cli.inputs import collect_inputs
from cam_runtime.engine import CamEngine
from cam_runtime.errors import InvalidArgumentError, OutputExistsError, ResumeMismatchError
from cam_runtime.jobs.explain_folder import RUN_FIELD, ExplainOptions, explain_folder, identity_difference


@pytest.fixture(scope="module")
def engine(tiny_nhwc: Path) -> CamEngine:
    return CamEngine.load(tiny_nhwc, device="cpu", threads=1)


@pytest.fixture
def tree(tmp_path: Path, photo_files: dict[str, Path]) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    names = sorted(photo_files)[:3]
    for i, name in enumerate(names):
        target = root / ("sub" if i == 2 else "") / photo_files[name].name
        target.write_bytes(photo_files[name].read_bytes())
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def run(engine: CamEngine, tree: Path, out: Path, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    report = explain_folder(engine, collect_inputs([str(tree)], recursive=True), out, ExplainOptions(**options),
                            on_record=lambda record, item: seen.append(record))
    return report, seen


def test_explains_a_tree_into_outputs_records_and_reports(engine: CamEngine, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report, seen = run(engine, tree, out, top_k=2)
    counts = report.summary()
    assert (counts["total"], counts["ok"], counts["failed"]) == (4, 3, 1)
    assert [r["status"] for r in seen] == [r["status"] for r in report.records]
    for name in ("report.json", "report.csv", "report.html"):
        assert (out / name).stat().st_size > 0
    ok = [r for r in report.records if r["status"] == "ok"]
    assert all(len(r["targets"]) == 2 and (out / r["targets"][1]["overlay"]).is_file() for r in ok)
    sub = next(r for r in ok if r["key"].startswith("sub"))
    stored = json.loads((out / f"{sub['key']}.json").read_text())
    assert stored[RUN_FIELD]["method"] == "cam" and len(stored[RUN_FIELD]["model_sha256"]) == 64
    assert RUN_FIELD not in sub  # reports keep their documented fields
    with pytest.raises(OutputExistsError):
        run(engine, tree, out, top_k=2)


def test_resume_keeps_only_records_of_the_same_run(engine: CamEngine, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(engine, tree, out)
    report, _ = run(engine, tree, out, skip_existing=True)
    assert report.summary()["resumed"] == 3
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ResumeMismatchError, match=r"method 'cam', this run 'gradcam'.*--redo-mismatched"):
        run(engine, tree, out, method="gradcam", skip_existing=True)
    with pytest.raises(ResumeMismatchError, match="other options: colormap"):
        run(engine, tree, out, colormap="viridis", skip_existing=True)
    assert sorted(p.name for p in out.rglob("*")) == before  # refused before writing anything
    report, _ = run(engine, tree, out, method="gradcam", skip_existing=True, redo_mismatched=True)
    assert report.summary()["resumed"] == 0 and report.summary()["ok"] == 3
    assert all(t["overlay"] for r in report.records if r["status"] == "ok" for t in r["targets"])
    report, _ = run(engine, tree, out, method="gradcam", skip_existing=True)
    assert report.summary()["resumed"] == 3


def test_records_without_identity_are_not_resumed_silently(engine: CamEngine, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report, _ = run(engine, tree, out)
    key = next(r["key"] for r in report.records if r["status"] == "ok")
    record_path = out / f"{key}.json"
    record = json.loads(record_path.read_text())
    del record[RUN_FIELD]
    record_path.write_text(json.dumps(record))
    with pytest.raises(ResumeMismatchError, match="no run identity"):
        run(engine, tree, out, skip_existing=True)


def test_identity_difference_names_what_changed() -> None:
    new = {"model_sha256": "a" * 64, "method": "cam", "options": {"top_k": 1, "alpha": 0.5}}
    assert identity_difference(dict(new), new) is None
    assert identity_difference({**new, "model_sha256": "b" * 64}, new) == "another model folder"
    assert identity_difference({**new, "options": {"top_k": 2, "alpha": 0.5}}, new) == "other options: top_k"
    assert "no run identity" in str(identity_difference(None, new))


@pytest.mark.parametrize(("options", "message"), [
    ({"force": True, "skip_existing": True}, "exclude each other"),
    ({"redo_mismatched": True}, "goes with --skip-existing"),
    ({"image_format": "gif"}, "--format"),
    ({"box_threshold": 0.0}, "--box-threshold"),
    ({"top_k": 0}, "--top-k"),
    ({"method": "nope"}, "nope"),
])
def test_options_are_checked_in_one_place(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExplainOptions(**options).validate()


def test_options_are_checked_against_the_model(engine: CamEngine) -> None:
    with pytest.raises(InvalidArgumentError, match=r"--top-k must be in \[1, 5\]"):
        ExplainOptions(top_k=6).check_engine(engine)
    with pytest.raises(ValueError, match="no such label"):
        ExplainOptions(classes=["dog"]).check_engine(engine)
    ExplainOptions(classes=["square", "1"]).check_engine(engine)


def test_overlays_match_the_engine(engine: CamEngine, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report, _ = run(engine, tree, out, save_heatmaps=True)
    record = next(r for r in report.records if r["status"] == "ok")
    result = engine.explain(Path(record["source"]))[0]
    np.testing.assert_allclose(np.load(out / record["targets"][0]["heatmap"]), result.targets[0].heatmap,
                               rtol=1e-5, atol=1e-6)


def test_cli_refuses_a_mismatched_resume_in_one_line(tiny_nhwc: Path, tree: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cam_runtime.cli import app

    out = tmp_path / "out"
    base = ["explain", str(tree), "-r", "-m", str(tiny_nhwc), "-o", str(out), "-q"]
    runner = CliRunner()
    assert runner.invoke(app, base).exit_code == 1  # broken.png fails
    refused = runner.invoke(app, [*base, "--skip-existing", "--method", "layercam"])
    assert refused.exit_code == 2
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "different run" in lines[0] and "--redo-mismatched" in lines[0]
    redone = runner.invoke(app, [*base, "--skip-existing", "--method", "layercam", "--redo-mismatched"])
    assert redone.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "layercam" and report["summary"]["resumed"] == 0 and report["summary"]["ok"] == 3
    assert runner.invoke(app, [*base, "--redo-mismatched"]).exit_code == 2  # needs --skip-existing
