"""The CAM family, vectorised over images and targets: closed forms for a GAP → Dense head, per-position gradients
from the head graph for any other head (:mod:`cam_runtime.heads`).

Notation: features ``A`` of shape [N, h, w, C]; dense kernel ``W`` [C, K] and bias ``b`` [K]; logits ``z =
mean_hw(A) · W + b``; probabilities ``p = softmax(z)``. Because the head averages over space, the gradient of
the target score with respect to ``A[i, j, k]`` is the same at every position:

* score = logit ``z_c``:        ``G_k = W[k, c] / (h·w)``
* score = probability ``p_c``:  ``G_k = p_c (W[k, c] − Σ_j p_j W[k, j]) / (h·w)``

Every gradient-defined method below is its published formula with that constant gradient substituted, so they
are exact, need no backward pass and are checked against ``tf.GradientTape`` in the export tests. For any other
head the gradient differs per position; a :class:`~cam_runtime.heads.GraphHead` supplies it from the folder's
gradient graph and each method applies its paper's per-position definition (``from_gradients``); CAM itself
needs class weights and is refused. Ablation-CAM and ReciproCAM perturb the features and run only the head. All
maps are returned at feature resolution [N, T, h, w]; upsampling happens afterwards (the weighted sum and
bilinear interpolation commute)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from .errors import HeadKindError, InvalidArgumentError, UnknownMethodError
from .heads import Head, LinearHead

FloatArray = npt.NDArray[np.float32]
Score = Literal["logit", "probability"]
SCORES: tuple[str, ...] = ("logit", "probability")


ScoreFunction = Callable[[FloatArray], FloatArray]
"""Runs the model on a batch of input tensors and returns probabilities [B, K]."""


@dataclass(frozen=True)
class ForwardRunner:
    """The model's forward pass and the preprocessed inputs of the batch being explained.

    Given (as ``HeadInputs.model``) to the methods that declare ``needs_model``: they run their own masked
    forward passes through it (Score-CAM), as torch-cam's methods hook their own inputs.
    """

    inputs: FloatArray
    """[N, H, W, 3] or [N, 3, H, W], as the graph takes them."""
    layout: str
    """"NHWC" or "NCHW"."""
    predict: ScoreFunction
    """Probabilities [B, K] of a batch of inputs."""


@dataclass(frozen=True)
class HeadInputs:
    """What every method needs: features, probabilities, the head and the target classes.

    ``weights`` is the dense kernel of a linear head; a non-linear head passes ``weights=None`` and
    ``head=`` a :class:`~cam_runtime.heads.GraphHead`.
    """

    features: FloatArray  # [N, h, w, C]
    probabilities: FloatArray  # [N, K]
    weights: FloatArray | None  # [C, K], or None for a graph head
    classes: npt.NDArray[np.intp]  # [N, T]
    directions: FloatArray | None = None
    """[N, T, K]: dScore/dlogits per target (target objects); None means one-hot on ``classes``."""
    fixed_score: npt.NDArray[np.bool_] | None = None
    """[N, T]: targets whose direction is their own score's (the method's logit/probability choice is ignored)."""
    head: Head | None = None
    """The head after the features (default: a LinearHead on ``weights`` with zero bias)."""
    model: ForwardRunner | None = None
    """The model's forward pass on this batch, for methods that declare ``needs_model``."""

    def __post_init__(self) -> None:
        n, _, _, c = self.features.shape
        if self.head is None:
            if self.weights is None:
                raise InvalidArgumentError("HeadInputs needs the dense weights or a head")
            object.__setattr__(self, "head", LinearHead(self.weights))
        k = self.num_classes
        if self.weights is not None and self.weights.shape[0] != c:
            raise InvalidArgumentError(f"features have {c} channels but weights have {self.weights.shape[0]} rows")
        if self.probabilities.shape != (n, k):
            raise InvalidArgumentError(
                f"probabilities must have shape [{n}, {k}], found {list(self.probabilities.shape)}")
        if self.classes.ndim != 2 or self.classes.shape[0] != n:
            raise InvalidArgumentError(f"classes must have shape [{n}, T], found {list(self.classes.shape)}")
        expected = (*self.classes.shape, k)
        if self.directions is not None and self.directions.shape != expected:
            raise InvalidArgumentError(f"directions must have shape {list(expected)}, "
                                       f"found {list(self.directions.shape)}")
        object.__setattr__(self, "_cache", {})

    @property
    def num_classes(self) -> int:
        """K."""
        return int(self.weights.shape[1]) if self.weights is not None else self.model_head.num_classes

    @property
    def model_head(self) -> Head:
        """The head (never None after construction)."""
        assert self.head is not None
        return self.head

    @property
    def is_linear(self) -> bool:
        """True when the gradient is the same at every position (GAP → Dense): closed forms apply."""
        return self.weights is not None and self.model_head.linear

    @property
    def spatial_size(self) -> int:
        """h·w, the number of positions the pooling averages."""
        return int(self.features.shape[1] * self.features.shape[2])

    def linear_weights(self, purpose: str) -> FloatArray:
        """The dense kernel, or HeadKindError saying ``purpose`` needs a linear head."""
        if self.weights is None or not self.is_linear:
            raise HeadKindError(purpose)
        return self.weights

    def class_weights(self) -> FloatArray:
        """W[:, c] for every target (W · direction for target objects): [N, T, C]."""
        weights = self.linear_weights("CAM (class weights per channel)")
        if self.directions is not None:
            return (self.directions @ weights.T).astype(np.float32)
        return weights.T[self.classes]

    def gradients(self, score: Score) -> FloatArray:
        """The spatially constant gradient dScore/dA for every target: [N, T, C] (linear heads only)."""
        weights = self.linear_weights("a spatially constant gradient")
        if self.directions is not None:
            return self._direction_gradients(score)
        w_c = self.class_weights()
        if score == "logit":
            return w_c / np.float32(self.spatial_size)
        if score == "probability":
            expected_w = self.probabilities @ weights.T  # Σ_j p_j W[:, j]: [N, C]
            p_c = np.take_along_axis(self.probabilities, self.classes, axis=1)[..., None]  # [N, T, 1]
            return (p_c * (w_c - expected_w[:, None, :]) / self.spatial_size).astype(np.float32)
        raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")

    def score_directions(self, score: Score) -> FloatArray:
        """dScore/dlogits per target [N, T, K]: one-hot (or the target's direction) for the logit score, the
        softmax Jacobian applied to it for the probability score (fixed-score targets keep theirs)."""
        if self.directions is not None:
            v = self.directions
        else:
            v = np.zeros((*self.classes.shape, self.num_classes), np.float32)
            np.put_along_axis(v, self.classes[..., None], 1.0, axis=2)
        if score == "logit":
            return v
        if score != "probability":
            raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        # d(Σ_j v_j p_j)/dz = p ∘ v − p (p · v)
        p = self.probabilities[:, None, :]
        along = (p * v - p * (p * v).sum(axis=-1, keepdims=True)).astype(np.float32)
        return along if self.fixed_score is None else np.where(self.fixed_score[..., None], v, along)

    def position_gradients(self, score: Score) -> FloatArray:
        """dScore/dA_ijk at every position for every target: [N, T, h, w, C] (computed once per score)."""
        cache: dict[str, FloatArray] = getattr(self, "_cache")  # noqa: B009
        if score not in cache:
            if self.is_linear:
                n, h, w, c = self.features.shape
                constant = self.gradients(score)
                cache[score] = np.broadcast_to(constant[:, :, None, None, :], (n, constant.shape[1], h, w, c))
            else:
                cache[score] = self.model_head.logit_gradients(self.features, self.score_directions(score))
        return cache[score]

    def _direction_gradients(self, score: Score) -> FloatArray:
        assert self.directions is not None and self.weights is not None
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
    """A class activation map method: maps at feature resolution from the head's inputs.

    The protocol with the engine: ``maps`` gets everything through :class:`HeadInputs`; a method that runs the
    model itself declares ``needs_model`` and finds a :class:`ForwardRunner` in ``HeadInputs.model``; a method
    whose maps follow from on-device CAMs says how in :meth:`from_device_cams`. The engine names no method.
    """

    name: ClassVar[str]
    needs_model: ClassVar[bool] = False
    """True: ``maps`` needs ``HeadInputs.model`` (the pipeline then keeps the batch's inputs for it)."""

    @abstractmethod
    def maps(self, head: HeadInputs) -> FloatArray:
        """Raw maps [N, T, h, w] (each method's own formula, its ReLU included where it has one)."""

    def from_device_cams(self) -> Callable[[FloatArray], FloatArray] | None:
        """How this method's top-k maps follow from CAMs computed on the device for a linear head (a function
        of the [N, T, h, w] CAMs), or None when it needs the features (the default)."""
        return None


def _identity(maps: FloatArray) -> FloatArray:
    return maps


def _relu_mean(maps: FloatArray) -> FloatArray:
    """Grad-CAM / HiResCAM (score = logit) from CAM: the gradient is W[:, c] / (h·w) at every position."""
    return relu(maps) / np.float32(maps.shape[-2] * maps.shape[-1])


class CAM(CamMethod):
    """Zhou et al. 2016: M_c = Σ_k W[k, c] A_k (no ReLU, no normalisation); defined for a linear head only."""

    name = "cam"

    def maps(self, head: HeadInputs) -> FloatArray:
        return weighted_sum(head.features, head.class_weights())

    def from_device_cams(self) -> Callable[[FloatArray], FloatArray] | None:
        """CAM is what the device computes."""
        return _identity


class _GradientMethod(CamMethod):
    """Base of the gradient-defined methods: holds which score is differentiated.

    A linear head's gradient is the same at every position, so :meth:`closed_form` applies; any other head
    gives per-position gradients ``G [N, T, h, w, C]`` from its gradient graph and :meth:`from_gradients`
    applies the paper's definition. Both agree on a linear head (tested).
    """

    def __init__(self, score: Score = "logit") -> None:
        if score not in SCORES:
            raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score: Score = score

    def maps(self, head: HeadInputs) -> FloatArray:
        if head.is_linear:
            return self.closed_form(head.features, head.gradients(self.score))
        return self.from_gradients(head.features, head.position_gradients(self.score))

    @staticmethod
    @abstractmethod
    def closed_form(features: FloatArray, gradients: FloatArray) -> FloatArray:
        """Maps from a spatially constant gradient [N, T, C]."""

    @staticmethod
    @abstractmethod
    def from_gradients(features: FloatArray, gradients: FloatArray) -> FloatArray:
        """Maps from per-position gradients [N, T, h, w, C] (the published definition)."""


def _channel_sums(features: FloatArray) -> FloatArray:
    return features.sum(axis=(1, 2))[:, None, :]  # S_k = Σ_ab A_abk: [N, 1, C]


def _position_sum(features: FloatArray, gradients: FloatArray) -> FloatArray:
    """Σ_k G_ijk A_ijk → [N, T, h, w]."""
    return np.einsum("nthwc,nhwc->nthw", gradients, features, optimize=True).astype(np.float32)


class GradCAM(_GradientMethod):
    """Selvaraju et al. 2017: ReLU(Σ_k α_k A_k), α_k = mean_ij dS/dA_ijk."""

    name = "gradcam"

    def from_device_cams(self) -> Callable[[FloatArray], FloatArray] | None:
        """With score = logit: ReLU(CAM) / (h·w)."""
        return _relu_mean if self.score == "logit" else None

    @staticmethod
    def closed_form(features: FloatArray, gradients: FloatArray) -> FloatArray:
        return relu(weighted_sum(features, gradients))

    @staticmethod
    def from_gradients(features: FloatArray, gradients: FloatArray) -> FloatArray:
        return relu(weighted_sum(features, gradients.mean(axis=(2, 3), dtype=np.float32)))


class HiResCAM(GradCAM):
    """Draelos & Carin 2020: ReLU(Σ_k dS/dA_ijk · A_ijk); equals Grad-CAM when the gradient is constant, so it
    keeps Grad-CAM's closed form and device maps and differs only with per-position gradients."""

    name = "hirescam"

    @staticmethod
    def from_gradients(features: FloatArray, gradients: FloatArray) -> FloatArray:
        return relu(_position_sum(features, gradients))


class XGradCAM(_GradientMethod):
    """Fu et al. 2020: ReLU(Σ_k α_k A_k), α_k = Σ_ij (A_ijk / Σ_ab A_abk) dS/dA_ijk (0 where Σ A_k = 0)."""

    name = "xgradcam"

    @staticmethod
    def closed_form(features: FloatArray, gradients: FloatArray) -> FloatArray:
        sums = _channel_sums(features)
        ratio = np.divide(sums, sums, out=np.zeros_like(sums), where=sums != 0)
        return relu(weighted_sum(features, gradients * ratio))

    @staticmethod
    def from_gradients(features: FloatArray, gradients: FloatArray) -> FloatArray:
        sums = _channel_sums(features)
        weighted = np.einsum("nthwc,nhwc->ntc", gradients, features, optimize=True)
        alpha = np.divide(weighted, sums, out=np.zeros_like(weighted), where=sums != 0)
        return relu(weighted_sum(features, alpha.astype(np.float32)))


class LayerCAM(_GradientMethod):
    """Jiang et al. 2021: ReLU(Σ_k ReLU(dS/dA_ijk) · A_ijk)."""

    name = "layercam"

    @staticmethod
    def closed_form(features: FloatArray, gradients: FloatArray) -> FloatArray:
        return relu(weighted_sum(features, relu(gradients)))

    @staticmethod
    def from_gradients(features: FloatArray, gradients: FloatArray) -> FloatArray:
        return relu(_position_sum(features, relu(gradients)))


class GradCAMPlusPlus(_GradientMethod):
    """Chattopadhay et al. 2018 (exponential-score closed form): α_ijk = G²/(2G² + S_k G³), S_k = Σ_ab A_abk,
    w_k = Σ_ij α_ijk ReLU(G_ijk), map = ReLU(Σ_k w_k A_k); α = 0 where G = 0 or the denominator is 0.

    With a constant gradient α = 1/(2 + S_k G_k), so w_k = h·w · ReLU(G_k) / (2 + S_k G_k).
    """

    name = "gradcam++"

    @staticmethod
    def closed_form(features: FloatArray, gradients: FloatArray) -> FloatArray:
        h, w = features.shape[1:3]
        sums = _channel_sums(features)
        denominator = 2.0 + sums * gradients
        positive = relu(gradients)
        weights = np.divide(positive, denominator, out=np.zeros_like(positive),
                            where=(positive > 0) & (denominator != 0)) * (h * w)
        return relu(weighted_sum(features, weights.astype(np.float32)))

    @staticmethod
    def from_gradients(features: FloatArray, gradients: FloatArray) -> FloatArray:
        sums = _channel_sums(features)[:, :, None, None, :]  # [N, 1, 1, 1, C]
        g2 = gradients * gradients
        denominator = 2 * g2 + sums * g2 * gradients
        alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=(gradients != 0) & (denominator != 0))
        weights = (alpha * relu(gradients)).sum(axis=(2, 3), dtype=np.float32)
        return relu(weighted_sum(features, weights))


class EigenCAM(CamMethod):
    """Muhammad & Yeasin 2020: projection of the (spatially centred) features on their first principal
    component. Class-agnostic; the sign is fixed so the map correlates positively with Σ_k A_k."""

    name = "eigencam"

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
        """Attach the preprocessed inputs and a model runner for calls whose HeadInputs have no ``model``."""
        self.inputs, self.layout, self.score_fn = inputs, layout, score_fn
        return self

    def maps(self, head: HeadInputs) -> FloatArray:
        model = head.model
        if model is None:
            if self.inputs is None or self.score_fn is None:
                raise InvalidArgumentError("ScoreCAM needs the model: pass HeadInputs(model=ForwardRunner(...)) "
                                           "or call bind(inputs, layout, score_fn) first")
            model = ForwardRunner(self.inputs, self.layout, self.score_fn)
        import cv2

        inputs, layout, score_fn = model.inputs, model.layout, model.predict
        n, h, w, _c = head.features.shape
        height, width = (inputs.shape[2:4] if layout == "NCHW" else inputs.shape[1:3])
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
                mask_axis = masks[:, None] if layout == "NCHW" else masks[..., None]
                scores[start:start + len(chunk)] = score_fn((inputs[i][None] * mask_axis).astype(np.float32))
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


def _target_scores(head: HeadInputs, i: int, logits: FloatArray, probs: FloatArray, score: Score,
                   method: str) -> FloatArray:
    """Each target's score for a batch of head outputs of image ``i``: [B, T]."""
    if head.fixed_score is not None and head.fixed_score[i].any():
        raise InvalidArgumentError(f"{method} weighs by head scores: it takes class, rank and difference targets, "
                                   "not custom scores")
    values = logits if score == "logit" else probs
    if head.directions is not None:
        return (values @ head.directions[i].T).astype(np.float32)
    return values[:, head.classes[i]]


class _HeadForwardMethod(CamMethod):
    """Base of the forward-only methods that perturb the features and run the head only (any head)."""

    default_score: ClassVar[Score] = "logit"

    def __init__(self, score: Score | None = None, batch_size: int = 256) -> None:
        score = score or self.default_score
        if score not in SCORES:
            raise InvalidArgumentError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be ≥ 1, got {batch_size}")
        self.score: Score = score
        self.batch_size = batch_size

    def _scores(self, head: HeadInputs, i: int, perturbed: FloatArray) -> FloatArray:
        """Target scores [B, T] of a batch of perturbed features of image ``i``, through the head in chunks."""
        out = []
        for start in range(0, len(perturbed), self.batch_size):
            logits, probs = head.model_head.forward(perturbed[start:start + self.batch_size])
            out.append(_target_scores(head, i, logits, probs, self.score, self.name))
        return np.concatenate(out)


class AblationCAM(_HeadForwardMethod):
    """Desai & Ramaswamy 2020: ReLU(Σ_k w_k A_k), w_k = (y − y_k)/y, y_k the score with channel k zeroed.

    The C ablated feature maps of an image go through the head only (batched), never the backbone; the score
    is the logit by default (as pytorch-grad-cam's targets), or the probability. w_k = 0 where y = 0.
    """

    name = "ablationcam"

    def maps(self, head: HeadInputs) -> FloatArray:
        n, h, w, c = head.features.shape
        out = np.zeros((n, head.classes.shape[1], h, w), np.float32)
        for i in range(n):
            original = self._scores(head, i, head.features[i:i + 1])[0]  # [T]
            ablated = np.repeat(head.features[i:i + 1], c, axis=0)
            ablated[np.arange(c), :, :, np.arange(c)] = 0.0
            drops = original[None, :] - self._scores(head, i, ablated)  # [C, T]
            weights = np.divide(drops, original[None, :], out=np.zeros_like(drops), where=original[None, :] != 0)
            out[i] = relu(weighted_sum(head.features[i:i + 1], weights.T[None].astype(np.float32)))[0]
        return out


RECIPRO_KERNEL = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], np.float32)
"""ReciproCAM's Gaussian spatial mask around a position (centre 1)."""


class ReciproCAM(_HeadForwardMethod):
    """Byun & Lee 2022: map_ij = score of the head on the features masked to a 3×3 Gaussian around (i, j).

    The h·w masked feature maps of an image go through the head only (batched). The score is the softmax
    probability as in the paper (``score="logit"`` optional); the map is shifted so its minimum is 0, as the
    reference implementation's min-max normalisation does (``gaussian=False``: a one-position mask).
    """

    name = "reciprocam"
    default_score = "probability"

    def __init__(self, score: Score | None = None, batch_size: int = 256, gaussian: bool = True) -> None:
        super().__init__(score, batch_size)
        self.gaussian = gaussian

    def masks(self, h: int, w: int) -> FloatArray:
        """The h·w spatial masks [h·w, h, w]."""
        out = np.zeros((h * w, h + 2, w + 2), np.float32)
        kernel = RECIPRO_KERNEL if self.gaussian else np.pad(np.ones((1, 1), np.float32), 1)
        for i in range(h):
            for j in range(w):
                out[i * w + j, i:i + 3, j:j + 3] = kernel
        return out[:, 1:-1, 1:-1]

    def maps(self, head: HeadInputs) -> FloatArray:
        n, h, w, _ = head.features.shape
        # The head's own masked forward: a linear head pools M·A, a head graph with the position_masks input
        # forms its first linear stage once per position (export/gradients.py), others get the masked copies.
        logits, probs = head.model_head.masked_forward(head.features, self.masks(h, w), self.batch_size)
        out = np.zeros((n, head.classes.shape[1], h, w), np.float32)
        for i in range(n):
            scores = _target_scores(head, i, logits[i], probs[i], self.score, self.name)  # [h·w, T]
            maps = scores.T.reshape(-1, h, w)
            out[i] = maps - maps.min(axis=(1, 2), keepdims=True)
        return out


METHODS: dict[str, type[CamMethod]] = {
    cls.name: cls for cls in (CAM, GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, EigenCAM, ScoreCAM,
                               AblationCAM, ReciproCAM)
}
"""Method name → class."""

ALIASES = {"gradcampp": "gradcam++", "grad-cam": "gradcam", "grad-cam++": "gradcam++", "score-cam": "scorecam",
           "eigen-cam": "eigencam", "layer-cam": "layercam", "xgrad-cam": "xgradcam", "hires-cam": "hirescam",
           "ablation-cam": "ablationcam", "recipro-cam": "reciprocam"}


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
