"""Execution provider selection, in one place: explicit requests are honoured or refused, fallbacks warned."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from .errors import InvalidArgumentError, OnnxRuntimeMissingError, ProviderNotAvailableError

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


DEFAULT_CUDA_OPTIONS: dict[str, str] = {
    # Benchmark cuDNN's convolution algorithms once per input shape and keep the fastest (onnxruntime's default,
    # stated so that a caller's HEURISTIC is a visible choice: faster first batch, often slower steady state).
    "cudnn_conv_algo_search": "EXHAUSTIVE",
    # Let cuDNN use as much scratch memory as its fastest algorithms ask for.
    "cudnn_conv_use_max_workspace": "1",
    # NHWC kernels where the build has them: tensor cores want channels-last, NCHW costs transposes around convs.
    "prefer_nhwc": "1",
    "do_copy_in_default_stream": "1",
}
"""CUDA provider options CamEngine.load starts from; its ``cuda_options`` override them key by key."""


def cuda_provider_options(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_CUDA_OPTIONS` updated with ``overrides`` (values as onnxruntime takes them)."""
    return {**DEFAULT_CUDA_OPTIONS, **(overrides or {})}


def preload_cuda_libraries(ort: Any) -> None:
    """Let onnxruntime-gpu (≥ 1.21) find CUDA/cuDNN installed as pip packages (nvidia-*); no-op elsewhere."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # libraries from the system path may still work; warn_on_fallback reports if not
        return


class ProviderFallbackWarning(RuntimeWarning):
    """The session runs on a different provider than the one asked for."""


def import_onnxruntime() -> Any:
    """Import onnxruntime or explain how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissingError() from None
    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(import_onnxruntime().get_available_providers())


def resolve_providers(device: str, cuda_options: dict[str, Any] | None = None) -> list[Any]:
    """Provider list for a device; ``auto`` prefers CUDA; a requested provider that is missing is an error."""
    if device not in DEVICES:
        raise InvalidArgumentError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = available_providers()
    if device == "auto":
        device = "cuda" if CUDA in available else "cpu"
    if device == "cuda":
        if CUDA not in available:
            raise ProviderNotAvailableError("cuda", available)
        return [(CUDA, dict(cuda_options or {})), CPU]
    if CPU not in available:
        raise ProviderNotAvailableError("cpu", available)
    return [CPU]


def warn_on_fallback(requested: list[Any], active: list[str]) -> None:
    """Warn when onnxruntime silently created the session on a later provider (e.g. CUDA libs missing)."""
    wanted = requested[0][0] if isinstance(requested[0], tuple) else requested[0]
    if active and active[0] != wanted:
        warnings.warn(
            f"onnxruntime fell back from {wanted} to {active[0]}; check the CUDA/cuDNN installation",
            ProviderFallbackWarning,
            stacklevel=3,
        )
