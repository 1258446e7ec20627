"""Request limits as pure ASGI middleware (body size, latency metrics) and the bearer-token check."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cam_runtime.errors import BadRequestError, RequestTooLargeError, UnauthorizedError

from .metrics import Metrics, route_label

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(message: str) -> bytes:
    """``{"error": "..."}`` on one line (whitespace in the message collapsed)."""
    return json.dumps({"error": " ".join(str(message).split())}, ensure_ascii=False).encode("utf-8")


async def send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer directly from middleware with a one-line JSON error."""
    body = error_body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes: at once from Content-Length, else while they stream in (413)."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics | None = None) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._refuse(send, BadRequestError("Content-Length is not a number"))
                return
            if length > self.limit:
                await self._refuse(send, RequestTooLargeError(self.limit))
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # chunked bodies have no Content-Length to check first
                    raise RequestTooLargeError(self.limit)
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send, error: BadRequestError | RequestTooLargeError) -> None:
        if self.metrics is not None:
            self.metrics.failure(type(error).__name__)
        await send_error(send, error.status, str(error))


class MetricsMiddleware:
    """Record each response's latency by matched route, and its status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.observe_response(route_label(scope), scope.get("method", ""), status[0],
                                          time.perf_counter() - start)


def check_token(authorization: str | None, token: str | None) -> None:
    """Raise UnauthorizedError unless ``authorization`` is ``Bearer <token>`` (compared in constant time)."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise UnauthorizedError()
