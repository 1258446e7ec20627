"""cam-runtime: class activation maps for Keras CNNs exported to ONNX, without TensorFlow."""

from __future__ import annotations

from .annotations import read_boxes
from .boxes import Box, boxes_from_map
from .engine import CamEngine
from .errors import CamError, ImageError, ModelLoadingError
from .evaluation import EvaluationReport, MethodReport, evaluate, evaluate_method, load_samples
from .folders import iter_image_files
from .imaging import load_image
from .manifest import Manifest, read_manifest
from .methods import METHODS, get_method
from .model_folder import ModelFolder, imagenet_labels
from .render import overlay
from .results import ExplainResult, ImageFailure, Prediction, TargetMap
from .targets import ClassTarget, DifferenceTarget, RankTarget, ScoreTarget, Target

__version__ = "0.1.0"

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
