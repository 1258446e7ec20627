"""Each CAM method against an independent reference (no TensorFlow): loops, finite differences, eigh."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cam_runtime import CamEngine
from cam_runtime.errors import InvalidArgumentError, UnknownMethodError
from cam_runtime.methods import CAM, METHODS, EigenCAM, GradCAMPlusPlus, HeadInputs, ScoreCAM, get_method


@pytest.fixture(scope="module")
def head() -> HeadInputs:
    """Random non-negative features (like post-ReLU activations) with a random dense head."""
    rng = np.random.default_rng(7)
    features = np.maximum(rng.normal(0.2, 1.0, (2, 5, 6, 16)), 0).astype(np.float32)
    weights = rng.normal(0, 1, (16, 10)).astype(np.float32)
    bias = rng.normal(0, 0.5, 10).astype(np.float32)
    probs = _softmax(features.mean(axis=(1, 2)) @ weights + bias).astype(np.float32)
    classes = np.array([[3, 7], [0, 9]])
    return HeadInputs(features, probs, weights, classes)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _bias(head: HeadInputs) -> np.ndarray:
    # Recover b from p = softmax(mean(A)W + b) up to a constant (softmax is shift-invariant).
    return np.log(head.probabilities[0]) - head.features[0].mean(axis=(0, 1)) @ head.weights


def _numeric_gradient(head: HeadInputs, n: int, c: int, score: str) -> np.ndarray:
    """Central finite differences of the head's score with respect to every feature, in float64."""
    features = head.features[n].astype(np.float64)
    weights = head.weights.astype(np.float64)
    bias = _bias(head).astype(np.float64)

    def score_of(a: np.ndarray) -> float:
        z = a.mean(axis=(0, 1)) @ weights + bias
        return float(z[c] if score == "logit" else _softmax(z)[c])

    grad = np.zeros_like(features)
    eps = 1e-4
    for idx in np.ndindex(features.shape):
        plus, minus = features.copy(), features.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (score_of(plus) - score_of(minus)) / (2 * eps)
    return grad


def _reference(method: str, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    sums = acts.sum(axis=(0, 1))
    if method == "gradcam":
        return relu(acts @ grads.mean(axis=(0, 1)))
    if method == "hirescam":
        return relu((grads * acts).sum(axis=2))
    if method == "xgradcam":
        return relu(acts @ ((grads * acts).sum(axis=(0, 1)) / sums))
    if method == "layercam":
        return relu((relu(grads) * acts).sum(axis=2))
    if method == "gradcam++":
        g2, g3 = grads**2, grads**3
        den = 2 * g2 + sums * g3
        alpha = np.divide(g2, den, out=np.zeros_like(g2), where=(grads != 0) & (den != 0))
        return relu(acts @ (alpha * relu(grads)).sum(axis=(0, 1)))
    raise AssertionError(method)


@pytest.mark.parametrize("score", ["logit", "probability"])
@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam", "layercam", "gradcam++"])
def test_gradient_methods_match_finite_differences(head: HeadInputs, method: str, score: str) -> None:
    maps = get_method(method, score=score).maps(head)
    for n in range(2):
        for t, c in enumerate(head.classes[n]):
            grads = _numeric_gradient(head, n, int(c), score)
            expected = _reference(method, head.features[n].astype(np.float64), grads)
            scale = max(np.abs(expected).max(), 1e-12)
            assert np.abs(maps[n, t] - expected).max() / scale < 1e-3, (method, score, n, c)


def test_cam_is_the_papers_weighted_sum(head: HeadInputs) -> None:
    maps = CAM().maps(head)
    for n in range(2):
        for t, c in enumerate(head.classes[n]):
            expected = np.zeros(head.features.shape[1:3])
            for k in range(head.features.shape[3]):
                expected += head.weights[k, c] * head.features[n, :, :, k]
            np.testing.assert_allclose(maps[n, t], expected, rtol=1e-5, atol=1e-5)


def test_cam_mean_plus_bias_gives_the_logit(head: HeadInputs) -> None:
    maps = CAM().maps(head)
    logits = np.log(head.probabilities) - np.log(head.probabilities).mean(axis=1, keepdims=True)
    bias = _bias(head)
    for n in range(2):
        z = maps[n].mean(axis=(1, 2)) + bias[head.classes[n]]
        z_all = head.features[n].mean(axis=(0, 1)) @ head.weights + bias
        np.testing.assert_allclose(z, z_all[head.classes[n]], rtol=1e-5, atol=1e-5)
    assert logits.shape == head.probabilities.shape


def test_tutorial_zoom_then_dot_agrees(head: HeadInputs) -> None:
    """Upsampling every channel and then weighting equals weighting at feature size and then upsampling."""
    raw = CAM().maps(head)[0, 0]
    w_c = head.weights[:, head.classes[0, 0]]
    zoomed = np.stack([cv2.resize(head.features[0, :, :, k], (60, 50), interpolation=cv2.INTER_LINEAR)
                       for k in range(head.features.shape[3])], axis=-1)
    tutorial = zoomed @ w_c
    ours = cv2.resize(raw, (60, 50), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, tutorial, rtol=1e-4, atol=1e-4 * np.abs(tutorial).max())
    np.testing.assert_allclose(raw, head.features[0] @ w_c, rtol=1e-5, atol=1e-5)


def test_gradcampp_closed_form_matches_formula_with_constant_gradient(head: HeadInputs) -> None:
    maps = GradCAMPlusPlus().maps(head)
    h, w = head.features.shape[1:3]
    for n in range(2):
        for t, c in enumerate(head.classes[n]):
            grads = np.broadcast_to(head.weights[:, c] / (h * w), head.features[n].shape).astype(np.float64)
            expected = _reference("gradcam++", head.features[n].astype(np.float64), grads)
            np.testing.assert_allclose(maps[n, t], expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_eigencam_is_first_principal_component(head: HeadInputs) -> None:
    maps = EigenCAM().maps(head)
    for n in range(2):
        flat = head.features[n].reshape(-1, head.features.shape[3]).astype(np.float64)
        centred = flat - flat.mean(axis=0)
        _, vectors = np.linalg.eigh(centred.T @ centred)
        projection = centred @ vectors[:, -1]
        activation = flat.sum(axis=1)
        if np.dot(projection, activation - activation.mean()) < 0:
            projection = -projection
        np.testing.assert_allclose(maps[n, 0].ravel(), projection, rtol=1e-4, atol=1e-4 * np.abs(projection).max())
        np.testing.assert_array_equal(maps[n, 0], maps[n, 1])  # class-agnostic


def test_scorecam_matches_unbatched_loop(tiny_nhwc: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu")
    image = photo_arrays["astronaut"]
    result = engine.explain(image, method="scorecam", top_k=2, max_channels=None, batch_size=3)[0]
    x = engine.preprocessor.tensor(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    _, feats = engine.run(x[None])
    size = x.shape[0]
    for target in result.targets:
        expected = np.zeros(feats.shape[1:3])
        for k in range(feats.shape[3]):
            mask = cv2.resize(feats[0, :, :, k], (size, size), interpolation=cv2.INTER_LINEAR)
            if mask.max() == mask.min():
                continue
            mask = (mask - mask.min()) / (mask.max() - mask.min())
            p = engine.predict_probabilities((x * mask[:, :, None])[None])[0, target.class_id]
            expected += p * feats[0, :, :, k]
        np.testing.assert_allclose(target.raw, np.maximum(expected, 0), rtol=1e-4, atol=1e-5)


def test_scorecam_max_channels_limits_passes(tiny_nhwc: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    engine = CamEngine.load(tiny_nhwc, device="cpu")
    calls: list[int] = []
    method = ScoreCAM(max_channels=3, batch_size=2)
    original = engine.predict_probabilities

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return original(batch)

    engine.predict_probabilities = counting  # type: ignore[method-assign]
    engine.explain(photo_arrays["coffee"], method=method)
    assert calls == [2, 1]


def test_method_registry_and_validation() -> None:
    assert set(METHODS) == {"cam", "gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam",
                            "scorecam", "ablationcam", "reciprocam"}
    assert get_method("Grad-CAM++").name == "gradcam++"
    with pytest.raises(UnknownMethodError, match="available: cam"):
        get_method("smoothgrad")
    with pytest.raises(InvalidArgumentError):
        get_method("gradcam", score="entropy")
    with pytest.raises(InvalidArgumentError):
        get_method("scorecam", max_channels=0)
    with pytest.raises(InvalidArgumentError, match="invalid option"):
        get_method("cam", score="logit")
