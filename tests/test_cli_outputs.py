"""Output naming and atomic writes (cam_runtime.outputs) without a model."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cam_runtime.errors import OutputFolderError, UnsafeOutputPathError
from cam_runtime.outputs import (
    OutputLayout,
    output_key,
    remove_stale_temps,
    save_npy_atomic,
    write_bytes_atomic,
)


@pytest.mark.parametrize(("relative", "key"), [
    ("cat.jpg", "cat_jpg"),
    ("a/b/cat.png", "a/b/cat_png"),
    ("../../etc/passwd", "etc/passwd"),
    ("/abs/x.jpg", "abs/x_jpg"),
    (".hidden.jpg", "hidden_jpg"),
    ("with space/ünï.jpg", "with_space/ünï_jpg"),
    ("..", "_"),
])
def test_output_key(relative: str, key: str) -> None:
    assert output_key(PurePosixPath(relative)) == key


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4))
def test_keys_never_escape(tmp_path_factory: pytest.TempPathFactory, parts: list[str]) -> None:
    root = tmp_path_factory.getbasetemp() / "keys-root"
    layout = OutputLayout(root)
    key = layout.allocate(PurePosixPath(*parts))
    for name in layout.planned(key, 2, True):
        path = (root / name).resolve()
        assert path.is_relative_to(root.resolve()) and path != root.resolve()
        assert not any(p in ("", ".", "..") for p in PurePosixPath(name).parts)


def test_allocate_avoids_collisions_case_insensitively(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    keys = [layout.allocate(p) for p in ("x/cat.jpg", "y/cat.jpg", "cat.jpg", "CAT.jpg", "cat.png")]
    assert keys[:2] == ["x/cat_jpg", "y/cat_jpg"]
    assert len({k.casefold() for k in keys}) == len(keys)


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeOutputPathError):
        OutputLayout(root).path("sub/cat_jpg.overlay-1.jpg")


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "deep" / "a.bin"
    write_bytes_atomic(target, b"old")
    save_npy_atomic(tmp_path / "m.npy", np.eye(2, dtype=np.float32))
    assert np.load(tmp_path / "m.npy", allow_pickle=False).tolist() == [[1, 0], [0, 1]]

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputFolderError, match="No space left"):
        write_bytes_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"  # the old file survives a failed write
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]  # no temporary file left


def test_stale_temps_are_removed(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".camr-x.jpg.123.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    assert remove_stale_temps(tmp_path) == 1
    assert (tmp_path / "keep.tmp").exists()
