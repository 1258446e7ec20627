"""How faithfully a derived model (INT8, FP16) reproduces its float32 source: predictions, maps and boxes.

(Not to be confused with the faithfulness metrics of explanations in :mod:`cam_runtime.evaluation`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..boxes import boxes_from_map
from ..engine import CamEngine
from ..errors import ImageFolderError, InvalidArgumentError
from ..image_files import iter_image_files
from ..imaging import IMAGE_EXTENSIONS
from ..maps import heatmap_at
from ..methods import weighted_sum

MIN_TOP1_AGREEMENT = 0.9
"""Default acceptance: the derived model's top-1 class equals the float32 one on ≥ 90% of the images."""
MIN_MEAN_CORRELATION = 0.9
"""Default acceptance: mean Pearson correlation of the CAM maps (same class, feature resolution) ≥ 0.9."""


@dataclass(frozen=True)
class SetFidelity:
    """Agreement of two models on one image set."""

    images: int
    top1_agreement: float
    """Fraction of images whose top-1 class is the same."""
    map_correlation_mean: float
    """Mean over images of the Pearson correlation of the two CAM maps for the float32 top-1 class."""
    map_correlation_min: float
    box_iou_mean: float
    """Mean IoU of the largest-component boxes (the default box threshold) at the original image size."""
    box_iou_min: float
    max_abs_probability_diff: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready fields (rounded)."""
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def image_files(folder: str | Path, limit: int | None = None, what: str = "images") -> list[Path]:
    """The image files directly inside ``folder`` (sorted), at most ``limit``; a clear error when none."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageFolderError(root, what)
    files = [p for p in iter_image_files(root, recursive=False) if p.is_file()]
    if not files:
        raise InvalidArgumentError(f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, …) in {root}")
    return files[:limit] if limit else files


def load_tensors(engine: CamEngine, files: Sequence[Path]) -> tuple[npt.NDArray[np.float32], list[tuple[int, int]]]:
    """Decode and preprocess images with ``engine``'s manifest: the batch and each original (height, width)."""
    tensors, sizes = [], []
    for path in files:
        image = engine.load_image(path)
        tensors.append(engine.preprocessor.tensor(image.bgr))
        sizes.append((image.height, image.width))
    return np.stack(tensors), sizes


def _pearson(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denom == 0.0:  # a constant map: correlated only if both are constant
        return 1.0 if not a.any() and not b.any() else 0.0
    return float((a * b).sum() / denom)


def _run_batched(engine: CamEngine, batch: npt.NDArray[np.float32],
                 batch_size: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    parts = [engine.run(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])


def compare(reference: CamEngine, candidate: CamEngine, batch: npt.NDArray[np.float32],
               sizes: Sequence[tuple[int, int]], batch_size: int = 8) -> SetFidelity:
    """Top-1 agreement, map correlation and box IoU of ``candidate`` against ``reference`` on one batch.

    Both maps are of the reference's top-1 class, each computed through its own model's head.
    """
    probs_ref, feats_ref = _run_batched(reference, batch, batch_size)
    probs_new, feats_new = _run_batched(candidate, batch, batch_size)
    top_ref = probs_ref.argmax(axis=1)
    top_new = probs_new.argmax(axis=1)
    maps_ref = class_maps(reference, feats_ref, top_ref)
    maps_new = class_maps(candidate, feats_new, top_ref)
    correlations, ious = [], []
    for i, (height, width) in enumerate(sizes):
        correlations.append(_pearson(maps_ref[i], maps_new[i]))
        box_ref = boxes_from_map(heatmap_at(maps_ref[i], height, width))
        box_new = boxes_from_map(heatmap_at(maps_new[i], height, width))
        if box_ref and box_new:
            ious.append(box_ref[0].iou(box_new[0]))
        else:  # both without a box agree; one without does not
            ious.append(1.0 if not box_ref and not box_new else 0.0)
    return SetFidelity(
        images=len(sizes), top1_agreement=float(np.mean(top_ref == top_new)),
        map_correlation_mean=float(np.mean(correlations)), map_correlation_min=float(np.min(correlations)),
        box_iou_mean=float(np.mean(ious)), box_iou_min=float(np.min(ious)),
        max_abs_probability_diff=float(np.abs(probs_ref - probs_new).max()))


def class_maps(engine: CamEngine, features: npt.NDArray[np.float32],
               classes: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
    """Grad-CAM maps [N, h, w] of one class per image through ``engine``'s own head (linear or graph).

    For a linear head the channel weights are W[:, k] / (h·w): the CAM up to a positive factor, which neither
    the correlation nor the boxes see; a graph head's are its mean gradients, so the derived head graphs count.
    """
    directions = np.zeros((len(classes), 1, engine.num_classes), np.float32)
    directions[np.arange(len(classes)), 0, classes] = 1.0
    gradients = engine.head.logit_gradients(features, directions)[:, 0]
    return weighted_sum(features, gradients.mean(axis=(1, 2))[:, None, :])[:, 0]


def acceptance_problems(report: dict[str, SetFidelity], min_top1: float = MIN_TOP1_AGREEMENT,
                        min_correlation: float = MIN_MEAN_CORRELATION) -> list[str]:
    """Human-readable reasons a fidelity report fails the thresholds (empty when it passes)."""
    problems = []
    for name, result in report.items():
        if result.top1_agreement < min_top1:
            problems.append(f"{name}: top-1 agreement {result.top1_agreement:.1%} < {min_top1:.0%}")
        if not result.map_correlation_mean >= min_correlation:  # NaN fails too
            problems.append(f"{name}: mean map correlation {result.map_correlation_mean:.3f} < {min_correlation}")
    return problems


@dataclass
class EvaluationSets:
    """Preprocessed calibration and held-out images of one source engine."""

    calibration_files: list[Path]
    calibration: npt.NDArray[np.float32]
    calibration_sizes: list[tuple[int, int]]
    held_out: npt.NDArray[np.float32] | None = None
    held_out_sizes: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def load(cls, engine: CamEngine, calibration: str | Path, held_out: str | Path | None,
             limit: int | None = None) -> EvaluationSets:
        """Read both folders (each at most ``limit`` images) through ``engine``'s preprocessing."""
        files = image_files(calibration, limit, "--calibration")
        batch, sizes = load_tensors(engine, files)
        sets = cls(files, batch, sizes)
        if held_out is not None:
            sets.held_out, sets.held_out_sizes = load_tensors(engine, image_files(held_out, limit, "--held-out"))
        return sets


def fidelity_report(source: CamEngine, candidate: CamEngine, sets: EvaluationSets) -> dict[str, SetFidelity]:
    """:func:`compare` ``candidate`` with ``source`` on the calibration and (if any) held-out images."""
    report = {"calibration": compare(source, candidate, sets.calibration, sets.calibration_sizes)}
    if sets.held_out is not None:
        report["held-out"] = compare(source, candidate, sets.held_out, sets.held_out_sizes)
    return report
