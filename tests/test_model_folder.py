"""cam_runtime.model: the reader's check_files (what camr info shows) and the derived-folder writer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app
from cam_runtime.errors import ChecksumMismatchError, InvalidArgumentError, ModelFileNotFoundError
from cam_runtime.model import ModelFolder, check_files, read_manifest, write_derived_folder
from tiny_models import make_tiny_folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_tiny_folder(tmp_path / "model")


def add_extra(folder: Path, name: str, content: bytes | None, digest: str | None = None) -> None:
    if content is not None:
        (folder / name).write_bytes(content)
    data = json.loads((folder / "manifest.json").read_text())
    data["sha256"][name] = digest or hashlib.sha256(content or b"").hexdigest()
    (folder / "manifest.json").write_text(json.dumps(data))


def test_check_files_statuses(folder: Path) -> None:
    add_extra(folder, "notes.txt", b"hello")
    add_extra(folder, "gone.bin", None, "0" * 64)
    add_extra(folder, "../escape.txt", None, "0" * 64)
    (folder / "dense_bias.npy").write_bytes((folder / "dense_bias.npy").read_bytes() + b"\0")
    checks = check_files(folder, read_manifest(folder))
    status = {role: check.status for role, check in checks.items()}
    assert status == {"model": "ok", "weights": "ok", "bias": "MISMATCH", "labels": "ok", "extra:notes.txt": "ok",
                      "extra:gone.bin": "missing", "extra:../escape.txt": "unsafe path"}
    assert checks["extra:notes.txt"].bytes == 5 and checks["model"].bytes == (folder / "model.onnx").stat().st_size


def test_info_reuses_check_files_and_shows_every_section(folder: Path) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data["x_team"] = {"owner": "vision"}
    (folder / "manifest.json").write_text(json.dumps(data))
    add_extra(folder, "notes.txt", b"hello")
    result = CliRunner().invoke(app, ["info", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    expected = {role: check.to_dict() for role, check in check_files(folder, read_manifest(folder)).items()}
    assert info["files"] == expected and info["checksums_ok"] is True
    assert info["provenance"]["x_team"] == {"owner": "vision"}
    assert info["input"] == data["input"] and info["preprocess"] == data["preprocess"]


def test_extra_files_are_verified_at_load(folder: Path) -> None:
    add_extra(folder, "notes.txt", b"hello")
    ModelFolder.load(folder)
    (folder / "notes.txt").write_bytes(b"HELLO")
    with pytest.raises(ChecksumMismatchError, match=r"notes\.txt"):
        ModelFolder.load(folder)
    (folder / "notes.txt").unlink()
    with pytest.raises(ModelFileNotFoundError, match=r"notes\.txt"):
        ModelFolder.load(folder)


def test_derived_folder_copies_everything_but_what_changes(folder: Path, tmp_path: Path) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data["x_section"] = [1, {"deep": True}]
    data["outputs"]["x_note"] = "kept"
    (folder / "manifest.json").write_text(json.dumps(data))
    add_extra(folder, "sub/notes.txt", None, hashlib.sha256(b"n").hexdigest())
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_bytes(b"n")
    source = ModelFolder.load(folder)
    new_model = tmp_path / "other.onnx"
    new_model.write_bytes((folder / "model.onnx").read_bytes())
    written = write_derived_folder(source, tmp_path / "copy", replace={"model": new_model},
                                   changes={"name": "copy", "variant": "test"})
    copy = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    assert {k: v for k, v in copy.items() if k not in ("name", "variant", "created")} == \
           {k: v for k, v in json.loads((folder / "manifest.json").read_text()).items() if k not in ("name", "created")}
    assert copy["name"] == "copy" and written.provenance["variant"] == "test"
    assert (tmp_path / "copy" / "sub" / "notes.txt").read_bytes() == b"n"
    ModelFolder.load(tmp_path / "copy")
    with pytest.raises(InvalidArgumentError, match="no such file"):
        write_derived_folder(source, tmp_path / "bad", replace={"head": new_model}, changes={})
    (folder / "labels.txt").write_text("swapped after loading\n")
    with pytest.raises(ChecksumMismatchError, match=r"labels\.txt"):
        write_derived_folder(source, tmp_path / "swapped", replace={"model": new_model}, changes={})
    assert not (tmp_path / "swapped").exists()
