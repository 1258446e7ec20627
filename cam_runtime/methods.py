"""The CAM family in closed form for a GAP → Dense → softmax head, vectorised over images and targets.

Notation: features ``A`` of shape [N, h, w, C]; dense kernel ``W`` [C, K] and bias ``b`` [K]; logits
``z = mean_hw(A) · W + b``; probabilities ``p = softmax(z)``. Because the head averages over space, the gradient
of the target score with respect to ``A[i, j, k]`` is the same at every position:

* score = logit ``z_c``:        ``G_k = W[k, c] / (h·w)``
* score = probability ``p_c``:  ``G_k = p_c (W[k, c] − Σ_j p_j W[k, j]) / (h·w)``

Every gradient-defined method below is its published formula with that constant gradient substituted, so
they are exact, need no backward pass and are checked against ``tf.GradientTape`` in the export tests.
All maps are returned at feature resolution [N, T, h, w]; upsampling happens afterwards (the weighted sum
and bilinear interpolation commute).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError, UnknownMethodError

FloatArray = npt.NDArray[np.float32]
Score = Literal["logit", "probability"]
SCORES: tuple[str, ...] = ("logit", "probability")


@dataclass(frozen=True)
class HeadInputs:
    """What every method needs: features, probabilities, the dense head and the target classes."""

    features: FloatArray  # [N, h, w, C]
    probabilities: FloatArray  # [N, K]
    weights: FloatArray  # [C, K]
    classes: npt.NDArray[np.intp]  # [N, T]
    directions: FloatArray | None = None
    """[N, T, K]: dScore/dlogits per target (target objects); None means one-hot on ``classes``."""
    fixed_score: npt.NDArray[np.bool_] | None = None
    """[N, T]: targets whose direction is their own score's (the method's logit/probability choice is ignored)."""

    def __post_init__(self) -> None:
        n, _, _, c = self.features.shape
        if self.weights.shape[0] != c:
            raise InvalidArgumentError(f"features have {c} channels but weights have {self.weights.shape[0]} rows")
        if self.probabilities.shape != (n, self.weights.shape[1]):
            raise InvalidArgumentError(
                f"probabilities must have shape [{n}, {self.weights.shape[1]}], found {list(self.probabilities.shape)}")
        if self.classes.ndim != 2 or self.classes.shape[0] != n:
            raise InvalidArgumentError(f"classes must have shape [{n}, T], found {list(self.classes.shape)}")
        expected = (*self.classes.shape, self.weights.shape[1])
        if self.directions is not None and self.directions.shape != expected:
            raise InvalidArgumentError(f"directions must have shape {list(expected)}, "
                                       f"found {list(self.directions.shape)}")

    @property
    def spatial_size(self) -> int:
        """h·w, the number of positions the pooling averages."""
        return int(self.features.shape[1] * self.features.shape[2])

    def class_weights(self) -> FloatArray:
        """W[:, c] for every target (W · direction for target objects): [N, T, C]."""
        if self.directions is not None:
            return (self.directions @ self.weights.T).astype(np.float32)
        return self.weights.T[self.classes]

    def gradients(self, score: Score) -> FloatArray:
        """The spatially constant gradient dScore/dA for every target: [N, T, C]."""
        if self.directions is not None:
            return self._direction_gradients(score)
        w_c = self.class_weights()
        if score == "logit":
            return w_c / np.float32(self.spatial_size)
        if score == "probability":
            expected_w = self.probabilities @ self.weights.T  # Σ_j p_j W[:, j]: [N, C]
            p_c = np.take_along_axis(self.probabilities, self.classes, axis=1)[..., None]  # [N, T, 1]
            return (p_c * (w_c - expected_w[:, None, :]) / self.spatial_size).astype(np.float32)
        raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")

    def _direction_gradients(self, score: Score) -> FloatArray:
        assert self.directions is not None
        v = self.directions
        if score == "probability":
            # d(Σ_j v_j p_j)/dz = p ∘ v − p (p · v): the softmax Jacobian applied to the direction
            p = self.probabilities[:, None, :]
            along = p * v - p * (p * v).sum(axis=-1, keepdims=True)
            v = along if self.fixed_score is None else np.where(self.fixed_score[..., None], v, along)
        elif score != "logit":
            raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        return ((v @ self.weights.T) / np.float32(self.spatial_size)).astype(np.float32)


def weighted_sum(features: FloatArray, channel_weights: FloatArray) -> FloatArray:
    """Σ_k weights[n, t, k] · A[n, :, :, k] → [N, T, h, w]."""
    n, h, w, c = features.shape
    flat = features.reshape(n, h * w, c)
    return np.matmul(channel_weights, flat.transpose(0, 2, 1)).reshape(n, -1, h, w)


def relu(x: FloatArray) -> FloatArray:
    """max(x, 0)."""
    return np.maximum(x, 0, dtype=np.float32)


class CamMethod(ABC):
    """A class activation map method: maps at feature resolution from the head's inputs."""

    name: ClassVar[str]
    class_specific: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False

    @abstractmethod
    def maps(self, head: HeadInputs) -> FloatArray:
        """Raw maps [N, T, h, w] (each method's own formula, its ReLU included where it has one)."""


class CAM(CamMethod):
    """Zhou et al. 2016: M_c = Σ_k W[k, c] A_k (no ReLU, no normalisation)."""

    name = "cam"

    def maps(self, head: HeadInputs) -> FloatArray:
        return weighted_sum(head.features, head.class_weights())


class _GradientMethod(CamMethod):
    """Base of the gradient-defined methods: holds which score is differentiated."""

    def __init__(self, score: Score = "logit") -> None:
        if score not in SCORES:
            raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score: Score = score


class GradCAM(_GradientMethod):
    """Selvaraju et al. 2017: ReLU(Σ_k α_k A_k), α_k = mean_ij dS/dA_ijk = G_k."""

    name = "gradcam"

    def maps(self, head: HeadInputs) -> FloatArray:
        return relu(weighted_sum(head.features, head.gradients(self.score)))


class HiResCAM(_GradientMethod):
    """Draelos & Carin 2020: ReLU(Σ_k dS/dA_ijk · A_ijk); equals Grad-CAM when the gradient is constant."""

    name = "hirescam"

    def maps(self, head: HeadInputs) -> FloatArray:
        return relu(weighted_sum(head.features, head.gradients(self.score)))


class XGradCAM(_GradientMethod):
    """Fu et al. 2020: ReLU(Σ_k α_k A_k), α_k = Σ_ij (A_ijk / Σ_ab A_abk) dS/dA_ijk = G_k (0 where Σ A_k = 0)."""

    name = "xgradcam"

    def maps(self, head: HeadInputs) -> FloatArray:
        sums = head.features.sum(axis=(1, 2))[:, None, :]  # [N, 1, C]
        ratio = np.divide(sums, sums, out=np.zeros_like(sums), where=sums != 0)
        return relu(weighted_sum(head.features, head.gradients(self.score) * ratio))


class LayerCAM(_GradientMethod):
    """Jiang et al. 2021: ReLU(Σ_k ReLU(dS/dA_ijk) · A_ijk) = ReLU(Σ_k ReLU(G_k) A_ijk)."""

    name = "layercam"

    def maps(self, head: HeadInputs) -> FloatArray:
        return relu(weighted_sum(head.features, relu(head.gradients(self.score))))


class GradCAMPlusPlus(_GradientMethod):
    """Chattopadhay et al. 2018 (exponential-score closed form) with a constant gradient G.

    α_ijk = G_k² / (2 G_k² + Σ_ab A_abk · G_k³) = 1 / (2 + S_k G_k) where G_k ≠ 0, and 0 elsewhere;
    w_k = Σ_ij α_ijk ReLU(G_k) = h·w · ReLU(G_k) / (2 + S_k G_k); map = ReLU(Σ_k w_k A_k).
    """

    name = "gradcam++"

    def maps(self, head: HeadInputs) -> FloatArray:
        grads = head.gradients(self.score)
        sums = head.features.sum(axis=(1, 2))[:, None, :]
        denominator = 2.0 + sums * grads
        positive = relu(grads)
        weights = np.divide(positive, denominator, out=np.zeros_like(positive),
                            where=(positive > 0) & (denominator != 0)) * head.spatial_size
        return relu(weighted_sum(head.features, weights.astype(np.float32)))


class EigenCAM(CamMethod):
    """Muhammad & Yeasin 2020: projection of the (spatially centred) features on their first principal
    component. Class-agnostic; the sign is fixed so the map correlates positively with Σ_k A_k."""

    name = "eigencam"
    class_specific = False

    def maps(self, head: HeadInputs) -> FloatArray:
        n, h, w, c = head.features.shape
        out = np.empty((n, head.classes.shape[1], h, w), dtype=np.float32)
        for i in range(n):
            flat = head.features[i].reshape(h * w, c).astype(np.float64)
            centred = flat - flat.mean(axis=0)
            if not np.any(centred):
                out[i] = 0.0
                continue
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            projection = centred @ vt[0]
            activation = flat.sum(axis=1)
            if np.dot(projection, activation - activation.mean()) < 0:
                projection = -projection
            out[i] = projection.reshape(h, w).astype(np.float32)
        return out


ScoreFunction = Callable[[FloatArray], FloatArray]
"""Runs the model on a batch of input tensors and returns probabilities [B, K]."""


class ScoreCAM(CamMethod):
    """Wang et al. 2020: ReLU(Σ_k s_k A_k), s_k = p_c(X ∘ norm(up(A_k))), forward passes only.

    As in the authors' code, the weight is the softmax probability of the masked input (no baseline), the
    mask is the channel's map upsampled to the input size and min-max normalised. Only the
    ``max_channels`` channels with the largest mean activation are used (None: all channels); one set of
    masked passes serves every target of an image.
    """

    name = "scorecam"
    needs_model = True

    def __init__(self, max_channels: int | None = 128, batch_size: int = 32) -> None:
        if max_channels is not None and max_channels < 1:
            raise InvalidArgumentError(f"max_channels must be ≥ 1 or None, got {max_channels}")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be ≥ 1, got {batch_size}")
        self.max_channels = max_channels
        self.batch_size = batch_size
        self.inputs: FloatArray | None = None  # [N, H, W, 3] or [N, 3, H, W]
        self.layout: str = "NHWC"
        self.score_fn: ScoreFunction | None = None

    def bind(self, inputs: FloatArray, layout: str, score_fn: ScoreFunction) -> ScoreCAM:
        """Attach the preprocessed inputs and a model runner before calling :meth:`maps`."""
        self.inputs, self.layout, self.score_fn = inputs, layout, score_fn
        return self

    def maps(self, head: HeadInputs) -> FloatArray:
        if self.inputs is None or self.score_fn is None:
            raise InvalidArgumentError("ScoreCAM needs the model: call bind(inputs, layout, score_fn) first")
        import cv2

        n, h, w, _c = head.features.shape
        height, width = (self.inputs.shape[2:4] if self.layout == "NCHW" else self.inputs.shape[1:3])
        out = np.zeros((n, head.classes.shape[1], h, w), dtype=np.float32)
        for i in range(n):
            features = head.features[i]
            order = np.argsort(-features.mean(axis=(0, 1)), kind="stable")
            channels = order[: self.max_channels] if self.max_channels else order
            scores = np.zeros((len(channels), head.probabilities.shape[1]), dtype=np.float32)
            for start in range(0, len(channels), self.batch_size):
                chunk = channels[start:start + self.batch_size]
                masks = np.stack([cv2.resize(features[:, :, k], (width, height), interpolation=cv2.INTER_LINEAR)
                                  for k in chunk])
                low = masks.min(axis=(1, 2), keepdims=True)
                span = masks.max(axis=(1, 2), keepdims=True) - low
                masks = np.divide(masks - low, span, out=np.zeros_like(masks), where=span > 0)
                mask_axis = masks[:, None] if self.layout == "NCHW" else masks[..., None]
                scores[start:start + len(chunk)] = self.score_fn(
                    (self.inputs[i][None] * mask_axis).astype(np.float32))
                flat_spans = span.reshape(-1)
                scores[start:start + len(chunk)][flat_spans <= 0] = 0.0
            selected = features[:, :, channels]  # [h, w, M]
            if head.directions is not None:
                if head.fixed_score is not None and head.fixed_score[i].any():
                    raise InvalidArgumentError("Score-CAM weighs channels by masked-input probabilities: it takes "
                                               "class, rank and difference targets, not custom scores")
                weights = (head.directions[i] @ scores.T).astype(np.float32)  # [T, M]
            else:
                weights = scores[:, head.classes[i]].T  # [T, M]
            out[i] = relu(np.tensordot(weights, selected, axes=([1], [2])).astype(np.float32))
        return out


METHODS: dict[str, type[CamMethod]] = {
    cls.name: cls for cls in (CAM, GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, EigenCAM, ScoreCAM)
}
"""Method name → class."""

ALIASES = {"gradcampp": "gradcam++", "grad-cam": "gradcam", "grad-cam++": "gradcam++", "score-cam": "scorecam",
           "eigen-cam": "eigencam", "layer-cam": "layercam", "xgrad-cam": "xgradcam", "hires-cam": "hirescam"}


def get_method(name: str | CamMethod, **options: object) -> CamMethod:
    """A method instance from its name (or pass an instance through); options go to its constructor."""
    if isinstance(name, CamMethod):
        return name
    key = ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    try:
        cls = METHODS[key]
    except (KeyError, TypeError):
        raise UnknownMethodError(str(name), list(METHODS)) from None
    try:
        return cls(**options)  # type: ignore[arg-type]
    except TypeError as exc:
        raise InvalidArgumentError(f"invalid option for method {key!r}: {exc}") from None


def resolve_methods(values: Sequence[str]) -> list[str]:
    """Canonical method names from repeated and/or comma-separated names; ``all`` means every method, in order."""
    names: list[str] = []
    for value in values:
        for token in (part.strip() for part in value.split(",")):
            if not token:
                continue
            found = list(METHODS) if token.lower() == "all" else [get_method(token).name]
            names += [name for name in found if name not in names]
    if not names:
        raise InvalidArgumentError("--method needs a method name (or 'all')")
    return names
