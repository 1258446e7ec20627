"""cam_runtime.derive.fidelity: the one comparison of a derived model with its float32 source (top-1, maps,
boxes), its acceptance thresholds and the image folders it reads."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cam_runtime.derive.fidelity import EvaluationSets, SetFidelity, acceptance_problems, compare, image_files
from cam_runtime.engine import CamEngine
from cam_runtime.errors import ImageFolderError, InvalidArgumentError
from tiny_models import make_tiny_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, photo_arrays: dict[str, np.ndarray]) -> Path:
    folder = tmp_path_factory.mktemp("fidelity-photos")
    for name, rgb in photo_arrays.items():
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    (folder / "sub" / "deeper.png").write_bytes((folder / "coffee.png").read_bytes())  # not read: one level only
    return folder


def test_a_model_agrees_with_itself(tiny_nhwc: Path, photos: Path) -> None:
    source = CamEngine.load(tiny_nhwc, device="cpu")
    sets = EvaluationSets.load(source, photos, None)
    same = compare(source, source, sets.calibration, sets.calibration_sizes, batch_size=2)
    assert same == SetFidelity(images=3, top1_agreement=1.0, map_correlation_mean=pytest.approx(1.0),
                               map_correlation_min=pytest.approx(1.0), box_iou_mean=1.0, box_iou_min=1.0,
                               max_abs_probability_diff=0.0)


def test_a_different_model_is_caught(tiny_nhwc: Path, tmp_path: Path, photos: Path) -> None:
    source = CamEngine.load(tiny_nhwc, device="cpu")
    stranger = CamEngine.load(make_tiny_folder(tmp_path / "seed-7", "NHWC", seed=7), device="cpu")
    sets = EvaluationSets.load(source, photos, photos, limit=2)
    assert len(sets.calibration) == 2 and sets.held_out is not None and len(sets.held_out_sizes) == 2
    result = compare(source, stranger, sets.calibration, sets.calibration_sizes)
    assert result.map_correlation_mean < 0.99 and result.max_abs_probability_diff > 1e-3
    assert acceptance_problems({"calibration": result}, min_top1=0.0, min_correlation=0.99)


def test_acceptance_thresholds_and_nan() -> None:
    good = SetFidelity(10, 0.95, 0.97, 0.9, 0.8, 0.5, 0.01)
    assert acceptance_problems({"calibration": good}) == []
    problems = acceptance_problems({"held-out": SetFidelity(10, 0.8, math.nan, math.nan, 0.0, 0.0, 0.5)})
    assert problems == ["held-out: top-1 agreement 80.0% < 90%", "held-out: mean map correlation nan < 0.9"]
    assert good.to_dict()["top1_agreement"] == 0.95 and good.to_dict()["images"] == 10


def test_image_folders(photos: Path, tmp_path: Path) -> None:
    assert [p.name for p in image_files(photos)] == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert [p.name for p in image_files(photos, limit=1)] == ["astronaut.png"]
    with pytest.raises(ImageFolderError, match="--calibration"):
        image_files(photos / "chelsea.png", what="--calibration")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="no images"):
        image_files(tmp_path / "empty")
