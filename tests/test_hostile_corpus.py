"""The CLI over the hostile corpus (tests/hostile_corpus.py): no crash, no hang, no lost report, bounded memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

pytest.importorskip("onnx")  # the tiny model is built with onnx's helpers

from hostile_corpus import MAX_PIXELS, build, run_case

from cam_runtime import CamEngine
from cam_runtime.results import ExplainResult, ImageFailure
from tiny_models import make_tiny_folder

PEAK_RSS_MB = 1500
"""Bound per run: 16 RLE BMPs at the 4 MP limit decode to 12 MB each; a run peaks near 0.46 GB on CPython 3.11."""


def test_every_hostile_run_ends_well(tmp_path: Path) -> None:
    model = make_tiny_folder(tmp_path / "model", "NHWC", seed=0)
    cases = build(tmp_path / "corpus", model)
    assert sum(case.files for case in cases) >= 300
    outcomes = {case.name: run_case(case, timeout=120) for case in cases}
    problems = {name: o.problems for name, o in outcomes.items() if o.problems}
    assert not problems
    assert all(o.returncode != 3 for o in outcomes.values())
    assert max(o.peak_rss_mb for o in outcomes.values()) < PEAK_RSS_MB
    # Every hostile name is a row; -o inside the input tree is not explained on the rerun.
    names = next(c for c in cases if c.name == "names")
    assert outcomes["names"].report_images == names.files
    assert outcomes["names_rerun"].report_images == outcomes["names"].report_images - 1  # 'report' was explicit
    # Doctored records of an earlier run are redone or shown escaped, never injected into the page.
    page = (tmp_path / "corpus" / "out_resume" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<img src=x" not in page
    # The scan bomb and the declared-size bombs are failed rows, each with its reason.
    images = next(c for c in cases if c.name == "images")
    report = (images.output / "report.json").read_text(encoding="utf-8")
    assert "scans, more than" in report and "pixels" in report


def test_the_api_over_the_corpus_yields_a_result_or_a_failure_per_file(tmp_path: Path) -> None:
    model = make_tiny_folder(tmp_path / "model", "NHWC", seed=0)
    build(tmp_path / "corpus", model)
    paths = sorted(p for folder in ("images", "names", "links", "at_the_limit")
                   for p in (tmp_path / "corpus" / folder).rglob("*") if not p.is_dir() or p.suffix == ".png")
    engine = CamEngine.load(model, max_pixels=MAX_PIXELS)
    outcomes = list(engine.iter_explain(paths, batch_size=4))
    assert len(outcomes) == len(paths) > 300
    assert all(isinstance(o, ExplainResult | ImageFailure) for o in outcomes)
    failures = [o for o in outcomes if isinstance(o, ImageFailure)]
    assert all(f.error and "\n" not in f.error for f in failures)
