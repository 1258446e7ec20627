"""ADCC: the formula, coherency, and the evaluation's numbers against OpenVINO XAI's definition computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cam_runtime.engine import CamEngine
from cam_runtime.evaluation import adcc_from_parts, coherency, evaluate_method, load_samples
from cam_runtime.ground_truth_boxes import read_boxes
from cam_runtime.maps import upsample
from cam_runtime.preprocess import resize_image

ROOT = Path(__file__).resolve().parents[1]


def test_adcc_is_the_harmonic_mean_of_its_parts() -> None:
    coh, com, drop = 0.8, 0.3, 0.4
    expected = 3 / (1 / 0.8 + 1 / 0.7 + 1 / 0.6)
    assert adcc_from_parts(coh, com, drop) == pytest.approx(expected)
    assert adcc_from_parts(0.6, 0.4, 0.4) == pytest.approx(0.6)  # equal parts: their common value
    assert adcc_from_parts(0.9, 1.0, 0.1) == 0.0  # a map covering everything explains nothing
    assert adcc_from_parts(0.9, 0.1, 1.0) == 0.0


def test_coherency_is_shifted_pearson() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(7, 9)).astype(np.float32)
    b = (a * 0.5 + rng.uniform(size=(7, 9)) * 0.2).astype(np.float32)
    assert coherency(a, b) == pytest.approx((np.corrcoef(a.ravel(), b.ravel())[0, 1] + 1) / 2, abs=1e-6)
    assert coherency(a, 3 * a + 1) == pytest.approx(1.0)
    assert coherency(a, -a) == pytest.approx(0.0)
    assert coherency(a, np.ones_like(a)) == 0.5


def test_evaluation_matches_the_definition_by_hand() -> None:
    """OpenVINO XAI's steps, written out with SciPy's pearsonr and direct model calls, for a few images."""
    stats = pytest.importorskip("scipy.stats", reason="SciPy (evaluate/test extra) gives the reference Pearson")
    engine = CamEngine.load(ROOT / "models" / "fixtures" / "shapes", device="cpu")
    test_set = ROOT / "models" / "fixtures" / "shapes-test"
    annotations = read_boxes(test_set / "boxes.csv")
    names = sorted(annotations)[:6]
    samples, _ = load_samples(engine, test_set / "images", {n: annotations[n] for n in names})
    report = evaluate_method(engine, samples, "gradcam++", steps=2)
    spec = engine.manifest.input
    parts = []
    for sample, scored in zip(samples, report.images, strict=True):
        image = sample.load(engine)
        pixels = resize_image(image.bgr, spec.height, spec.width, engine.preprocessor.resize_mode)
        first = engine.explain(pixels, method="gradcam++", classes=sample.target, array_order="BGR")[0]
        saliency = first.targets[0].heatmap  # [0, 1] at the input size
        masked = pixels.astype(np.float32) * saliency[..., None]
        probs = engine.predict_probabilities(np.stack([engine.preprocessor.tensor_from_float(pixels.astype(
            np.float32)), engine.preprocessor.tensor_from_float(masked)]))[:, sample.target]
        drop = max(0.0, probs[0] - probs[1]) / probs[0]
        again = engine.explain(np.clip(masked / 255, 0, 1).astype(np.float32), method="gradcam++",
                               classes=sample.target, array_order="BGR")[0]
        masked_map = upsample(again.targets[0].raw, spec.height, spec.width)
        span = masked_map.max() - masked_map.min()
        scaled = (masked_map - masked_map.min()) / span  # OpenVINO XAI's min-max scaling
        coh = (stats.pearsonr(saliency.ravel(), scaled.ravel())[0] + 1) / 2
        com = saliency.sum() / (spec.height * spec.width)
        assert scored.adcc is not None
        assert scored.adcc.average_drop == pytest.approx(drop, abs=1e-4)
        assert scored.adcc.coherency == pytest.approx(coh, abs=1e-4)
        assert scored.adcc.complexity == pytest.approx(com, abs=1e-5)
        assert scored.adcc.adcc == pytest.approx(3 / (1 / coh + 1 / (1 - com) + 1 / (1 - drop)), abs=1e-4)
        parts.append((coh, com, drop))
    coh, com, drop = np.mean(parts, axis=0)
    summary = report.summary()
    assert summary["adcc"] == pytest.approx(3 / (1 / coh + 1 / (1 - com) + 1 / (1 - drop)), abs=1e-3)
    assert 0.0 < summary["adcc"] < 1.0


def test_adcc_can_be_switched_off() -> None:
    engine = CamEngine.load(ROOT / "models" / "fixtures" / "shapes", device="cpu")
    test_set = ROOT / "models" / "fixtures" / "shapes-test"
    annotations = read_boxes(test_set / "boxes.csv")
    samples, _ = load_samples(engine, test_set / "images", {n: annotations[n] for n in sorted(annotations)[:2]})
    summary = evaluate_method(engine, samples, "cam", steps=2, adcc=False).summary()
    assert summary["adcc"] is None and summary["deletion_auc"] is not None
