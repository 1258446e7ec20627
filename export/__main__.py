"""``python -m export``: export a Keras classifier to a cam-model folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cam_runtime.errors import CamError

app = typer.Typer(add_completion=False, help="Export a Keras classifier to a cam-model folder.")


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to create.")] = Path("models/resnet50"),
    arch: Annotated[str, typer.Option(help="keras.applications architecture (resnet50, mobilenetv2, ...).")]
    = "resnet50",
    weights: Annotated[str, typer.Option(help="'imagenet' (download), 'random' (seeded init) or a weights file.")]
    = "imagenet",
    model: Annotated[Path | None, typer.Option(help="Your own .keras/.h5 classifier instead of --arch.")] = None,
    labels: Annotated[Path | None, typer.Option(help="labels.txt with one class name per line.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Square input size (random/file weights only).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    head: Annotated[str, typer.Option(help="auto, linear or graph (head and gradient graphs).")] = "auto",
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Export and verify parity; prints the folder and the measured parity errors."""
    try:
        from .exporter import export_model

        manifest = export_model(output, arch=arch, weights=weights, model_path=model, labels_path=labels,
                                input_size=input_size, force=force, head_kind=head)
    except (CamError, ValueError) as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ImportError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}; install the exporter with: pip install 'cam-runtime[export]'", err=True)
        raise typer.Exit(2) from None
    parity = manifest.provenance.get("parity", {})
    typer.echo(f"exported {manifest.name} to {output} ({manifest.num_classes} classes, features "
               f"{manifest.provenance.get('feature_shape')}); parity: probabilities max abs "
               f"{parity.get('probabilities_max_abs', float('nan')):.2e}, features max rel "
               f"{parity.get('features_max_rel', float('nan')):.2e}")


def main() -> None:
    """Entry point."""
    app(prog_name="python -m export")


if __name__ == "__main__":
    sys.exit(main())
