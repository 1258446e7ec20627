"""Shared fixtures: tiny model folders (no TensorFlow) and real photos from scikit-image."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_folder

PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="session")
def tiny_nhwc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny NHWC model folder (RGB mean/std preprocessing)."""
    return make_tiny_folder(tmp_path_factory.mktemp("models") / "tiny-nhwc", "NHWC", seed=0)


@pytest.fixture(scope="session")
def tiny_nchw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny NCHW model folder, as a hand-made PyTorch-style export would look."""
    return make_tiny_folder(tmp_path_factory.mktemp("models") / "tiny-nchw", "NCHW", seed=0)


@pytest.fixture(scope="session")
def photo_arrays() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image (public domain / CC0)."""
    from skimage import data

    return {name: getattr(data, name)() for name in PHOTOS}


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory: pytest.TempPathFactory, photo_arrays: dict[str, np.ndarray]) -> dict[str, Path]:
    """The photos written as JPEG and PNG: keys like 'chelsea.jpg'."""
    folder = tmp_path_factory.mktemp("photos")
    files = {}
    for name, rgb in photo_arrays.items():
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for ext in ("jpg", "png"):
            path = folder / f"{name}.{ext}"
            cv2.imwrite(str(path), bgr)
            files[path.name] = path
    return files
