"""ExplainResult.save (files, channel order, atomic and never overwriting) and the public overlay helper."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import cam_runtime
from cam_runtime.engine import CamEngine
from cam_runtime.errors import InvalidArgumentError, OutputExistsError
from cam_runtime.results import ExplainResult


@pytest.fixture(scope="module")
def result(tiny_nhwc: Path, photo_files: dict[str, Path]) -> ExplainResult:
    return CamEngine.load(tiny_nhwc, device="cpu").explain(photo_files["chelsea.png"], top_k=2)[0]


def test_save_to_a_folder_writes_every_kind_in_file_order(result: ExplainResult, tmp_path: Path) -> None:
    written = result.save(tmp_path / "out", what=("overlay", "heatmap", "json", "map"))
    assert [p.name for p in written] == ["chelsea.overlay.png", "chelsea.heatmap.png", "chelsea.json",
                                         "chelsea.map.npy"]
    # a PNG read back by OpenCV (BGR) equals the RGB overlay reversed: red stays red on disk
    on_disk = cv2.imread(str(written[0]), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(on_disk[:, :, ::-1], result.overlay())
    np.testing.assert_array_equal(cv2.imread(str(written[1]))[:, :, ::-1], result.colored_heatmap())
    assert json.loads(written[2].read_text())["top_k"][0]["class_id"] == result.top_k[0].class_id
    np.testing.assert_array_equal(np.load(written[3], allow_pickle=False), result.targets[0].raw)
    assert not list((tmp_path / "out").glob(".camr-*"))  # no temporary files left


def test_save_to_one_file_picks_the_kind_from_the_suffix(result: ExplainResult, tmp_path: Path) -> None:
    (jpg,) = result.save(tmp_path / "cat.jpg")
    assert cv2.imread(str(jpg)).shape == (result.height, result.width, 3)
    (heat,) = result.save(tmp_path / "heat.webp", what="heatmap", target=1)
    assert cv2.imread(str(heat)).shape[:2] == (result.height, result.width)
    (summary,) = result.save(tmp_path / "r.json")
    assert json.loads(summary.read_text())["method"] == result.method
    with pytest.raises(InvalidArgumentError, match="one file"):
        result.save(tmp_path / "x.png", what=("overlay", "json"))
    with pytest.raises(InvalidArgumentError, match="cannot be written"):
        result.save(tmp_path / "x.png", what="json")
    with pytest.raises(InvalidArgumentError, match="what must be"):
        result.save(tmp_path / "x", what="everything")


def test_save_never_overwrites_without_being_asked(result: ExplainResult, tmp_path: Path) -> None:
    (first,) = result.save(tmp_path / "o.png")
    before = first.read_bytes()
    with pytest.raises(OutputExistsError):
        result.save(tmp_path / "o.png", heatmap_weight=0.9)
    assert first.read_bytes() == before
    result.save(tmp_path / "o.png", heatmap_weight=0.9, overwrite=True)
    assert first.read_bytes() != before


def test_overlay_helper_on_any_image_and_map(photo_arrays: dict[str, np.ndarray]) -> None:
    rgb = photo_arrays["coffee"]
    small = np.zeros((10, 20), dtype=np.float32)
    small[2:5, 3:9] = 1.0
    out = cam_runtime.overlay(rgb, small, heatmap_weight=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(cam_runtime.overlay(rgb, small, heatmap_weight=0.0), rgb)
    # the same picture in OpenCV order comes back in OpenCV order
    bgr = cam_runtime.overlay(np.ascontiguousarray(rgb[:, :, ::-1]), small, heatmap_weight=0.5, channel_order="BGR")
    np.testing.assert_array_equal(bgr[:, :, ::-1], out)
    # pytorch-grad-cam's image_weight is the photo's share; float images in [0, 1] are accepted
    np.testing.assert_array_equal(cam_runtime.overlay(rgb, small, image_weight=0.5), out)
    as_float = cam_runtime.overlay(rgb.astype(np.float32) / 255.0, small, image_weight=0.5)
    assert np.abs(as_float.astype(int) - out.astype(int)).max() <= 1
    # a hot region is red-ish in RGB with jet: more red than blue where the map is 1
    full = np.ones(rgb.shape[:2], dtype=np.float32)
    red = cam_runtime.overlay(np.zeros_like(rgb), full, heatmap_weight=1.0)
    assert red[..., 0].mean() > red[..., 2].mean()


def test_overlay_helper_rejects_what_it_cannot_draw(photo_arrays: dict[str, np.ndarray]) -> None:
    rgb = photo_arrays["coffee"]
    good = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match="add up to 1"):
        cam_runtime.overlay(rgb, good, heatmap_weight=0.3, image_weight=0.3)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]"):
        cam_runtime.overlay(rgb, good + 2.0)
    with pytest.raises(InvalidArgumentError, match="float image"):
        cam_runtime.overlay(rgb.astype(np.float32), good)
    with pytest.raises(InvalidArgumentError, match="shape"):
        cam_runtime.overlay(rgb[..., :2], good)
    with pytest.raises(InvalidArgumentError, match="weights"):
        cam_runtime.overlay(rgb, good, heatmap_weight=1.5)


def test_alpha_is_kept_as_a_deprecated_name(result: ExplainResult) -> None:
    with pytest.warns(DeprecationWarning, match="heatmap_weight"):
        old = result.overlay(alpha=0.3)
    np.testing.assert_array_equal(old, result.overlay(heatmap_weight=0.3))
    np.testing.assert_array_equal(result.overlay(image_weight=0.7), old)
