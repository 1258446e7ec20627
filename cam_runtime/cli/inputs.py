"""Turning command-line inputs (files, folders, globs, ``-``) into an ordered list of images to explain."""

from __future__ import annotations

import glob
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

from cam_runtime.errors import InvalidArgumentError
from cam_runtime.image_files import iter_image_files, resolved
from cam_runtime.imaging import DEFAULT_MAX_PIXELS, max_file_bytes

STDIN = "-"


class NoInputsError(InvalidArgumentError):
    """The inputs named no image at all."""

    def __init__(self, hint: str) -> None:
        super().__init__(f"no input images found{hint}")


@dataclass(frozen=True)
class InputItem:
    """One image to explain: a path or stdin bytes, its display name and its path relative to its root."""

    source: str
    relative: PurePath
    path: Path | None = None
    data: bytes | None = None

    @property
    def engine_input(self) -> Path | bytes:
        """What CamEngine.iter_explain receives."""
        return self.data if self.data is not None else self.path  # type: ignore[return-value]


class StdinTooLargeError(InvalidArgumentError):
    """Standard input held more bytes than any image within the pixel limit could."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"stdin holds more than {limit} bytes, more than any image within the pixel limit "
                         "(raise --max-pixels if it really is one image)")


_OUTPUT_NAME = re.compile(r".+\.overlay-\d+\.(?:jpg|png|webp)\Z")
"""What the runner names overlays: skipped when a folder is walked as its own output folder."""


def read_stdin(limit: int, stream: BinaryIO | None = None) -> bytes:
    """At most ``limit`` bytes of standard input; StdinTooLargeError if there are more (read in chunks, never all)."""
    source = stream if stream is not None else sys.stdin.buffer
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = source.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise StdinTooLargeError(limit)


def _walk(folder: Path, recursive: bool, exclude: Path | None = None) -> list[Path]:
    """Image-named entries of ``folder``; the output folder ``exclude`` (resolved) and its overlays are left out."""
    # The output folder inside an input tree: a rerun must not explain the previous run's overlays.
    inside_output = exclude is not None and resolved(folder) == exclude
    return [path for path in iter_image_files(folder, recursive=recursive, exclude=exclude)
            if not (inside_output and _OUTPUT_NAME.match(path.name))]


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard component (outputs are named relative to it)."""
    parts = Path(pattern).parts
    static = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        static.append(part)
    return Path(*static) if static else Path()


def collect_inputs(arguments: list[str], *, recursive: bool = False, stdin: bytes | None = None,
                   exclude: Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[InputItem]:
    """Expand arguments in order; each real file once. Missing paths stay in the list (they fail per image).

    ``exclude`` is the output folder: folder walks skip it (and, walking the output folder itself, the overlays
    written there). Standard input is read up to the largest file the pixel limit allows.
    """
    excluded = resolved(exclude) if exclude is not None else None
    items: list[InputItem] = []
    seen: set[str] = set()
    skipped_folders = False

    def add(path: Path, relative: PurePath) -> None:
        try:
            identity = str(path.resolve())
        except (OSError, RuntimeError):
            identity = str(path)
        if identity in seen:
            return
        seen.add(identity)
        items.append(InputItem(source=str(path), relative=relative, path=path))

    for arg in arguments:
        if arg == STDIN:
            if any(item.data is not None for item in items):
                raise InvalidArgumentError("'-' (stdin) may be given only once")
            data = stdin if stdin is not None else read_stdin(max_file_bytes(max_pixels))
            items.append(InputItem(source="<stdin>", relative=PurePath("stdin"), data=data))
            continue
        path = Path(arg)
        if path.is_dir():
            found = _walk(path, recursive, excluded)
            if not found and not recursive and any(p.is_dir() for p in path.iterdir()):
                skipped_folders = True
            for file in found:
                add(file, file.relative_to(path))
        elif glob.has_magic(arg) and not path.exists():
            root = _glob_root(arg)
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                items.append(InputItem(source=arg, relative=PurePath(path.name), path=path))
            for file in matches:
                add(file, file.relative_to(root) if file.is_relative_to(root) else PurePath(file.name))
        else:
            add(path, PurePath(path.name))
    if not items:
        hint = " (folders have subfolders: add --recursive)" if skipped_folders else ""
        raise NoInputsError(hint)
    return items
