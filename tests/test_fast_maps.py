"""The fast map and box code gives the same results as the straightforward full-image implementation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import cam_runtime.boxes as boxes_module
from cam_runtime.boxes import boxes_from_map
from cam_runtime.maps import heatmap_at, normalize, upsample


def reference_boxes(heatmap: np.ndarray, threshold: float, all_components: bool) -> list[tuple]:
    """Labelling of the whole thresholded map with cv2 stats, region means by boolean indexing."""
    peak = float(heatmap.max())
    if not peak > 0:
        return []
    mask = (heatmap >= threshold * peak).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1
    out = []
    for label in order if all_components else order[:1]:
        x, y, w, h, area = (int(v) for v in stats[label])
        region = heatmap[y:y + h, x:x + w][labels[y:y + h, x:x + w] == label]
        out.append((x, y, x + w, y + h, area, float(region.mean() / peak)))
    return out


def random_maps(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        kind = i % 3
        if kind == 0:  # smooth, like an upsampled CAM (touches the borders, has holes)
            yield cv2.resize(rng.normal(size=(int(rng.integers(1, 8)), int(rng.integers(1, 8)))).astype(np.float32),
                             (w, h))
        elif kind == 1:  # isolated pixels: many components with equal areas (tie order matters)
            yield (rng.random((h, w)) < 0.2).astype(np.float32)
        else:
            yield cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2)


@pytest.mark.parametrize("force_contours", [False, True])
def test_boxes_match_full_labelling(monkeypatch, force_contours):
    if force_contours:  # the per-component path even for noise-like maps with hundreds of components
        monkeypatch.setattr(boxes_module, "_MAX_CONTOUR_COMPONENTS", 10**9)
    for heatmap in random_maps(7, 150):
        for threshold in (0.2, 0.6, 1.0):
            for all_components in (False, True):
                got = [(b.x0, b.y0, b.x1, b.y1, b.area, b.score)
                       for b in boxes_from_map(heatmap, threshold, all_components)]
                want = reference_boxes(heatmap, threshold, all_components)
                assert [g[:5] for g in got] == [r[:5] for r in want]
                np.testing.assert_allclose([g[5] for g in got], [r[5] for r in want], rtol=1e-5)


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
