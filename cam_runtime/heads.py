"""The classifier head after the features, as the methods see it: a linear GAP → Dense head or a head graph.

* :class:`LinearHead`: ``logits = mean_hw(A) · W + b``; its gradient is the same at every position, so the
  methods keep their closed forms (the fast path, numbers unchanged).
* :class:`GraphHead`: any other head, run from the model folder's ``head.onnx`` (features → logits,
  probabilities) and ``gradient.onnx`` (features, logit directions → per-position gradients) with onnxruntime.

Features are always NHWC ``[N, h, w, C]`` here; a graph head converts to its own layout at the boundary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .errors import GraphMismatchError
from .model.manifest import HeadSpec, Layout

FloatArray = npt.NDArray[np.float32]
MASKS_INPUT = "position_masks"
"""head.onnx's optional input [P, h·w] (an overridable initializer defaulting to one all-ones mask): with it the
head returns the logits and probabilities of the P masked copies of each image, [N·P, K], image-major."""


def softmax(logits: FloatArray) -> FloatArray:
    """Softmax over the last axis (float32 result, computed stably)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


class Head(ABC):
    """What follows the features: logits for any features, and gradients of logit directions."""

    linear: ClassVar[bool]
    num_classes: int

    @abstractmethod
    def forward(self, features: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(logits [N, K], probabilities [N, K]) for NHWC features [N, h, w, C]."""

    def logits(self, features: FloatArray) -> FloatArray:
        """Logits [N, K]."""
        return self.forward(features)[0]

    @abstractmethod
    def logit_gradients(self, features: FloatArray, directions: FloatArray) -> FloatArray:
        """∂(Σ_k directions[n, t, k] · z_k)/∂features: [N, T, h, w, C]."""

    def masked_forward(self, features: FloatArray, masks: FloatArray,
                       batch_size: int = 256) -> tuple[FloatArray, FloatArray]:
        """(logits, probabilities) [N, P, K] of the head on ``features[n] ⊙ masks[p]`` (masks [P, h, w]).

        This default builds the masked copies, at most ``batch_size`` per head call; heads override it with
        something cheaper where they can."""
        n, h, w, c = features.shape
        p = masks.shape[0]
        logits = np.empty((n, p, self.num_classes), np.float32)
        probs = np.empty_like(logits)
        flat = logits.reshape(n * p, -1), probs.reshape(n * p, -1)
        per_call = max(1, batch_size // max(p, 1))
        for start in range(0, n, per_call):
            chunk = features[start:start + per_call]
            masked = (chunk[:, None] * masks[None, ..., None]).reshape(-1, h, w, c)
            for begin in range(0, len(masked), batch_size):
                z, q = self.forward(masked[begin:begin + batch_size])
                rows = slice(start * p + begin, start * p + begin + len(z))
                flat[0][rows], flat[1][rows] = z, q
        return logits, probs


class LinearHead(Head):
    """``z = mean_hw(A) · W + b`` (the CAM paper's head)."""

    linear = True

    def __init__(self, weights: FloatArray, bias: FloatArray | None = None) -> None:
        self.weights = weights
        self.bias = np.zeros(weights.shape[1], np.float32) if bias is None else bias
        self.num_classes = int(weights.shape[1])

    def forward(self, features: FloatArray) -> tuple[FloatArray, FloatArray]:
        logits = (features.mean(axis=(1, 2)) @ self.weights + self.bias).astype(np.float32)
        return logits, softmax(logits)

    def masked_forward(self, features: FloatArray, masks: FloatArray,
                       batch_size: int = 256) -> tuple[FloatArray, FloatArray]:
        n, h, w, c = features.shape
        # mean_hw(A ⊙ M_p) = M_p · A / (h·w): one matrix product per image instead of P masked copies
        pooled = np.matmul(masks.reshape(1, -1, h * w), features.reshape(n, h * w, c)) / np.float32(h * w)
        logits = (pooled @ self.weights + self.bias).astype(np.float32)
        return logits, softmax(logits)

    def constant_gradients(self, directions: FloatArray, spatial_size: int) -> FloatArray:
        """The position-independent gradient (directions · Wᵀ)/(h·w): [N, T, C]."""
        return ((directions @ self.weights.T) / np.float32(spatial_size)).astype(np.float32)

    def logit_gradients(self, features: FloatArray, directions: FloatArray) -> FloatArray:
        n, h, w, c = features.shape
        constant = self.constant_gradients(directions, h * w)
        return np.broadcast_to(constant[:, :, None, None, :], (n, directions.shape[1], h, w, c)).astype(np.float32)


class GraphHead(Head):
    """A non-linear head run from ``head.onnx`` and ``gradient.onnx`` (see :class:`cam_runtime.model.HeadSpec`)."""

    linear = False

    def __init__(self, head_session: Any, gradient_session: Any, spec: HeadSpec, layout: Layout,
                 num_classes: int, batch_size: int = 64) -> None:
        self.head_session = head_session
        self.gradient_session = gradient_session
        self.spec = spec
        self.layout = layout
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.feature_shape = self._validate()
        """(h, w, C) where the graphs fix them (0 for a dynamic dimension)."""

    @property
    def channels(self) -> int:
        """C, from the head graph's input."""
        return self.feature_shape[2]

    def _validate(self) -> tuple[int, int, int]:
        """Refuse graphs whose names, ranks or sizes do not match the manifest (a swapped or foreign graph)."""
        spec = self.spec
        found: list[tuple[int, int, int]] = []
        for role, session, inputs, outputs in (
                ("head", self.head_session, [spec.features_input], [spec.logits, spec.probabilities]),
                ("gradient", self.gradient_session, [spec.features_input, spec.directions_input], [spec.gradients])):
            ins = {i.name: i.shape for i in session.get_inputs()}
            outs = {o.name: o.shape for o in session.get_outputs()}
            if sorted(ins) != sorted(inputs):
                raise GraphMismatchError(f"{role} graph inputs are {sorted(ins)}, the manifest names {inputs}")
            missing = [o for o in outputs if o not in outs]
            if missing:
                raise GraphMismatchError(f"{role} graph has no output {missing[0]!r}; outputs are {sorted(outs)}")
            shape = ins[spec.features_input]
            if len(shape) != 4:
                raise GraphMismatchError(f"{role} graph input {spec.features_input!r} has shape {shape}, not 4-D")
            dims = [d if isinstance(d, int) else 0 for d in shape[1:]]
            h, w, c = (dims[1], dims[2], dims[0]) if self.layout == "NCHW" else (dims[0], dims[1], dims[2])
            found.append((h, w, c))
            for name in outputs[:2] if role == "head" else []:
                k = outs[name][-1] if outs[name] else None
                if len(outs[name]) != 2 or (isinstance(k, int) and k != self.num_classes):
                    raise GraphMismatchError(f"head graph output {name!r} has shape {outs[name]}, expected "
                                             f"[N, {self.num_classes}]")
            if role == "gradient":
                k = ins[spec.directions_input][-1] if ins[spec.directions_input] else None
                if len(ins[spec.directions_input]) != 3 or (isinstance(k, int) and k != self.num_classes):
                    raise GraphMismatchError(f"gradient graph input {spec.directions_input!r} has shape "
                                             f"{ins[spec.directions_input]}, expected [N, T, {self.num_classes}]")
                if len(outs[spec.gradients]) != 5:
                    raise GraphMismatchError(f"gradient graph output {spec.gradients!r} has shape "
                                             f"{outs[spec.gradients]}, expected [N, T, h, w, C]")
        if any(a and b and a != b for a, b in zip(found[0], found[1], strict=True)):
            raise GraphMismatchError(f"head and gradient graphs expect different features: {found[0]} vs {found[1]} "
                                     "(h, w, C)")
        return tuple(max(a, b) for a, b in zip(found[0], found[1], strict=True))  # type: ignore[return-value]

    def _to_layout(self, features: FloatArray) -> FloatArray:
        return np.ascontiguousarray(features.transpose(0, 3, 1, 2) if self.layout == "NCHW" else features)

    def forward(self, features: FloatArray) -> tuple[FloatArray, FloatArray]:
        logits, probs = [], []
        for start in range(0, max(len(features), 1), self.batch_size):
            chunk = self._to_layout(features[start:start + self.batch_size])
            z, p = self.head_session.run([self.spec.logits, self.spec.probabilities],
                                         {self.spec.features_input: chunk})
            logits.append(np.asarray(z, np.float32))
            probs.append(np.asarray(p, np.float32))
        return np.concatenate(logits), np.concatenate(probs)

    @property
    def takes_masks(self) -> bool:
        """True when head.onnx has the optional ``position_masks`` input (masked forwards in one graph call)."""
        names = {i.name for i in self.head_session.get_overridable_initializers()}
        return MASKS_INPUT in names

    def masked_forward(self, features: FloatArray, masks: FloatArray,
                       batch_size: int = 256) -> tuple[FloatArray, FloatArray]:
        if not self.takes_masks:
            return super().masked_forward(features, masks, batch_size)
        n, p = features.shape[0], masks.shape[0]
        flat_masks = np.ascontiguousarray(masks.reshape(p, -1), np.float32)
        logits = np.empty((n, p, self.num_classes), np.float32)
        probs = np.empty_like(logits)
        per_call = max(1, batch_size // max(p, 1))
        for start in range(0, n, per_call):
            chunk = self._to_layout(features[start:start + per_call])
            z, q = self.head_session.run([self.spec.logits, self.spec.probabilities],
                                         {self.spec.features_input: chunk, MASKS_INPUT: flat_masks})
            logits[start:start + per_call] = np.asarray(z, np.float32).reshape(len(chunk), p, -1)
            probs[start:start + per_call] = np.asarray(q, np.float32).reshape(len(chunk), p, -1)
        return logits, probs

    def logit_gradients(self, features: FloatArray, directions: FloatArray) -> FloatArray:
        n, h, w, c = features.shape
        out = np.empty((n, directions.shape[1], h, w, c), np.float32)
        step = max(1, self.batch_size // max(1, directions.shape[1]))
        for start in range(0, n, step):
            (grads,) = self.gradient_session.run([self.spec.gradients], {
                self.spec.features_input: self._to_layout(features[start:start + step]),
                self.spec.directions_input: np.ascontiguousarray(directions[start:start + step], np.float32)})
            grads = np.asarray(grads, np.float32)
            out[start:start + step] = grads.transpose(0, 1, 3, 4, 2) if self.layout == "NCHW" else grads
        return out
