"""Output files: atomic writes and collision-free output names that never leave the output folder.

Every file is written to a temporary file in the destination folder and moved into place with ``os.replace``,
so a run interrupted at any point (Ctrl-C, SIGTERM, SIGKILL) leaves each output either complete or absent.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePath

import numpy as np
import numpy.typing as npt

from .errors import (
    ImageEncodeError,
    InvalidArgumentError,
    OutputExistsError,
    OutputFolderError,
    UnsafeOutputPathError,
)
from .safe_io import current_umask

TEMP_PREFIX = ".camr-"
TEMP_SUFFIX = ".tmp"
IMAGE_FORMATS: tuple[str, ...] = ("jpg", "png", "webp")
_UNSAFE = re.compile(r"[^\w.\-+@=,]+", re.UNICODE)
_MAX_PART = 120


# --- atomic writes --------------------------------------------------------------------------------------------


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling file and ``os.replace`` (never half-written)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name[:60]}.", suffix=TEMP_SUFFIX,
                                        dir=path.parent)
    except OSError as exc:
        raise OutputFolderError(path.parent, exc.strerror or str(exc)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644 & ~current_umask())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise OutputFolderError(path.parent, exc.strerror or str(exc)) from None
        raise
    return path


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def encode_image(bgr: npt.NDArray[np.uint8], fmt: str, *, quality: int = 90) -> bytes:
    """Encode a BGR image as jpg, png or webp bytes with OpenCV."""
    import cv2

    fmt = fmt.lower().lstrip(".")
    if fmt not in IMAGE_FORMATS:
        raise InvalidArgumentError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    params = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, quality], "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
              "png": [cv2.IMWRITE_PNG_COMPRESSION, 3]}[fmt]
    ok, buffer = cv2.imencode(f".{fmt}", bgr, params)
    if not ok:
        raise ImageEncodeError(fmt)
    return buffer.tobytes()


def write_image_atomic(path: str | Path, bgr: npt.NDArray[np.uint8], fmt: str, *, fsync: bool = True) -> Path:
    """Encode and atomically write a BGR image."""
    return write_bytes_atomic(path, encode_image(bgr, fmt), fsync=fsync)


def save_npy_atomic(path: str | Path, array: npt.NDArray[np.generic], *, fsync: bool = True) -> Path:
    """``np.save`` (never pickled) through an atomic write."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue(), fsync=fsync)


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temporary files a killed run left behind in ``folder`` (recursively); returns how many.

    Temporary names end in ``.tmp``, or in ``.tmp.<ext>`` where a writer needs the extension (OpenCV's video
    writer picks its container from it).
    """
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    temps = {*root.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"), *root.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}.*")}
    for tmp in sorted(temps):
        with contextlib.suppress(OSError):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed += 1
    return removed


# --- output names ----------------------------------------------------------------------------------------------


def safe_part(part: str) -> str:
    """One path component made safe: no separators, no leading dots, no control characters, bounded length."""
    text = unicodedata.normalize("NFC", part)
    text = _UNSAFE.sub("_", text).strip("._ ")
    if not text:
        text = "_"
    return text[:_MAX_PART]


def output_key(relative: PurePath | str) -> str:
    """A relative input path → a safe, '/'-separated key (``a/b/cat.jpg`` → ``a/b/cat_jpg``).

    The extension is kept in the name so ``cat.jpg`` and ``cat.png`` in one folder do not collide; ``..``,
    absolute anchors and drive letters are dropped, so the key can never point outside the output folder.
    """
    parts = [p for p in PurePath(relative).parts if p not in ("", ".", "..", "/", "\\")
             and not PurePath(p).anchor]
    if not parts:
        return "_"
    *dirs, name = parts
    stem, dot, ext = name.rpartition(".")
    base = f"{stem}_{ext}" if dot and stem else name
    return "/".join([*(safe_part(d) for d in dirs), safe_part(base)])


class OutputLayout:
    """Where the files of each input go inside one output folder, with unique keys per run."""

    REPORT_FILES: tuple[str, ...] = ("report.json", "report.csv", "report.html")

    def __init__(self, root: str | Path, image_format: str = "jpg") -> None:
        fmt = image_format.lower().lstrip(".")
        if fmt not in IMAGE_FORMATS:
            raise InvalidArgumentError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
        self.root = Path(root)
        self.image_format = fmt
        self._taken: set[str] = set()

    def allocate(self, relative: PurePath | str) -> str:
        """A unique key for an input (``-2``, ``-3``… appended on a clash; case-insensitive, for macOS/Windows)."""
        key = output_key(relative)
        candidate, n = key, 1
        while candidate.casefold() in self._taken:
            n += 1
            candidate = f"{key}-{n}"
        self._taken.add(candidate.casefold())
        return candidate

    def path(self, relative_name: str) -> Path:
        """The absolute-or-root-relative path of a file named relative to the output folder (checked inside)."""
        path = self.root / relative_name
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved != root and not resolved.is_relative_to(root):
            raise UnsafeOutputPathError(relative_name, self.root)
        return path

    def overlay_name(self, key: str, target_index: int) -> str:
        """Overlay of the target at ``target_index`` (0-based; the file says 1-based)."""
        return f"{key}.overlay-{target_index + 1}.{self.image_format}"

    def heatmap_name(self, key: str, target_index: int) -> str:
        """The [0, 1] map of a target as .npy."""
        return f"{key}.heatmap-{target_index + 1}.npy"

    def record_name(self, key: str) -> str:
        """Per-image JSON record, written last: its presence marks the image as done (for --skip-existing)."""
        return f"{key}.json"

    def planned(self, key: str, targets: int, heatmaps: bool) -> list[str]:
        """Every file one input will produce."""
        names = [self.overlay_name(key, t) for t in range(targets)]
        if heatmaps:
            names += [self.heatmap_name(key, t) for t in range(targets)]
        return [*names, self.record_name(key)]

    def existing(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that already exist."""
        return [name for name in names if self.path(name).exists()]

    def check_writable(self) -> None:
        """Create the output folder and make sure files can be written there."""
        if self.root.exists() and not self.root.is_dir():
            raise OutputFolderError(self.root, "it is a file, not a folder (-o names the folder outputs go into)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a parent is a file
            raise OutputFolderError(self.root, "a parent path is a file, not a folder") from None
        except OSError as exc:
            raise OutputFolderError(self.root, exc.strerror or str(exc)) from None
        if not self.root.is_dir():
            raise OutputFolderError(self.root, "not a folder")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise OutputFolderError(self.root, "permission denied")


def ensure_absent(layout: OutputLayout, names: Iterable[str]) -> None:
    """Raise OutputExistsError for the first of ``names`` that exists."""
    for name in names:
        path = layout.path(name)
        if path.exists():
            raise OutputExistsError(path, resumable=True)
