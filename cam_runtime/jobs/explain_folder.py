"""The explain-folder job: explain a list of images into an output tree, write each image's outputs atomically and
its record last, resume (``skip_existing``) only records of the same run, and always write the reports of what
finished (Ctrl-C, SIGTERM, a write error). No terminal output: callers get each record through ``on_record``."""

from __future__ import annotations

import hashlib
import json
import signal
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Protocol

from cam_runtime.defaults import BOX_THRESHOLD
from cam_runtime.errors import InvalidArgumentError, OutputExistsError, ResumeMismatchError
from cam_runtime.outputs import (
    IMAGE_FORMATS,
    OutputLayout,
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

if TYPE_CHECKING:
    from cam_runtime.engine import CamEngine

RUN_FIELD = "run"
"""The record field that says which run made it: model folder digest, method, options (see :meth:`identity`)."""


class FolderItem(Protocol):
    """One image to explain: its display name, its path relative to its root, and what the engine reads."""

    @property
    def source(self) -> str:
        """Display name (errors, reports)."""

    @property
    def relative(self) -> PurePath:
        """Path relative to its root: names the outputs."""

    @property
    def data(self) -> bytes | None:
        """Encoded bytes for stdin inputs, else None."""

    @property
    def engine_input(self) -> Path | bytes:
        """What :meth:`CamEngine.iter_explain` receives."""


@dataclass
class ExplainOptions:
    """Everything the job needs besides the engine, the inputs and the output folder; checked in one place."""

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
    redo_mismatched: bool = False
    quiet: bool = False

    def validate(self) -> None:
        """Check the options before any model is loaded or file written (idempotent)."""
        from cam_runtime.boxes import check_box_threshold
        from cam_runtime.methods import get_method
        from cam_runtime.render import colormap_id

        self.method = get_method(self.method).name  # the canonical name everywhere (report.json, records)
        colormap_id(self.colormap)
        self.image_format = self.image_format.lower().lstrip(".")
        if self.image_format == "jpeg":
            self.image_format = "jpg"
        if self.image_format not in IMAGE_FORMATS:
            raise InvalidArgumentError(f"--format must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_format!r}")
        check_box_threshold(self.box_threshold, "--box-threshold")
        if self.batch_size < 1:
            raise InvalidArgumentError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if self.top_k < 1:
            raise InvalidArgumentError(f"--top-k must be ≥ 1, got {self.top_k}")
        if self.force and self.skip_existing:
            raise InvalidArgumentError("--force and --skip-existing exclude each other")
        if self.redo_mismatched and not self.skip_existing:
            raise InvalidArgumentError("--redo-mismatched goes with --skip-existing")

    def check_engine(self, engine: CamEngine) -> None:
        """The classes exist in the model and top-k fits its classes (before anything is written)."""
        engine.classes.check_classes(self.classes or None, self.top_k, "--top-k")

    @property
    def targets_per_image(self) -> int:
        """T: the number of maps (and overlays) per image."""
        return len(self.classes) if self.classes else self.top_k

    def identity(self, engine: CamEngine) -> dict[str, Any]:
        """What makes a record reusable by a resumed run: model folder digest, method, options that shape outputs."""
        return {"model_sha256": model_digest(engine), "method": self.method,
                "options": {"top_k": self.top_k, "classes": self.classes, "image_format": self.image_format,
                            "alpha": self.alpha, "colormap": self.colormap, "boxes": self.boxes,
                            "all_boxes": self.all_boxes, "box_threshold": self.box_threshold,
                            "save_heatmaps": self.save_heatmaps}}


def model_digest(engine: CamEngine) -> str:
    """One SHA-256 over the model folder's verified file digests (the manifest's ``sha256`` map)."""
    digests = json.dumps(sorted(engine.manifest.sha256.items()), separators=(",", ":"))
    return hashlib.sha256(digests.encode()).hexdigest()


def identity_difference(old: object, new: dict[str, Any]) -> str | None:
    """How a record's run identity differs from this run's, in a few words (None: the same run)."""
    if not isinstance(old, dict):
        return "its record has no run identity (an older version made it)"
    if old.get("model_sha256") != new["model_sha256"]:
        return "another model folder"
    if old.get("method") != new["method"]:
        return f"method {str(old.get('method'))[:40]!r}, this run {new['method']!r}"
    options = old.get("options")
    old_options: dict[str, Any] = options if isinstance(options, dict) else {}
    changed = sorted(k for k, v in new["options"].items() if old_options.get(k) != v)
    return f"other options: {', '.join(changed)}" if changed else None


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the reports of the images done so far are still written."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread or a server worker)
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
    """Delete an earlier run's overlays/heatmaps of ``key`` this run will not rewrite (e.g. -k 2 then -k 1)."""
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


def first_existing_output(items: Sequence[FolderItem], output: Path, options: ExplainOptions) -> Path | None:
    """The first file a run of ``items`` into ``output`` would write that exists already (None: all absent)."""
    layout = OutputLayout(output, options.image_format)
    names = list(layout.REPORT_FILES)
    for item in items:
        names += layout.planned(layout.allocate(item.relative), options.targets_per_image, options.save_heatmaps)
    return next((layout.path(name) for name in names if layout.path(name).exists()), None)


RecordCallback = Callable[[dict[str, Any], FolderItem], None]
"""Called after each image's record is final (written or resumed), in input order."""


def explain_folder(engine: CamEngine, items: Sequence[FolderItem], output: Path, options: ExplainOptions, *,
                   model_path: Path | None = None, on_record: RecordCallback | None = None,
                   on_stale_temps: Callable[[int], None] | None = None) -> Report:
    """Explain ``items`` into ``output``; returns the report (already written as json/csv/html).

    Raises before writing anything for bad options, unknown classes, existing outputs (unless ``force`` or
    ``skip_existing``) and records of another run under ``skip_existing`` (unless ``redo_mismatched``).
    """
    options.validate()
    options.check_engine(engine)
    layout = OutputLayout(output, options.image_format)
    layout.check_writable()
    stale = remove_stale_temps(layout.root)
    if stale and on_stale_temps is not None:
        on_stale_temps(stale)
    identity = options.identity(engine)
    n_targets = options.targets_per_image
    keys = [layout.allocate(item.relative) for item in items]
    planned = {key: layout.planned(key, n_targets, options.save_heatmaps) for key in keys}
    done: dict[str, dict[str, Any]] = {}
    if options.skip_existing:
        for key in keys:
            record = _load_done(layout, key, planned[key][:-1], n_targets)
            if record is None:
                continue
            difference = identity_difference(record.get(RUN_FIELD), identity)
            if difference is None:
                done[key] = {**{k: v for k, v in record.items() if k != RUN_FIELD}, "resumed": True}
            elif options.redo_mismatched:
                _remove_stale_targets(layout, key, planned[key])
            else:
                raise ResumeMismatchError(layout.path(layout.record_name(key)), difference)
    elif not options.force:
        for name in [*layout.REPORT_FILES, *(n for key in keys for n in planned[key])]:
            if layout.path(name).exists():
                raise OutputExistsError(layout.path(name), resumable=True)
    else:
        for key in keys:
            _remove_stale_targets(layout, key, planned[key])

    meta = {"tool": "cam-runtime", "version": version(), "created": now_iso(),
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
    start = time.perf_counter()
    with sigterm_as_exit():
        try:
            for item, key in zip(items, keys, strict=True):
                if key in done:
                    record = done[key]
                    thumbs = [thumbnail_from_file(layout.path(t["overlay"]), max_pixels=engine.max_pixels)
                              for t in record.get("targets", []) if t.get("overlay")]
                    report.add(record, "", thumbs)
                else:
                    outcome = next(stream)
                    record, input_thumb, thumbs = _write_outputs(outcome, item, key, layout, options, identity)
                    report.add(record, input_thumb, thumbs)
                if on_record is not None:
                    on_record(record, item)
        except BaseException:
            # A signal can land between mkstemp and the atomic write's own cleanup: sweep what it left.
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stops the pipeline's run in flight (Ctrl-C must not wait for a slow batch)
            remove_stale_temps(layout.root)
            raise
        finally:
            # Whatever happened (Ctrl-C, SIGTERM, a write error), report what was done.
            if report.records:
                report.meta["wall_s"] = round(time.perf_counter() - start, 3)
                report.write(layout)
    return report


def _write_outputs(outcome: ExplainResult | ImageFailure, item: FolderItem, key: str, layout: OutputLayout,
                   options: ExplainOptions, identity: dict[str, Any]) -> tuple[dict[str, Any], str, list[str]]:
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
    # The record goes last and durably: its presence tells skip_existing this image is complete. (Without the
    # fsync, no measurable gain: its ~0.1 ms of CPU is small and the wait overlaps the pipeline's inference.)
    # Only the per-image file carries the run's identity (what a resume compares); the reports keep their fields.
    _write_text(layout.path(layout.record_name(key)),
                strict_json({**record, RUN_FIELD: identity}) + "\n")
    return record, input_thumb, thumbs


def version() -> str:
    """cam-runtime's version (imported lazily: the package's ``__version__`` pulls in more than this needs)."""
    from cam_runtime import __version__

    return __version__
