"""Target objects: classes, ranks, differences and custom scores, against the head's formula written out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cam_runtime.engine import CamEngine
from cam_runtime.errors import InvalidArgumentError, UnknownClassError
from cam_runtime.methods import METHODS
from cam_runtime.targets import ClassTarget, DifferenceTarget, RankTarget, ScoreTarget


@pytest.fixture(scope="module")
def engine(tiny_nhwc: Path) -> CamEngine:
    return CamEngine.load(tiny_nhwc, device="cpu")


@pytest.fixture(scope="module")
def image(photo_arrays: dict[str, np.ndarray]) -> np.ndarray:
    return photo_arrays["astronaut"]


def raw(engine: CamEngine, image: np.ndarray, classes: object, method: str = "cam", **kw: object) -> np.ndarray:
    result = engine.explain(image, method=method, classes=classes, **kw)[0]  # type: ignore[arg-type]
    return np.stack([t.raw for t in result.targets])


def head_parts(engine: CamEngine, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features [h, w, C] (float64), dense weights and bias of the image, straight from the session."""
    tensor = engine.preprocessor.tensor(engine.load_image(image).bgr)
    _, features = engine.run(tensor[None])
    return features[0].astype(np.float64), engine.folder.weights.astype(np.float64), \
        engine.folder.bias.astype(np.float64)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_class_and_rank_targets_equal_the_shortcuts(engine: CamEngine, image: np.ndarray, method: str) -> None:
    np.testing.assert_allclose(raw(engine, image, [ClassTarget(2), ClassTarget("square")], method),
                               raw(engine, image, [2, "square"], method), rtol=1e-5, atol=1e-6)
    by_rank = engine.explain(image, method=method, classes=[RankTarget(1), RankTarget(3)])[0]
    top = engine.explain(image, method=method, top_k=3)[0]
    assert [t.class_id for t in by_rank.targets] == [top.targets[0].class_id, top.targets[2].class_id]
    np.testing.assert_allclose(by_rank.targets[1].raw, top.targets[2].raw, rtol=1e-5, atol=1e-6)


def test_difference_cam_is_the_difference_of_cams(engine: CamEngine, image: np.ndarray) -> None:
    both = raw(engine, image, [0, 3])
    diff = engine.explain(image, classes=DifferenceTarget(0, 3))[0].targets[0]
    np.testing.assert_allclose(diff.raw, both[0] - both[1], rtol=1e-4, atol=1e-5)
    assert diff.class_id == 0 and diff.label == f"{engine.labels[0]} − {engine.labels[3]}"
    h, w = diff.raw.shape
    np.testing.assert_allclose(raw(engine, image, DifferenceTarget(0, 3), "gradcam")[0],
                               np.maximum(both[0] - both[1], 0) / (h * w), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("target", [DifferenceTarget(1, 4),
                                    ScoreTarget(lambda p: p[:, 2] ** 2 + p[:, 0], on="probabilities")])
def test_probability_score_gradient_matches_finite_differences(engine: CamEngine, image: np.ndarray,
                                                               target: object) -> None:
    """Grad-CAM's channel weights are the mean gradient; check them against the head perturbed by hand."""
    features, weights, bias = head_parts(engine, image)
    c = features.shape[2]

    def score(a: np.ndarray) -> float:
        z = a.mean(axis=(0, 1)) @ weights + bias
        p = np.exp(z - z.max())
        p /= p.sum()
        if isinstance(target, DifferenceTarget):
            return float(p[1] - p[4])
        return float(p[2] ** 2 + p[0])

    step = 1e-3
    grads = np.empty(c)
    for k in range(c):  # the gradient is the same at every position: perturb one position per channel
        plus, minus = features.copy(), features.copy()
        plus[0, 0, k] += step
        minus[0, 0, k] -= step
        grads[k] = (score(plus) - score(minus)) / (2 * step)
    expected = np.maximum(np.tensordot(features, grads, axes=([2], [0])), 0)
    got = raw(engine, image, target, "gradcam", score="probability")[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6 * float(np.abs(expected).max()))


def test_custom_logit_score_equals_the_difference_target(engine: CamEngine, image: np.ndarray) -> None:
    numeric = ScoreTarget(lambda z: z[:, 0] - z[:, 3], name="0 minus 3")
    exact = ScoreTarget(lambda z: z[:, 0] - z[:, 3],
                        gradient=lambda z: np.tile(np.eye(z.shape[1])[0] - np.eye(z.shape[1])[3], (len(z), 1)))
    for method in ("cam", "gradcam", "gradcam++", "layercam", "xgradcam"):
        expected = raw(engine, image, DifferenceTarget(0, 3), method)
        np.testing.assert_allclose(raw(engine, image, numeric, method), expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(raw(engine, image, exact, method), expected, rtol=1e-5, atol=1e-7)
    result = engine.explain(image, classes=numeric)[0].targets[0]
    assert result.label == "0 minus 3" and result.class_id in (0, 3)


def test_scorecam_takes_differences_but_not_custom_scores(engine: CamEngine, image: np.ndarray) -> None:
    diff = raw(engine, image, DifferenceTarget(0, 3), "scorecam", max_channels=4)
    assert diff.shape[0] == 1 and np.isfinite(diff).all()
    with pytest.raises(InvalidArgumentError, match="Score-CAM"):
        raw(engine, image, ScoreTarget(lambda z: z[:, 0]), "scorecam", max_channels=4)


def test_per_image_rows_mix_targets_and_ids(engine: CamEngine, photo_arrays: dict[str, np.ndarray]) -> None:
    images = [photo_arrays["astronaut"], photo_arrays["coffee"]]
    results = engine.explain(images, classes=[[1, DifferenceTarget(2, 0)], [RankTarget(1), "cross"]])
    assert [t.class_id for t in results[0].targets] == [1, 2]
    assert results[1].targets[0].class_id == results[1].top_k[0].class_id
    assert results[1].targets[1].class_id == 3


def test_bad_targets_fail_before_any_image_is_read(engine: CamEngine) -> None:
    with pytest.raises(InvalidArgumentError):
        RankTarget(0)
    with pytest.raises(InvalidArgumentError, match="exceeds"):
        engine.explain("missing.jpg", classes=RankTarget(99))
    with pytest.raises(InvalidArgumentError, match="itself"):
        engine.explain("missing.jpg", classes=[DifferenceTarget(1, "square")])
    with pytest.raises(UnknownClassError):
        engine.explain("missing.jpg", classes=[[DifferenceTarget(1, "no such label")]])
    with pytest.raises(InvalidArgumentError, match="on must be"):
        ScoreTarget(lambda z: z[:, 0], on="features")  # type: ignore[arg-type]


def test_a_score_of_the_wrong_shape_is_refused(engine: CamEngine, image: np.ndarray) -> None:
    with pytest.raises(InvalidArgumentError, match="must map"):
        engine.explain(image, classes=ScoreTarget(lambda z: z))


def test_class_index_looks_up_ids_and_labels() -> None:
    from cam_runtime.targets import ClassIndex

    index = ClassIndex(["tabby cat", "Egyptian_cat", "dog", "dog"])
    assert index.class_id(1) == 1 and index.class_id("2") == 2 and index.class_id("egyptian-CAT") == 1
    assert index.class_id(ClassTarget("Tabby Cat")) == 0
    assert index.class_id("tabby, tabby cat") == 0  # a WordNet synonym list naming one class
    with pytest.raises(UnknownClassError, match="ambiguous"):
        index.class_id("dog")
    with pytest.raises(UnknownClassError, match="did you mean 'tabby cat'"):
        index.class_id("taby cat")
    with pytest.raises(UnknownClassError, match=r"\[0, 3\]"):
        index.class_id(4)
    with pytest.raises(UnknownClassError):
        index.class_id(True)


def test_check_classes_is_the_front_ends_one_check() -> None:
    from cam_runtime.targets import ClassIndex

    index = ClassIndex(["cat", "dog", "fox"])
    index.check_classes(["cat", 2], 1)  # top_k is not looked at when classes are given
    index.check_classes(None, 3)
    with pytest.raises(InvalidArgumentError, match=r"--top-k must be in \[1, 3\], got 4"):
        index.check_classes(None, 4, "--top-k")
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        index.check_classes([], 1)
    with pytest.raises(UnknownClassError, match="did you mean 'fox'"):
        index.check_classes(["cat", "foxx"], 1)


def test_target_request_normal_forms() -> None:
    from cam_runtime.targets import ClassIndex, PerImage, TargetRequest

    index = ClassIndex(["a", "b", "c"])
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    assert TargetRequest.parse(None, 2, 3).resolve(index, probs, [0, 1]).ids.tolist() == [[1, 2], [0, 2]]
    assert TargetRequest.parse("c", 1, 3).resolve(index, probs, [0, 1]).ids.tolist() == [[2], [2]]
    assert TargetRequest.parse([0, "b"], 1, 3).resolve(index, probs, [0, 1]).ids.tolist() == [[0, 1], [0, 1]]
    explicit = TargetRequest.parse(PerImage([["a"], ["c"], ["b"]]), 1, 3)
    guessed = TargetRequest.parse([["a"], ["c"], ["b"]], 1, 3)
    assert explicit == guessed
    # Per-image rows follow the images' positions in the input, whatever the batch.
    assert explicit.resolve(index, probs, [1, 2]).ids.tolist() == [[2], [1]]
    explicit.validate(index, total=3)
    with pytest.raises(InvalidArgumentError, match="3 lists for 2 images"):
        explicit.validate(index, total=2)
    with pytest.raises(InvalidArgumentError, match="same, non-zero length"):
        TargetRequest.parse([["a"], ["a", "b"]], 1, 3).validate(index)
    with pytest.raises(UnknownClassError):
        TargetRequest.parse([["a"], ["zzz"]], 1, 3).validate(index)
    with pytest.raises(InvalidArgumentError, match="top_k"):
        TargetRequest.parse(None, 4, 3)
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        TargetRequest.parse([], 1, 3)


def test_per_image_form_through_the_engine(engine: CamEngine, photo_arrays: dict[str, np.ndarray]) -> None:
    from cam_runtime.targets import PerImage

    images = [photo_arrays["astronaut"], photo_arrays["coffee"]]
    results = engine.explain(images, classes=PerImage([[3], ["square"]]), batch_size=1)
    assert [[t.class_id for t in r.targets] for r in results] == [[3], [1]]
    mixed = engine.explain(images, classes=PerImage([[RankTarget(1)], [DifferenceTarget(1, 2)]]))
    assert mixed[1].targets[0].class_id == 1 and "−" in mixed[1].targets[0].label
    with pytest.raises(InvalidArgumentError, match="1 lists for 2 images"):
        engine.explain(images, classes=PerImage([[1]]))
