"""ROAD (Rong et al. 2022, arXiv 2202.00449): remove pixels by noisy linear imputation, then re-score.

Removing pixels by replacing them with a constant or a blur leaks the shape of the removed region to the model;
ROAD instead fills every removed pixel with the weighted mean of its eight neighbours (direct neighbours 1/6,
diagonal ones 1/12), solved jointly as one sparse linear system, plus a little Gaussian noise. This follows
pytorch-grad-cam's definition: imputation on the model's input tensor, percentiles of the map choose what is
removed, the score is the target's probability after imputation minus before, averaged over the percentiles.

* MoRF (most relevant first) at percentile p removes the pixels whose map value is ≥ the p-th percentile;
  a faithful map makes the score fall (more negative is better).
* LeRF (least relevant first) removes the pixels whose map value is ≤ the (100 − p)-th percentile;
  a faithful map keeps the score (higher is better).
* combined = (LeRF − MoRF) / 2 (higher is better).

The sparse solve needs SciPy (the ``evaluate`` extra); everything else is NumPy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError, MissingDependencyError

FloatArray = npt.NDArray[np.float32]

NEIGHBOUR_WEIGHTS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
)
"""(row offset, column offset) → weight of that neighbour in the imputed value."""
DEFAULT_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
DEFAULT_NOISE = 0.01


def _sparse() -> tuple[Any, Any]:
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:
        raise MissingDependencyError("ROAD", "scipy", "evaluate") from None
    return coo_matrix, spsolve


def impute_linear(image: FloatArray, keep: npt.NDArray[np.bool_], *, noise: float = DEFAULT_NOISE,
                  rng: np.random.Generator | None = None) -> FloatArray:
    """Fill the pixels of an [H, W, C] image where ``keep`` is False from their neighbours (ROAD's imputer).

    Each removed pixel equals the weight-normalised sum of its in-image neighbours, removed neighbours being
    unknowns of the same system; ``noise`` is the standard deviation of Gaussian noise added to the filled values.
    """
    if image.ndim != 3 or keep.shape != image.shape[:2]:
        raise InvalidArgumentError(f"image [H, W, C] and keep [H, W] expected, got {image.shape} and {keep.shape}")
    height, width, channels = image.shape
    flat_keep = keep.reshape(-1)
    unknown = np.flatnonzero(~flat_keep)
    out = np.array(image, dtype=np.float32, copy=True)
    if unknown.size == 0:
        return out
    if not flat_keep.any():
        # No neighbour is known (a flat map removes every pixel at once): the system is singular and the
        # least-informative fill is the image's own per-channel mean.
        filled = np.broadcast_to(out.mean(axis=(0, 1)), out.shape).astype(np.float32)
        if noise:
            filled = filled + np.float32(noise) * (rng or np.random.default_rng()).standard_normal(
                out.shape).astype(np.float32)
        return filled
    coo_matrix, spsolve = _sparse()
    values = out.reshape(-1, channels).astype(np.float64)
    variable = np.full(flat_keep.size, -1, dtype=np.intp)
    variable[unknown] = np.arange(unknown.size)
    rows_y, rows_x = np.divmod(unknown, width)
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, channels))
    entries_row: list[npt.NDArray[np.intp]] = []
    entries_col: list[npt.NDArray[np.intp]] = []
    entries_val: list[npt.NDArray[np.float64]] = []
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
        ny, nx = rows_y + dy, rows_x + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        diagonal[inside] -= weight
        equation = np.flatnonzero(inside)
        neighbour = ny[inside] * width + nx[inside]
        known = flat_keep[neighbour]
        rhs[equation[known]] -= weight * values[neighbour[known]]
        entries_row.append(equation[~known])
        entries_col.append(variable[neighbour[~known]])
        entries_val.append(np.full(int((~known).sum()), weight))
    index = np.arange(unknown.size)
    system = coo_matrix((np.concatenate([*entries_val, diagonal]),
                         (np.concatenate([*entries_row, index]), np.concatenate([*entries_col, index]))),
                        shape=(unknown.size, unknown.size)).tocsc()
    solution = np.asarray(spsolve(system, rhs)).reshape(unknown.size, channels)
    if noise:
        solution = solution + noise * (rng or np.random.default_rng()).standard_normal(solution.shape)
    out.reshape(-1, channels)[unknown] = solution.astype(np.float32)
    return out


def removal_masks(saliency: FloatArray, percentile: float, order: str) -> npt.NDArray[np.bool_]:
    """The ``keep`` mask of one ROAD step: "morf" removes the most relevant pixels, "lerf" the least."""
    if order == "morf":
        ranked = saliency
    elif order == "lerf":
        ranked = 1.0 - saliency
    else:
        raise InvalidArgumentError(f"order must be 'morf' or 'lerf', got {order!r}")
    return np.asarray(ranked < np.percentile(ranked, percentile))


@dataclass(frozen=True)
class RoadScore:
    """Score changes (probability after − before) at each percentile, most and least relevant first."""

    percentiles: tuple[float, ...]
    morf: FloatArray
    lerf: FloatArray

    @property
    def morf_mean(self) -> float:
        """Mean MoRF change over the percentiles (lower is better)."""
        return float(np.mean(self.morf))

    @property
    def lerf_mean(self) -> float:
        """Mean LeRF change over the percentiles (higher is better)."""
        return float(np.mean(self.lerf))

    @property
    def combined(self) -> float:
        """(LeRF − MoRF) / 2 (higher is better)."""
        return (self.lerf_mean - self.morf_mean) / 2.0


def road(tensor_hwc: FloatArray, saliency: FloatArray, score: Callable[[FloatArray], FloatArray], *,
         percentiles: Sequence[float] = DEFAULT_PERCENTILES, noise: float = DEFAULT_NOISE,
         rng: np.random.Generator | None = None) -> RoadScore:
    """ROAD for one image: ``tensor_hwc`` the model input as [H, W, C], ``saliency`` its [H, W] map in [0, 1].

    ``score`` maps a stack of [H, W, C] inputs to the target's score per input (one batched model call).
    """
    if saliency.shape != tensor_hwc.shape[:2]:
        raise InvalidArgumentError(f"saliency shape {saliency.shape} differs from the input's {tensor_hwc.shape[:2]}")
    if not percentiles or not all(0 < p < 100 for p in percentiles):
        raise InvalidArgumentError(f"percentiles must be in (0, 100), got {list(percentiles)}")
    rng = rng or np.random.default_rng(0)
    variants = [tensor_hwc]
    for order in ("morf", "lerf"):
        for p in percentiles:
            keep = removal_masks(saliency, p, order)
            variants.append(impute_linear(tensor_hwc, keep, noise=noise, rng=rng))
    scores = np.asarray(score(np.stack(variants)), dtype=np.float32)
    change = scores[1:] - scores[0]
    n = len(percentiles)
    return RoadScore(tuple(float(p) for p in percentiles), morf=change[:n], lerf=change[n:])
