"""``camr info MODEL``: manifest summary, per-file checksum status and the available execution providers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cam_runtime.errors import InvalidArgumentError

from .common import DEFAULT_MODEL, EXIT_OK, EXIT_USAGE, JsonOpt, QuietOpt, handle_errors, out_console


def model_info(model: Path) -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-ready dict."""
    from cam_runtime.errors import ModelFolderNotFoundError, OnnxRuntimeMissingError
    from cam_runtime.model import check_files, read_manifest

    if not model.is_dir():
        raise ModelFolderNotFoundError(model)
    manifest = read_manifest(model)
    files = {role: check.to_dict() for role, check in check_files(model, manifest).items()}
    try:
        from cam_runtime.providers import available_providers

        providers: list[str] | None = available_providers()
    except OnnxRuntimeMissingError:
        providers = None
    data = manifest.to_dict()
    return {
        "folder": str(model), "name": manifest.name, "format": f"{manifest.format} v{manifest.format_version}",
        "num_classes": manifest.num_classes,
        **{key: data[key] for key in ("input", "preprocess", "outputs")},
        **({"head": data["head"]} if "head" in data else {}),
        "provenance": dict(manifest.provenance),
        "files": files,
        "checksums_ok": all(f["status"] == "ok" for f in files.values()),
        "providers": providers,
    }


@handle_errors
def info(
    model_argument: Annotated[Path | None, typer.Argument(metavar="[MODEL]", help="Model folder (or -m).",
                                                          show_default=False)] = None,
    model_option: Annotated[Path | None, typer.Option("--model", "-m", help="Model folder (same as the argument; "
                                                                           "default: models/resnet50).",
                                                      show_default=False)] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show a model folder's manifest, the checksum status of each file and the available providers.

    Exit status 2 when a file is missing or its sha256 does not match the manifest.
    """
    if model_argument is not None and model_option is not None and model_argument != model_option:
        raise InvalidArgumentError(f"two model folders given ({model_argument} and -m {model_option}); give one")
    model = model_argument or model_option or DEFAULT_MODEL
    data = model_info(model)
    if json_out:
        typer.echo(json.dumps(data, indent=2))
    elif not quiet:  # -q: the exit status alone says whether every checksum matches
        _print(data)
    raise typer.Exit(EXIT_OK if data["checksums_ok"] else EXIT_USAGE)


def _print(data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = out_console()
    summary = Table(show_header=False, box=None, title=f"model folder {escape(data['folder'])}", title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    spec, pre = data["input"], data["preprocess"]
    summary.add_row("name", escape(data["name"]))
    summary.add_row("format", data["format"])
    summary.add_row("classes", str(data["num_classes"]))
    summary.add_row("input", f"{spec['name']} {spec['layout']} {spec['height']}x{spec['width']}")
    summary.add_row("preprocess", f"{pre['color_order']} mean={pre['mean']} std={pre['std']} resize={pre['resize']}")
    summary.add_row("outputs", f"{data['outputs']['probabilities']}, {data['outputs']['features']} "
                               f"({data['outputs']['features_layout']})")
    for key, value in data["provenance"].items():
        text = _fidelity_text(value) if key == "fidelity" else (
            json.dumps(value) if isinstance(value, dict | list) else str(value))
        summary.add_row(key, escape(text))
    providers = data["providers"]
    summary.add_row("providers", ", ".join(providers) if providers is not None
                    else "onnxruntime not installed (pip install 'cam-runtime[cpu]')")
    console.print(summary)
    table = Table(title="files", title_justify="left")
    for column in ("role", "file", "bytes", "sha256"):
        table.add_column(column)
    for role, entry in data["files"].items():
        status = entry["status"]
        style = "green" if status == "ok" else "bold red"
        table.add_row(role, escape(entry["file"]), "" if entry["bytes"] is None else f"{entry['bytes']:,}",
                      f"[{style}]{status}[/{style}]")
    console.print(table)


def _fidelity_text(fidelity: Any) -> str:
    """A derived folder's fidelity in one line per image set: top-1 agreement and map correlation."""
    try:
        parts = [f"{name} ({r['images']} images): top-1 agreement {r['top1_agreement']:.1%}, map correlation "
                 f"mean {r['map_correlation_mean']:.3f} / min {r['map_correlation_min']:.3f}"
                 for name, r in fidelity["sets"].items()]
    except (KeyError, TypeError, ValueError):
        return json.dumps(fidelity)
    if "held-out" not in fidelity["sets"]:
        parts.append("no held-out set (measured on the calibration images only)")
    if fidelity.get("accepted_below_thresholds"):
        parts.append("ACCEPTED BELOW THRESHOLDS")
    return "; ".join(parts)
