"""cam_runtime.image_files: which names are images, and the sorted, lazy folder walk every front end uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cam_runtime.errors import InvalidArgumentError
from cam_runtime.image_files import is_image_name, iter_image_files, resolved


def test_image_names_by_extension_case_insensitive() -> None:
    assert all(is_image_name(n) for n in ("a.jpg", "B.JPEG", "c.Png", "d.webp", "e.tif", "f.pnm", Path("g/h.bmp")))
    assert not any(is_image_name(n) for n in ("notes.txt", "jpg", "a.jpg.txt", "archive.png.gz", "x.jp2", ""))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("b.png", "A.JPG", "notes.txt", "z/c.png", "a/deeper/d.webp", "out/old.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_walk_is_sorted_per_folder_and_recursive_on_request(tree: Path) -> None:
    top = [p.relative_to(tree).as_posix() for p in iter_image_files(tree, recursive=False)]
    assert top == ["A.JPG", "b.png"]
    every = [p.relative_to(tree).as_posix() for p in iter_image_files(tree)]
    assert every == ["A.JPG", "b.png", "a/deeper/d.webp", "out/old.png", "z/c.png"]


def test_excluded_folder_is_skipped_with_its_tree(tree: Path) -> None:
    (tree / "out" / "inner").mkdir()
    (tree / "out" / "inner" / "e.png").write_bytes(b"x")
    names = [p.name for p in iter_image_files(tree, exclude=resolved(tree / "out"))]
    assert names == ["A.JPG", "b.png", "d.webp", "c.png"]


def test_walk_is_lazy(tree: Path) -> None:
    walk = iter_image_files(tree)
    assert next(walk).name == "A.JPG"
    (tree / "z" / "late.png").write_bytes(b"x")  # created after the walk started, before it reached z/
    assert [p.name for p in walk][-1] == "late.png"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symbolic links (POSIX)")
def test_odd_entries_are_listed_for_reporting_and_link_loops_do_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)  # a folder link is not entered
    (tmp_path / "folder.png").mkdir()  # a folder with an image name is not an image
    names = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert names == ["dangling.png", "fifo.png"]


def test_not_a_folder_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        list(iter_image_files(tmp_path / "a.png"))
    with pytest.raises(InvalidArgumentError, match="not a folder"):
        list(iter_image_files(tmp_path / "missing"))
    assert resolved(tmp_path / "a.png") == (tmp_path / "a.png").resolve()
