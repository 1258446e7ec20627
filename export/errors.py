"""Exporter errors: each inherits the project base error and the matching builtin."""

from __future__ import annotations

from pathlib import Path

from cam_runtime.errors import CamError


def short_reason(exc: BaseException) -> str:
    """An exception as one line of at most 240 characters (for error messages that wrap a library's error)."""
    text = " ".join(str(exc).split())
    return (text[:240] + "…") if len(text) > 240 else (text or type(exc).__name__)

class ExportError(CamError):
    """An export could not be completed; nothing was written."""


class KerasModelNotFoundError(ExportError, FileNotFoundError):
    """The --model path does not exist."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"Keras model not found: {path}")


class KerasModelLoadError(ExportError, ValueError):
    """The file exists but is not a loadable Keras model."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot load Keras model {path}: {reason}")


class UnknownArchitectureError(ExportError, ValueError):
    """--arch names no known keras.applications model."""

    def __init__(self, arch: str, known: list[str]) -> None:
        super().__init__(f"unknown architecture {arch!r}; supported: {', '.join(known)} (or --model your.keras)")


class UnsupportedHeadError(ExportError, ValueError):
    """The model's head is not GAP → Dense, so CAM would not be exact."""

    def __init__(self, model_name: str, reason: str) -> None:
        super().__init__(
            f"model {model_name!r} cannot be exported for CAM: {reason}. CAM is exact only when the class score "
            "is a linear function of spatially averaged conv features: GlobalAveragePooling2D → "
            "(Dropout/Flatten/Reshape) → one Dense (softmax or linear)"
        )


class WeightsUnavailableError(ExportError, ConnectionError):
    """The ImageNet weights could not be downloaded."""

    def __init__(self, arch: str, reason: str) -> None:
        super().__init__(
            f"could not download the ImageNet weights for {arch} ({reason}). Rerun with --weights PATH "
            "(a local .h5/.weights.h5 file) or --weights random (random init: plumbing tests and benchmarks "
            "only, the maps mean nothing)"
        )


class WeightsFileError(ExportError, ValueError):
    """A --weights PATH could not be loaded into the architecture."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot load weights {path}: {reason}")


class LabelsError(ExportError, ValueError):
    """The labels file is missing or does not have one line per class."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"labels file {path}: {problem}")


class ParityError(ExportError, ValueError):
    """The ONNX graph does not reproduce the Keras model within tolerance."""

    def __init__(self, quantity: str, max_error: float, tolerance: float) -> None:
        super().__init__(
            f"parity check failed: {quantity} differ by up to {max_error:.3g} (tolerance {tolerance:.1g}); "
            "nothing was written"
        )


class DegenerateModelError(ExportError, ValueError):
    """A random-weights export whose outputs do not depend on the input or the class (refused)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"refusing to export: {message}")


class DegenerateModelWarning(UserWarning):
    """A model file or weights whose outputs are constant on the parity inputs (exported, with a warning)."""

# --- ONNX import (``camr import``) -------------------------------------------------------------------------

GRAPH_HEADS = ("other heads are imported as head/gradient graphs when they are one chain of GlobalAveragePool/"
               "ReduceMean, Flatten/Reshape/Transpose, Gemm/MatMul/1x1 Conv, Add/Mul by constants, Relu, LeakyRelu, "
               "HardSigmoid, HardSwish, Sigmoid, Clip, Dropout/Identity (see docs/model-format.md)")


class OnnxImportError(ExportError):
    """An ONNX classifier could not be imported; nothing was written."""


class OnnxModelNotFoundError(OnnxImportError, FileNotFoundError):
    """The ONNX file does not exist."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"ONNX model not found: {path}")


class OnnxModelLoadError(OnnxImportError, ValueError):
    """The file is not a readable ONNX model (or its external data is missing or unsafe)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read ONNX model {path}: {reason}")


class UnsupportedOnnxModelError(OnnxImportError, ValueError):
    """The graph's inputs or outputs cannot become a model folder (several inputs, unknown size, ...)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot import {path}: {reason}")


class OnnxHeadError(OnnxImportError, ValueError):
    """The head is neither global-average-pooling → linear nor a chain the gradient graph can differentiate."""

    def __init__(self, path: str | Path, reason: str, candidates: list[str] | None = None) -> None:
        hint = ""
        if candidates:
            hint = (f"; pooled tensors found in the graph: {', '.join(candidates)} (pass --features NAME if one "
                    "of them is what the classifier averages)")
        self.reason = reason
        super().__init__(f"cannot import {path} for CAM: {reason}{hint}. CAM's closed form needs the class score to "
                         f"be a linear function of spatially averaged conv features; {GRAPH_HEADS}")
