"""Turning command-line inputs (files, folders, globs, ``-``) into an ordered list of images to explain."""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath

from cam_runtime.errors import InvalidArgumentError
from cam_runtime.imaging import IMAGE_EXTENSIONS

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


def is_image_name(path: str | Path) -> bool:
    """Whether a file name has an image extension the folder walker picks up."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _walk(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        # Like os.walk below: every non-folder entry with an image name, so FIFOs and dangling links get a report line.
        return sorted(p for p in folder.iterdir() if not p.is_dir() and is_image_name(p.name))
    found = []
    # followlinks=False: a symlinked folder loop cannot hang the walk; symlinked files are still picked up.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        found += [Path(dirpath) / name for name in sorted(filenames) if is_image_name(name)]
    return found


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard component (outputs are named relative to it)."""
    parts = Path(pattern).parts
    static = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        static.append(part)
    return Path(*static) if static else Path()


def collect_inputs(arguments: list[str], *, recursive: bool = False, stdin: bytes | None = None) -> list[InputItem]:
    """Expand arguments in order; each real file once. Missing paths stay in the list (they fail per image)."""
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
            data = stdin if stdin is not None else sys.stdin.buffer.read()
            items.append(InputItem(source="<stdin>", relative=PurePath("stdin"), data=data))
            continue
        path = Path(arg)
        if path.is_dir():
            found = _walk(path, recursive)
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
