"""Scale-out on Ray Data: one CamEngine per actor, every input one record (failures too), Parquet + overlays.

Needs the ``ray`` extra (``ray[data]``, which brings pyarrow); ``import cam_runtime`` never imports this module.
``import ray`` below is absolute (Python 3 has no implicit relative imports), so it is Ray, not this module.

Records have one row per input: ``source``, ``key``, ``status`` ("ok" or "failed"), ``error_type``, ``error``,
``width``, ``height``, ``method``, ``top_k`` and ``targets`` (as in the CLI's JSON records, plus the overlay
file names), ``maps`` (each target's map at feature resolution, ``[T][h][w]`` float32, unnormalised),
``overlays`` and ``timings_ms``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .defaults import BOX_THRESHOLD
from .errors import ImageReadError, InvalidArgumentError, MissingDependencyError

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data import Dataset

RECORDS_DIR = "records"
"""Sub-folder of the output folder that holds the Parquet records."""
CRASH_ONCE_ENV = "CAMR_RAY_CRASH_ONCE"
"""Fault injection for tests: a marker path; the first actor to create it exits hard in its second batch."""
TIMING_FIELDS: tuple[str, ...] = ("decode", "preprocess", "inference", "maps", "write")


def import_ray() -> Any:
    """Import ray (with Ray Data) or explain how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError("scale-out", "ray[data] and pyarrow", "ray") from None
    return ray


def record_schema() -> pa.Schema:
    """The Arrow schema of the records (what ``explain_dataset`` yields and the Parquet files hold)."""
    import pyarrow as pa

    prediction = [pa.field("class_id", pa.int64()), pa.field("label", pa.string()),
                  pa.field("probability", pa.float64())]
    box = pa.struct([pa.field(n, pa.int64()) for n in ("x0", "y0", "x1", "y1", "area")]
                    + [pa.field("score", pa.float64())])
    target = pa.struct([*prediction, pa.field("boxes", pa.list_(box)), pa.field("overlay", pa.string())])
    return pa.schema([
        pa.field("source", pa.string()), pa.field("key", pa.string()), pa.field("status", pa.string()),
        pa.field("error_type", pa.string()), pa.field("error", pa.string()),
        pa.field("width", pa.int64()), pa.field("height", pa.int64()), pa.field("method", pa.string()),
        pa.field("top_k", pa.list_(pa.struct(prediction))), pa.field("targets", pa.list_(target)),
        pa.field("maps", pa.list_(pa.list_(pa.list_(pa.float32())))),
        pa.field("overlays", pa.list_(pa.string())),
        pa.field("timings_ms", pa.struct([pa.field(n, pa.float64()) for n in TIMING_FIELDS])),
    ])


def key_for_path(path: str, root: str | None = None) -> str:
    """The stable output key of an input path (relative to ``root`` when it lies inside it), as the CLI names files."""
    from .outputs import output_key

    text = path.split("://", 1)[-1]
    if root is not None:
        prefix = root.split("://", 1)[-1].rstrip("/") + "/"
        if text.startswith(prefix):
            text = text[len(prefix):]
    return output_key(PurePosixPath(text))


class ExplainActor:
    """A Ray Data callable class: loads one CamEngine per actor and turns batches of rows into record tables.

    Rows carry ``bytes`` (as ``ray.data.read_binary_files(..., include_paths=True)`` gives them) and/or ``path``
    (a local path or a pyarrow file-system URI, read here when there are no bytes), and optionally ``key``.
    Each input gives exactly one record; decoding and reading errors become failed records.
    """

    def __init__(self, model: str, options: dict[str, Any]) -> None:
        from .engine import CamEngine
        from .outputs import OutputLayout

        self.options = options
        self.engine = CamEngine.load(model, device=options["device"], threads=options["threads"],
                                     max_pixels=options["max_pixels"], resize=options["resize"],
                                     trust_graph=options.get("trust_graph", False))
        output = options["output"]
        self.layout = OutputLayout(output, options["image_format"]) if output is not None else None
        self._calls = 0
        self._filesystems: dict[str, Any] = {}

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        """Explain one batch of rows into one record per row (same order)."""
        import pyarrow as pa

        from .results import ExplainResult

        self._calls += 1
        n = len(next(iter(batch.values())))
        paths = [str(p) for p in batch["path"]] if "path" in batch else [f"<row {i}>" for i in range(n)]
        if "key" in batch:
            keys = [str(k) for k in batch["key"]]
        elif "path" in batch:
            keys = [key_for_path(p, self.options["root"]) for p in paths]
        else:
            raise InvalidArgumentError("explain_dataset needs a 'path' or a 'key' column to name the outputs")
        sources = [str(s) for s in batch["source"]] if "source" in batch else paths
        inputs: list[Any] = []
        records: list[dict[str, Any] | None] = [None] * n
        for i in range(n):
            try:
                inputs.append((i, self._input(batch, i, paths[i])))
            except ImageReadError as exc:
                records[i] = _failed(sources[i], keys[i], str(exc), type(exc).__name__)
        opts = self.options
        stream = self.engine.iter_explain([data for _, data in inputs], method=opts["method"], top_k=opts["top_k"],
                                          classes=opts["classes"], batch_size=max(1, len(inputs)),
                                          box_threshold=opts["box_threshold"], all_boxes=opts["all_boxes"],
                                          prefetch=False)
        for (i, data), outcome in zip(inputs, stream, strict=True):
            if isinstance(outcome, ExplainResult):
                records[i] = self._record(outcome, sources[i], keys[i])
            else:
                error = outcome.error.replace(outcome.source, sources[i]) if isinstance(data, bytes) else outcome.error
                records[i] = _failed(sources[i], keys[i], error, outcome.error_type)
        table = pa.Table.from_pylist(records, schema=record_schema())
        if self.options["records_dir"] is None:
            self._maybe_crash()
            return table
        self._write_records(table, keys)
        self._maybe_crash()
        return table.select(["key", "status"])

    def _write_records(self, table: pa.Table, keys: list[str]) -> None:
        """The batch's records as one Parquet file named after its keys: a retried batch replaces its own file."""
        import hashlib

        import pyarrow.parquet as pq

        folder = Path(self.options["records_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        name = "part-" + hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:24] + ".parquet"
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)

    def _input(self, batch: dict[str, Any], i: int, path: str) -> bytes | Path:
        """The encoded bytes of row ``i``, or its local path (read and checked by the engine's loader)."""
        from .imaging import max_file_bytes

        if "bytes" in batch and batch["bytes"][i] is not None:
            return bytes(batch["bytes"][i])
        if "://" not in path:
            return Path(path)
        import pyarrow.fs as pafs

        limit = max_file_bytes(self.options["max_pixels"])
        try:
            scheme = path.split("://", 1)[0]
            fs, inner = pafs.FileSystem.from_uri(path)
            self._filesystems.setdefault(scheme, fs)
            info = fs.get_file_info(inner)
            if info.type != pafs.FileType.File:
                raise ImageReadError(path, "not found" if info.type == pafs.FileType.NotFound else "not a file")
            if info.size is not None and info.size > limit:
                raise ImageReadError(path, f"file has {info.size} bytes, more than the {limit} allowed")
            with fs.open_input_file(inner) as handle:
                return bytes(handle.read())
        except ImageReadError:
            raise
        except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses (and ArrowInvalid: ValueError)
            raise ImageReadError(path, str(exc).strip().splitlines()[0] if str(exc).strip() else "read failed") \
                from None

    def _record(self, result: Any, source: str, key: str) -> dict[str, Any]:
        """An ok record; overlays are written first (atomically), so a record never names a missing file."""
        from .errors import CamError
        from .outputs import write_image_atomic

        opts = self.options
        start = time.perf_counter()
        overlays: list[str] = []
        if self.layout is not None:
            try:
                for index in range(len(result.targets)):
                    bgr = result.overlay(index, alpha=opts["alpha"], colormap=opts["colormap"],
                                         draw_boxes=opts["draw_boxes"], channel_order="BGR")
                    name = self.layout.overlay_name(key, index)
                    write_image_atomic(self.layout.path(name), bgr, self.layout.image_format, fsync=False)
                    overlays.append(name)
            except CamError as exc:  # a full disk or an unsafe name fails this input, not the job
                return _failed(source, key, str(exc), type(exc).__name__)
        write_ms = (time.perf_counter() - start) * 1e3
        data = result.to_dict()
        targets = [{**{k: t[k] for k in ("class_id", "label", "probability", "boxes")},
                    "overlay": overlays[j] if overlays else None} for j, t in enumerate(data["targets"])]
        timings = {name: data["timings_ms"].get(name) for name in TIMING_FIELDS}
        timings["write"] = round(write_ms, 3)
        return {"source": source, "key": key, "status": "ok", "error_type": None, "error": None,
                "width": data["width"], "height": data["height"], "method": data["method"], "top_k": data["top_k"],
                "targets": targets, "maps": [t.raw.tolist() for t in result.targets], "overlays": overlays,
                "timings_ms": timings}

    def _maybe_crash(self) -> None:
        marker = os.environ.get(CRASH_ONCE_ENV)
        if not marker or self._calls < 2:
            return
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(17)  # like a killed worker: no cleanup, the batch's result never reaches Ray


def _failed(source: str, key: str, error: str, error_type: str) -> dict[str, Any]:
    return {"source": source, "key": key, "status": "failed", "error_type": error_type, "error": error,
            "width": None, "height": None, "method": None, "top_k": [], "targets": [], "maps": [], "overlays": [],
            "timings_ms": dict.fromkeys(TIMING_FIELDS)}


def explain_dataset(ds: Dataset, model: str | Path, *, method: str = "cam", top_k: int = 1,
                    classes: Sequence[int | str] | None = None, batch_size: int = 16, concurrency: int | None = None,
                    device: str = "auto", threads: int = 1, output: str | Path | None = None, root: str | None = None,
                    image_format: str = "jpg", alpha: float = 0.5, colormap: str = "jet", draw_boxes: bool = True,
                    box_threshold: float = BOX_THRESHOLD, all_boxes: bool = False, max_pixels: int | None = None,
                    resize: str | None = None, records_dir: str | Path | None = None,
                    runtime_env: dict[str, Any] | None = None, trust_graph: bool = False) -> Dataset:
    """A lazy Ray Dataset of records (one per row of ``ds``), explained by an actor pool, one engine per actor.

    ``ds`` has a ``bytes`` and/or a ``path`` column (``ray.data.read_binary_files(paths, include_paths=True)``,
    or paths alone, read inside the actors); an optional ``key`` column names the outputs, otherwise the key
    comes from the path (relative to ``root``). With ``output``, overlays are written there atomically as
    ``<key>.overlay-<t>.<format>``. ``concurrency`` actors (default: the cluster's GPUs when running on CUDA,
    else its CPUs / ``threads``), each with ``threads`` onnxruntime threads, or one GPU on ``device="cuda"``
    (``"auto"`` takes GPUs when the cluster has them). A dead actor is restarted and its batch retried (Ray
    Data's defaults for actor pools), so every row still gives exactly one record.

    With ``records_dir``, each actor writes its batch's records there itself (one Parquet file per batch, named
    after the batch's keys, written atomically, so a retried batch replaces its own file) and the dataset
    yields only ``key`` and ``status``: no separate write stage competing with the actors for CPUs.

    ``trust_graph`` lets every actor load a model whose graph uses operators outside the CNN allowlist
    (``CamEngine.load(trust_graph=True)``, the CLI's ``--trust-model-graph``).
    """
    ray = import_ray()
    from .imaging import DEFAULT_MAX_PIXELS
    from .methods import get_method
    from .render import colormap_id

    get_method(method)
    colormap_id(colormap)
    if batch_size < 1 or threads < 1 or (concurrency is not None and concurrency < 1):
        raise InvalidArgumentError("batch_size, threads and concurrency must be ≥ 1")
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidArgumentError(f"device must be auto, cpu or cuda, got {device!r}")
    resources = ray.cluster_resources() if ray.is_initialized() else {}
    gpus = int(resources.get("GPU", 0))
    if device == "cuda" and not gpus:
        raise InvalidArgumentError("device 'cuda' was asked for but the Ray cluster has no GPUs")
    on_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if concurrency is None:
        concurrency = gpus if on_gpu else max(1, int(resources.get("CPU", 1)) // threads)
    options = {"method": method, "top_k": top_k, "classes": list(classes) if classes else None,
               "device": "cuda" if on_gpu else "cpu", "threads": threads,
               "max_pixels": max_pixels or DEFAULT_MAX_PIXELS, "resize": resize,
               "output": str(output) if output is not None else None, "root": root,
               "image_format": image_format.lower().lstrip(".").replace("jpeg", "jpg"), "alpha": alpha,
               "colormap": colormap, "draw_boxes": draw_boxes, "box_threshold": box_threshold,
               "all_boxes": all_boxes, "records_dir": str(records_dir) if records_dir is not None else None,
               "trust_graph": trust_graph}
    return ds.map_batches(ExplainActor, fn_constructor_args=(str(model), options), batch_size=batch_size,
                          batch_format="numpy", zero_copy_batch=True,
                          compute=ray.data.ActorPoolStrategy(size=concurrency),
                          num_cpus=0 if on_gpu else threads, num_gpus=1 if on_gpu else 0, runtime_env=runtime_env)


# --- the folder job: Parquet records, resume, exactly once --------------------------------------------------


def record_files(output: str | Path) -> list[Path]:
    """The Parquet record files in an output folder, sorted."""
    folder = Path(output) / RECORDS_DIR
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def read_records(output: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Every record in an output folder as one Arrow table (unreadable Parquet files are skipped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in record_files(output):
        with contextlib.suppress(OSError, ValueError):
            tables.append(pq.read_table(path, columns=list(columns) if columns else None))
    if not tables:
        schema = record_schema()
        return schema.empty_table().select(list(columns)) if columns else schema.empty_table()
    return pa.concat_tables(tables)


def completed_keys(output: str | Path, image_format: str = "jpg") -> set[str]:
    """Keys whose record says ok and whose overlays are all non-empty files: what a resumed run skips."""
    root = Path(output)
    done = set()
    table = read_records(root, ["key", "status", "overlays"])
    for key, status, overlays in zip(*(table.column(c).to_pylist() for c in ("key", "status", "overlays")),
                                     strict=True):
        if status == "ok" and overlays and all(_nonempty(root / name) for name in overlays):
            done.add(key)
    return done


def prune_records(output: str | Path, drop: Iterable[str] | None = None) -> int:
    """Remove the records whose key is in ``drop`` (every record with None) from the record files.

    Files are rewritten atomically (temporary file, then ``os.replace``); emptied and unreadable (truncated)
    files are removed. Returns the number of records removed. A resumed run calls this for the inputs it
    redoes, so the final records hold every input exactly once.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    removed = 0
    doomed = None if drop is None else _string_array(drop)
    for path in record_files(output):
        try:
            table = pq.read_table(path)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        remaining = table.slice(0, 0) if doomed is None else table.filter(
            pc.invert(pc.is_in(table.column("key"), value_set=doomed)))
        if remaining.num_rows == table.num_rows:
            continue
        removed += table.num_rows - remaining.num_rows
        if remaining.num_rows == 0:
            path.unlink(missing_ok=True)
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(remaining, tmp)
        os.replace(tmp, path)
    return removed


def _string_array(values: Iterable[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False
