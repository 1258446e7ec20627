"""Lazy discovery of image files in a folder, for streaming explanations over large trees."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidArgumentError
from .imaging import IMAGE_EXTENSIONS


def iter_image_files(folder: str | Path, *, recursive: bool = True) -> Iterator[Path]:
    """Image files (by extension) under ``folder`` in sorted order, yielded one directory at a time."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidArgumentError(f"not a folder: {folder}")
    for current, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if not recursive:
            dirnames.clear()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(current) / name
