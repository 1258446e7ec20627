"""The explain run loop shared by ``explain`` and ``demo``: stream results, write outputs atomically, report."""

from __future__ import annotations

import signal
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cam_runtime.defaults import BOX_THRESHOLD
from cam_runtime.errors import InvalidArgumentError, OutputExistsError
from cam_runtime.outputs import (
    IMAGE_FORMATS,
    OutputLayout,
    readable,
    remove_stale_temps,
    save_npy_atomic,
    strict_json,
    write_image_atomic,
)
from cam_runtime.outputs import write_text_atomic as _write_text
from cam_runtime.report import (
    Report,
    now_iso,
    read_record,
    record_from_failure,
    record_from_result,
    result_thumbnails,
    thumbnail_from_file,
)
from cam_runtime.results import ExplainResult, ImageFailure

from .common import err_console, stdout_is_terminal, warn_line
from .inputs import InputItem

if TYPE_CHECKING:
    from cam_runtime.engine import CamEngine


@dataclass
class ExplainOptions:
    """Everything ``explain`` needs besides the engine, the inputs and the output folder."""

    method: str = "cam"
    top_k: int = 1
    classes: list[str] | None = None
    image_format: str = "jpg"
    alpha: float = 0.5
    colormap: str = "jet"
    boxes: bool = True
    all_boxes: bool = False
    box_threshold: float = BOX_THRESHOLD
    save_heatmaps: bool = False
    batch_size: int = 8
    json_lines: bool = False
    force: bool = False
    skip_existing: bool = False
    quiet: bool = False

    def validate(self) -> None:
        """Check the options before any model is loaded or file written."""
        from cam_runtime.methods import get_method
        from cam_runtime.render import colormap_id

        self.method = get_method(self.method).name  # the canonical name everywhere (report.json, records)
        colormap_id(self.colormap)
        self.image_format = self.image_format.lower().lstrip(".")
        if self.image_format == "jpeg":
            self.image_format = "jpg"
        if self.image_format not in IMAGE_FORMATS:
            raise InvalidArgumentError(f"--format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")
        if not 0.0 < self.box_threshold <= 1.0:
            raise InvalidArgumentError(f"--box-threshold must be in (0, 1], got {self.box_threshold}")
        if self.force and self.skip_existing:
            raise InvalidArgumentError("--force and --skip-existing exclude each other")

    @property
    def targets_per_image(self) -> int:
        """T: the number of maps (and overlays) per image."""
        return len(self.classes) if self.classes else self.top_k


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the reports of the images done so far are still written."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _nonempty_file(path: Path) -> bool:
    """A regular file with content (overlays are not fsynced: a power loss can leave one empty)."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0


def _remove_stale_targets(layout: OutputLayout, key: str, planned: list[str]) -> None:
    """--force: delete an earlier run's overlays/heatmaps of ``key`` this run will not rewrite (e.g. -k 2 then -k 1)."""
    record = layout.path(layout.record_name(key))
    keep = {layout.path(name).name for name in planned}
    stem = record.name[: -len(".json")]
    try:
        candidates = list(record.parent.glob(f"{glob_escape(stem)}.overlay-*")) + \
            list(record.parent.glob(f"{glob_escape(stem)}.heatmap-*.npy"))
    except OSError:
        return
    for path in candidates:
        suffix = path.name[len(stem) + 1:]
        index = suffix.split("-", 1)[1].split(".", 1)[0]
        if path.name not in keep and index.isdigit() and path.is_file():
            path.unlink(missing_ok=True)


def _load_done(layout: OutputLayout, key: str, expected: list[str], targets: int) -> dict[str, Any] | None:
    """A previous run's record for ``key`` if it and every file it names are complete."""
    if not all(_nonempty_file(layout.path(name)) for name in [*expected, layout.record_name(key)]):
        return None
    return read_record(layout.path(layout.record_name(key)), layout, key, targets)


def first_existing_output(items: list[InputItem], output: Path, options: ExplainOptions) -> Path | None:
    """The first file a run of ``items`` into ``output`` would write that exists already (None: all absent)."""
    layout = OutputLayout(output, options.image_format)
    names = list(layout.REPORT_FILES)
    for item in items:
        names += layout.planned(layout.allocate(item.relative), options.targets_per_image, options.save_heatmaps)
    return next((layout.path(name) for name in names if layout.path(name).exists()), None)


def run_explain(engine: CamEngine, items: list[InputItem], output: Path, options: ExplainOptions, *,
                model_path: Path | None = None, json_fields: dict[str, Any] | None = None) -> Report:
    """Explain ``items`` into ``output``; returns the report (already written as json/csv/html).

    ``json_fields`` are added to each ``--json`` line (not to the files), e.g. the method when comparing methods.
    """
    options.validate()
    if options.classes:
        for spec in options.classes:
            engine.class_id(spec)  # unknown labels fail before anything is written
    if options.classes is None and not 1 <= options.top_k <= engine.num_classes:
        raise InvalidArgumentError(f"--top-k must be in [1, {engine.num_classes}], got {options.top_k}")
    layout = OutputLayout(output, options.image_format)
    layout.check_writable()
    stale = remove_stale_temps(layout.root)
    if stale and not options.json_lines:
        warn_line(f"removed {stale} temporary file(s) left by an interrupted run in {layout.root}")
    n_targets = options.targets_per_image
    keys = [layout.allocate(item.relative) for item in items]
    planned = {key: layout.planned(key, n_targets, options.save_heatmaps) for key in keys}
    done: dict[str, dict[str, Any]] = {}
    if options.skip_existing:
        for key in keys:
            record = _load_done(layout, key, planned[key][:-1], n_targets)
            if record is not None:
                done[key] = {**record, "resumed": True}
    elif not options.force:
        for name in [*layout.REPORT_FILES, *(n for key in keys for n in planned[key])]:
            if layout.path(name).exists():
                raise OutputExistsError(layout.path(name), resumable=True)
    else:
        for key in keys:
            _remove_stale_targets(layout, key, planned[key])

    meta = {"tool": "cam-runtime", "version": _version(), "created": now_iso(),
            "model": engine.manifest.name, "model_path": str(model_path) if model_path else None,
            "device": engine.providers[0] if engine.providers else None, "method": options.method,
            "top_k": options.top_k, "classes": options.classes, "image_format": options.image_format,
            "output": str(layout.root)}
    report = Report(meta, page={"colormap": options.colormap, "weights": engine.manifest.provenance.get("weights")})
    todo = [(item, key) for item, key in zip(items, keys, strict=True) if key not in done]
    stream = engine.iter_explain(
        (item.engine_input for item, _ in todo), method=options.method, top_k=options.top_k,
        classes=options.classes, batch_size=options.batch_size, box_threshold=options.box_threshold,
        all_boxes=options.all_boxes)
    show_progress = not options.quiet and not options.json_lines and stdout_is_terminal() and len(items) > 1
    start = time.perf_counter()
    with _sigterm_as_exit(), _progress(show_progress, len(items)) as advance:
        try:
            for item, key in zip(items, keys, strict=True):
                if key in done:
                    record = done[key]
                    thumbs = [thumbnail_from_file(layout.path(t["overlay"]), max_pixels=engine.max_pixels)
                              for t in record.get("targets", []) if t.get("overlay")]
                    report.add(record, "", thumbs)
                else:
                    outcome = next(stream)
                    record, input_thumb, thumbs = _write_outputs(outcome, item, key, layout, options)
                    report.add(record, input_thumb, thumbs)
                if options.json_lines:
                    line = {**record, **json_fields} if json_fields else record
                    sys.stdout.write(strict_json(line) + "\n")
                    sys.stdout.flush()
                advance(item.source)
        except BaseException:
            # A signal can land between mkstemp and the atomic write's own cleanup: sweep what it left.
            remove_stale_temps(layout.root)
            raise
        finally:
            # Whatever happened (Ctrl-C, SIGTERM, a write error), report what was done.
            if report.records:
                report.meta["wall_s"] = round(time.perf_counter() - start, 3)
                report.write(layout)
    if not options.quiet:
        _summary(report, layout, time.perf_counter() - start)
    else:
        # Quiet drops the table and the progress bar, never the failures: one plain line each on stderr.
        for record in report.records:
            if record["status"] != "ok":
                print(f"failed: {record['source']}: {' '.join(str(record['error'] or '').split())}",
                      file=sys.stderr, flush=True)
    return report


def _write_outputs(outcome: ExplainResult | ImageFailure, item: InputItem, key: str, layout: OutputLayout,
                   options: ExplainOptions) -> tuple[dict[str, Any], str, list[str]]:
    """Write one image's overlays (+ heatmaps) and then its record file; returns (record, thumbnails)."""
    if isinstance(outcome, ImageFailure):
        error = outcome.error.replace(outcome.source, item.source) if item.data is not None else outcome.error
        failure = ImageFailure(item.source, error, outcome.error_type)
        return record_from_failure(failure, key), "", []
    start = time.perf_counter()
    overlays: list[str] = []
    heatmaps: list[str | None] = []
    for index, target in enumerate(outcome.targets):
        bgr = outcome.overlay(index, heatmap_weight=options.alpha, colormap=options.colormap,
                              draw_boxes=options.boxes, channel_order="BGR")
        name = layout.overlay_name(key, index)
        write_image_atomic(layout.path(name), bgr, options.image_format, fsync=False)
        overlays.append(name)
        if options.save_heatmaps:
            heat_name = layout.heatmap_name(key, index)
            save_npy_atomic(layout.path(heat_name), target.heatmap, fsync=False)
            heatmaps.append(heat_name)
        else:
            heatmaps.append(None)
    write_ms = (time.perf_counter() - start) * 1e3
    input_thumb, thumbs = result_thumbnails(outcome, alpha=options.alpha, colormap=options.colormap,
                                            draw_boxes=options.boxes)
    outcome.source = item.source
    record = record_from_result(outcome, key, overlays, heatmaps, write_ms)
    # The record goes last and durably: its presence tells --skip-existing this image is complete. (Without the
    # fsync, no measurable gain: its ~0.1 ms of CPU is small and the wait overlaps the pipeline's inference.)
    _write_text(layout.path(layout.record_name(key)), strict_json(record) + "\n")
    return record, input_thumb, thumbs


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


def _version() -> str:
    from cam_runtime import __version__

    return __version__

