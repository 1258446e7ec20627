"""Settings of the HTTP service (no web framework imported here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cam_runtime.errors import InvalidArgumentError

DEFAULT_MAX_BODY_BYTES = 20 << 20
"""Largest request body accepted (413 above it)."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Pixel limit of a served image (422 above it); lower than the CLI's because requests run concurrently."""


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching settings shared by every served model."""

    max_batch: int = 16
    """Most images in one session run."""
    max_wait_ms: float = 5.0
    """How long the batcher waits for requests still being decoded before running a partial batch."""
    queue_size: int = 64
    """Requests admitted (decoding or queued) at once; beyond it 503 with Retry-After."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout_s: float = 30.0
    """Per-request limit from admission to the encoded answer (504 after it)."""
    token: str | None = None
    """Bearer token every route except /healthz and /readyz requires; None: no authentication."""
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    """Origins allowed by CORS; empty: no CORS headers at all."""
    max_instances: int = 64
    """Most images in one KServe ``instances`` list."""
    encode_threads: int = 2
    """Threads that decode request images and encode response images, off the event loop."""
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        checks = {"max_batch": self.max_batch >= 1, "max_wait_ms": self.max_wait_ms >= 0,
                  "queue_size": self.queue_size >= 1, "max_body_bytes": self.max_body_bytes >= 1,
                  "timeout_s": self.timeout_s > 0, "max_instances": self.max_instances >= 1,
                  "encode_threads": self.encode_threads >= 1, "retry_after_s": self.retry_after_s >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidArgumentError(f"invalid serve settings: {', '.join(bad)} out of range")
        if self.token is not None and not self.token:
            raise InvalidArgumentError("the bearer token is empty")
