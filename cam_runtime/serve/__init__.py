"""``camr serve``: an HTTP explanation service (KServe V1 routes, micro-batching, limits, metrics, a web page).

Only :mod:`.config` and :mod:`.batcher` are importable without the ``serve`` extra; :func:`.app.create_app`
imports FastAPI, and the CLI command imports uvicorn, when they run.
"""

from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig"]
