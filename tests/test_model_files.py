"""Hostile small files in a model folder (checksums matching): labels, .npy head weights, manifest strings."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app
from cam_runtime.errors import ManifestError, UnsafePathError, WeightsError
from cam_runtime.model import ModelFolder, read_manifest
from cam_runtime.model.files import MAX_LABEL_BYTES, labels_limit, npy_float32_from_bytes
from tiny_models import make_tiny_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_tiny_folder(tmp_path / "model")


def set_digest(folder: Path, name: str, digest: str) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data["sha256"][name] = digest
    (folder / "manifest.json").write_text(json.dumps(data))


def replace_file(folder: Path, name: str, content: bytes) -> None:
    (folder / name).write_bytes(content)
    set_digest(folder, name, hashlib.sha256(content).hexdigest())


def npy_header(descr: str, shape: str, data: bytes = b"") -> bytes:
    """A hand-written .npy v1.0 file: the header says what an attacker wants."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


# --- labels ------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS read from Linux's /proc")
def test_huge_labels_file_refused_by_size_before_reading(folder: Path) -> None:
    """192 MiB of labels for 5 classes: refused from its size, in a fresh process whose peak RSS stays small."""
    with open(folder / "labels.txt", "wb") as handle:  # sparse: costs no disk
        handle.truncate(192 << 20)
    set_digest(folder, "labels.txt", "0" * 64)  # the size check comes before any hashing
    # VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss across fork and exec (a big pytest would show).
    script = ("import sys\nfrom cam_runtime.model import ModelFolder\nfrom cam_runtime.errors import "
              "WeightsError\ntry:\n    ModelFolder.load(sys.argv[1])\nexcept WeightsError as exc:\n    print(exc)\n"
              "status = open('/proc/self/status').read()\n"
              "print(next(line.split()[1] for line in status.splitlines() if line.startswith('VmHWM:')))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    message, peak_kib = done.stdout.strip().splitlines()
    assert "labels" in message and f"more than the {labels_limit(5)} allowed" in message
    assert int(peak_kib) < 400 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


def test_many_short_lines_refused_before_splitting(folder: Path) -> None:
    replace_file(folder, "labels.txt", b"a\n" * (labels_limit(5) // 2))
    with pytest.raises(WeightsError, match="labels file has 2565 lines but num_classes is 5"):
        ModelFolder.load(folder)


def test_overlong_label_refused(folder: Path) -> None:
    replace_file(folder, "labels.txt", b"a\nb\nc\nd\n" + b"e" * (MAX_LABEL_BYTES + 1) + b"\n")
    with pytest.raises(WeightsError, match=f"line 5 is longer than {MAX_LABEL_BYTES} bytes"):
        ModelFolder.load(folder)


def test_looping_labels_symlink(folder: Path) -> None:
    (folder / "labels.txt").unlink()
    (folder / "labels.txt").symlink_to("labels.txt")
    with pytest.raises(UnsafePathError, match=r"'labels\.txt' is a symbolic link loop"):
        ModelFolder.load(folder)
    result = CliRunner().invoke(app, ["info", str(folder), "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert json.loads(result.output)["files"]["labels"]["status"] == "unsafe path"


# --- manifest strings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\ud800x", "x\x1b[31mred", "a\u202eb", "line\nbreak", "x" * 201])
def test_unprintable_or_unencodable_name_refused(folder: Path, name: str) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data["name"] = name
    (folder / "manifest.json").write_text(json.dumps(data))  # ensure_ascii: "\ud800" is written as an escape
    with pytest.raises(ManifestError) as info:
        read_manifest(folder)
    assert "'name'" in str(info.value) and "\n" not in str(info.value)
    str(info.value).encode("utf-8")  # the message itself is printable anywhere


def test_surrogate_anywhere_in_the_manifest_is_named(folder: Path) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data["x_notes"] = {"author": "\udcff"}
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"'x_notes\.author' holds a lone surrogate"):
        read_manifest(folder)


def test_cli_info_and_explain_on_surrogate_name(folder: Path, tmp_path: Path) -> None:
    import cv2

    data = json.loads((folder / "manifest.json").read_text())
    data["name"] = "\ud800x"
    (folder / "manifest.json").write_text(json.dumps(data))
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((40, 40, 3), 128, np.uint8))
    for args in (["info", str(folder)], ["info", str(folder), "--json"],
                 ["explain", str(photo), "-m", str(folder), "-o", str(tmp_path / "out")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "lone surrogate" in result.output and "Traceback" not in result.output


# --- .npy head weights -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "problem"), [
    (npy_header("<f4", "(-1, -5)", b"\0" * 20), "expected 1 or 2 non-negative sizes"),
    (npy_header("<f4", "(1099511627776, 5)", b"\0" * 20), "holds 20 bytes (truncated or padded)"),
    (npy_header("<f4", "(0, 5)"), "an empty array"),
    (npy_header("<f4", "(2, 2, 2)", b"\0" * 32), "expected 1 or 2 non-negative sizes"),
    (npy_header("<c8", "(8, 5)", b"\0" * 320), "must hold a float array"),
    (npy_header("<f16", "(8, 5)", b"\0" * 640), "must hold a float array"),
    (npy_header("<f4", "(8, 'x')", b"\0" * 160), "not a valid .npy file"),
])
def test_hostile_npy_headers(folder: Path, content: bytes, problem: str) -> None:
    replace_file(folder, "dense_weights.npy", content)
    with pytest.raises(WeightsError, match=problem.replace("(", r"\(").replace(")", r"\)")) as info:
        ModelFolder.load(folder)
    assert "\n" not in str(info.value)


class Marker:
    """Unpickling this would create a file: proof that nothing is ever unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_object_npy_never_unpickled(folder: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([Marker(tmp_path / "ran")] * 40, dtype=object).reshape(8, 5), allow_pickle=True)
    replace_file(folder, "dense_weights.npy", buffer.getvalue())
    with pytest.raises(WeightsError, match="pickle"):
        ModelFolder.load(folder)
    assert not (tmp_path / "ran").exists()
    replace_file(folder, "dense_weights.npy", pickle.dumps(Marker(tmp_path / "ran")))
    with pytest.raises(WeightsError, match="pickle"):
        ModelFolder.load(folder)
    assert not (tmp_path / "ran").exists()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 1e39])
def test_non_finite_weights_refused(folder: Path, value: float) -> None:
    weights = np.ones((8, 5), np.float64)
    weights[3, 2] = value
    replace_file(folder, "dense_weights.npy", npy(weights))
    with pytest.raises(WeightsError, match="NaN, infinite or float32-overflowing"):
        ModelFolder.load(folder)


def test_all_subnormal_weights_refused_and_stray_subnormals_flushed(folder: Path) -> None:
    replace_file(folder, "dense_weights.npy", npy(np.full((8, 5), 1e-40, np.float32)))
    with pytest.raises(WeightsError, match="only zero or subnormal values"):
        ModelFolder.load(folder)
    weights = np.ones((8, 5), np.float32)
    weights[0, 0] = 1e-41
    assert npy_float32_from_bytes(npy(weights), "w.npy", "weights")[0, 0] == 0.0
