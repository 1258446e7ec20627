"""The per-image fast paths (issue 19) give exactly what the plain NumPy versions give."""

from __future__ import annotations

import numpy as np
import pytest

from cam_runtime.errors import InvalidArgumentError
from cam_runtime.model import InputSpec, Preprocess
from cam_runtime.preprocess import Preprocessor
from cam_runtime.session import nchw_to_nhwc
from cam_runtime.targets import top_k_ids


def test_top_k_ids_is_a_stable_argsort() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        probs = rng.integers(0, 4, (3, 10)).astype(np.float32)  # many ties: lower id first
        for k in (1, 2, 10):
            np.testing.assert_array_equal(top_k_ids(probs, k), np.argsort(-probs, axis=1, kind="stable")[:, :k])
    probs[1, 2] = np.nan  # argmax would pick the NaN; the sort puts it last
    np.testing.assert_array_equal(top_k_ids(probs, 1), np.argsort(-probs, axis=1, kind="stable")[:, :1])


def test_nchw_features_transposed_exactly() -> None:
    features = np.random.default_rng(1).normal(size=(3, 1280, 8, 8)).astype(np.float32)
    got = nchw_to_nhwc(features)
    assert got.flags.c_contiguous and got.shape == (3, 8, 8, 1280)
    np.testing.assert_array_equal(got, features.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(nchw_to_nhwc(features[:, :, :, ::-1]), features[:, :, :, ::-1].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_preprocess_into_a_batch_row(layout: str, order: str) -> None:
    pre = Preprocessor(InputSpec("x", layout, 64, 48),  # type: ignore[arg-type]
                       Preprocess(order, (1.0, 2.0, 3.0), (2.0, 3.0, 4.0), "bilinear"))  # type: ignore[arg-type]
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(3)]
    batch = pre.batch(images)
    assert batch.shape == (3, *pre.shape)
    for row, image in zip(batch, images, strict=True):
        np.testing.assert_array_equal(row, pre.tensor(image))
    out = np.empty(pre.shape, np.float32)
    assert pre.tensor(images[0], out=out) is out
    with pytest.raises(InvalidArgumentError, match="C-contiguous float32"):
        pre.tensor(images[0], out=np.empty(pre.shape, np.float64))
