"""``camr export``: a Keras classifier to a model folder (the only command that imports TensorFlow)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonOpt, QuietOpt, handle_errors, needs_extra, warn_line

_EXPORT_MODULES = ("tensorflow", "keras", "tf2onnx", "onnx", "h5py", "export")


def export_with_hint(output: Path, **kwargs: Any) -> Any:
    """Call ``export.exporter.export_model``; a missing export extra becomes one line with the install command."""
    with needs_extra("exporting", "export", _EXPORT_MODULES), warnings.catch_warnings(record=True) as caught:
        from export.exporter import export_model

        warnings.simplefilter("always")
        manifest = export_model(output, **kwargs)
    for item in caught:
        if type(item.message).__name__ == "DegenerateModelWarning":
            warn_line(str(item.message))
    return manifest


@handle_errors
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to create.")] = Path("models/resnet50"),
    arch: Annotated[str, typer.Option("--arch", help="keras.applications architecture (resnet50, mobilenetv2, "
                                                     "densenet121, efficientnetb0, ...).")] = "resnet50",
    weights: Annotated[str, typer.Option("--weights", help="'imagenet' (download), 'random' (seeded init, for "
                                                           "tests) or a weights file path.")] = "imagenet",
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Your own .keras/.h5 classifier instead of "
                                                                      "--arch.")]
    = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="labels.txt, one class name per line.")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", min=32, help="Square input size (random or "
                                                                                "file weights only).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model folder.")] = False,
    head: Annotated[str, typer.Option("--head", help="auto (GAP → Dense heads linear, other CNN heads as head "
                                                     "and gradient graphs), linear or graph.")] = "auto",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Export a Keras CNN to an ONNX model folder and verify parity (and head gradients) with Keras."""
    if head not in ("auto", "linear", "graph"):
        from cam_runtime.errors import InvalidArgumentError

        raise InvalidArgumentError(f"--head must be auto, linear or graph, got {head!r}")
    manifest = export_with_hint(output, arch=arch, weights=weights, model_path=model, labels_path=labels,
                                input_size=input_size, force=force, head_kind=head)
    parity = manifest.provenance.get("parity", {})
    gradients = parity.get("head_graphs", {}).get("gradient_max_rel")
    if json_out:
        typer.echo(json.dumps({"folder": str(output), "name": manifest.name, "num_classes": manifest.num_classes,
                               "input": {"height": manifest.input.height, "width": manifest.input.width,
                                         "layout": manifest.input.layout}, "parity": parity}, allow_nan=False))
        return
    if quiet:
        return
    typer.echo(f"exported {manifest.name} to {output} ({manifest.num_classes} classes, input "
               f"{manifest.input.height}x{manifest.input.width}, "
               f"{'graph' if manifest.head is not None else 'linear'} head); parity: probabilities max abs "
               f"{parity.get('probabilities_max_abs', float('nan')):.2e}"
               + (f", gradients max rel {max(gradients.values()):.2e} (logit and probability)" if gradients else ""))
