"""Localisation and faithfulness metrics for class activation maps, forward passes only (onnxruntime).

Localisation (on the map at the original image size, against ground-truth boxes of the target class):

* **pointing game**: the map's peak (first arg-max) lies inside a ground-truth box of the target.
* **box IoU**: IoU between the box the runtime draws from the map (largest component above
  ``box_threshold`` × max) and the best-matching ground-truth box; **CorLoc** is the fraction with IoU ≥ 0.5.

Faithfulness (on the model's input at its own resolution; see ``docs/evaluation.md``):

* **deletion / insertion** (Petsiuk et al. 2018): pixels are replaced by a baseline (deletion) or revealed over
  it (insertion) in order of decreasing map value, in ``steps`` equal increments; the curve is the target
  probability after each increment and the score its area (trapezoid over the fraction of pixels, in [0, 1]).
  Lower deletion and higher insertion AUC mean a more faithful map.
* **average drop / increase in confidence** (Chattopadhay et al. 2018): the image is multiplied by the
  [0, 1] map and the target probability compared with the unmasked one: drop = mean(max(0, Y − O) / Y) · 100,
  increase = % of images with O > Y.
* **ROAD** (Rong et al. 2022; pytorch-grad-cam's definition): pixels removed by noisy linear imputation at
  several percentiles of the map, most (MoRF) and least (LeRF) relevant first; see :mod:`cam_runtime.road`.
* **ADCC** (Poppi et al. 2021; OpenVINO XAI's definition): the harmonic mean of coherency, 1 − complexity and
  1 − average drop, where coherency = (Pearson(map, map of the masked image) + 1) / 2, complexity = mean(map)
  and average drop = max(0, Y − O) / Y, the masked image being the image multiplied by its [0, 1] map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import cv2
import numpy as np
import numpy.typing as npt

from .boxes import DEFAULT_THRESHOLD, boxes_from_map, check_box_threshold
from .engine import CamEngine
from .errors import CamError, InvalidArgumentError, UnknownClassError
from .ground_truth_boxes import Annotations, GroundTruthBox
from .imaging import DecodedImage
from .maps import heatmap_at, upsample
from .preprocess import resize_image
from .road import DEFAULT_PERCENTILES, RoadScore, road
from .safe_io import resolve_inside

Baseline = Literal["blur", "mean"]
BASELINES: tuple[str, ...] = ("blur", "mean")
BLUR_SIGMA_FRACTION = 0.1
"""Blur baseline: Gaussian sigma as a fraction of the input's longer side (enough to erase small objects)."""
DEFAULT_STEPS = 32
CORLOC_IOU = 0.5

FloatArray = npt.NDArray[np.float32]


# --- localisation ----------------------------------------------------------------------------------------------


def peak(heatmap: FloatArray) -> tuple[int, int] | None:
    """(x, y) of the map's first maximum, or None for a map with no positive value."""
    if heatmap.size == 0 or not float(heatmap.max()) > 0.0:
        return None
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def pointing_hit(heatmap: FloatArray, boxes: Sequence[GroundTruthBox]) -> bool:
    """Whether the map's peak lies inside any of ``boxes`` (an empty map never hits)."""
    point = peak(heatmap)
    return point is not None and any(box.contains(*point) for box in boxes)


def map_box_iou(heatmap: FloatArray, boxes: Sequence[GroundTruthBox],
                threshold: float = DEFAULT_THRESHOLD) -> float:
    """Best IoU between the map's box (largest component ≥ threshold × max) and any of ``boxes``; 0 if none."""
    found = boxes_from_map(heatmap, threshold)
    if not found or not boxes:
        return 0.0
    return max(found[0].iou(box.as_tuple()) for box in boxes)


# --- faithfulness ------------------------------------------------------------------------------------------------


def baseline_image(pixels: FloatArray, baseline: Baseline) -> FloatArray:
    """What removed pixels become: a strong Gaussian blur of the image or its per-channel mean."""
    if baseline == "blur":
        sigma = BLUR_SIGMA_FRACTION * max(pixels.shape[:2])
        return cast(FloatArray, cv2.GaussianBlur(pixels, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                                 borderType=cv2.BORDER_REFLECT))
    if baseline == "mean":
        return np.broadcast_to(pixels.mean(axis=(0, 1), dtype=np.float32), pixels.shape).astype(np.float32)
    raise InvalidArgumentError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")


def auc(curve: npt.ArrayLike) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoid rule)."""
    values = np.asarray(curve, dtype=np.float64)
    if values.size < 2:
        raise InvalidArgumentError("a curve needs at least 2 points")
    return float((values[:-1] + values[1:]).sum() / (2 * (values.size - 1)))


def _ranks(saliency: FloatArray) -> npt.NDArray[np.intp]:
    """Rank of every pixel by decreasing saliency (ties in raster order)."""
    order = np.argsort(-saliency.reshape(-1), kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    return ranks.reshape(saliency.shape)


@dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion curves ([steps + 1] probabilities) and the masked-image probability of one image."""

    deletion: FloatArray
    insertion: FloatArray
    full_probability: float
    masked_probability: float

    @property
    def deletion_auc(self) -> float:
        """Area under the deletion curve (lower is better)."""
        return auc(self.deletion)

    @property
    def insertion_auc(self) -> float:
        """Area under the insertion curve (higher is better)."""
        return auc(self.insertion)

    @property
    def drop(self) -> float:
        """max(0, Y − O) / Y · 100 for this image."""
        y = self.full_probability
        return 100.0 * max(0.0, y - self.masked_probability) / y if y > 0 else 0.0

    @property
    def increase(self) -> bool:
        """Whether the masked image scores higher than the full one."""
        return self.masked_probability > self.full_probability


@dataclass(frozen=True)
class AdccScore:
    """ADCC's three parts for one image (Poppi et al. 2021)."""

    coherency: float
    complexity: float
    average_drop: float

    @property
    def adcc(self) -> float:
        """3 / (1/coherency + 1/(1 − complexity) + 1/(1 − average drop)); 0 when a part is at its worst."""
        return adcc_from_parts(self.coherency, self.complexity, self.average_drop)


def adcc_from_parts(coherency: float, complexity: float, average_drop: float) -> float:
    """The harmonic mean of coherency, 1 − complexity and 1 − average drop (each in [0, 1])."""
    parts = (coherency, 1.0 - complexity, 1.0 - average_drop)
    if min(parts) <= 0.0:
        return 0.0
    return 3.0 / sum(1.0 / p for p in parts)


def coherency(saliency: FloatArray, masked_saliency: FloatArray) -> float:
    """(Pearson correlation + 1) / 2 of two maps; 0.5 (no correlation) when either map is constant."""
    a = saliency.reshape(-1).astype(np.float64)
    b = masked_saliency.reshape(-1).astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    r = float((a * b).sum()) / denominator if denominator > 0.0 else 0.0
    return (r + 1.0) / 2.0


def faithfulness(engine: CamEngine, pixels: FloatArray, saliency: FloatArray, class_id: int, *,
                 steps: int = DEFAULT_STEPS, baseline: Baseline = "blur", batch_size: int = 64) -> Faithfulness:
    """Deletion/insertion curves and the Chattopadhay masked pass for one image, batched through the model.

    ``pixels`` is the image already resized to the model input (float BGR, 0-255); ``saliency`` the [0, 1] map
    at that size. Every variant is preprocessed exactly like a real input, so any mean/std is handled.
    """
    if steps < 1:
        raise InvalidArgumentError(f"steps must be ≥ 1, got {steps}")
    if saliency.shape != pixels.shape[:2]:
        raise InvalidArgumentError(f"saliency shape {saliency.shape} differs from the image's {pixels.shape[:2]}")
    base = baseline_image(pixels, baseline)
    ranks = _ranks(saliency)
    counts = np.rint(np.linspace(0, ranks.size, steps + 1)).astype(np.intp)
    variants = []
    for count in counts:
        removed = (ranks < count)[..., None]
        variants.append(np.where(removed, base, pixels))
    for count in counts:
        shown = (ranks < count)[..., None]
        variants.append(np.where(shown, pixels, base))
    variants.append(pixels)
    variants.append(pixels * np.clip(saliency, 0.0, 1.0)[..., None])
    probs = predict(engine, variants, batch_size)[:, class_id]
    n = steps + 1
    return Faithfulness(deletion=probs[:n], insertion=probs[n:2 * n], full_probability=float(probs[-2]),
                        masked_probability=float(probs[-1]))


def pixels_to_tensor(engine: CamEngine, pixels: FloatArray) -> FloatArray:
    """Float BGR pixels (0-255, already at the input size) → the model input, as the manifest describes."""
    return engine.preprocessor.tensor_from_float(pixels)


def predict(engine: CamEngine, pixel_images: Sequence[FloatArray], batch_size: int = 64) -> FloatArray:
    """Probabilities [N, K] of float BGR images already at the model's input size."""
    tensors = np.stack([pixels_to_tensor(engine, image) for image in pixel_images])
    return np.concatenate([engine.predict_probabilities(tensors[i:i + batch_size])
                           for i in range(0, len(tensors), batch_size)])


# --- whole-dataset evaluation ----------------------------------------------------------------------------------


@dataclass
class ImageScore:
    """Per-image results of one method."""

    source: str
    target: int
    target_label: str
    predicted: int
    correct: bool | None
    pointing_hit: bool
    iou: float
    faithfulness: Faithfulness | None = None
    road: RoadScore | None = None
    adcc: AdccScore | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (curves as lists)."""
        out: dict[str, Any] = {"source": self.source, "target": self.target, "target_label": self.target_label,
                               "predicted": self.predicted, "correct": self.correct,
                               "pointing_hit": self.pointing_hit, "iou": round(self.iou, 4)}
        if self.faithfulness is not None:
            f = self.faithfulness
            out.update(deletion_auc=round(f.deletion_auc, 4), insertion_auc=round(f.insertion_auc, 4),
                       full_probability=round(f.full_probability, 5),
                       masked_probability=round(f.masked_probability, 5))
        if self.road is not None:
            out.update(road_morf=round(self.road.morf_mean, 5), road_lerf=round(self.road.lerf_mean, 5),
                       road_combined=round(self.road.combined, 5))
        if self.adcc is not None:
            a = self.adcc
            out.update(adcc=round(a.adcc, 5), coherency=round(a.coherency, 5), complexity=round(a.complexity, 5))
        return out


@dataclass
class MethodReport:
    """Aggregated metrics of one method over the evaluated images."""

    method: str
    images: list[ImageScore]
    box_threshold: float

    def _mean(self, values: Iterable[float]) -> float | None:
        items = list(values)
        return float(np.mean(items)) if items else None

    @property
    def pointing_game(self) -> float | None:
        """Fraction of images whose map peak is inside a ground-truth box of the target."""
        return self._mean(float(s.pointing_hit) for s in self.images)

    @property
    def mean_iou(self) -> float | None:
        """Mean box IoU."""
        return self._mean(s.iou for s in self.images)

    @property
    def corloc(self) -> float | None:
        """Fraction of images with box IoU ≥ 0.5."""
        return self._mean(float(s.iou >= CORLOC_IOU) for s in self.images)

    def _faithful(self) -> list[Faithfulness]:
        return [s.faithfulness for s in self.images if s.faithfulness is not None]

    def mean_curve(self, kind: Literal["deletion", "insertion"]) -> FloatArray | None:
        """The mean deletion or insertion curve, or None without faithfulness results."""
        curves = [getattr(f, kind) for f in self._faithful()]
        return np.mean(curves, axis=0).astype(np.float32) if curves else None

    def summary(self) -> dict[str, Any]:
        """The aggregated numbers, JSON-ready (None where not computed)."""
        faithful = self._faithful()
        labelled = [s.correct for s in self.images if s.correct is not None]

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "method": self.method, "images": len(self.images),
            "accuracy": rounded(self._mean(float(c) for c in labelled)) if labelled else None,
            "pointing_game": rounded(self.pointing_game), "mean_iou": rounded(self.mean_iou),
            "corloc": rounded(self.corloc), "box_threshold": self.box_threshold,
            "deletion_auc": rounded(self._mean(f.deletion_auc for f in faithful)),
            "insertion_auc": rounded(self._mean(f.insertion_auc for f in faithful)),
            "average_drop": rounded(self._mean(f.drop for f in faithful)),
            "increase_in_confidence": rounded(self._mean(100.0 * f.increase for f in faithful)),
            "road_morf": rounded(self._mean(s.road.morf_mean for s in self.images if s.road is not None)),
            "road_lerf": rounded(self._mean(s.road.lerf_mean for s in self.images if s.road is not None)),
            "road_combined": rounded(self._mean(s.road.combined for s in self.images if s.road is not None)),
            **self._adcc_summary(rounded),
        }

    def _adcc_summary(self, rounded: Any) -> dict[str, float | None]:
        """ADCC over the data set as OpenVINO XAI aggregates it: the formula applied to the mean parts."""
        parts = [s.adcc for s in self.images if s.adcc is not None]
        if not parts:
            return {"adcc": None, "coherency": None, "complexity": None}
        coh = float(np.mean([p.coherency for p in parts]))
        com = float(np.mean([p.complexity for p in parts]))
        drop = float(np.mean([p.average_drop for p in parts]))
        return {"adcc": rounded(adcc_from_parts(coh, com, drop)), "coherency": rounded(coh),
                "complexity": rounded(com)}

    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        """Summary, mean curves and (optionally) per-image scores."""
        deletion, insertion = self.mean_curve("deletion"), self.mean_curve("insertion")
        out = {**self.summary(),
               "deletion_curve": None if deletion is None else [round(float(v), 5) for v in deletion],
               "insertion_curve": None if insertion is None else [round(float(v), 5) for v in insertion]}
        if per_image:
            out["per_image"] = [s.to_dict() for s in self.images]
        return out


@dataclass
class EvaluationReport:
    """Everything ``evaluate`` measured: settings, skipped inputs and one report per method."""

    model: str
    settings: dict[str, Any]
    methods: list[MethodReport]
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"model": self.model, "settings": self.settings, "failures": self.failures,
                "methods": [m.to_dict(per_image) for m in self.methods]}


@dataclass(frozen=True)
class Sample:
    """An annotated image (decoded again when needed, so a large set never sits in memory) and its target."""

    source: str
    path: Path
    boxes: list[GroundTruthBox]
    target: int
    predicted: int
    correct: bool | None

    def load(self, engine: CamEngine) -> DecodedImage:
        """Decode the image with the engine's pixel limit."""
        return engine.load_image(self.path, source=self.source)


def load_samples(engine: CamEngine, images_dir: str | Path, annotations: Annotations,
                 batch_size: int = 16) -> tuple[list[Sample], list[dict[str, str]]]:
    """Check every annotated image and choose its target: the boxes' label when given, else the top-1 class.

    Images that cannot be read and labels the model does not know are reported as failures, not raised.
    Images are decoded ``batch_size`` at a time and not kept.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise InvalidArgumentError(f"images folder not found: {root}")
    samples: list[Sample] = []
    failures: list[dict[str, str]] = []
    names = sorted(annotations)
    for start in range(0, len(names), batch_size):
        chunk: list[tuple[str, Path, DecodedImage, int | None]] = []
        for name in names[start:start + batch_size]:
            try:
                path = resolve_inside(root, name)
                label = next((b.label for b in annotations[name] if b.label), None)
                gt = engine.class_id(label) if label is not None else None
                chunk.append((name, path, engine.load_image(path, source=name), gt))
            except CamError as exc:
                failures.append({"source": name, "error": str(exc), "error_type": type(exc).__name__})
        if not chunk:
            continue
        probs, _ = engine.run(engine.preprocessor.batch([image.bgr for _, _, image, _ in chunk]))
        for (name, path, _, gt), row in zip(chunk, probs, strict=True):
            predicted = int(np.argmax(row))
            target = predicted if gt is None else gt
            kept = [b for b in annotations[name] if b.label is None or _same_class(engine, b.label, target)]
            samples.append(Sample(name, path, kept, target, predicted, None if gt is None else predicted == gt))
    return samples, failures


def _same_class(engine: CamEngine, label: str, target: int) -> bool:
    try:
        return engine.class_id(label) == target
    except UnknownClassError:
        return False


def evaluate_method(engine: CamEngine, samples: Sequence[Sample], method: str, *,
                    box_threshold: float = DEFAULT_THRESHOLD, steps: int | None = DEFAULT_STEPS,
                    baseline: Baseline = "blur", batch_size: int = 16,
                    saliency_override: Sequence[FloatArray] | None = None, adcc: bool = True,
                    road_percentiles: Sequence[float] | None = None, seed: int = 0) -> MethodReport:
    """Explain every sample's target with ``method`` and score it (``steps=None`` skips faithfulness).

    ``adcc`` adds ADCC (one more explain pass per image on the masked image); ``road_percentiles`` adds ROAD
    at those percentiles (two imputations and passes per percentile; noise seeded with ``seed``); both need
    faithfulness (``steps``). ``saliency_override`` replaces the maps at the model input size for the
    faithfulness metrics (used to score reference maps such as the ground-truth box or noise; no ADCC then).
    """
    if baseline not in BASELINES:
        raise InvalidArgumentError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    spec = engine.manifest.input
    rng = np.random.default_rng(seed)
    scores: list[ImageScore] = []
    name = method
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        images = [s.load(engine) for s in chunk]
        results = engine.explain([image.bgr for image in images], method=method,
                                 classes=[[s.target] for s in chunk], batch_size=batch_size,
                                 box_threshold=box_threshold, array_order="BGR")
        chunk_scores: list[ImageScore] = []
        masked: list[FloatArray] = []
        saliencies: list[FloatArray] = []
        for offset, (sample, image, result) in enumerate(zip(chunk, images, results, strict=True)):
            name = result.method
            target_map = result.targets[0]
            scored = ImageScore(source=sample.source, target=sample.target,
                                target_label=engine.labels[sample.target], predicted=sample.predicted,
                                correct=sample.correct, pointing_hit=pointing_hit(target_map.heatmap, sample.boxes),
                                iou=map_box_iou(target_map.heatmap, sample.boxes, box_threshold))
            if steps is not None:
                pixels = resize_image(image.bgr, spec.height, spec.width,
                                      engine.preprocessor.resize_mode).astype(np.float32)
                saliency = (saliency_override[start + offset] if saliency_override is not None
                            else heatmap_at(target_map.raw, spec.height, spec.width))
                scored.faithfulness = faithfulness(engine, pixels, saliency, sample.target, steps=steps,
                                                   baseline=baseline, batch_size=max(batch_size, steps + 1))
                if road_percentiles:
                    scored.road = road_score(engine, pixels, saliency, sample.target,
                                             percentiles=road_percentiles, rng=rng)
                masked.append(pixels * np.clip(saliency, 0.0, 1.0)[..., None])
                saliencies.append(saliency)
            chunk_scores.append(scored)
        if adcc and masked and saliency_override is None:
            _add_adcc(engine, method, chunk_scores, masked, saliencies, batch_size)
        scores.extend(chunk_scores)
    return MethodReport(method=name, images=scores, box_threshold=box_threshold)


def road_score(engine: CamEngine, pixels: FloatArray, saliency: FloatArray, class_id: int, *,
               percentiles: Sequence[float] = DEFAULT_PERCENTILES,
               rng: np.random.Generator | None = None) -> RoadScore:
    """ROAD of one image (float BGR pixels at the input size, [0, 1] map), imputed in the model's input space."""
    nchw = engine.manifest.input.layout == "NCHW"
    tensor = pixels_to_tensor(engine, pixels)
    tensor_hwc = tensor.transpose(1, 2, 0) if nchw else tensor

    def target_probability(stack: FloatArray) -> FloatArray:
        batch = np.ascontiguousarray(stack.transpose(0, 3, 1, 2) if nchw else stack, dtype=np.float32)
        return engine.predict_probabilities(batch)[:, class_id]

    return road(tensor_hwc, saliency, target_probability, percentiles=percentiles, rng=rng)


def _add_adcc(engine: CamEngine, method: str, scores: Sequence[ImageScore], masked: Sequence[FloatArray],
              saliencies: Sequence[FloatArray], batch_size: int) -> None:
    """Explain each masked image for the same target and method, then fill in the ADCC parts."""
    again = engine.explain([np.clip(m / 255.0, 0.0, 1.0).astype(np.float32) for m in masked], method=method,
                           classes=[[s.target] for s in scores], batch_size=batch_size, array_order="BGR")
    for scored, saliency, result in zip(scores, saliencies, again, strict=True):
        assert scored.faithfulness is not None  # masked images exist only with faithfulness
        height, width = saliency.shape
        masked_map = upsample(result.targets[0].raw, height, width)
        scored.adcc = AdccScore(coherency=coherency(saliency, masked_map),
                                complexity=float(np.clip(saliency, 0.0, 1.0).mean()),
                                average_drop=scored.faithfulness.drop / 100.0)


def evaluate(engine: CamEngine, images_dir: str | Path, annotations: Annotations, methods: Sequence[str], *,
             box_threshold: float = DEFAULT_THRESHOLD, steps: int | None = DEFAULT_STEPS,
             baseline: Baseline = "blur", batch_size: int = 16, adcc: bool = True,
             road_percentiles: Sequence[float] | None = None, seed: int = 0) -> EvaluationReport:
    """Evaluate several methods on the annotated images of ``images_dir`` (see :func:`evaluate_method`)."""
    if not methods:
        raise InvalidArgumentError("give at least one method")
    check_box_threshold(box_threshold)
    samples, failures = load_samples(engine, images_dir, annotations, batch_size)
    if not samples:
        raise InvalidArgumentError(f"none of the {len(annotations)} annotated images could be evaluated"
                                   + (f" (first error: {failures[0]['error']})" if failures else ""))
    reports = [evaluate_method(engine, samples, m, box_threshold=box_threshold, steps=steps, baseline=baseline,
                               batch_size=batch_size, adcc=adcc, road_percentiles=road_percentiles, seed=seed)
               for m in methods]
    settings = {"images_dir": str(images_dir), "annotated_images": len(annotations), "evaluated": len(samples),
                "box_threshold": box_threshold, "steps": steps, "baseline": baseline,
                "blur_sigma_fraction": BLUR_SIGMA_FRACTION if baseline == "blur" else None,
                "corloc_iou": CORLOC_IOU, "adcc": adcc and steps is not None,
                "road_percentiles": list(road_percentiles) if road_percentiles and steps is not None else None,
                "seed": seed}
    return EvaluationReport(model=engine.manifest.name, settings=settings, methods=reports, failures=failures)
