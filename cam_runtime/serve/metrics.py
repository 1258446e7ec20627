"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Request latency, batch sizes, session-run time, queue depth and failures by reason."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("camr_request_duration_seconds", "Time from request to response, by route and status.",
                                 ["route", "method", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter("camr_requests", "Responses sent, by route and status code.",
                                ["route", "code"], registry=self.registry)
        self.batch_size = Histogram("camr_batch_size", "Images per session run (micro-batch size).",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.run_seconds = Histogram("camr_batch_duration_seconds", "Time of one batched engine call.",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("camr_queue_depth", "Requests waiting for the batch worker.", ["model"],
                                 registry=self.registry)
        self.admitted = Gauge("camr_requests_admitted", "Requests between admission and answer.", ["model"],
                              registry=self.registry)
        self.failures = Counter("camr_failures", "Refused or failed requests, by reason.", ["reason"],
                                registry=self.registry)

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        """A callback for the model's batcher: records each run's size and duration."""
        sizes = self.batch_size.labels(model=model)
        durations = self.run_seconds.labels(model=model)

        def observe(images: int, seconds: float) -> None:
            sizes.observe(images)
            durations.observe(seconds)

        return observe

    def track_queue(self, model: str, queued: Callable[[], float], admitted: Callable[[], float]) -> None:
        """Read the queue depth and admitted count from the batcher at scrape time."""
        self.queue_depth.labels(model=model).set_function(queued)
        self.admitted.labels(model=model).set_function(admitted)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_response(self, route: str, method: str, code: int, seconds: float) -> None:
        """Record one finished response."""
        self.latency.labels(route=route, method=method, code=str(code)).observe(seconds)
        self.requests.labels(route=route, code=str(code)).inc()

    def failure(self, reason: str) -> None:
        """Count one failed request by its error class name (a bounded set)."""
        self.failures.labels(reason=reason).inc()


def route_label(scope: Mapping[str, Any]) -> str:
    """The matched route's path template (bounded label values), or "unmatched"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
