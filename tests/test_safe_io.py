"""cam_runtime.safe_io: the one bounded reader, resolve_inside and the umask helper."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cam_runtime.errors import UnsafePathError
from cam_runtime.safe_io import RefusedFileError, current_umask, read_bounded, resolve_inside


def test_reads_whole_file_within_limit(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)  # several chunks
    assert read_bounded(path, 3_000_000) == b"x" * 3_000_000
    assert read_bounded(path, None) == b"x" * 3_000_000


def test_refuses_by_size_directory_and_fifo(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 11)
    with pytest.raises(RefusedFileError, match="11 bytes, more than the 10 allowed"):
        read_bounded(path, 10)
    with pytest.raises(RefusedFileError, match="is a directory"):
        read_bounded(tmp_path, 10)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done: list[BaseException] = []

    def read() -> None:
        try:
            read_bounded(fifo, 10)
        except BaseException as exc:
            done.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "opening a FIFO blocked"
    assert isinstance(done[0], RefusedFileError) and "not a regular file" in str(done[0])
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 10)


def test_resolve_inside(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    assert resolve_inside(tmp_path, "a") == (tmp_path / "a").resolve()
    assert resolve_inside(tmp_path, "not-yet") == (tmp_path / "not-yet").resolve()
    (tmp_path / "out").symlink_to("/etc")
    with pytest.raises(UnsafePathError, match="points outside"):
        resolve_inside(tmp_path, "out/passwd")
    with pytest.raises(UnsafePathError, match="points outside"):
        resolve_inside(tmp_path, "../x")
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(UnsafePathError, match="symbolic link loop"):
        resolve_inside(tmp_path, "loop")


def test_current_umask_leaves_it_unchanged() -> None:
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(before)
