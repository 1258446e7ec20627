"""OpenVINO's own runtime behind the onnxruntime session interface CamEngine uses (the ``openvino`` extra).

``CamEngine.load(folder, device="openvino-runtime")`` (or ``providers=[("OpenVINORuntime", {"precision":
"bf16"})]``) runs the folder's ONNX graph with ``openvino.Core`` instead of onnxruntime: the same graph, the
same float32 inputs and outputs, so every map method works unchanged. Unlike ``onnxruntime-openvino`` it
installs beside the CPU onnxruntime (the ``openvino`` package does not replace the ``onnxruntime`` module).

Precision is an inference-precision hint: ``fp32`` (exact float32 semantics) or ``bf16`` where the CPU
executes bfloat16 natively (AVX512-BF16 or AMX), detected from OpenVINO's ``OPTIMIZATION_CAPABILITIES`` and
never assumed: asking for bf16 elsewhere is an error (OpenVINO would silently emulate or ignore it). A bf16
model folder is a derived variant with a fidelity report (:mod:`cam_runtime.derive.bf16`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError, MissingDependencyError, ProviderError

PROVIDER = "OpenVINORuntime"
"""The pseudo-provider name (not an onnxruntime provider) that selects OpenVINO's own runtime."""
DEVICE = "openvino-runtime"
"""The ``device`` shortcut for :data:`PROVIDER`."""
PRECISIONS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}
"""Our precision name → OpenVINO's INFERENCE_PRECISION_HINT."""


class PrecisionNotAvailableError(ProviderError):
    """A reduced precision was asked for on a CPU that does not execute it natively."""

    def __init__(self, precision: str, capabilities: Sequence[str]) -> None:
        super().__init__(f"{precision} is not available on this CPU (OpenVINO reports {', '.join(capabilities)}; "
                         "bf16 needs AVX512-BF16 or AMX): use fp32 or int8")


def import_openvino() -> Any:
    """Import openvino or explain how to install it."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("OpenVINO's runtime", "openvino", "openvino") from None
    return openvino


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def core() -> Any:
    """One shared ``openvino.Core`` (creating it loads the plugins: done once)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = import_openvino().Core()
        return _CORE


def cpu_capabilities() -> list[str]:
    """OpenVINO's CPU plugin capabilities (e.g. FP32, INT8, BF16), as it detects them on this CPU."""
    return [str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def cpu_flags() -> list[str]:
    """The reduced-precision CPU flags Linux reports (avx512_bf16, avx512_vnni, amx_*, avx_vnni...)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    wanted = ("avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile",
              "avx512_fp16")
    flags = set(line.split(":", 1)[-1].split())
    return [flag for flag in wanted if flag in flags]


def bf16_available() -> bool:
    """True when OpenVINO's CPU plugin executes bfloat16 natively here (its own detection, not assumed)."""
    return "BF16" in cpu_capabilities()


def check_precision(precision: str) -> str:
    """The OpenVINO precision hint for ``precision``; refuses unknown names and bf16 without CPU support."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not bf16_available():
        raise PrecisionNotAvailableError(precision, cpu_capabilities())
    return PRECISIONS[precision]


@dataclass(frozen=True)
class NodeInfo:
    """An input or output as onnxruntime describes it: name, shape (None/str for dynamic), element type."""

    name: str
    shape: list[Any]
    type: str


_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
          "i32": "tensor(int32)", "u8": "tensor(uint8)"}


def _node(port: Any) -> NodeInfo:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return NodeInfo(port.get_any_name(), shape, _TYPES.get(port.get_element_type().get_type_name(), "unknown"))


class OpenVINOSession:
    """The subset of ``onnxruntime.InferenceSession`` that CamEngine uses, run by OpenVINO's CPU plugin.

    The graph is compiled once per batch size with a static shape (OpenVINO's fastest mode), on first use;
    each compiled model has one infer request guarded by a lock, so concurrent calls are safe (serialised).
    """

    def __init__(self, model_path: str | Path, *, precision: str = "fp32", threads: int | None = None,
                 device: str = "CPU") -> None:
        self.precision = precision
        self._hint = check_precision(precision)
        self._model = core().read_model(str(model_path))
        if len(self._model.inputs) != 1:
            raise InvalidArgumentError(f"OpenVINO runtime: one graph input expected, got {len(self._model.inputs)}")
        self._device = device
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self._hint, "PERFORMANCE_HINT": "LATENCY",
                                        # Pinning threads to cores hurts on a shared machine (the process
                                        # never owns its cores) and gains nothing measurable when quiet.
                                        "ENABLE_CPU_PINNING": False}
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._inputs = [_node(p) for p in self._model.inputs]
        self._outputs = [_node(p) for p in self._model.outputs]
        self._compiled: dict[int, tuple[Any, Any, threading.Lock]] = {}
        self._lock = threading.Lock()

    # --- the onnxruntime interface ----------------------------------------------------------------------

    def get_inputs(self) -> list[NodeInfo]:
        """Graph inputs (batch axis dynamic)."""
        return list(self._inputs)

    def get_outputs(self) -> list[NodeInfo]:
        """Graph outputs."""
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        """``["OpenVINORuntime"]``."""
        return [PROVIDER]

    def get_provider_options(self) -> dict[str, dict[str, Any]]:
        """The compile configuration, keyed like onnxruntime's provider options."""
        return {PROVIDER: {"precision": self.precision, **{k: str(v) for k, v in self._config.items()}}}

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, npt.NDArray[Any]],
            run_options: Any = None) -> list[npt.NDArray[Any]]:
        """Outputs (copies, float32 as in the graph) for one batch, in the order of ``output_names``."""
        (name, value), = feeds.items()
        if name != self._inputs[0].name:
            raise InvalidArgumentError(f"OpenVINO runtime: unknown input {name!r}")
        batch = np.ascontiguousarray(value, dtype=np.float32)
        _, request, lock = self._compile(batch.shape)
        names = list(output_names) if output_names else [o.name for o in self._outputs]
        with lock:
            request.set_input_tensor(import_openvino().Tensor(batch, shared_memory=True))
            request.infer()
            # Copies: the request's buffers are overwritten by the next call.
            return [np.array(request.get_tensor(n).data) for n in names]

    def io_binding(self) -> Any:
        """Not available: OpenVINO's runtime has no IOBinding (load with io_binding=False)."""
        raise InvalidArgumentError("io_binding is an onnxruntime feature; the OpenVINO runtime does not have it")

    # --- compilation --------------------------------------------------------------------------------------

    def _compile(self, shape: tuple[int, ...]) -> tuple[Any, Any, threading.Lock]:
        with self._lock:
            entry = self._compiled.get(shape[0])
            if entry is None:
                model = self._model.clone()
                model.reshape({self._inputs[0].name: list(shape)})
                compiled = core().compile_model(model, self._device, self._config)
                entry = (compiled, compiled.create_infer_request(), threading.Lock())
                self._compiled[shape[0]] = entry
            return entry


def session_from_spec(model_path: str | Path, options: dict[str, Any] | None, threads: int | None,
                      precision: str | None = None) -> OpenVINOSession:
    """A session for ``("OpenVINORuntime", options)``: options ``precision`` (fp32/bf16) and ``device`` (CPU)."""
    options = dict(options or {})
    unknown = set(options) - {"precision", "device"}
    if unknown:
        raise InvalidArgumentError(f"{PROVIDER} options are precision and device, got {sorted(unknown)}")
    return OpenVINOSession(model_path, precision=precision or options.get("precision", "fp32"), threads=threads,
                           device=str(options.get("device", "CPU")))


def requested(device: str, providers: Sequence[Any] | None, provenance: dict[str, Any]) -> dict[str, Any] | None:
    """The OpenVINO runtime options when a load asks for it (device shortcut or first provider), else None.

    A bf16 variant folder asks for it itself under ``device="auto"``: its fidelity was checked on OpenVINO bf16.
    """
    variant_precision = "bf16" if provenance.get("variant") == "bf16" else None
    if providers is not None and not isinstance(providers, str | tuple) and providers:
        first = providers[0]
        name = first[0] if isinstance(first, tuple) else first
        if name != PROVIDER:
            return None
        if len(providers) > 1:
            raise InvalidArgumentError(f"{PROVIDER} runs the whole graph itself: name it alone")
        options = dict(first[1]) if isinstance(first, tuple) and isinstance(first[1], dict) else {}
    elif isinstance(device, str) and (device.lower() == DEVICE or (
            device.lower() == "auto" and providers is None and variant_precision)):
        options = {}
    else:
        return None
    if variant_precision:
        options.setdefault("precision", variant_precision)
    return options
