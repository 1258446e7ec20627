"""``camr bench``: batch-1 latency (p50/p95) and batched throughput, split into pipeline stages."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    DEFAULT_MODEL,
    BatchSizeOpt,
    Device,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    ThreadsOpt,
    TrustGraphOpt,
    handle_errors,
    load_engine,
    out_console,
)

STAGES: tuple[str, ...] = ("decode", "preprocess", "inference", "maps", "write")


def example_images() -> list[Path]:
    """The bundled example photos."""
    from importlib import resources

    folder = resources.files("cam_runtime").joinpath("data/examples")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jpg"))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation) of a non-empty list."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def run_bench(engine: Any, images: list[Path], *, runs: int, batch_size: int, throughput_images: int,
              method: str, image_format: str, warmup: int = 2) -> dict[str, Any]:
    """Measure: ``runs`` single-image explains (stages + total), then ``throughput_images`` at ``batch_size``."""
    from cam_runtime.outputs import write_image_atomic
    from cam_runtime.results import ImageFailure

    def write(result: Any, folder: Path, index: int) -> float:
        start = time.perf_counter()
        bgr = result.overlay(0, channel_order="BGR")
        write_image_atomic(folder / f"{index}.{image_format}", bgr, image_format, fsync=False)
        return (time.perf_counter() - start) * 1e3

    latency: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    with tempfile.TemporaryDirectory(prefix="camr-bench-") as tmp:
        folder = Path(tmp)
        for i in range(warmup + runs):
            start = time.perf_counter()
            result = engine.explain(images[i % len(images)], method=method, batch_size=1)[0]
            write_ms = write(result, folder, i)
            total = (time.perf_counter() - start) * 1e3
            if i < warmup:
                continue
            for stage in STAGES[:-1]:
                latency[stage].append(result.timings_ms.get(stage, 0.0))
            latency["write"].append(write_ms)
            latency["total"].append(total)
        batch_sums = dict.fromkeys(STAGES, 0.0)
        stream_inputs = [images[i % len(images)] for i in range(throughput_images)]
        start = time.perf_counter()
        for i, result in enumerate(engine.iter_explain(stream_inputs, method=method, batch_size=batch_size)):
            if isinstance(result, ImageFailure):
                continue
            batch_sums["write"] += write(result, folder, i)
            for stage in STAGES[:-1]:
                batch_sums[stage] += result.timings_ms.get(stage, 0.0)
        wall = time.perf_counter() - start
    import onnxruntime

    return {
        "model": engine.manifest.name, "provider": engine.providers[0], "method": method,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "onnxruntime": onnxruntime.__version__},
        "images": [p.name for p in images],
        "batch1": {"runs": runs, **{stage: {"p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95)}
                                    for stage, v in latency.items()}},
        "throughput": {"batch_size": batch_size, "images": throughput_images, "wall_s": wall,
                       "images_per_s": throughput_images / wall if wall > 0 else float("inf"),
                       "mean_ms_per_image": {k: v / throughput_images for k, v in batch_sums.items()}},
    }


@handle_errors
def bench(
    images: Annotated[list[Path] | None, typer.Argument(help="Images to use (default: the bundled examples).",
                                                        show_default=False)] = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    trust_model_graph: TrustGraphOpt = False,
    method: Annotated[str, typer.Option("--method", help="CAM method to time.")] = "cam",
    runs: Annotated[int, typer.Option("--runs", "-n", min=1, help="Batch-1 repetitions (after 2 warm-up).")] = 20,
    batch_size: BatchSizeOpt = 8,
    throughput_images: Annotated[int, typer.Option("--throughput-images", min=1,
                                                   help="Images streamed for the throughput figure.")] = 32,
    image_format: Annotated[str, typer.Option("--format", "-f", help="Overlay format written: jpg, png or webp.")]
    = "jpg",
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also write the numbers to this JSON file.")]
    = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Benchmark latency p50/p95 at batch 1 and throughput at --batch-size: decode/preprocess/inference/maps/write."""
    from cam_runtime.methods import get_method
    from cam_runtime.outputs import IMAGE_FORMATS, write_text_atomic

    get_method(method)
    if image_format not in IMAGE_FORMATS:
        from cam_runtime.errors import InvalidArgumentError

        raise InvalidArgumentError(f"--format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    paths = list(images) if images else example_images()
    engine = load_engine(model, device, threads, trust_graph=trust_model_graph)
    for path in paths:
        engine.load_image(path)  # a bad benchmark image is a usage error, not a timing
    data = run_bench(engine, paths, runs=runs, batch_size=batch_size, throughput_images=throughput_images,
                     method=method, image_format=image_format)
    data["threads"] = threads
    if as_json:
        typer.echo(json.dumps(data))
    elif not quiet:
        _print(data)
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(data, indent=2) + "\n")
        if not quiet:
            typer.echo(f"wrote {json_out}", err=True)


def _print(data: dict[str, Any]) -> None:
    from rich.table import Table

    tp = data["throughput"]
    table = Table(title=f"camr bench: {data['model']} on {data['provider']} ({data['method']})",
                  title_justify="left")
    table.add_column("stage")
    table.add_column("batch 1 p50 ms", justify="right")
    table.add_column("batch 1 p95 ms", justify="right")
    table.add_column(f"batch {tp['batch_size']} ms/image", justify="right")
    for stage in (*STAGES, "total"):
        row = data["batch1"][stage]
        mean = tp["mean_ms_per_image"].get(stage)
        if stage == "total":
            mean = 1e3 / tp["images_per_s"] if tp["images_per_s"] else None
        table.add_row(stage, f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}", "" if mean is None else f"{mean:.2f}")
    console = out_console()
    console.print(table)
    console.print(f"throughput: {tp['images_per_s']:.1f} images/s at batch {tp['batch_size']} "
                  f"({tp['images']} images in {tp['wall_s']:.2f} s); batch-1 runs: {data['batch1']['runs']}")
