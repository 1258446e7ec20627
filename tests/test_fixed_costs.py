"""The per-image fast paths (issue 19) give exactly what the plain NumPy versions give."""

from __future__ import annotations

from pathlib import Path

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


def reference_colorize(heatmap: np.ndarray, code: int) -> np.ndarray:
    """The plain version: the same levels as before (float32 arithmetic) through cv2.applyColorMap."""
    import cv2

    if heatmap.min() >= 0:
        levels = cv2.convertScaleAbs(heatmap, alpha=255.0)
    else:
        levels = np.clip(np.rint(heatmap * 255.0), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, code)


@pytest.mark.parametrize("shape", [(300, 451), (1, 1), (7, 13), (2, 1000)])
def test_colour_maps_equal_opencv_for_every_colormap(shape: tuple[int, int]) -> None:
    from cam_runtime.render import COLORMAPS, colorize

    rng = np.random.default_rng(3)
    heat = rng.random(shape, dtype=np.float32)
    heat.flat[0] = 1.0
    for name, code in COLORMAPS.items():
        got = colorize(heat, name)
        assert got.dtype == np.uint8 and got.shape == (*shape, 3) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, reference_colorize(heat, code), err_msg=name)
    signed = heat - 0.5  # negative values take the NumPy levels
    np.testing.assert_array_equal(colorize(signed, "turbo"), reference_colorize(signed, COLORMAPS["turbo"]))


def test_overlay_equals_the_plain_blend() -> None:
    import cv2

    from cam_runtime.boxes import boxes_from_map
    from cam_runtime.maps import heatmap_at
    from cam_runtime.render import overlay_bgr

    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    heat = heatmap_at(rng.normal(size=(7, 7)).astype(np.float32), 300, 451)
    boxes = boxes_from_map(heat, 0.5, True)
    before = image.copy()
    for alpha in (0.0, 0.35, 0.5, 1.0):
        want = cv2.addWeighted(image, 1.0 - alpha, reference_colorize(heat, cv2.COLORMAP_JET), alpha, 0.0)
        for box in boxes:
            cv2.rectangle(want, (box.x0, box.y0), (box.x1 - 1, box.y1 - 1), (0, 255, 0), 2)
        np.testing.assert_array_equal(overlay_bgr(image, heat, alpha=alpha, boxes=boxes), want)
    np.testing.assert_array_equal(image, before)  # the photo is never blended into


def test_batch_tensor_is_a_view_only_of_consecutive_rows() -> None:
    from cam_runtime.pipeline import batch_tensor

    rows = np.random.default_rng(5).random((4, 6, 5, 3), dtype=np.float32)
    view = batch_tensor([rows[0], rows[1], rows[2]], (6, 5, 3))
    assert np.shares_memory(view, rows) and view.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(view, rows[:3])
    single = batch_tensor([rows[2]], (6, 5, 3))
    assert np.shares_memory(single, rows) and single.shape == (1, 6, 5, 3)
    for tensors in ([rows[1], rows[2]], [rows[0], rows[2]], [rows[1], rows[0]], [rows[0], rows[0].copy()]):
        got = batch_tensor(tensors, (6, 5, 3))
        assert not np.shares_memory(got, rows)  # not the leading rows in order: a stacked copy
        np.testing.assert_array_equal(got, np.stack(tensors))
    assert batch_tensor([], (6, 5, 3)).shape == (0, 6, 5, 3)


def test_pipeline_feeds_the_rows_it_preprocessed_into(tiny_nhwc: Path, photo_arrays: dict[str, np.ndarray]) -> None:
    from cam_runtime.engine import CamEngine

    engine = CamEngine.load(tiny_nhwc, device="cpu", threads=1)
    seen: list[np.ndarray] = []
    run = engine.run

    def recording(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(batch.copy())
        assert batch.base is not None  # a view of the decoder's rows, not a stacked copy
        return run(batch)

    engine.run = recording  # type: ignore[method-assign]
    photos = list(photo_arrays.values())
    images = (photos * 5)[:5]
    results = engine.explain(images, batch_size=3)
    assert [len(b) for b in seen] == [3, 2]
    want = np.stack([engine.preprocessor.tensor(engine.load_image(i).bgr) for i in images])
    np.testing.assert_array_equal(np.concatenate(seen), want)
    for result, image in zip(results, images, strict=True):
        alone = CamEngine.explain(engine, image, batch_size=1)[0]
        np.testing.assert_allclose(result.targets[0].raw, alone.targets[0].raw, rtol=1e-5, atol=1e-6)


def test_file_reads_take_the_stat_size_then_anything_more(tmp_path: Path) -> None:
    import sys

    from cam_runtime.errors import ImageReadError
    from cam_runtime.imaging import read_file_bytes

    photo = tmp_path / "p.jpg"
    photo.write_bytes(bytes(range(256)) * 40)
    assert read_file_bytes(photo, 10240) == photo.read_bytes()
    with pytest.raises(ImageReadError, match="more than the 10239 allowed"):
        read_file_bytes(photo, 10239)
    if sys.platform.startswith("linux"):  # procfs: regular files whose stat size is 0, read on to the limit
        status = Path("/proc/self/status")
        assert read_file_bytes(status, 1 << 20).startswith(b"Name:")
        assert len(read_file_bytes(status, 1 << 20)) > 1
