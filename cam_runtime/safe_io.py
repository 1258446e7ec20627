"""Safe file primitives shared by every reader and writer: bounded reads, paths kept inside a root, the umask."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import UnsafePathError

_CHUNK = 1 << 20


class RefusedFileError(ValueError):
    """A file was refused before or while being read (not a regular file, or larger than allowed)."""


def read_bounded(path: str | Path, limit: int | None) -> bytes:
    """Read a whole regular file of at most ``limit`` bytes (None: no limit).

    FIFOs, devices and directories are refused without blocking (O_NONBLOCK), the size is checked before
    reading and again while reading (a file growing under us). OS failures raise the usual ``OSError``
    subclasses; refusals raise :class:`RefusedFileError`; callers map both to their own one-line error.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise RefusedFileError("is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFileError("not a regular file (device, FIFO or socket)")
        if limit is not None and info.st_size > limit:
            raise RefusedFileError(f"file has {info.st_size} bytes, more than the {limit} allowed")
        chunks = []
        remaining = limit + 1 if limit is not None else None
        # The size fstat gave (+1 to see growth) in one read: a photo costs one system call and one buffer. A file
        # that grew, or reports no size (procfs), is read on in chunks up to the limit.
        first = info.st_size + 1 if remaining is None else min(info.st_size + 1, remaining)
        while remaining is None or remaining > 0:
            size = first if first else (_CHUNK if remaining is None else min(remaining, _CHUNK))
            first = 0
            chunk = os.read(fd, size)
            if not chunk:
                break
            chunks.append(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if limit is not None and len(data) > limit:
        raise RefusedFileError(f"file grew past the {limit} bytes allowed while being read")
    return data


def failure_reason(exc: BaseException) -> str:
    """The short reason of a :func:`read_bounded` failure, for a one-line error."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def resolve_inside(root: Path, name: str) -> Path:
    """Join a relative name to ``root``, refusing anything (links included) that resolves outside it or loops."""
    joined = root / name
    try:
        path = joined.resolve(strict=True)
    except FileNotFoundError:  # missing (or a dangling link): where it would be, for the caller to report
        path = joined.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: ELOOP, or RuntimeError before Python 3.13
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            raise UnsafePathError(name, "is a symbolic link loop") from None
        path = joined.resolve()
    if not path.is_relative_to(root.resolve()):
        raise UnsafePathError(name)
    return path


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
