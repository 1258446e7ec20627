"""Target objects: what score a map explains (a class, a rank, a difference of classes, any function of the outputs).

A plain id or label stays the shortcut; a target object goes wherever classes go (``classes=`` in the API). For
the GAP → Dense head every target reduces to a direction over the logits: the derivative of its score with
respect to the logits ``z``. The chain rule through the linear head is exact, so the gradient methods stay
closed forms: dScore/dA_ijk = (W · direction)_k / (h·w).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError

FloatArray = npt.NDArray[np.float32]
ClassLookup = Callable[[int | str], int]
"""Resolves an id or a label to a class id (the engine's ``class_id``)."""


@dataclass(frozen=True)
class ResolvedTarget:
    """One target for one image: the class shown in reports, its display label and its logit direction."""

    class_id: int
    label: str | None = None
    """None: the class's own label."""
    direction: npt.NDArray[np.float64] | None = None
    """dScore/dz over the K logits; None for the plain class score (a one-hot direction)."""
    fixed_score: bool = False
    """True when the target defines its own score (the method's logit/probability choice does not apply)."""


class Target(ABC):
    """A score to explain, resolved per image from its probabilities and logits."""

    @abstractmethod
    def resolve(self, lookup: ClassLookup, labels: tuple[str, ...], probabilities: FloatArray,
                logits: FloatArray) -> ResolvedTarget:
        """The target for one image ([K] probabilities and logits)."""

    def validate(self, lookup: ClassLookup, num_classes: int) -> None:  # noqa: B027 (optional hook)
        """Check what can be checked before any image is seen (labels, ranks); raise on a bad target."""


@dataclass(frozen=True)
class ClassTarget(Target):
    """One class, by id or label: the same as passing the id or label itself."""

    target: int | str

    def resolve(self, lookup: ClassLookup, labels: tuple[str, ...], probabilities: FloatArray,
                logits: FloatArray) -> ResolvedTarget:
        """The class's id."""
        return ResolvedTarget(lookup(self.target))


@dataclass(frozen=True)
class RankTarget(Target):
    """The class at a rank of the image's own prediction (1 = most probable)."""

    rank: int

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InvalidArgumentError(f"rank must be an int ≥ 1, got {self.rank!r}")

    def validate(self, lookup: ClassLookup, num_classes: int) -> None:
        """The rank must exist."""
        if self.rank > num_classes:
            raise InvalidArgumentError(f"rank {self.rank} exceeds the {num_classes} classes")

    def resolve(self, lookup: ClassLookup, labels: tuple[str, ...], probabilities: FloatArray,
                logits: FloatArray) -> ResolvedTarget:
        """The id at this rank of the probabilities (ties in id order)."""
        if self.rank > probabilities.shape[0]:
            raise InvalidArgumentError(f"rank {self.rank} exceeds the {probabilities.shape[0]} classes")
        return ResolvedTarget(int(np.argsort(-probabilities, kind="stable")[self.rank - 1]))


@dataclass(frozen=True)
class DifferenceTarget(Target):
    """Evidence for one class against another: score(positive) − score(negative) (contrastive maps)."""

    positive: int | str
    negative: int | str

    def validate(self, lookup: ClassLookup, num_classes: int) -> None:
        """Both classes must exist and differ."""
        if lookup(self.positive) == lookup(self.negative):
            raise InvalidArgumentError(f"a difference of a class with itself ({self.positive!r}) is always zero")

    def resolve(self, lookup: ClassLookup, labels: tuple[str, ...], probabilities: FloatArray,
                logits: FloatArray) -> ResolvedTarget:
        """Direction e_positive − e_negative; shown as the positive class."""
        pos, neg = lookup(self.positive), lookup(self.negative)
        if pos == neg:
            raise InvalidArgumentError(f"a difference of a class with itself ({labels[pos]!r}) is always zero")
        direction = np.zeros(probabilities.shape[0])
        direction[pos], direction[neg] = 1.0, -1.0
        return ResolvedTarget(pos, f"{labels[pos]} − {labels[neg]}", direction)


@dataclass(frozen=True)
class ScoreTarget(Target):
    """Any differentiable function of the logits or probabilities, vectorised: ``fn([B, K]) → [B]``.

    ``gradient`` (``[B, K] → [B, K]``) makes the map exact; without it the derivative is taken by central
    differences in float64 (2K calls in one batch; accurate to about 1e-8 relative for smooth functions).
    The target is shown as the class its score depends on most.
    """

    fn: Callable[[npt.NDArray[np.float64]], npt.ArrayLike]
    on: Literal["logits", "probabilities"] = "logits"
    gradient: Callable[[npt.NDArray[np.float64]], npt.ArrayLike] | None = None
    name: str = "custom score"
    step: float = field(default=1e-4, repr=False)

    def __post_init__(self) -> None:
        if self.on not in ("logits", "probabilities"):
            raise InvalidArgumentError(f"on must be 'logits' or 'probabilities', got {self.on!r}")
        if not callable(self.fn) or (self.gradient is not None and not callable(self.gradient)):
            raise InvalidArgumentError("fn (and gradient, when given) must be callable")

    def _derivative(self, point: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        k = point.shape[0]
        if self.gradient is not None:
            grad = np.asarray(self.gradient(point[None]), dtype=np.float64).reshape(-1)
        else:
            h = self.step * (1.0 + np.abs(point))
            shifted = np.concatenate([point + np.diag(h), point - np.diag(h)])
            values = np.asarray(self.fn(shifted), dtype=np.float64).reshape(-1)
            if values.shape != (2 * k,):
                raise InvalidArgumentError(f"{self.name}: fn must map [B, {k}] to [B] values")
            grad = (values[:k] - values[k:]) / (2.0 * h)
        if grad.shape != (k,) or not np.isfinite(grad).all():
            raise InvalidArgumentError(f"{self.name}: the score's derivative must be {k} finite numbers")
        return grad

    def resolve(self, lookup: ClassLookup, labels: tuple[str, ...], probabilities: FloatArray,
                logits: FloatArray) -> ResolvedTarget:
        """Direction dfn/dz, through the softmax's Jacobian when ``fn`` reads probabilities."""
        if self.on == "logits":
            direction = self._derivative(logits.astype(np.float64))
        else:
            p = probabilities.astype(np.float64)
            g = self._derivative(p)
            direction = p * (g - float(p @ g))  # softmax Jacobian (symmetric) applied to dfn/dp
        return ResolvedTarget(int(np.argmax(np.abs(direction))), self.name, direction, fixed_score=True)
