"""``camr import``: any ONNX image classifier (PyTorch, timm, ONNX zoo, tf2onnx) → verified model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cam_runtime.errors import InvalidArgumentError

from .common import JsonOpt, QuietOpt, handle_errors, needs_extra

_IMPORT_MODULES = ("onnx", "onnxruntime")
PRESET_NAMES = "torchvision, keras-caffe, keras-tf, keras-torch, tf-lite, none"


def _triple(text: str | None, option: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InvalidArgumentError(f"{option} needs three numbers like 123.675,116.28,103.53, got {text!r}")
    return (values[0], values[1], values[2])


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise InvalidArgumentError(f"--size must be H or HxW (e.g. 224 or 240x320), got {text!r}")
    return (numbers[0], numbers[-1])


def import_with_hint(model: Path, output: Path, **kwargs: Any) -> Path:
    """Call ``export.onnx_import.import_onnx``; a missing onnx/onnxruntime becomes one line with the install hint."""
    with needs_extra("importing", "onnx-import,cpu", _IMPORT_MODULES):
        from export.onnx_import import import_onnx

        return import_onnx(model, output, **kwargs)


@handle_errors
def import_model(
    model: Annotated[Path, typer.Argument(help="The ONNX classifier (one image input, one output: logits or "
                                               "probabilities).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to create.")],
    preset: Annotated[str, typer.Option("--preset", help=f"Preprocessing the model expects: {PRESET_NAMES}.")]
    = "torchvision",
    mean: Annotated[str | None, typer.Option("--mean", help="Per-channel mean on 0-255 pixels in --color-order, "
                                                            "e.g. 123.675,116.28,103.53 (overrides the preset).")]
    = None,
    std: Annotated[str | None, typer.Option("--std", help="Per-channel std on 0-255 pixels (overrides the "
                                                          "preset).")] = None,
    color_order: Annotated[str | None, typer.Option("--color-order", help="RGB or BGR (overrides the preset).")]
    = None,
    layout: Annotated[str | None, typer.Option("--layout", help="Input layout NCHW or NHWC (default: from the "
                                                                "input's shape).")] = None,
    size: Annotated[str | None, typer.Option("--size", help="Input size H or HxW; required when the model's "
                                                            "spatial size is dynamic.")] = None,
    resize: Annotated[str | None, typer.Option("--resize", help="nearest, bilinear, area or bicubic (overrides "
                                                                "the preset).")] = None,
    features: Annotated[str | None, typer.Option("--features", help="Name of the feature tensor the pooling "
                                                                    "averages (default: found automatically).")]
    = None,
    head: Annotated[str, typer.Option("--head", help="auto (GAP → linear heads with closed forms, other heads as "
                                                     "head/gradient graphs), linear or graph.")] = "auto",
    labels: Annotated[Path | None, typer.Option("--labels", help="labels.txt, one class name per line (default: "
                                                                 "ImageNet's when there are 1000 classes).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Display name (default: the file's stem).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model folder.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Import an ONNX CNN classifier (GAP → linear head, or a non-linear head as head/gradient graphs), verified."""
    folder = import_with_hint(model, output, features=features, preset=preset, mean=_triple(mean, "--mean"),
                              std=_triple(std, "--std"), color_order=color_order, layout=layout, size=_size(size),
                              resize=resize, labels=labels, name=name, force=force, head_kind=head)
    from cam_runtime.model import read_manifest

    manifest = read_manifest(folder)
    meta = manifest.provenance
    parity = meta.get("parity", {})
    h, w, c = meta.get("feature_shape", ["?", "?", "?"])
    if as_json:
        typer.echo(json.dumps({"folder": str(folder), "name": manifest.name, "num_classes": manifest.num_classes,
                               "input": {"layout": manifest.input.layout, "height": manifest.input.height,
                                         "width": manifest.input.width},
                               "features": {"name": manifest.outputs.features, "shape": [h, w, c],
                                            "layout": manifest.outputs.features_layout},
                               "parity": parity}, allow_nan=False, default=str))
        return
    if quiet:
        return
    typer.echo(f"imported {manifest.name} to {folder} ({manifest.num_classes} classes, input "
               f"{manifest.input.layout} {manifest.input.height}x{manifest.input.width}, features "
               f"{manifest.outputs.features!r} {h}x{w}x{c} {manifest.outputs.features_layout}); parity: "
               f"probabilities max abs {parity.get('probabilities_max_abs', float('nan')):.2e}, {_head_parity(parity)}")


def _head_parity(parity: dict[str, Any]) -> str:
    """The head's own check: reconstruction (linear head) or head graph and gradient checks (graph head)."""
    graphs = parity.get("head_graphs")
    if not isinstance(graphs, dict):
        return f"head reconstruction max abs {parity.get('head_reconstruction_max_abs', float('nan')):.2e}"
    fd = graphs.get("gradient_fd_max_rel", {})
    return (f"graph head: head.onnx probabilities max abs {graphs.get('head_probabilities_max_abs', float('nan')):.2e}"
            f", gradient.onnx vs finite differences max rel {max(fd.values(), default=float('nan')):.2e}")
