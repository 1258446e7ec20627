"""``camr explain --ray ADDRESS``: the folder job on a Ray cluster (Parquet records + overlays, resumable)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from cam_runtime.errors import InvalidArgumentError, OutputExistsError
from cam_runtime.image_files import is_image_name
from cam_runtime.jobs.explain_folder import ExplainOptions

from .common import EXIT_OK, EXIT_SOME_FAILED, err_console, warn_line
from .inputs import collect_inputs

_ADDRESS = re.compile(r"^(local|auto|ray://\S+|[\w.\-]+:\d+)$")
SUMMARY_FILE = "summary.json"


def parse_address(address: str) -> str:
    """Check a ``--ray`` value: local (start a Ray instance here), auto (the running cluster), HOST:PORT or ray://."""
    if not _ADDRESS.match(address):
        raise InvalidArgumentError(f"--ray needs an address: local, auto, HOST:PORT or ray://HOST:PORT "
                                   f"(got {address!r}; inputs come after it)")
    return address


def list_inputs(arguments: list[str], *, recursive: bool) -> list[tuple[str, PurePath, str]]:
    """(source, relative path, what the actors read: an absolute path or a URI) for every input, in order."""
    found: list[tuple[str, PurePath, str]] = []
    seen: set[str] = set()
    for arg in arguments:
        if arg == "-":
            raise InvalidArgumentError("'-' (stdin) cannot be used with --ray; give files, folders or URIs")
        if "://" in arg:
            entries = _list_uri(arg, recursive)
        else:
            entries = [(item.source, item.relative, str(Path(item.source).absolute()))
                       for item in collect_inputs([arg], recursive=recursive)]
        for source, relative, location in entries:
            if location not in seen:
                seen.add(location)
                found.append((source, relative, location))
    return found


def _list_uri(uri: str, recursive: bool) -> list[tuple[str, PurePath, str]]:
    """Image files under a pyarrow file-system URI (s3://, gs://, file://, ...), sorted."""
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(root)
        scheme = uri.split("://", 1)[0]
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and is_image_name(i.path))
            base = root.rstrip("/") + "/"
            return [(f"{scheme}://{p}", PurePosixPath(p[len(base):] if p.startswith(base) else p),
                     f"{scheme}://{p}") for p in files]
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot list {uri}: {str(exc).strip().splitlines()[0]}") from None
    # A single object (or a missing one: it becomes a failed record, as a missing local file does).
    return [(uri, PurePosixPath(PurePosixPath(root).name), uri)]


RUN_FILE = "run.json"
"""In OUTPUT/records: the identity (model digest, method, options) of the run that wrote the records."""


def _read_run(path: Path) -> object:
    """The stored run identity, or None when missing or unreadable (an older run: a mismatch)."""
    try:
        return json.loads(path.read_bytes()[:65536])
    except (OSError, ValueError):
        return None


def run_ray_explain(address: str, inputs: list[str], output: Path, model: Path, options: ExplainOptions, *,
                    device: str, threads: int | None, max_pixels: int, resize: str | None, recursive: bool,
                    trust_graph: bool = False) -> int:
    """Explain ``inputs`` on a Ray cluster into ``output``; returns the exit code (0, or 1 if some failed)."""
    from cam_runtime.errors import ResumeMismatchError
    from cam_runtime.jobs.explain_folder import identity_difference
    from cam_runtime.outputs import OutputLayout, remove_stale_temps, write_text_atomic
    from cam_runtime.ray import RECORDS_DIR, completed_keys, explain_dataset, import_ray, prune_records, record_files

    from .common import load_engine

    parse_address(address)
    options.validate()
    model = model.absolute()
    engine = load_engine(model, "cpu", 1, max_pixels=max_pixels, resize=resize, warmup=False,  # fail fast here
                         trust_graph=trust_graph)
    options.check_engine(engine)
    identity = options.identity(engine)
    del engine
    listed = list_inputs(inputs, recursive=recursive)
    if not listed:
        raise InvalidArgumentError("no input images found")
    layout = OutputLayout(output.absolute(), options.image_format)
    layout.check_writable()
    remove_stale_temps(layout.root)
    keys = [layout.allocate(relative) for _, relative, _ in listed]
    n_targets = options.targets_per_image
    done: set[str] = set()
    run_file = layout.root / RECORDS_DIR / RUN_FILE
    if options.skip_existing and record_files(layout.root):
        difference = identity_difference(_read_run(run_file), identity)
        if difference is not None and not options.redo_mismatched:
            raise ResumeMismatchError(run_file, difference)
        if difference is not None:
            prune_records(layout.root)  # every record came from the other run: redo them all
    if options.skip_existing:
        done = completed_keys(layout.root) & set(keys)
        redo = set(keys) - done
        prune_records(layout.root, drop=redo)  # their old (failed or incomplete) records go: exactly once
    elif options.force:
        prune_records(layout.root)
    else:
        existing = record_files(layout.root)
        if existing:
            raise OutputExistsError(existing[0])
        for key in keys:
            for index in range(n_targets):
                if layout.path(layout.overlay_name(key, index)).exists():
                    raise OutputExistsError(layout.path(layout.overlay_name(key, index)))
    # The records of one output folder come from one run: its identity, for the next --skip-existing.
    write_text_atomic(run_file, json.dumps(identity) + "\n")
    todo = [{"source": source, "key": key, "path": location}
            for (source, _, location), key in zip(listed, keys, strict=True) if key not in done]

    start = time.perf_counter()
    if todo:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, configure_logging=True)
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            ds = ray.data.from_items(todo)
            records = explain_dataset(
                ds, model, method=options.method, top_k=options.top_k, classes=options.classes,
                batch_size=options.batch_size, device=device, threads=threads or 1, output=layout.root,
                image_format=options.image_format, alpha=options.alpha, colormap=options.colormap,
                draw_boxes=options.boxes, box_threshold=options.box_threshold, all_boxes=options.all_boxes,
                max_pixels=max_pixels, resize=resize, records_dir=layout.root / RECORDS_DIR, trust_graph=trust_graph)
            for _ in records.iter_batches(batch_size=None):  # the actors write the records; this drives them
                pass
        finally:
            if started:
                ray.shutdown()
    wall = time.perf_counter() - start
    return _finish(layout.root, keys, done, wall, options, address)


def _finish(root: Path, keys: list[str], done: set[str], wall: float, options: ExplainOptions, address: str) -> int:
    """Check every input has exactly one record, write summary.json, print the summary; the exit code."""
    from cam_runtime.outputs import strict_json, write_text_atomic
    from cam_runtime.ray import read_records

    table = read_records(root, ["key", "status", "source", "error"])
    wanted = set(keys)
    rows = [r for r in table.to_pylist() if r["key"] in wanted]
    counts = Counter(r["key"] for r in rows)
    missing = sorted(wanted - set(counts))
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    failed = [r for r in rows if r["status"] != "ok"]
    explained = len(keys) - len(done)
    summary: dict[str, Any] = {
        "images": len(keys), "explained": explained, "already_done": len(done), "failed": len(failed),
        "missing": len(missing), "duplicated": len(duplicated), "wall_s": round(wall, 3),
        "images_per_s": round(explained / wall, 2) if wall > 0 and explained else None,
        "ray_address": address, "method": options.method, "records": "records/*.parquet",
    }
    write_text_atomic(root / SUMMARY_FILE, strict_json(summary, indent=2) + "\n")
    if missing or duplicated:
        warn_line(f"{len(missing)} input(s) without a record and {len(duplicated)} with several "
                  f"(first: {(missing or duplicated)[0]}); rerun with --skip-existing")
    if not options.quiet:
        from rich.markup import escape

        rate = f" ({summary['images_per_s']}/s)" if summary["images_per_s"] else ""
        err_console().print(f"camr explain --ray: {len(keys)} images, {explained} explained{rate}, "
                            f"{len(done)} already done, {len(failed)} failed → {escape(str(root))}")
        for record in failed[:5]:
            err_console().print(f"  [red]failed[/red] {escape(record['source'])}: {escape(record['error'] or '')}",
                                soft_wrap=True)
    return EXIT_SOME_FAILED if failed or missing or duplicated else EXIT_OK
