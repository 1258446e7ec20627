"""``camr evaluate``: localisation and faithfulness metrics of CAM methods on images with ground-truth boxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cam_runtime.defaults import BOX_THRESHOLD

from .common import (
    DEFAULT_MODEL,
    EXIT_OK,
    EXIT_SOME_FAILED,
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
    warn_line,
)


def run_evaluation(model: Path, images: Path, boxes: Path, methods: list[str], *, device: Device | str = "auto",
                   threads: int | None = None, batch_size: int = 16, steps: int = 32, baseline: str = "blur",
                   box_threshold: float = BOX_THRESHOLD, faithfulness: bool = True, adcc: bool = True,
                   road: bool = False, seed: int = 0, trust_graph: bool = False) -> Any:
    """Check the methods and read the boxes (before the model loads), then run the evaluation job."""
    from cam_runtime.ground_truth_boxes import read_boxes
    from cam_runtime.jobs.evaluate_folder import evaluate_folder, method_names

    names = method_names(methods)
    annotations = read_boxes(boxes)
    engine = load_engine(model, device, threads, trust_graph=trust_graph)
    return evaluate_folder(engine, images, annotations, names, batch_size=batch_size, steps=steps,
                           baseline=baseline, box_threshold=box_threshold, faithfulness=faithfulness, adcc=adcc,
                           road=road, seed=seed)


def _table(report: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"{report.model}: {report.settings['evaluated']} images", title_justify="left")
    columns = [("method", "method"), ("accuracy", "acc"), ("pointing_game", "point"), ("mean_iou", "IoU"),
               ("corloc", "CorLoc"), ("deletion_auc", "del↓"), ("insertion_auc", "ins↑"),
               ("average_drop", "drop%↓"), ("increase_in_confidence", "incr%↑"), ("adcc", "ADCC↑"),
               ("road_combined", "ROAD↑")]
    for _, title in columns:
        table.add_column(title, justify="left" if title == "method" else "right", no_wrap=True)
    for method in report.methods:
        summary = method.summary()
        table.add_row(*[str(summary[key]) if isinstance(summary[key], str) else
                        ("-" if summary[key] is None else f"{summary[key]:.3f}") for key, _ in columns])
    return table


@handle_errors
def evaluate(
    images: Annotated[Path, typer.Option("--images", "-i", help="Folder holding the annotated images.")],
    boxes: Annotated[Path, typer.Option("--boxes", help="Boxes: a CSV (filename,x0,y0,x1,y1[,label]), a Pascal "
                                                        "VOC .xml file or a folder of .xml files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for evaluation.json and curves.png.")],
    model: ModelOpt = DEFAULT_MODEL,
    method: Annotated[list[str] | None, typer.Option("--method", help="CAM method; repeat for several, or "
                                                                       "'all' (default: cam).")] = None,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    trust_model_graph: TrustGraphOpt = False,
    batch_size: BatchSizeOpt = 16,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1024,
                                       help="Deletion/insertion increments (model passes per curve - 1).")] = 32,
    baseline: Annotated[str, typer.Option("--baseline", help="What removed pixels become: blur or mean.")] = "blur",
    box_threshold: Annotated[float, typer.Option("--box-threshold", min=0.0, max=1.0,
                                                 help="Map box: largest region ≥ this fraction of the peak.")]
    = BOX_THRESHOLD,
    no_faithfulness: Annotated[bool, typer.Option("--no-faithfulness",
                                                  help="Only localisation metrics (skip deletion/insertion "
                                                       "and average drop, ADCC, ROAD).")] = False,
    no_adcc: Annotated[bool, typer.Option("--no-adcc", help="Skip ADCC (one more pass per image on the masked "
                                                            "image).")] = False,
    road: Annotated[bool, typer.Option("--road", help="Add ROAD (noisy linear imputation at 10..90% of the map, "
                                                      "18 passes per image; needs SciPy).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of ROAD's imputation noise.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing evaluation.json.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Score CAM methods against ground-truth boxes: pointing game, box IoU / CorLoc, deletion and insertion
    AUC, average drop and increase in confidence, ADCC and (with --road) ROAD. Writes evaluation.json and
    curves.png.

    Exit status: 0 all annotated images evaluated, 1 some could not be read (listed in the JSON), 2 usage error.
    """
    from cam_runtime.errors import OutputExistsError
    from cam_runtime.jobs.evaluate_folder import REPORT_FILE, write_evaluation

    if (output / REPORT_FILE).exists() and not force:
        raise OutputExistsError(output / REPORT_FILE)
    report = run_evaluation(model, images, boxes, method or ["cam"], device=device, threads=threads,
                            batch_size=batch_size, steps=steps, baseline=baseline, box_threshold=box_threshold,
                            faithfulness=not no_faithfulness, adcc=not no_adcc, road=road, seed=seed,
                            trust_graph=trust_model_graph)
    json_path, plot_path = write_evaluation(report, output)
    if as_json:
        typer.echo(json.dumps({"model": report.model, "settings": report.settings, "failures": report.failures,
                               "methods": [m.summary() for m in report.methods]}, allow_nan=False))
    elif not quiet:
        out_console().print(_table(report))
    for failure in report.failures:
        warn_line(f"skipped {failure['source']}: {failure['error']}")
    if not quiet and not as_json:
        out_console().print(f"wrote {json_path} and {plot_path}")
    raise typer.Exit(EXIT_SOME_FAILED if report.failures else EXIT_OK)
