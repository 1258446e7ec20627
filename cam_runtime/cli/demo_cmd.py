"""``camr demo``: export the default model if missing, then explain the bundled photos into ./outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DEFAULT_MODEL,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    Device,
    DeviceOpt,
    QuietOpt,
    ThreadsOpt,
    error_line,
    handle_errors,
)

MODELS = Path("models")


def demo_model_folder(weights: str) -> Path:
    """models/resnet50 for ImageNet weights, models/resnet50-random, or models/resnet50-<file stem>."""
    if weights == "imagenet":
        return MODELS / "resnet50"
    if weights == "random":
        return MODELS / "resnet50-random"
    return MODELS / f"resnet50-{Path(weights).stem}"


def _ensure_model(folder: Path, weights: str) -> None:
    from cam_runtime.errors import CamError

    from .export_cmd import export_with_hint

    if (folder / "manifest.json").is_file():
        return
    typer.echo(f"exporting ResNet50 ({weights} weights) to {folder}; this takes about a minute…", err=True)
    try:
        export_with_hint(folder, arch="resnet50", weights=weights, force=folder.exists())
    except CamError as exc:
        if type(exc).__name__ != "WeightsUnavailableError":
            raise
        # Never fall back to random weights silently: the maps would look plausible and mean nothing.
        error_line(f"could not download the ImageNet weights ({_reason(exc)}); rerun with `camr demo --weights "
                   "random` (random weights: the maps mean nothing) or `camr demo --weights PATH` (a local "
                   "resnet50 .h5 / .weights.h5 file)")
        raise typer.Exit(EXIT_USAGE) from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    start, end = text.find("("), text.find(")")
    return text[start + 1:end] if 0 <= start < end else "no network?"


@handle_errors
def demo(
    weights: Annotated[str, typer.Option("--weights", help="'imagenet' (download once), 'random' (no download, "
                                                           "meaningless maps) or a ResNet50 weights file.")]
    = "imagenet",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where overlays and reports go.")] = Path("outputs"),
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    method: Annotated[str, typer.Option("--method", help="CAM method.")] = "cam",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes explained per photo.")] = 1,
    quiet: QuietOpt = False,
) -> None:
    """The main job in one command: export ResNet50 if missing, explain the example photos, print where to look.

    Re-running replaces the demo's own outputs in the output folder.
    """
    from .bench_cmd import example_images
    from .common import load_engine
    from .explain_run import ExplainOptions, run_explain
    from .inputs import collect_inputs

    folder = demo_model_folder(weights)
    _ensure_model(folder, weights)
    options = ExplainOptions(method=method, top_k=top_k, force=True, quiet=quiet)
    options.validate()
    items = collect_inputs([str(p) for p in example_images()])
    engine = load_engine(folder, device, threads)
    report = run_explain(engine, items, output, options, model_path=folder)
    overlays = [t["overlay"] for r in report.records for t in r["targets"]]
    if quiet:
        raise typer.Exit(EXIT_SOME_FAILED if report.summary()["failed"] else EXIT_OK)
    typer.echo(f"model:    {folder}{'  (random weights: maps are meaningless)' if weights == 'random' else ''}")
    typer.echo(f"overlays: {len(overlays)} in {output}/ (e.g. {output / overlays[0]})" if overlays
               else f"overlays: none in {output}/")
    typer.echo(f"report:   {output / 'report.html'}  (also report.json, report.csv)")
    model_option = "" if folder == DEFAULT_MODEL else f" -m {folder}"
    typer.echo(f"next:     camr explain YOUR_IMAGE.jpg{model_option}")
    raise typer.Exit(EXIT_SOME_FAILED if report.summary()["failed"] else EXIT_OK)
