"""The FastAPI application: KServe V1 routes, the plain explain route, probes, metrics and the web page."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cam_runtime import __version__
from cam_runtime.engine import CamEngine
from cam_runtime.errors import (
    BadRequestError,
    CamError,
    ImageError,
    ImageTooLargeError,
    InvalidArgumentError,
    NotReadyError,
    OverloadedError,
    RequestTimeoutError,
    ServeError,
    UnauthorizedError,
    UnknownModelError,
    UnsupportedMediaTypeError,
)
from cam_runtime.methods import METHODS
from cam_runtime.results import ExplainResult

from . import codec
from .batcher import MicroBatcher
from .config import ServeConfig
from .limits import BodyLimitMiddleware, MetricsMiddleware, check_token, error_body
from .metrics import Metrics

T = TypeVar("T")
IMAGE_BODY = "an image body (image/*, application/octet-stream) or multipart/form-data with a 'file' field"


@dataclass
class ServedModel:
    """One model folder behind the service: its engine and its batcher."""

    name: str
    engine: CamEngine
    batcher: MicroBatcher


def create_app(engines: dict[str, CamEngine], config: ServeConfig | None = None) -> FastAPI:
    """Build the app for loaded engines (name → engine); batchers start and stop with the app's lifespan."""
    config = config or ServeConfig()
    metrics = Metrics()
    models: dict[str, ServedModel] = {}
    for name, engine in engines.items():
        batcher = MicroBatcher(engine, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                               queue_size=config.queue_size, observer=metrics.batch_observer(name))
        metrics.track_queue(name, functools.partial(_queued, batcher), functools.partial(_admitted, batcher))
        models[name] = ServedModel(name, engine, batcher)
    pool = ThreadPoolExecutor(max_workers=config.encode_threads, thread_name_prefix="camr-codec")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for model in models.values():
            model.batcher.start()
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            for model in models.values():  # uvicorn has finished in-flight requests by now: drain the rest
                await loop.run_in_executor(None, model.batcher.stop)
            pool.shutdown(wait=True)

    app = FastAPI(title="cam-runtime", version=__version__, lifespan=lifespan,
                  description="Class activation maps for ONNX classifiers over HTTP (KServe V1 routes).")
    app.state.config = config
    app.state.metrics = metrics
    app.state.models = models
    app.state.draining = False

    async def off_loop(func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(func, *args))

    def model_for(request: Request, name: str) -> ServedModel:
        check_token(request.headers.get("authorization"), config.token)
        if name not in models:
            raise UnknownModelError(name, models)
        return models[name]

    async def answer(model: ServedModel, work: Callable[[Any], Awaitable[T]]) -> T:
        """Admit (or 503 at once), then run ``work(ticket)`` under the per-request timeout."""
        if app.state.draining:
            raise NotReadyError("server is draining; no new requests")
        with model.batcher.admission() as ticket:
            try:
                return await asyncio.wait_for(work(ticket), config.timeout_s)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(config.timeout_s) from None

    # --- errors: always one line of JSON ----------------------------------------------------------------

    def error_response(status: int, exc: BaseException, headers: dict[str, str] | None = None) -> Response:
        metrics.failure(type(exc).__name__)
        return Response(error_body(str(exc)), status_code=status, media_type="application/json", headers=headers)

    @app.exception_handler(CamError)
    async def cam_error(_: Request, exc: CamError) -> Response:
        headers = {}
        if isinstance(exc, OverloadedError | NotReadyError):
            headers["Retry-After"] = str(config.retry_after_s)
        if isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, ServeError):
            status = exc.status
        elif isinstance(exc, ImageTooLargeError | InvalidArgumentError):
            status = 422  # understood, but refused: over the pixel limit, unknown class or method
        elif isinstance(exc, ImageError):
            status = 400  # not a decodable image
        else:
            status = 500
        return error_response(status, exc, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, Exception(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, BadRequestError(f"{where}: {first.get('msg', 'invalid request')}"))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        return error_response(500, Exception(f"internal error ({type(exc).__name__})"))

    # --- probes, metrics, page ------------------------------------------------------------------------------

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: every model's batch worker runs and the server is not draining")
    async def readyz() -> Response:
        ready = not app.state.draining and all(m.batcher.ready for m in models.values())
        body = {"ready": ready, "models": {n: m.batcher.ready for n, m in models.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics_route(request: Request) -> Response:
        check_token(request.headers.get("authorization"), config.token)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, summary="Web page: upload an image, see the top-k and overlays")
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_html())

    # --- KServe V1 ----------------------------------------------------------------------------------------

    @app.get("/v1/models", summary="List the served models (KServe V1)")
    async def list_models(request: Request) -> dict[str, list[str]]:
        check_token(request.headers.get("authorization"), config.token)
        return {"models": list(models)}

    @app.get("/v1/models/{name}", summary="Model readiness and metadata (KServe V1)")
    async def model_info(name: str, request: Request) -> Response:
        model = model_for(request, name)
        spec = model.engine.manifest.input
        body = {"name": name, "ready": model.batcher.ready, "labels": list(model.engine.labels),
                "input": {"height": spec.height, "width": spec.width, "layout": spec.layout},
                "methods": list(METHODS), "providers": model.engine.providers}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    async def kserve(name: str, request: Request, verb: str) -> Response:
        model = model_for(request, name)
        _require_type(request, ("application/json",), "application/json")

        async def work(ticket: Any) -> Response:
            body = await request.body()
            images, parameters = await off_loop(codec.parse_instances, model.engine, body, config.max_instances)
            if verb == "predict":
                parameters = {**parameters, "maps": False, "images": "none"}
            params, options = codec.parse_options(parameters, images_default="none")
            params.validate(model.engine)
            results = await model.batcher.submit(ticket, images, params)
            if verb == "predict":
                return _json({"predictions": [codec.prediction_json(r) for r in results]})
            return _json({"explanations": await off_loop(codec.batch_json, results, options)})

        return await answer(model, work)

    kserve_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["instances"],
        "properties": {"instances": {"type": "array", "items": {"type": "object",
                                                                 "properties": {"b64": {"type": "string"}}}},
                       "parameters": {"type": "object"}}}}}}}

    @app.post("/v1/models/{name}:predict", summary="Top-k predictions (KServe V1)", openapi_extra=kserve_body)
    async def predict(name: str, request: Request) -> Response:
        return await kserve(name, request, "predict")

    @app.post("/v1/models/{name}:explain", summary="Predictions with maps (KServe V1)", openapi_extra=kserve_body)
    async def explain_kserve(name: str, request: Request) -> Response:
        return await kserve(name, request, "explain")

    # --- plain explain ---------------------------------------------------------------------------------------

    plain_body = {"requestBody": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}}}}},
        "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}, "description": d}
                       for n, d in (("method", "cam, gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, "
                                               "scorecam"),
                                    ("top_k", "explain the k most probable classes"),
                                    ("classes", "comma-separated ids or labels instead of the top-k"),
                                    ("boxes", "draw and list boxes (true/false)"),
                                    ("return", "json, overlay or heatmap"),
                                    ("images", "json only: none, overlay, heatmap or both (base64)"),
                                    ("format", "png or jpeg"), ("alpha", "heatmap opacity in [0, 1]"),
                                    ("colormap", "OpenCV colormap name"), ("target", "which target's image"))]}

    @app.post("/v1/models/{name}/explain", summary="Explain one image (raw bytes or multipart upload)",
              openapi_extra=plain_body)
    async def explain_plain(name: str, request: Request) -> Response:
        model = model_for(request, name)
        params, options = codec.parse_options(dict(request.query_params))
        params.validate(model.engine)
        content_type = _require_type(request, ("image/", "application/octet-stream", "multipart/form-data"),
                                     IMAGE_BODY)

        async def work(ticket: Any) -> Response:
            data, source = await _read_image(request, content_type)
            image = await off_loop(codec.decode_upload, model.engine, data, source)
            (result,) = await model.batcher.submit(ticket, [image], params)
            return await off_loop(_render, result, options)

        return await answer(model, work)

    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes, metrics=metrics)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _queued(batcher: MicroBatcher) -> float:
    return float(batcher.queued)


def _admitted(batcher: MicroBatcher) -> float:
    return float(batcher.admitted)


def _render(result: ExplainResult, options: codec.OutputOptions) -> Response:
    if options.returns == "json":
        return _json(codec.result_json(result, options))
    data, media_type = codec.render_image(result, options)
    return Response(data, media_type=media_type)


def _json(data: Any) -> Response:
    return Response(codec.dumps(data), media_type="application/json")


def _require_type(request: Request, accepted: Sequence[str], description: str) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not any(content_type.startswith(prefix) for prefix in accepted):
        raise UnsupportedMediaTypeError(content_type, description)
    return content_type


async def _read_image(request: Request, content_type: str) -> tuple[bytes, str]:
    if content_type != "multipart/form-data":
        return await request.body(), "upload"
    try:
        form = await request.form(max_files=1, max_fields=16)
    except ServeError:
        raise
    except Exception as exc:  # python-multipart's parse errors carry no common base class
        raise BadRequestError(f"malformed multipart body: {str(exc)[:120]}") from None
    upload = form.get("file") or form.get("image")
    if upload is None or isinstance(upload, str):
        raise BadRequestError("multipart body has no 'file' field with an image")
    data = await upload.read()
    await form.close()
    return data, (upload.filename or "upload")[:200]


@functools.cache
def _page_html() -> str:
    return resources.files("cam_runtime.serve").joinpath("static/index.html").read_text(encoding="utf-8")
