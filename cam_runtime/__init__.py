"""cam-runtime: class activation maps for CNN classifiers in ONNX, without TensorFlow or autograd at run time.

The public names below are imported on first use (PEP 562), so ``import cam_runtime`` and ``camr --help`` stay
light: NumPy, OpenCV and onnxruntime load only when something that needs them is touched.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# onnxruntime writes a telemetry device id and database under ~/.cache/Microsoft on every run (and warns when HOME
# is read-only). It reads this variable once, when it is imported: set it before anything here imports it. An
# explicit ORT_DISABLE_TELEMETRY=0 from the user wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    from .boxes import Box, boxes_from_map
    from .engine import CamEngine
    from .errors import CamError, ImageError, ModelLoadingError
    from .evaluation import EvaluationReport, MethodReport, evaluate, evaluate_method, load_samples
    from .ground_truth_boxes import read_boxes
    from .image_files import iter_image_files
    from .imaging import load_image
    from .methods import METHODS, get_method
    from .model import ModelFolder, imagenet_labels
    from .model.manifest import Manifest, read_manifest
    from .render import overlay
    from .results import ExplainResult, ImageFailure, Prediction, TargetMap
    from .targets import ClassTarget, DifferenceTarget, PerImage, RankTarget, ScoreTarget, Target

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Box": ".boxes",
    "CamEngine": ".engine",
    "CamError": ".errors",
    "ClassTarget": ".targets",
    "DifferenceTarget": ".targets",
    "EvaluationReport": ".evaluation",
    "ExplainResult": ".results",
    "ImageError": ".errors",
    "ImageFailure": ".results",
    "METHODS": ".methods",
    "Manifest": ".model",
    "MethodReport": ".evaluation",
    "ModelFolder": ".model",
    "ModelLoadingError": ".errors",
    "PerImage": ".targets",
    "Prediction": ".results",
    "RankTarget": ".targets",
    "ScoreTarget": ".targets",
    "Target": ".targets",
    "TargetMap": ".results",
    "boxes_from_map": ".boxes",
    "evaluate": ".evaluation",
    "evaluate_method": ".evaluation",
    "get_method": ".methods",
    "imagenet_labels": ".model",
    "iter_image_files": ".image_files",
    "load_image": ".imaging",
    "load_samples": ".evaluation",
    "overlay": ".render",
    "read_boxes": ".ground_truth_boxes",
    "read_manifest": ".model",
}
"""Public name → the submodule that defines it."""

__all__ = [
    "METHODS",
    "Box",
    "CamEngine",
    "CamError",
    "ClassTarget",
    "DifferenceTarget",
    "EvaluationReport",
    "ExplainResult",
    "ImageError",
    "ImageFailure",
    "Manifest",
    "MethodReport",
    "ModelFolder",
    "ModelLoadingError",
    "PerImage",
    "Prediction",
    "RankTarget",
    "ScoreTarget",
    "Target",
    "TargetMap",
    "__version__",
    "boxes_from_map",
    "evaluate",
    "evaluate_method",
    "get_method",
    "imagenet_labels",
    "iter_image_files",
    "load_image",
    "load_samples",
    "overlay",
    "read_boxes",
    "read_manifest",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
