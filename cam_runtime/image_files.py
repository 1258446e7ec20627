"""Lazy discovery of image files in a folder, for streaming explanations over large trees."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidArgumentError
from .imaging import IMAGE_EXTENSIONS


def is_image_name(path: str | Path) -> bool:
    """Whether a file name has an image extension (the test every folder walk and listing uses)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def resolved(path: Path) -> Path | None:
    """``path`` with links resolved, or None where that fails (a loop, a permission error)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def iter_image_files(folder: str | Path, *, recursive: bool = True, exclude: Path | None = None) -> Iterator[Path]:
    """Image-named entries under ``folder`` in sorted order, yielded one directory at a time.

    Every non-folder entry counts (FIFOs and dangling links too, so a caller can report them); symlinked folders
    are not entered, so a link loop cannot hang the walk. ``exclude`` (a resolved folder) is skipped with its tree.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidArgumentError(f"not a folder: {folder}")
    for current, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        if not recursive:
            dirnames.clear()
        elif exclude is not None:
            dirnames[:] = [d for d in dirnames if resolved(Path(current) / d) != exclude]
        for name in sorted(filenames):
            if is_image_name(name):
                yield Path(current) / name
