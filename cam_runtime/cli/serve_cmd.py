"""``camr serve``: the HTTP explanation service (needs the ``serve`` extra; imported only when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    DEFAULT_MODEL,
    Device,
    DeviceOpt,
    ThreadsOpt,
    TrustGraphOpt,
    handle_errors,
    load_engine,
    needs_extra,
)

if TYPE_CHECKING:
    from cam_runtime.engine import CamEngine

SERVE_MODULES = ("fastapi", "uvicorn", "starlette", "multipart", "python_multipart", "prometheus_client")


@handle_errors
def serve(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="Model folder to serve; repeatable. Served "
                                              "under its manifest name.")] = [DEFAULT_MODEL],  # noqa: B006
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback unless told otherwise).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port (0: any free port).")] = 8080,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    trust_model_graph: TrustGraphOpt = False,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most images in one session run.")] = 16,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0.0, help="Wait this long for requests "
                                               "still being decoded before running a partial batch.")] = 5.0,
    queue_size: Annotated[int, typer.Option("--queue-size", min=1, help="Requests admitted at once per model; "
                                            "more get 503 with Retry-After.")] = 64,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Larger bodies get 413.")]
    = 20 << 20,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Images with more pixels get 422 "
                                            "(decompression-bomb guard).")] = 40_000_000,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Per-request limit in seconds (504).")]
    = 30.0,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="File holding a bearer token that "
                                                    "every /v1 route and /metrics require.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow this origin by CORS; "
                                                          "repeatable (default: CORS off).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings and errors only (--log-level "
                                                              "warning).")] = False,
) -> None:
    """Serve explanations over HTTP: KServe V1 routes, /v1/models/NAME/explain, /metrics and a web page at /.

    SIGTERM or Ctrl-C stop taking requests, finish those in flight, then exit 0.
    """
    with needs_extra("camr serve", "serve", SERVE_MODULES):
        import uvicorn

        from cam_runtime.serve.app import create_app
    from cam_runtime.serve.config import ServeConfig

    config = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                         max_body_bytes=max_body_bytes, timeout_s=timeout, token=_read_token(token_file),
                         cors_origins=tuple(cors_origin or ()))
    engines = _load_engines(model, device, threads, max_pixels, trust_model_graph)
    app = create_app(engines, config)
    level = "warning" if quiet else log_level.lower()
    uv_config = uvicorn.Config(app, host=host, port=port, log_level=level, access_log=False,
                               timeout_graceful_shutdown=int(timeout) + 5, server_header=False)
    _run_server(uv_config, app)


def _read_token(path: Path | None) -> str | None:
    from cam_runtime.errors import InvalidArgumentError

    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read --token-file {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if not token:
        raise InvalidArgumentError(f"--token-file {path} is empty")
    return token


def _load_engines(folders: list[Path], device: Device, threads: int | None,
                  max_pixels: int, trust_graph: bool = False) -> dict[str, CamEngine]:
    from cam_runtime.errors import InvalidArgumentError

    engines: dict[str, CamEngine] = {}
    for folder in folders:
        engine = load_engine(folder, device, threads, max_pixels=max_pixels, trust_graph=trust_graph)
        name = engine.manifest.name
        if name in engines or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            name = folder.resolve().name
        if name in engines:
            raise InvalidArgumentError(f"two model folders are both named {name!r}; rename one folder")
        engines[name] = engine
    return engines


def _run_server(uv_config: Any, app: Any) -> None:
    """Run uvicorn until SIGTERM/SIGINT, drain, and return normally (exit status 0)."""
    import signal

    import uvicorn

    class DrainingServer(uvicorn.Server):
        """Marks the app as draining on SIGTERM/SIGINT, so /readyz fails while in-flight requests finish."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)

    # uvicorn re-raises the caught signal after its graceful shutdown; ignoring handlers make the drained
    # exit a normal one (status 0) instead of death by SIGTERM or a KeyboardInterrupt.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        DrainingServer(uv_config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
