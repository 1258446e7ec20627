"""Output files: atomic writes and collision-free output names that never leave the output folder.

Every file is written to a temporary file in the destination folder and moved into place with ``os.replace``,
so a run interrupted at any point (Ctrl-C, SIGTERM, SIGKILL) leaves each output either complete or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
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
_MAX_PART_BYTES = 160
"""Output name components are cut to this many UTF-8 bytes (plus a hash): ``.overlay-N.webp`` and a ``-N`` clash
suffix must still fit the 255-byte limit of common file systems."""
_HASH_CHARS = 10
MAX_KEY_BYTES = 1024
"""Keys (relative output paths) longer than this are flattened to ``_deep/<hash>/<name>``."""
RESERVED_PREFIX = "_"
"""Keys that would collide with the run's own report files get this prefix; :func:`safe_part` strips it from every
input-derived name, so no input can claim a prefixed key."""
_JSON_RAW_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# --- atomic writes --------------------------------------------------------------------------------------------


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling file and ``os.replace`` (never half-written)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{cut_bytes(path.name, 60)}.", suffix=TEMP_SUFFIX,
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


def json_ready(value: object) -> object:
    """A copy of ``value`` that strict JSON can hold: NaN/±inf → None, NumPy scalars → Python, tuples → lists,
    undecodable characters in strings → readable escapes (:func:`readable`)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return readable(value)
        return value
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, dict):
        return {str(json_ready(str(k))): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return json_ready(str(value))


def strict_json(value: object, *, indent: int | None = None, compact: bool = False) -> str:
    """JSON that any parser accepts (no NaN/Infinity, valid UTF-8), non-ASCII text kept readable."""
    separators = (",", ":") if compact else None
    text = json.dumps(json_ready(value), indent=indent, separators=separators, ensure_ascii=False, allow_nan=False)
    # JSON escapes C0 controls itself; these it leaves raw, and a terminal or a <script> block would act on them.
    # They occur only inside strings (the syntax is ASCII), where \uXXXX means the same character.
    return _JSON_RAW_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """UTF-8 text version of :func:`write_bytes_atomic` (a lone surrogate is written as a ``\\udcXX`` escape)."""
    return write_bytes_atomic(path, text.encode("utf-8", "backslashreplace"), fsync=fsync)


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


def readable(text: str) -> str:
    """Text made valid and harmless to print: undecodable bytes, control and bidi characters as escapes.

    A POSIX file name is bytes; Python carries the bytes that are not UTF-8 as lone surrogates (``b'bad\\xe9'`` →
    ``'bad\\udce9'``), which cannot be written as UTF-8 and would end a run with UnicodeEncodeError. They become
    ``\\xe9``; control characters (an ESC would drive the terminal) and bidirectional overrides become ``\\x1b``,
    ``\\u202e``. Printable text, including any script and emoji, is returned unchanged.
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape for the byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF or char in _BIDI_CONTROLS or unicodedata.category(char) in ("Zl", "Zp"):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def cut_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``limit`` bytes (never half a character)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def safe_part(part: str) -> str:
    """One path component made safe: no separators, leading dots or control characters; at most 160 UTF-8 bytes.

    Undecodable bytes keep a readable trace (``bad\\xe9.png`` → ``bad_xe9.png``); a name cut to fit gets a short hash
    of the whole name, so two long names with the same beginning stay distinct.
    """
    text = unicodedata.normalize("NFC", readable(part))
    text = _UNSAFE.sub("_", text).strip("._ ")
    if not text:
        text = "_"
    if len(text.encode("utf-8")) <= _MAX_PART_BYTES:
        return text
    digest = hashlib.sha256(part.encode("utf-8", "surrogateescape")).hexdigest()[:_HASH_CHARS]
    return f"{cut_bytes(text, _MAX_PART_BYTES - _HASH_CHARS - 1).rstrip('._ ')}~{digest}"


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
    key = "/".join([*(safe_part(d) for d in dirs), safe_part(base)])
    if len(key.encode("utf-8")) <= MAX_KEY_BYTES:
        return key
    # A very deep input tree: mirrored under -o it could pass the OS path limit (4,096 bytes on Linux).
    digest = hashlib.sha256("/".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:_HASH_CHARS]
    return f"{RESERVED_PREFIX}deep/{digest}/{safe_part(base)}"


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
        """A unique key for an input (``-2``, ``-3``… appended on a clash; case-insensitive, for macOS/Windows).

        An input named ``report`` (record ``report.json``) or a subfolder named like a report file would overwrite
        the run's report or stop it from being written: such keys get the reserved ``_`` prefix.
        """
        key = output_key(relative)
        first = key.split("/", 1)[0].casefold()
        if key.casefold() == "report":  # "_report_": its record must not meet a folder renamed "_report.json"
            key = f"{RESERVED_PREFIX}{key}{RESERVED_PREFIX}"
        elif first in {name.casefold() for name in self.REPORT_FILES}:
            key = RESERVED_PREFIX + key
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
        for name in self.REPORT_FILES:
            report = self.root / name
            if (report.exists() or report.is_symlink()) and not report.is_file():
                # Found now, before any image is explained, not when the report is written at the end.
                raise OutputFolderError(self.root, f"{name} there is not a regular file, so the report cannot be "
                                                   "written (move it away)")


def ensure_absent(layout: OutputLayout, names: Iterable[str]) -> None:
    """Raise OutputExistsError for the first of ``names`` that exists."""
    for name in names:
        path = layout.path(name)
        if path.exists():
            raise OutputExistsError(path, resumable=True)
