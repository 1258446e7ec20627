"""``camr explain --method a,b`` / ``--method all``: one run per method into OUTPUT/<method>/, then compare.html."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cam_runtime.errors import OutputExistsError

from .common import EXIT_OK, EXIT_SOME_FAILED, err_console
from .explain_run import ExplainOptions, first_existing_output, run_explain
from .inputs import InputItem

if TYPE_CHECKING:
    from cam_runtime.engine import CamEngine
    from cam_runtime.report import Report


def run_compare(engine: CamEngine, items: list[InputItem], output: Path, options: ExplainOptions,
                methods: list[str], *, model_path: Path | None = None) -> int:
    """Explain ``items`` with each method (same engine) and write OUTPUT/compare.html; returns the worst exit code.

    Each method's folder holds exactly what a single-method run writes there. Before anything is written, every
    method's outputs and compare.html are checked (without --force / --skip-existing), so a clash costs nothing.
    compare.html is rewritten after each method, so an interrupted run still compares the methods done.
    """
    from rich.markup import escape

    from cam_runtime.compare_report import COMPARE_FILE, write_compare
    from cam_runtime.outputs import OutputLayout

    root = OutputLayout(output, options.image_format)
    root.check_writable()
    runs = {method: replace(options, method=method) for method in methods}
    for run in runs.values():
        run.validate()
    if not options.force and not options.skip_existing:
        clash = root.path(COMPARE_FILE) if root.path(COMPARE_FILE).exists() else None
        for method, run in runs.items():
            clash = clash or first_existing_output(items, output / method, run)
        if clash is not None:
            raise OutputExistsError(clash, resumable=True)
    page = {"colormap": options.colormap, "weights": engine.manifest.provenance.get("weights")}
    reports: dict[str, Report] = {}
    wall_s: dict[str, float] = {}
    for method, run in runs.items():
        if not options.quiet and not options.json_lines:
            err_console().print(f"[bold]{escape(method)}[/bold] → {escape(str(output / method))}", soft_wrap=True)
        start = time.perf_counter()
        reports[method] = run_explain(engine, items, output / method, run, model_path=model_path,
                                      json_fields={"method": method})
        wall_s[method] = time.perf_counter() - start
        path = write_compare(reports, wall_s, output, page)
    if not options.quiet and not options.json_lines:
        print(f"compare: {path}", file=sys.stderr, flush=True)
    return max(EXIT_SOME_FAILED if report.summary()["failed"] else EXIT_OK for report in reports.values())
