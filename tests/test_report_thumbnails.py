"""Report thumbnails built from one small copy of the image, and --skip-existing redoing empty output files."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from cam_runtime.boxes import Box
from cam_runtime.cli import app
from cam_runtime.cli.bench_cmd import example_images
from cam_runtime.engine import CamEngine
from cam_runtime.report import THUMB_SIDE, _scale_box, result_thumbnails, shrink, thumbnail_size
from tiny_models import make_tiny_folder


@pytest.fixture(scope="session")
def thumb_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder (no TensorFlow)."""
    return make_tiny_folder(tmp_path_factory.mktemp("thumb-models") / "tiny", "NHWC", seed=5)


def decode_uri(uri: str) -> np.ndarray:
    """A JPEG data URI back to a BGR array."""
    assert uri.startswith("data:image/jpeg;base64,")
    data = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.mark.parametrize("shape", [(480, 640), (1280, 853), (161, 3000), (100, 120), (160, 160)])
def test_shrink_fits_and_matches_direct_area_resize(shape: tuple[int, int]) -> None:
    # A whole-factor pre-shrink must give the look of one INTER_AREA resize (real photo, with sharp edges).
    photo = cv2.imread(str(example_images()[0]), cv2.IMREAD_COLOR)
    image = cv2.resize(photo, shape[::-1], interpolation=cv2.INTER_CUBIC)
    small = shrink(image)
    h, w = thumbnail_size(*shape)
    assert small.shape == (h, w, 3) and max(h, w) <= THUMB_SIDE
    if max(shape) <= THUMB_SIDE:
        assert small is image
        return
    direct = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    # The pre-shrink drops < k edge pixels (< 0.5 thumbnail pixel of shift): close, not identical, on sharp edges.
    diff = np.abs(small.astype(np.int16) - direct.astype(np.int16))
    assert diff.mean() < 8.0, diff.mean()
    assert np.corrcoef(small.ravel(), direct.ravel())[0, 1] > 0.97


def test_scaled_boxes_stay_inside_and_nonempty() -> None:
    box = Box(x0=10, y0=20, x1=11, y1=400, area=50, score=0.7)
    scaled = _scale_box(box, 160 / 480, 120 / 640)
    assert (scaled.x0, scaled.y0) == (1, 6)
    assert scaled.x1 == 3 and scaled.y1 == 134  # ceil(11 * 0.1875), ceil(400 / 3)
    assert scaled.width >= 1 and scaled.height >= 1 and (scaled.area, scaled.score) == (50, 0.7)
    full = _scale_box(Box(0, 0, 640, 480, 1, 1.0), 160 / 480, 120 / 640)
    assert (full.x0, full.y0, full.x1, full.y1) == (0, 0, 120, 160)


def test_overlay_thumbnails_look_like_shrunk_full_overlays(thumb_model: Path) -> None:
    engine = CamEngine.load(thumb_model, device="cpu", threads=1)
    for path in example_images()[:2]:
        result = engine.explain(path, top_k=2)[0]
        input_uri, overlay_uris = result_thumbnails(result, alpha=0.5, colormap="jet", draw_boxes=False)
        assert len(overlay_uris) == 2
        small_input = decode_uri(input_uri)
        assert max(small_input.shape[:2]) == THUMB_SIDE
        for index, uri in enumerate(overlay_uris):
            thumb = decode_uri(uri)
            full = result.overlay(index, draw_boxes=False, channel_order="BGR")
            expected = cv2.resize(full, thumb.shape[1::-1], interpolation=cv2.INTER_AREA)
            diff = np.abs(thumb.astype(np.int16) - expected.astype(np.int16))
            assert thumb.shape == small_input.shape
            assert diff.mean() < 7.0, diff.mean()
            # Not just the input: the map is blended in.
            assert np.abs(thumb.astype(np.int16) - small_input.astype(np.int16)).mean() > 10


def test_skip_existing_redoes_an_image_with_an_empty_overlay(thumb_model: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for p in example_images()[:2]:
        shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    args = ["explain", str(src), "-m", str(thumb_model), "-o", str(out), "-q"]
    assert CliRunner().invoke(app, args).exit_code == 0
    keys = [r["key"] for r in json.loads((out / "report.json").read_text())["images"]]
    empty = out / f"{keys[0]}.overlay-1.jpg"
    kept = out / f"{keys[1]}.overlay-1.jpg"
    reference, kept_mtime = empty.read_bytes(), kept.stat().st_mtime_ns
    empty.write_bytes(b"")  # what a power loss can leave of a file that was never fsynced
    resumed = CliRunner().invoke(app, [*args, "--skip-existing"])
    assert resumed.exit_code == 0, resumed.output
    report = json.loads((out / "report.json").read_text())
    assert [r["resumed"] for r in report["images"]] == [False, True]
    assert empty.read_bytes() == reference
    assert kept.stat().st_mtime_ns == kept_mtime
