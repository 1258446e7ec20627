"""``camr explain``: explain files, folders, globs or stdin into overlays, heatmaps and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cam_runtime.defaults import BOX_THRESHOLD

from .common import (
    DEFAULT_MODEL,
    EXIT_OK,
    EXIT_SOME_FAILED,
    AllBoxesOpt,
    BatchSizeOpt,
    BoxesOpt,
    BoxThresholdOpt,
    ClassesOpt,
    ColormapOpt,
    Device,
    DeviceOpt,
    HeatmapWeightOpt,
    MaxPixelsOpt,
    ModelOpt,
    ResizeOpt,
    ThreadsOpt,
    TrustGraphOpt,
    handle_errors,
    load_engine,
    warn_line,
)
from .video_cmd import EndOpt, EveryOpt, SmoothOpt, StartOpt

DEFAULT_OUTPUT = Path("outputs")
SCORECAM_SLOW = ("scorecam runs 128 masked forward passes per image: expect it to take 10-20x longer than the "
                 "other methods (see docs/cli.md)")


@handle_errors
def explain(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, globs (quote them) or '-' for stdin.",
                                                show_default=False)],
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    method: Annotated[list[str] | None, typer.Option(
        "--method", metavar="METHOD", show_default=False,
        help="cam (default), gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam or scorecam. Several "
             "(repeat, or comma-separate) or 'all' compare them: OUTPUT/METHOD/ each, plus OUTPUT/compare.html.",
    )] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, show_default=False,
                                              help="Explain the k most probable classes (default: 1).")] = None,
    classes: ClassesOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = DEFAULT_OUTPUT,
    image_format: Annotated[str, typer.Option("--format", "-f", help="Overlay format: jpg, png or webp.")] = "jpg",
    alpha: HeatmapWeightOpt = 0.5,
    colormap: ColormapOpt = "jet",
    boxes: BoxesOpt = True,
    all_boxes: AllBoxesOpt = False,
    box_threshold: BoxThresholdOpt = BOX_THRESHOLD,
    save_heatmaps: Annotated[bool, typer.Option("--save-heatmaps", help="Also save each [0, 1] map as .npy.")]
    = False,
    batch_size: BatchSizeOpt = 8,
    threads: ThreadsOpt = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON line per image on stdout (nothing else).")]
    = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Resume: keep images already done by "
                                                "the same model folder, method and options.")] = False,
    redo_mismatched: Annotated[bool, typer.Option("--redo-mismatched", help="With --skip-existing: redo images "
                                                  "done by another model, method or options (else an error).")]
    = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    max_pixels: MaxPixelsOpt = 100_000_000,
    run_timeout: Annotated[float, typer.Option("--run-timeout", min=0.001, help="Seconds one batch may spend in "
                                               "the model before it is stopped and its images fail.")] = 600.0,
    resize: ResizeOpt = None,
    trust_model_graph: TrustGraphOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")] = False,
    every: EveryOpt = 1,
    start: StartOpt = None,
    end: EndOpt = None,
    smooth: SmoothOpt = None,
    ray_address: Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help="Run on Ray (the ray extra): "
                                                    "local, auto, HOST:PORT or ray://HOST:PORT; Parquet records "
                                                    "in OUTPUT/records. Inputs may be pyarrow URIs (s3://...).",
                                                    show_default=False)] = None,
) -> None:
    """Explain images: overlays named after the inputs, report.json / report.csv / report.html in the output folder.

    With several methods each gets its own subfolder and compare.html shows them side by side.

    Exit status: 0 all inputs done, 1 some inputs failed (listed in the report), 2 usage or model error.
    A video file or stream URL (one per run) is explained by ``camr video`` (see its --help).
    """
    from cam_runtime.errors import InvalidArgumentError
    from cam_runtime.methods import resolve_methods

    from . import video_cmd

    raw_methods = method or ["cam"]
    # One plain name takes exactly the single-method path of before (its errors included); lists are resolved here.
    several = len(raw_methods) > 1 or "," in raw_methods[0] or raw_methods[0].strip().lower() == "all"
    methods = resolve_methods(raw_methods) if several else raw_methods
    if len(methods) > 1 and (ray_address is not None or any(video_cmd.is_video_argument(i) for i in inputs)):
        raise InvalidArgumentError("several methods (--method a,b or all) compare images; a video or --ray run "
                                   "takes one --method")
    if any(video_cmd.is_video_argument(i) for i in inputs):
        if len(inputs) != 1 or json_lines or skip_existing or save_heatmaps:
            raise InvalidArgumentError("a video is explained alone (one input) and without --json, "
                                       "--skip-existing or --save-heatmaps (see camr video --help)")
        video_options = video_cmd.VideoOptions(
            method=methods[0], top_k=top_k or 1, classes=list(classes) if classes else None, every=every, start=start,
            end=end, smooth=smooth, batch_size=batch_size, alpha=alpha, colormap=colormap, boxes=boxes,
            all_boxes=all_boxes, box_threshold=box_threshold, force=force, quiet=quiet)
        video_options.validate()
        engine = load_engine(model, device, threads, max_pixels=max_pixels, resize=resize,
                         run_timeout=run_timeout, trust_graph=trust_model_graph)
        raise typer.Exit(video_cmd.run_video(engine, inputs[0], output, video_options, model_path=model))

    from .explain_run import ExplainOptions, run_explain
    from .inputs import collect_inputs

    if classes and top_k is not None:
        raise InvalidArgumentError("--top-k and --class exclude each other (--class explains exactly the classes "
                                   "named)")
    options = ExplainOptions(method=methods[0], top_k=top_k or 1, classes=list(classes) if classes else None,
                             image_format=image_format, alpha=alpha, colormap=colormap, boxes=boxes,
                             all_boxes=all_boxes, box_threshold=box_threshold, save_heatmaps=save_heatmaps,
                             batch_size=batch_size, json_lines=json_lines, force=force,
                             skip_existing=skip_existing, redo_mismatched=redo_mismatched, quiet=quiet)
    options.validate()
    if len(methods) == 1:
        methods = [options.method]
    if ray_address is not None:
        from .ray_cmd import run_ray_explain

        raise typer.Exit(run_ray_explain(ray_address, inputs, output, model, options, device=device.value,
                                         threads=threads, max_pixels=max_pixels, resize=resize, recursive=recursive,
                                         trust_graph=trust_model_graph))
    items = collect_inputs(inputs, recursive=recursive, exclude=output, max_pixels=max_pixels)
    engine = load_engine(model, device, threads, max_pixels=max_pixels, resize=resize,
                         run_timeout=run_timeout, trust_graph=trust_model_graph)
    if "scorecam" in methods and not json_lines:
        warn_line(SCORECAM_SLOW)
    if len(methods) > 1:
        from .compare import run_compare

        raise typer.Exit(run_compare(engine, items, output, options, methods, model_path=model))
    report = run_explain(engine, items, output, options, model_path=model)
    raise typer.Exit(EXIT_SOME_FAILED if report.summary()["failed"] else EXIT_OK)
