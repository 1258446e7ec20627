"""ROAD: the noisy linear imputer against an independent per-pixel solve and pytorch-grad-cam, and the scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cam_runtime.engine import CamEngine
from cam_runtime.errors import InvalidArgumentError
from cam_runtime.evaluation import evaluate_method, load_samples
from cam_runtime.ground_truth_boxes import read_boxes
from cam_runtime.road import NEIGHBOUR_WEIGHTS, impute_linear, removal_masks, road
from torch_reference import import_pytorch_grad_cam

ROOT = Path(__file__).resolve().parents[1]


def reference_imputation(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROAD's defining equations written out pixel by pixel and solved densely (no sparse code shared)."""
    height, width, _ = image.shape
    unknown = [(y, x) for y in range(height) for x in range(width) if not keep[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), image.shape[2]))
    for i, (y, x) in enumerate(unknown):
        # value · Σ(weights of neighbours inside the image) = Σ weight · neighbour
        for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
            ny, nx = y + dy, x + dx
            if not (0 <= ny < height and 0 <= nx < width):
                continue
            a[i, i] += weight
            if keep[ny, nx]:
                b[i] += weight * image[ny, nx]
            else:
                a[i, index[(ny, nx)]] -= weight
    out = image.astype(np.float64).copy()
    solution = np.linalg.solve(a, b)
    for i, (y, x) in enumerate(unknown):
        out[y, x] = solution[i]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_imputation_solves_the_neighbour_equations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(9, 11, 3)).astype(np.float32)
    keep = rng.uniform(size=(9, 11)) > 0.6  # borders and corners removed too
    keep[0, 0] = True
    got = impute_linear(image, keep, noise=0.0)
    np.testing.assert_allclose(got, reference_imputation(image, keep), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[keep], image[keep])


def test_linear_ramp_is_reconstructed_exactly() -> None:
    """Symmetric neighbour weights reproduce any linear function inside the image."""
    yy, xx = np.mgrid[0:20, 0:24].astype(np.float32)
    image = np.stack([xx + 2 * yy, 3 * xx - yy, np.full_like(xx, 5.0)], axis=-1)
    keep = np.ones((20, 24), dtype=bool)
    keep[5:15, 6:18] = False
    np.testing.assert_allclose(impute_linear(image, keep, noise=0.0), image, atol=1e-4)


def test_noise_is_seeded_and_has_the_requested_scale() -> None:
    image = np.zeros((40, 40, 1), dtype=np.float32)
    keep = np.zeros((40, 40), dtype=bool)
    keep[::2] = True
    first = impute_linear(image, keep, noise=0.5, rng=np.random.default_rng(3))
    again = impute_linear(image, keep, noise=0.5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(first, again)
    assert float(first[~keep].std()) == pytest.approx(0.5, rel=0.1)
    assert not first[keep].any()


def test_everything_removed_fills_with_the_mean() -> None:
    image = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    got = impute_linear(image, np.zeros((2, 2), dtype=bool), noise=0.0)
    np.testing.assert_allclose(got, np.broadcast_to(image.mean(axis=(0, 1)), image.shape))


def test_removal_masks_follow_the_percentiles() -> None:
    saliency = np.arange(100, dtype=np.float32).reshape(10, 10) / 99
    morf = removal_masks(saliency, 80, "morf")
    lerf = removal_masks(saliency, 80, "lerf")
    assert (~morf).sum() == 20 and saliency[~morf].min() > saliency[morf].max()  # the 20 largest go
    assert (~lerf).sum() == 20 and saliency[~lerf].max() < saliency[lerf].min()  # the 20 smallest go
    with pytest.raises(InvalidArgumentError):
        removal_masks(saliency, 50, "random")


def test_a_map_on_the_evidence_beats_one_off_it() -> None:
    """A score that reads one region: removing that region first (MoRF) must hurt; a wrong map must not."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 0.2, (24, 24, 3)).astype(np.float32)
    image[4:10, 4:10] = 1.0

    def score(stack: np.ndarray) -> np.ndarray:
        return stack[:, 4:10, 4:10].mean(axis=(1, 2, 3))

    right = np.zeros((24, 24), dtype=np.float32)
    right[4:10, 4:10] = 1.0
    right += rng.uniform(0, 0.01, right.shape).astype(np.float32)  # break ties
    wrong = 1.0 - right
    good = road(image, right, score, noise=0.0)
    bad = road(image, wrong, score, noise=0.0)
    assert good.morf_mean < bad.morf_mean
    assert good.lerf_mean > bad.lerf_mean
    assert good.combined > bad.combined > -1
    assert good.morf.shape == (9,) and good.lerf.shape == (9,)
    with pytest.raises(InvalidArgumentError):
        road(image, right[:10], score)
    with pytest.raises(InvalidArgumentError):
        road(image, right, score, percentiles=[0, 50])


def test_pytorch_grad_cam_imputer_agrees() -> None:
    road_module = import_pytorch_grad_cam().metrics.road
    import torch
    rng = np.random.default_rng(5)
    image = rng.normal(size=(16, 18, 3)).astype(np.float32)
    keep = rng.uniform(size=(16, 18)) > 0.5
    reference = road_module.NoisyLinearImputer(noise=0.0)(torch.from_numpy(image.transpose(2, 0, 1).copy()),
                                                          torch.from_numpy(keep.astype(np.float32)))
    np.testing.assert_allclose(impute_linear(image, keep, noise=0.0), reference.numpy().transpose(1, 2, 0),
                               rtol=1e-4, atol=1e-4)


def test_road_in_the_evaluation_prefers_cam_to_noise() -> None:
    engine = CamEngine.load(ROOT / "models" / "fixtures" / "shapes", device="cpu")
    test_set = ROOT / "models" / "fixtures" / "shapes-test"
    annotations = read_boxes(test_set / "boxes.csv")
    names = sorted(annotations)[:12]
    samples, _ = load_samples(engine, test_set / "images", {n: annotations[n] for n in names})
    size = engine.manifest.input.height
    noise = [np.random.default_rng(i).uniform(0, 1, (size, size)).astype(np.float32) for i in range(len(samples))]
    cam = evaluate_method(engine, samples, "cam", steps=4, road_percentiles=(20, 50, 80)).summary()
    rand = evaluate_method(engine, samples, "cam", steps=4, road_percentiles=(20, 50, 80),
                           saliency_override=noise).summary()
    assert cam["road_combined"] > rand["road_combined"]
    assert cam["road_morf"] < rand["road_morf"]
    report = evaluate_method(engine, samples[:2], "cam", steps=4, road_percentiles=(50,)).to_dict()
    assert {"road_morf", "road_lerf", "road_combined"} <= set(report["per_image"][0])
