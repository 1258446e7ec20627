"""The ``camr`` command line: a typer app whose commands live in ``*_cmd.py`` modules."""

from __future__ import annotations

from typing import Annotated

import typer

from cam_runtime import __version__

from . import (
    bench_cmd,
    demo_cmd,
    evaluate_cmd,
    explain_cmd,
    export_cmd,
    import_cmd,
    info_cmd,
    quantize_cmd,
    serve_cmd,
    video_cmd,
)
from .common import State

app = typer.Typer(
    name="camr",
    help="Class activation maps for Keras CNNs: export once (TensorFlow), explain anywhere (onnxruntime).",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"camr (cam-runtime) {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Global options."""
    State.debug = debug or State.debug_from_env()


# --- command registration: one line per command (other modules add their own line here) -----------------------
app.command("explain")(explain_cmd.explain)
app.command("export")(export_cmd.export)
app.command("info")(info_cmd.info)
app.command("bench")(bench_cmd.bench)
app.command("demo")(demo_cmd.demo)
app.command("quantize")(quantize_cmd.quantize)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("serve")(serve_cmd.serve)
app.command("video")(video_cmd.video)
app.command("stream")(video_cmd.stream)
app.command("import")(import_cmd.import_model)
# --- end of command registration ----------------------------------------------------------------------------------


def main() -> None:
    """Entry point of the ``camr`` console script and ``python -m cam_runtime``."""
    import sys

    try:
        code = app(prog_name="camr", standalone_mode=False)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # typer vendors click (typer._click): recognise its usage errors by shape instead of a private import.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
        else:  # one line, as the README promises, instead of typer's multi-line box
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"error: {' '.join(exc.format_message().split())}{where}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
