"""The fast map and preprocessing code gives the same results as the straightforward implementation
(the fast box code: tests/test_boxes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cam_runtime.maps import heatmap_at, normalize, upsample


def test_heatmap_in_place_equals_out_of_place():
    rng = np.random.default_rng(3)
    for scale in (1e-3, 1.0, -1.0, 0.0):
        raw = (rng.normal(size=(7, 7)) * scale).astype(np.float32)
        up = upsample(raw, 301, 449)
        expected = np.maximum(up, 0.0) * np.float32(1.0 / up.max()) if up.max() > 0 else np.zeros_like(up)
        np.testing.assert_array_equal(heatmap_at(raw, 301, 449), expected)
        np.testing.assert_array_equal(normalize(up.copy()), expected)
    assert normalize(up) is not up and normalize(up, inplace=True) is up


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_preprocessing_equals_plain_numpy(layout, order):
    """remap-based Pillow-nearest resize and the cv2.LUT scaling give bit-identical tensors."""
    from cam_runtime.model import InputSpec, Preprocess
    from cam_runtime.preprocess import Preprocessor, pil_nearest_indices

    rng = np.random.default_rng(5)
    spec = InputSpec("x", layout, 224, 200)  # type: ignore[arg-type]
    pre = Preprocess(order, (103.9, 116.8, 123.7), (57.4, 1.0, 58.4), "nearest")  # type: ignore[arg-type]
    for h, w in ((480, 640), (224, 200), (97, 1301), (1, 3)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        resized = image[pil_nearest_indices(h, 224)[:, None], pil_nearest_indices(w, 200)[None, :]]
        x = (resized[:, :, ::-1] if order == "RGB" else resized).astype(np.float32)
        x = x * (1 / np.asarray(pre.std, np.float32)) + (-np.asarray(pre.mean, np.float32) / np.asarray(pre.std,
                                                                                                          np.float32))
        expected = x.transpose(2, 0, 1) if layout == "NCHW" else x
        got = Preprocessor(spec, pre).tensor(image)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected.astype(np.float32))
