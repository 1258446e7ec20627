"""Shared CLI pieces: exit codes, the error boundary, common option types and console helpers.

Command modules (``*_cmd.py``) import from here; keep it light (no numpy / OpenCV / onnxruntime at import).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from cam_runtime.errors import CamError

if TYPE_CHECKING:
    from rich.console import Console

    from cam_runtime.engine import CamEngine

EXIT_OK = 0
"""Every input was processed."""
EXIT_SOME_FAILED = 1
"""Some inputs failed; the rest were processed and the failures are in the report."""
EXIT_USAGE = 2
"""Usage error or model error: nothing (more) could be done."""
EXIT_INTERNAL = 3
"""An unexpected exception (a bug); rerun with --debug for the traceback."""
EXIT_INTERRUPTED = 130
"""Ctrl-C / SIGINT; outputs already written are complete (atomic writes)."""

DEFAULT_MODEL = Path("models/resnet50")
"""The model folder the runtime commands use when --model is not given."""


class State:
    """Process-wide CLI settings set by the global options."""

    debug: bool = False

    @staticmethod
    def debug_from_env() -> bool:
        """CAMR_DEBUG=1 turns on --debug."""
        return os.environ.get("CAMR_DEBUG", "") not in ("", "0")


class Device(str, Enum):
    """Where onnxruntime runs: a provider shortcut (see cam_runtime.providers.SHORTCUTS)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    openvino = "openvino"
    openvino_runtime = "openvino-runtime"
    tensorrt = "tensorrt"
    coreml = "coreml"
    directml = "directml"
    rocm = "rocm"


# --- option types shared by the runtime commands ------------------------------------------------------------

ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Model folder (manifest.json, model.onnx, weights).",
                                        show_default=True)]
DeviceOpt = Annotated[Device, typer.Option("--device", "-d", case_sensitive=False,
                                           help="Execution provider; auto prefers CUDA when available. "
                                                "The others need an onnxruntime build that has them.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", min=1,
                                                help="onnxruntime intra-op threads (default: the usable cores).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per inference batch.")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", min=1,
                                           help="Refuse images whose header declares more pixels "
                                                "(decompression-bomb guard).")]
HeatmapWeightOpt = Annotated[float, typer.Option("--heatmap-weight", "--alpha", min=0.0, max=1.0,
                                                  help="The heatmap's share of each overlay pixel (the photo gets "
                                                       "the rest).")]
ColormapOpt = Annotated[str, typer.Option("--colormap", help="OpenCV colormap (jet, turbo, inferno, ...).")]
BoxesOpt = Annotated[bool, typer.Option("--boxes/--no-boxes", help="Draw boxes on overlays.")]
AllBoxesOpt = Annotated[bool, typer.Option("--all-boxes", help="Every connected region, not just the largest.")]
BoxThresholdOpt = Annotated[float, typer.Option("--box-threshold", min=0.0, max=1.0,
                                                help="Box region: map ≥ this fraction of its max.")]
ClassesOpt = Annotated[list[str] | None, typer.Option("--class", "-c", show_default=False,
                                                      help="Explain this class (id or label) instead of the "
                                                           "top-k; repeatable.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors and warnings (one line "
                                                          "each on stderr).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (nothing else there).")]
TrustGraphOpt = Annotated[bool, typer.Option("--trust-model-graph", help="Load a model whose graph uses operators "
                                             "outside the CNN allowlist (loops, branches…): only for models you "
                                             "trust (docs/security.md).")]
ResizeOpt = Annotated[str | None, typer.Option("--resize", help="Override the manifest's resize mode: nearest, "
                                                                "bilinear, area or bicubic.")]


# --- consoles ---------------------------------------------------------------------------------------------------


@functools.cache
def err_console() -> Console:
    """A rich console on stderr (summaries, warnings, progress); stdout stays free for --json."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@functools.cache
def out_console() -> Console:
    """A rich console on stdout (tables of the info / bench commands)."""
    from rich.console import Console

    return Console(highlight=False)


def error_line(message: str) -> None:
    """Print ``error: message`` as one plain line on stderr (no markup, no wrapping, no raw control characters)."""
    print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)


def warn_line(message: str) -> None:
    """Print ``warning: message`` as one plain line on stderr."""
    print(f"warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _one_line(message: object) -> str:
    from cam_runtime.outputs import readable

    # Whitespace runs collapse to one space; what is left unprintable (ESC from a file name) is shown escaped.
    return readable(" ".join(str(message).split()))


# --- the error boundary -------------------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def needs_extra(what: str, extras: str, modules: tuple[str, ...]) -> Iterator[None]:
    """Turn a missing optional package (one of ``modules``) into one line with the install command, exit 2."""
    try:
        yield
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in modules:
            raise
        error_line(f"{what} needs {root}, which is not installed: pip install 'cam-runtime[{extras}]'")
        raise typer.Exit(EXIT_USAGE) from None


def handle_errors(func: F) -> F:
    """Turn project errors into one ``error:`` line and exit 2 (``--debug`` or CAMR_DEBUG=1: full traceback).

    Unexpected exceptions also give one line (exit 3); Ctrl-C exits 130. typer.Exit passes through.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except CamError as exc:
            if State.debug:
                traceback.print_exc()
            error_line(str(exc))
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            if State.debug:
                traceback.print_exc()
            error_line("interrupted; outputs written so far are complete (rerun with --skip-existing to resume)")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if State.debug:
                traceback.print_exc()
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            error_line(f"unexpected {type(exc).__name__}: {detail} (rerun with --debug for the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def load_engine(model: Path, device: Device | str, threads: int | None, *, max_pixels: int | None = None,
                resize: str | None = None, warmup: bool = True, run_timeout: float | None = None,
                trust_graph: bool = False) -> CamEngine:
    """Load a model folder into a CamEngine (imports the runtime lazily so ``--help`` stays fast)."""
    from cam_runtime.engine import CamEngine
    from cam_runtime.imaging import DEFAULT_MAX_PIXELS
    from cam_runtime.model.manifest import RESIZE_MODES

    if resize is not None and resize not in RESIZE_MODES:
        from cam_runtime.errors import InvalidArgumentError

        raise InvalidArgumentError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    from cam_runtime.session import DEFAULT_RUN_TIMEOUT_S

    return CamEngine.load(model, device=Device(device).value, threads=threads,
                          max_pixels=max_pixels or DEFAULT_MAX_PIXELS, resize=resize, warmup=warmup,
                          run_timeout=run_timeout or DEFAULT_RUN_TIMEOUT_S, trust_graph=trust_graph)


def stdout_is_terminal() -> bool:
    """Whether stdout is an interactive terminal (progress bars only then)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
