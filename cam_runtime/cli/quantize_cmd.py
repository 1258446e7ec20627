"""``camr quantize``: an INT8 (static QDQ), FP16 or bf16 copy of a model folder, with a fidelity report."""

from __future__ import annotations

import importlib
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    DEFAULT_MODEL,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    ThreadsOpt,
    TrustGraphOpt,
    err_console,
    handle_errors,
    needs_extra,
    out_console,
    warn_line,
)


class Precision(str, Enum):
    """Which derived model to make."""

    int8 = "int8"
    fp16 = "fp16"
    bf16 = "bf16"


class Activation(str, Enum):
    """INT8 activation type: measured choice, or forced U8S8 / S8S8."""

    auto = "auto"
    u8 = "u8"
    s8 = "s8"


class CalibrationMethod(str, Enum):
    """How activation ranges are estimated from the calibration images."""

    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"


@handle_errors
def quantize(
    output_argument: Annotated[Path | None, typer.Argument(metavar="[OUTPUT]", show_default=False,
                                                           help="New model folder to write (or -o; refused if it "
                                                                "exists, unless --force).")] = None,
    calibration: Annotated[Path | None, typer.Option("--calibration", show_default=False,
                                                     help="Folder of calibration images "
                                                          "(representative inputs; 32-128 is typical).")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    precision: Annotated[Precision, typer.Option("--precision", case_sensitive=False,
                                                 help="int8 (CPU speed), fp16 (for GPUs) or bf16 (CPUs with "
                                                      "AVX512-BF16/AMX, run by OpenVINO: the "
                                                      "openvino-runtime extra).")] = Precision.int8,
    held_out: Annotated[Path | None, typer.Option("--held-out", help="Folder of other images, not used for "
                                                  "calibration, for the fidelity report.")] = None,
    activation: Annotated[Activation, typer.Option("--activation", case_sensitive=False,
                                                   help="INT8 activations: auto builds U8S8 and S8S8 and keeps "
                                                        "the faster on this CPU.")] = Activation.auto,
    method: Annotated[CalibrationMethod, typer.Option("--calibration-method", case_sensitive=False,
                                                      help="INT8 range estimation.")] = CalibrationMethod.minmax,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="Use at most this many images "
                                            "from each folder.")] = 64,
    accept_low_fidelity: Annotated[bool, typer.Option("--accept-low-fidelity", help="Write the folder even when "
                                                      "the fidelity report is below the thresholds.")] = False,
    min_top1: Annotated[float | None, typer.Option("--min-top1", min=0.0, max=1.0, show_default=False,
                                                   help="Minimum top-1 agreement with float32 "
                                                        "(default 0.9; bf16 0.99).")] = None,
    min_correlation: Annotated[float | None, typer.Option("--min-correlation", min=-1.0, max=1.0,
                                                          show_default=False,
                                                          help="Minimum mean Pearson correlation of the maps "
                                                               "(default 0.9; bf16 0.999).")] = None,
    threads: ThreadsOpt = None,
    trust_model_graph: TrustGraphOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    as_json: JsonOpt = False,
    output_option: Annotated[Path | None, typer.Option("--output", "-o", show_default=False,
                                                       help="New model folder (same as the argument).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Write an INT8, FP16 or bf16 copy of a model folder and report how closely it follows float32."""
    from cam_runtime.errors import InvalidArgumentError

    if output_argument is not None and output_option is not None and output_argument != output_option:
        raise InvalidArgumentError(f"two output folders given ({output_argument} and -o {output_option}); give one")
    output = output_argument or output_option
    if output is None:
        raise InvalidArgumentError("give the new model folder: camr quantize OUTPUT (or -o OUTPUT)")
    if calibration is None:
        raise InvalidArgumentError("give --calibration FOLDER (representative images; 32-128 is typical)")
    log = err_console()

    def show(report: dict[str, Any]) -> None:
        if as_json or quiet:
            return
        out_console().print(fidelity_table(report, f"{precision.value.upper()} vs float32 ({model})"))

    _warn_about_sets(calibration, held_out, max_images, precision)
    common: dict[str, Any] = dict(calibration=calibration, held_out=held_out, max_images=max_images,
                                  threads=threads, force=force, accept_low_fidelity=accept_low_fidelity,
                                  on_report=show, trust_graph=trust_model_graph,
                                  log=lambda message: None if quiet else log.print(f"[dim]{message}[/dim]"))
    # Thresholds not given: each precision's own defaults (bf16 is held to a tighter standard).
    common.update({k: v for k, v in (("min_top1", min_top1), ("min_correlation", min_correlation)) if v is not None})
    if precision is Precision.int8:
        from cam_runtime.derive import quantize_folder

        result = quantize_folder(model, output, activation=activation.value, calibrate_method=method.value,
                                 **common)
    elif precision is Precision.fp16:
        from cam_runtime.derive import fp16_folder

        result = fp16_folder(model, output, device="auto", **common)
    else:
        with needs_extra("--precision bf16", "openvino-runtime", ("openvino",)):
            importlib.import_module("openvino")  # before any work: the missing package is one line, exit 2
        from cam_runtime.derive.bf16 import bf16_folder

        result = bf16_folder(model, output, **common)
    if as_json:
        typer.echo(json.dumps({"output": str(output), "precision": precision.value, "details": result.details,
                               "fidelity": {k: v.to_dict() for k, v in result.fidelity.items()}}, indent=2))
        return
    latency = result.details.get("batch1_latency_ms", {})
    timing = ", ".join(f"{k} {v:.1f} ms" for k, v in latency.items())
    chosen = f" ({result.details['chosen']})" if "chosen" in result.details else ""
    if not quiet:
        log.print(f"wrote {output}{chosen}; batch-1 latency: {timing}")


FEW_CALIBRATION_IMAGES = 16
"""Below this many calibration images quantize warns: INT8 ranges from a handful of images rarely generalise."""


def _warn_about_sets(calibration: Path, held_out: Path | None, max_images: int, precision: Precision) -> None:
    from cam_runtime.derive.fidelity import image_files

    count = len(image_files(calibration, max_images, "--calibration"))
    if precision is Precision.int8 and count < FEW_CALIBRATION_IMAGES:
        warn_line(f"only {count} calibration image(s); INT8 activation ranges from so few rarely represent other "
                  f"inputs (32-128 representative images are typical)")
    if held_out is None:
        warn_line("no --held-out folder: fidelity is measured on the calibration images only, which flatters "
                  "the quantized model; pass --held-out OTHER_IMAGES for an unbiased check")


def fidelity_table(report: dict[str, Any], title: str) -> Any:
    """A rich table of a fidelity report (one column per image set)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in report:
        table.add_column(name, justify="right")
    rows = [("images", "{:d}", "images"), ("top-1 agreement", "{:.1%}", "top1_agreement"),
            ("map correlation (mean)", "{:.4f}", "map_correlation_mean"),
            ("map correlation (min)", "{:.4f}", "map_correlation_min"),
            ("box IoU (mean)", "{:.3f}", "box_iou_mean"), ("box IoU (min)", "{:.3f}", "box_iou_min"),
            ("max |Δp|", "{:.2e}", "max_abs_probability_diff")]
    for label, fmt, key in rows:
        table.add_row(label, *(fmt.format(getattr(r, key)) for r in report.values()))
    return table
