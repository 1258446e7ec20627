"""Parity validation between the Keras model and the exported ONNX graph, with named tolerances."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from .errors import ParityError

PROBABILITY_ATOL = 1e-4
"""Max absolute difference allowed between Keras and ONNX probabilities."""
FEATURE_RTOL = 2e-3
"""Max absolute feature difference allowed, relative to the largest absolute Keras feature value.

float32 round-off through 150+ layers: a seeded random ResNet152 differs by 1.15e-3 (96 px) to 1.16e-3 (224 px)
and at 32 px by 9.7e-3, while ImageNet-weight exports differ by ~1e-6. 2e-3 keeps the check meaningful (a
conversion error shows as ≥ 1e-2) without refusing deep random models at the sizes their tests use."""
HEAD_ATOL = 1e-4
"""Max absolute difference between softmax(mean_hw(features)·W + b) and the Keras probabilities."""
CONSTANT_ATOL = 1e-6
"""Probabilities that vary less than this across classes, or across the parity inputs, count as constant."""


@dataclass(frozen=True)
class ParityReport:
    """Largest differences measured on the seeded parity inputs."""

    samples: int
    seed: int
    probabilities_max_abs: float
    features_max_abs: float
    features_max_rel: float
    head_reconstruction_max_abs: float
    tolerances: dict[str, float]
    class_spread: float = float("nan")
    input_spread: float = float("nan")

    @property
    def constant_outputs(self) -> bool:
        """Whether the probabilities ignore the class or the input (a model that computes nothing)."""
        return bool(self.class_spread < CONSTANT_ATOL or self.input_spread < CONSTANT_ATOL)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return {**asdict(self), "constant_outputs": self.constant_outputs}


def softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Numerically stable softmax over the last axis, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def check_parity(keras_probs: npt.NDArray[np.float32], keras_features: npt.NDArray[np.float32],
                 onnx_probs: npt.NDArray[np.float32], onnx_features: npt.NDArray[np.float32],
                 weights: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], *, seed: int) -> ParityReport:
    """Compare both runtimes and the CAM head reconstruction; raise ParityError beyond tolerance."""
    prob_err = float(np.abs(keras_probs.astype(np.float64) - onnx_probs).max())
    feat_abs = float(np.abs(keras_features.astype(np.float64) - onnx_features).max())
    scale = float(np.abs(keras_features).max())
    feat_rel = feat_abs / scale if scale > 0 else feat_abs
    pooled = keras_features.astype(np.float64).mean(axis=(1, 2))
    reconstructed = softmax(pooled @ weights.astype(np.float64) + bias)
    head_err = float(np.abs(reconstructed - keras_probs).max())
    probs = keras_probs.astype(np.float64)
    # Largest spread over classes of any one input; largest change of any class's probability between inputs.
    class_spread = float((probs.max(axis=1) - probs.min(axis=1)).max())
    input_spread = float((probs.max(axis=0) - probs.min(axis=0)).max())
    report = ParityReport(samples=int(keras_probs.shape[0]), seed=seed, probabilities_max_abs=prob_err,
                          features_max_abs=feat_abs, features_max_rel=feat_rel, head_reconstruction_max_abs=head_err,
                          tolerances={"probabilities_atol": PROBABILITY_ATOL, "features_rtol": FEATURE_RTOL,
                                      "head_atol": HEAD_ATOL, "constant_atol": CONSTANT_ATOL},
                          class_spread=class_spread, input_spread=input_spread)
    if not prob_err <= PROBABILITY_ATOL:
        raise ParityError("ONNX and Keras probabilities", prob_err, PROBABILITY_ATOL)
    if not feat_rel <= FEATURE_RTOL:
        raise ParityError("ONNX and Keras features (relative to their scale)", feat_rel, FEATURE_RTOL)
    if not head_err <= HEAD_ATOL:
        raise ParityError("softmax(mean(features)·W + b) and the model's probabilities (wrong feature layer?)",
                          head_err, HEAD_ATOL)
    return report
