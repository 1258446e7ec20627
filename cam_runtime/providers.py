"""Execution provider selection, in one place: explicit requests are honoured or refused, fallbacks warned.

Two ways to choose: a ``device`` shortcut (``auto``, ``cpu``, ``cuda``, ``openvino``, ``tensorrt``, ``coreml``,
``directml``, ``rocm``), which runs on that provider with the CPU provider behind it, or an onnxruntime provider
list passed through as onnxruntime takes it (names or ``(name, options)`` pairs, shortcuts allowed), for any
provider an onnxruntime build offers. A provider that was asked for and is missing is an error that lists the
available ones; a session that came up on another provider gets a :class:`ProviderFallbackWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, Union

from .errors import InvalidArgumentError, OnnxRuntimeMissingError, ProviderNotAvailableError

Device = Literal["auto", "cpu", "cuda", "openvino", "tensorrt", "coreml", "directml", "rocm"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
SHORTCUTS: dict[str, str] = {
    "cpu": CPU, "cuda": CUDA, "openvino": "OpenVINOExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "directml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider",
}
"""Device shortcut → onnxruntime provider name."""
DEVICES: tuple[str, ...] = ("auto", *SHORTCUTS, "openvino-runtime")
"""Device shortcuts; ``openvino-runtime`` is OpenVINO's own runtime (CamEngine.load, :mod:`.openvino_runtime`)."""
ProviderSpec = Union[str, tuple[str, dict[str, Any]]]
"""A provider as onnxruntime takes it: a name, or (name, options)."""


DEFAULT_CUDA_OPTIONS: dict[str, str] = {
    # Benchmark cuDNN's convolution algorithms once per input shape and keep the fastest (onnxruntime's default,
    # stated so that a caller's HEURISTIC is a visible choice: faster first batch, often slower steady state).
    "cudnn_conv_algo_search": "EXHAUSTIVE",
    # Let cuDNN use as much scratch memory as its fastest algorithms ask for.
    "cudnn_conv_use_max_workspace": "1",
    # NHWC kernels where the build has them: tensor cores want channels-last, NCHW costs transposes around convs.
    "prefer_nhwc": "1",
    "do_copy_in_default_stream": "1",
    # fp32 means fp32: onnxruntime's default TF32 math (10-bit mantissa in convs and matmuls) took the CPU/GPU map
    # Pearson of ResNet50 down to 0.9955 on an H100 (issue 18); the fp16 variant is the fast path.
    "use_tf32": "0",
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


def provider_name(spec: ProviderSpec) -> str:
    """The full onnxruntime name of a provider spec (shortcuts expanded)."""
    if isinstance(spec, tuple) and len(spec) != 2:
        raise InvalidArgumentError(f"a provider with options is a (name, dict) pair, got {spec!r}")
    name = spec[0] if isinstance(spec, tuple) else spec
    if not isinstance(name, str):
        raise InvalidArgumentError(f"a provider is a name or a (name, options) pair, got {spec!r}")
    return SHORTCUTS.get(name.lower(), name)


def _normalised(spec: ProviderSpec, cuda_options: dict[str, Any] | None) -> ProviderSpec:
    name = provider_name(spec)
    options = spec[1] if isinstance(spec, tuple) else {}
    if isinstance(spec, tuple) and (len(spec) != 2 or not isinstance(options, dict)):
        raise InvalidArgumentError(f"a provider with options is a (name, dict) pair, got {spec!r}")
    if name == CUDA:  # the tuned defaults, then the caller's options key by key
        return (CUDA, {**dict(cuda_options or {}), **options})
    return (name, dict(options)) if options else name


def resolve_providers(device: str = "auto", cuda_options: dict[str, Any] | None = None,
                      providers: Sequence[ProviderSpec] | None = None) -> list[Any]:
    """The provider list for a session: ``providers`` passed through when given, else the ``device`` shortcut.

    ``auto`` prefers CUDA when the build has it; any explicitly named provider that this onnxruntime build lacks
    is an error listing the available ones.
    """
    available = available_providers()
    if providers is not None:
        if isinstance(providers, str | tuple) or not providers:
            raise InvalidArgumentError("providers must be a non-empty list of names or (name, options) pairs")
        resolved = [_normalised(p, cuda_options) for p in providers]
        for spec in resolved:
            if provider_name(spec) not in available:
                raise ProviderNotAvailableError(provider_name(spec), available)
        return resolved
    if not isinstance(device, str) or device.lower() not in DEVICES:
        raise InvalidArgumentError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    device = device.lower()
    if device == "openvino-runtime":
        raise InvalidArgumentError("openvino-runtime is OpenVINO's own runtime, not an onnxruntime provider: "
                                   "CamEngine.load(device='openvino-runtime') selects it")
    if device == "auto":
        device = "cuda" if CUDA in available else "cpu"
    wanted = SHORTCUTS[device]
    if wanted not in available:
        raise ProviderNotAvailableError(wanted, available)
    if wanted == CPU:
        return [CPU]
    return [_normalised(wanted, cuda_options), CPU] if CPU in available else [_normalised(wanted, cuda_options)]


def warn_on_fallback(requested: list[Any], active: list[str]) -> None:
    """Warn when onnxruntime silently created the session on a later provider (e.g. CUDA libs missing)."""
    wanted = requested[0][0] if isinstance(requested[0], tuple) else requested[0]
    if active and active[0] != wanted:
        warnings.warn(
            f"onnxruntime fell back from {wanted} to {active[0]}; check that provider's libraries "
            "(CUDA/cuDNN, TensorRT, OpenVINO…) are installed",
            ProviderFallbackWarning,
            stacklevel=3,
        )
