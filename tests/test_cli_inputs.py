"""cam_runtime.cli.inputs.collect_inputs: files, folders, globs and stdin into an ordered list of images."""

from __future__ import annotations

from pathlib import Path, PurePath

import pytest

from cam_runtime.cli.inputs import NoInputsError, collect_inputs


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("b.png", "a.jpg", "notes.txt", "sub/c.png", "sub/deeper/d.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_folder_lists_images_sorted_and_relative(tree: Path) -> None:
    items = collect_inputs([str(tree)])
    assert [i.relative for i in items] == [PurePath("a.jpg"), PurePath("b.png")]
    deep = collect_inputs([str(tree)], recursive=True)
    assert [str(i.relative) for i in deep] == ["a.jpg", "b.png", "sub/c.png", "sub/deeper/d.webp"]
    assert all(i.engine_input == i.path and i.data is None for i in deep)


def test_each_file_once_and_missing_files_kept(tree: Path) -> None:
    items = collect_inputs([str(tree / "a.jpg"), str(tree), str(tree / "missing.png")])
    assert [i.source for i in items] == [str(tree / "a.jpg"), str(tree / "b.png"), str(tree / "missing.png")]


def test_glob_is_relative_to_its_static_root(tree: Path) -> None:
    items = collect_inputs([str(tree / "sub" / "**" / "*.*")])
    assert sorted(str(i.relative) for i in items) == ["c.png", "deeper/d.webp"]
    unmatched = collect_inputs([str(tree / "*.bmp")])
    assert [i.relative for i in unmatched] == [PurePath("*.bmp")]


def test_stdin_once(tree: Path) -> None:
    items = collect_inputs(["-"], stdin=b"png bytes")
    assert items[0].source == "<stdin>" and items[0].engine_input == b"png bytes"
    with pytest.raises(ValueError, match="only once"):
        collect_inputs(["-", "-"], stdin=b"x")


def test_no_images_is_one_error_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "only" / "sub").mkdir(parents=True)
    (tmp_path / "only" / "sub" / "e.png").write_bytes(b"x")
    with pytest.raises(NoInputsError, match="add --recursive"):
        collect_inputs([str(tmp_path / "only")])
