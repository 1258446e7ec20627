"""Target objects: what score a map explains (a class, a rank, a difference of classes, any function of the outputs).

A plain id or label stays the shortcut; a target object goes wherever classes go (``classes=`` in the API). For
the GAP → Dense head every target reduces to a direction over the logits: the derivative of its score with
respect to the logits ``z``. The chain rule through the linear head is exact, so the gradient methods stay
closed forms: dScore/dA_ijk = (W · direction)_k / (h·w).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeGuard, Union, cast

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError, UnknownClassError

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


ClassSpec = Union[int, str, Target]
"""One class: an id, a label, or a target object."""


@dataclass(frozen=True)
class PerImage:
    """The explicit per-image form: one list of classes for each image, in input order.

    A list of lists passed as ``classes`` means the same (the form is guessed from the nesting); this says it.
    """

    rows: Sequence[Sequence[ClassSpec]]


Targets = Union[None, ClassSpec, Sequence[ClassSpec], Sequence[Sequence[ClassSpec]], PerImage]
"""None (top-k), one class, classes for every image, or one list of classes per image (:class:`PerImage`, or a
list of lists); a class is an id, a label or a target object."""


def check_top_k(top_k: int, num_classes: int, option: str = "top_k") -> None:
    """The one check of a top-k count: 1 ≤ top_k ≤ K (``option`` names it in the error, e.g. "--top-k")."""
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 1 <= top_k <= num_classes:
        raise InvalidArgumentError(f"{option} must be in [1, {num_classes}], got {top_k}")


def normalise_label(label: str) -> str:
    """A label as matched: lower case, '_' and '-' as spaces, runs of spaces collapsed ("Egyptian cat" ==
    "egyptian_cat")."""
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


class ClassIndex:
    """Class ids from ids or labels (case- and separator-insensitive), with suggestions for typos."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._by_label: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            self._by_label.setdefault(normalise_label(label), []).append(i)

    @property
    def num_classes(self) -> int:
        """K."""
        return len(self.labels)

    def class_id(self, target: ClassSpec) -> int:
        """A class id from an id or a label (case-insensitive); ambiguous labels must be given by id."""
        if isinstance(target, ClassTarget):
            return self.class_id(target.target)
        if isinstance(target, bool):
            raise UnknownClassError(target, "expected an int id or a label")
        if isinstance(target, int | np.integer):
            if not 0 <= int(target) < self.num_classes:
                raise UnknownClassError(target, f"id must be in [0, {self.num_classes - 1}]")
            return int(target)
        if isinstance(target, str):
            if target.strip().lstrip("-").isdigit():
                return self.class_id(int(target))
            ids = self.label_ids(target)
            if not ids:
                raise UnknownClassError(target, f"no such label{self._suggestion(target)}")
            if len(ids) > 1:
                raise UnknownClassError(target, f"label is ambiguous (ids {ids}); give the id instead")
            return ids[0]
        raise UnknownClassError(target, "expected an int id or a label")

    def label_ids(self, target: str) -> list[int]:
        """Ids whose label matches ``target`` ignoring case and separators; "tabby, tabby cat" (a WordNet synonym
        list) matches when the parts that are labels all name the same class."""
        ids = self._by_label.get(normalise_label(target))
        if ids or "," not in target:
            return list(ids or [])
        found = {tuple(self._by_label[key]) for key in map(normalise_label, target.split(","))
                 if key in self._by_label}
        return list(found.pop()) if len(found) == 1 else []

    def _suggestion(self, target: str) -> str:
        import difflib

        close = difflib.get_close_matches(normalise_label(target), list(self._by_label), n=3, cutoff=0.75)
        if not close:
            return ""
        names = [self.labels[self._by_label[key][0]] for key in close]
        return f"; did you mean {' or '.join(repr(n) for n in names)}?"

    def check_classes(self, classes: Sequence[ClassSpec] | None, top_k: int, option: str = "top_k") -> None:
        """The front ends' check before any work: every class given exists, or (none given) ``top_k`` fits K."""
        if classes is None:
            check_top_k(top_k, self.num_classes, option)
            return
        if not classes:
            raise InvalidArgumentError("classes must not be empty")
        for spec in classes:
            self.class_id(spec)

    def check(self, spec: ClassSpec) -> None:
        """Validate one class or target object before any image is decoded (labels exist, ranks fit)."""
        if isinstance(spec, Target) and not isinstance(spec, ClassTarget):
            spec.validate(self.class_id, self.num_classes)
        else:
            self.class_id(spec)


@dataclass(frozen=True)
class ResolvedTargets:
    """The targets of a batch: class ids [N, T] and, for target objects, directions, fixed-score flags, labels."""

    ids: npt.NDArray[np.intp]
    directions: npt.NDArray[np.float32] | None = None
    fixed_score: npt.NDArray[np.bool_] | None = None
    labels: list[list[str]] | None = None


@dataclass(frozen=True)
class TargetRequest:
    """What the caller asked for, in one normal form: top-k, shared classes, or one row of classes per image."""

    top_k: int
    shared: tuple[ClassSpec, ...] | None = None
    per_image: tuple[tuple[ClassSpec, ...], ...] | None = None

    @classmethod
    def parse(cls, classes: Targets, top_k: int, num_classes: int) -> TargetRequest:
        """Normalise ``classes`` (None, one class, a list, a list of lists or :class:`PerImage`)."""
        if classes is None:
            check_top_k(top_k, num_classes)
            return cls(top_k)
        if isinstance(classes, PerImage) or is_per_image(classes):
            rows = classes.rows if isinstance(classes, PerImage) else classes
            return cls(top_k, per_image=tuple(tuple(row) for row in rows))
        if isinstance(classes, int | str | np.integer | Target):
            return cls(top_k, shared=(classes,))
        items = tuple(cast("Sequence[ClassSpec]", classes))
        if not items:
            raise InvalidArgumentError("classes must not be empty")
        return cls(top_k, shared=items)

    @property
    def has_objects(self) -> bool:
        """True when some class is a target object (directions, custom labels) rather than an id or label."""
        rows = self.per_image or ((self.shared,) if self.shared else ())
        return any(isinstance(c, Target) for row in rows for c in row)

    def validate(self, index: ClassIndex, total: int | None = None) -> None:
        """Check every label, rank and row length before any image is decoded."""
        if self.per_image is not None:
            if total is not None and len(self.per_image) != total:
                raise InvalidArgumentError(f"per-image classes: got {len(self.per_image)} lists for {total} images")
            if len({len(r) for r in self.per_image}) > 1 or any(not r for r in self.per_image):
                raise InvalidArgumentError("per-image class lists must all have the same, non-zero length")
        for row in self.per_image or ((self.shared,) if self.shared else ()):
            for spec in row:
                index.check(spec)

    def rows_for(self, positions: Sequence[int]) -> list[tuple[ClassSpec, ...]]:
        """The classes of the images at ``positions`` (input order), for shared or per-image requests."""
        if self.per_image is not None:
            if positions and max(positions) >= len(self.per_image):
                raise InvalidArgumentError(f"per-image classes: got {len(self.per_image)} lists for more images")
            return [self.per_image[p] for p in positions]
        assert self.shared is not None
        return [self.shared] * len(positions)

    def resolve(self, index: ClassIndex, probabilities: FloatArray, positions: Sequence[int],
                logits: FloatArray | None = None) -> ResolvedTargets:
        """The targets of a batch of images at ``positions`` from their probabilities (and logits, for objects)."""
        n = probabilities.shape[0]
        if self.shared is None and self.per_image is None:
            return ResolvedTargets(top_k_ids(probabilities, self.top_k))
        rows = self.rows_for(positions)
        if len({len(r) for r in rows}) > 1 or any(not r for r in rows):
            raise InvalidArgumentError("per-image class lists must all have the same, non-zero length")
        if not self.has_objects:
            ids = [[index.class_id(c) for c in row] for row in rows]
            return ResolvedTargets(np.asarray(ids, dtype=np.intp).reshape(n, -1))
        k = index.num_classes
        zeros = np.zeros(k, dtype=np.float32)
        resolved = [[(spec if isinstance(spec, Target) else ClassTarget(spec)).resolve(
            index.class_id, index.labels, probabilities[i], logits[i] if logits is not None else zeros)
            for spec in row] for i, row in enumerate(rows)]
        t = len(rows[0]) if rows else 0
        ids_array = np.array([[r.class_id for r in row] for row in resolved], dtype=np.intp).reshape(n, t)
        directions = np.zeros((n, t, k), dtype=np.float32)
        fixed = np.zeros((n, t), dtype=bool)
        for i, row_targets in enumerate(resolved):
            for j, r in enumerate(row_targets):
                if r.direction is None:
                    directions[i, j, r.class_id] = 1.0
                else:
                    directions[i, j] = r.direction
                fixed[i, j] = r.fixed_score
        labels = [[r.label or index.labels[r.class_id] for r in row] for row in resolved]
        return ResolvedTargets(ids_array, directions, fixed, labels)


def is_per_image(classes: object) -> TypeGuard[Sequence[Sequence[ClassSpec]]]:
    """True for the per-image form: :class:`PerImage`, or a non-empty list whose items are all lists."""
    if isinstance(classes, PerImage):
        return True
    if classes is None or isinstance(classes, int | str | np.integer | Target):
        return False
    items = list(cast("Sequence[object]", classes))
    return bool(items) and all(isinstance(c, list | tuple) for c in items)


def top_k_ids(probabilities: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Class ids [N, k] by falling probability, ties by lower id (a stable argsort; argmax for k = 1, ~15x faster)."""
    if k == 1 and not np.isnan(probabilities).any():  # argmax returns the first maximum: the stable order's head
        return np.argmax(probabilities, axis=1)[:, None].astype(np.intp)
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
