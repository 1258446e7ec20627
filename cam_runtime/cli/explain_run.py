"""The terminal around the explain-folder job (:mod:`cam_runtime.jobs.explain_folder`): progress bar, ``--json``
lines, the summary table, quiet failure lines. Used by ``explain``, ``demo`` and method comparisons."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cam_runtime.jobs.explain_folder import ExplainOptions, explain_folder, first_existing_output
from cam_runtime.outputs import OutputLayout, readable, strict_json
from cam_runtime.report import Report

from .common import err_console, stdout_is_terminal, warn_line
from .inputs import InputItem

if TYPE_CHECKING:
    from cam_runtime.engine import CamEngine

__all__ = ["ExplainOptions", "first_existing_output", "run_explain"]


def run_explain(engine: CamEngine, items: list[InputItem], output: Path, options: ExplainOptions, *,
                model_path: Path | None = None, json_fields: dict[str, Any] | None = None) -> Report:
    """Run the explain-folder job with the terminal around it; returns the report (already written).

    ``json_fields`` are added to each ``--json`` line (not to the files), e.g. the method when comparing methods.
    """
    show_progress = not options.quiet and not options.json_lines and stdout_is_terminal() and len(items) > 1

    def stale(count: int) -> None:
        if not options.json_lines:
            warn_line(f"removed {count} temporary file(s) left by an interrupted run in {output}")

    start = time.perf_counter()
    with _progress(show_progress, len(items)) as advance:
        def on_record(record: dict[str, Any], item: Any) -> None:
            if options.json_lines:
                line = {**record, **json_fields} if json_fields else record
                sys.stdout.write(strict_json(line) + "\n")
                sys.stdout.flush()
            advance(item.source)

        report = explain_folder(engine, items, output, options, model_path=model_path, on_record=on_record,
                                on_stale_temps=stale)
    if not options.quiet:
        _summary(report, OutputLayout(output, options.image_format), time.perf_counter() - start)
    else:
        # Quiet drops the table and the progress bar, never the failures: one plain line each on stderr.
        for record in report.records:
            if record["status"] != "ok":
                print(f"failed: {record['source']}: {' '.join(str(record['error'] or '').split())}",
                      file=sys.stderr, flush=True)
    return report


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    if not enabled:
        yield lambda _source: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console(), transient=True) as progress:
        task = progress.add_task("explaining", total=total)
        yield lambda _source: progress.advance(task)


def _summary(report: Report, layout: OutputLayout, wall_s: float) -> None:
    from rich.table import Table

    counts = report.summary()
    explained = counts["ok"] - counts["resumed"]
    table = Table(title="camr explain", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", str(counts["total"]))
    table.add_row("explained", f"{explained} ({explained / wall_s:.1f}/s)" if wall_s > 0 else str(explained))
    if counts["resumed"]:
        table.add_row("already done", str(counts["resumed"]))
    table.add_row("failed", f"[red]{counts['failed']}[/red]" if counts["failed"] else "0")
    table.add_row("output", readable(str(layout.root)))
    table.add_row("report", readable(str(layout.path("report.html"))))
    err_console().print(table)
    from rich.markup import escape

    failures = [r for r in report.records if r["status"] != "ok"]
    for record in failures[:5]:
        err_console().print(f"  [red]failed[/red] {escape(record['source'])}: {escape(record['error'] or '')}",
                            soft_wrap=True)
    if counts["failed"] > 5:
        err_console().print(f"  … and {counts['failed'] - 5} more failures in report.json")

