"""Untrusted model folders: every broken, tampered or hostile folder is refused with one clear line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cam_runtime.cli import app
from cam_runtime.engine import CamEngine
from cam_runtime.errors import (
    CamError,
    ChecksumMismatchError,
    ExternalDataError,
    GraphCheckError,
    GraphMismatchError,
    ManifestError,
    ModelFileNotFoundError,
    ModelFolderNotFoundError,
    UnsafePathError,
    UnsupportedFormatError,
    WeightsError,
)
from cam_runtime.model import ModelFolder
from tiny_models import make_tiny_folder, tiny_onnx

runner = CliRunner()


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("robust_models") / "tiny")


@pytest.fixture(scope="session")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("robust_model_photo") / "photo.png"
    cv2.imwrite(str(path), np.full((40, 40, 3), 128, np.uint8))
    return path


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the tiny model folder."""
    return Path(shutil.copytree(pristine, tmp_path / "model"))


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, data: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(data))


def edit(folder: Path, change: Callable[[dict], None]) -> None:
    data = manifest(folder)
    change(data)
    write_manifest(folder, data)


def replace_file(folder: Path, name: str, content: bytes) -> None:
    """Swap a file and update its digest, so the check under test is the one after the checksum."""
    (folder / name).write_bytes(content)
    edit(folder, lambda m: m["sha256"].__setitem__(name, hashlib.sha256(content).hexdigest()))


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def huge_header() -> bytes:
    """A well-formed .npy header declaring 5·10¹² floats, followed by 20 bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 5)})
    return buffer.getvalue() + b"\x00" * 20


def assert_refused(folder: Path, error: type[CamError], text: str) -> str:
    """Loading fails with ``error`` whose single-line message contains ``text``."""
    with pytest.raises(error) as info:
        CamEngine.load(folder, threads=1)
    message = str(info.value)
    assert text in message and "\n" not in message, message
    return message


# --- missing and tampered files -------------------------------------------------------------------------------


def test_missing_folder_and_manifest(tmp_path: Path, folder: Path) -> None:
    assert_refused(tmp_path / "nope", ModelFolderNotFoundError, "not found")
    (folder / "manifest.json").unlink()
    assert_refused(folder, ManifestError, "file not found")


@pytest.mark.parametrize("name", ["model.onnx", "dense_weights.npy", "dense_bias.npy", "labels.txt"])
def test_missing_file(folder: Path, name: str) -> None:
    (folder / name).unlink()
    assert_refused(folder, ModelFileNotFoundError, name)


@pytest.mark.parametrize("name", ["model.onnx", "dense_weights.npy", "dense_bias.npy", "labels.txt"])
def test_tampered_file(folder: Path, name: str) -> None:
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (folder / name).write_bytes(bytes(data))
    assert_refused(folder, ChecksumMismatchError, "checksum mismatch")


# --- the manifest itself --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "error", "text"), [
    (lambda m: m.__setitem__("format_version", 2), UnsupportedFormatError, "v2"),
    (lambda m: m.__setitem__("format_version", "1"), UnsupportedFormatError, "unsupported"),
    (lambda m: m.__setitem__("format", "keras-h5"), UnsupportedFormatError, "keras-h5"),
    (lambda m: m["input"].__setitem__("height", 10**12), ManifestError, "input.height"),
    (lambda m: m["input"].__setitem__("width", -3), ManifestError, "input.width"),
    (lambda m: m.__setitem__("num_classes", 0), ManifestError, "num_classes"),
    (lambda m: m["preprocess"].__setitem__("std", [1, 0, 1]), ManifestError, "preprocess.std"),
    (lambda m: m["preprocess"].__setitem__("std", [1e-300, 1, 1]), ManifestError, "preprocess.std"),
    (lambda m: m["preprocess"].__setitem__("mean", [10**400, 0, 0]), ManifestError, "preprocess.mean"),
    (lambda m: m["input"].__setitem__("layout", "HWC"), ManifestError, "input.layout"),
    (lambda m: m["sha256"].__setitem__("model.onnx", "zz"), ManifestError, "64 hex"),
    (lambda m: m.pop("files"), ManifestError, "'files'"),
])
def test_invalid_manifest_fields(folder: Path, change: Callable[[dict], None], error: type[CamError],
                                 text: str) -> None:
    edit(folder, change)
    assert_refused(folder, error, text)


@pytest.mark.parametrize(("text", "problem"), [
    ("{", "not valid JSON"),
    ("", "not valid JSON"),
    ('{"format": "cam-model", "format_version": 1, "input": {"height": NaN}}', "'files'"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"format_version": ' + "9" * 5000 + "}", "not valid JSON"),
    ("[1, 2]", "JSON object"),
])
def test_unparseable_manifest_text(folder: Path, text: str, problem: str) -> None:
    (folder / "manifest.json").write_text(text)
    assert_refused(folder, ManifestError, problem)


def test_manifest_with_nan_and_infinity(folder: Path) -> None:
    data = manifest(folder)
    data["preprocess"]["mean"] = "SENTINEL"
    (folder / "manifest.json").write_text(json.dumps(data).replace('"SENTINEL"', "[NaN, 1, Infinity]"))
    assert_refused(folder, ManifestError, "finite")


def test_manifest_that_is_not_a_regular_file_or_too_big(folder: Path) -> None:
    (folder / "manifest.json").write_bytes(b"\xff\xfe not utf-8")
    assert_refused(folder, ManifestError, "UTF-8")
    (folder / "manifest.json").write_text(" " * (2 << 20) + "{}")
    assert_refused(folder, ManifestError, "more than")
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to("/dev/zero")
    assert_refused(folder, ManifestError, "not a regular file")
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")  # must not hang waiting for a writer
    assert_refused(folder, ManifestError, "not a regular file")


# --- paths that leave the folder ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../outside.npy", "/etc/passwd", "sub/../../outside.npy", "~root/x.npy",
                                  "..\\outside.npy", "sub/..", ""])
def test_manifest_path_escaping_the_folder(folder: Path, path: str) -> None:
    (folder.parent / "outside.npy").write_bytes((folder / "dense_weights.npy").read_bytes())
    digest = hashlib.sha256((folder / "dense_weights.npy").read_bytes()).hexdigest()

    def point_outside(m: dict) -> None:
        m["files"]["weights"] = path
        m["sha256"][path] = digest

    edit(folder, point_outside)
    if path:
        assert_refused(folder, UnsafePathError, "outside the model folder")
    else:
        assert_refused(folder, ManifestError, "files.weights")


def test_symlink_escaping_the_folder(folder: Path) -> None:
    outside = folder.parent / "elsewhere"
    outside.mkdir()
    shutil.move(folder / "dense_weights.npy", outside / "dense_weights.npy")
    (folder / "dense_weights.npy").symlink_to(outside / "dense_weights.npy")
    assert_refused(folder, UnsafePathError, "dense_weights.npy")
    (folder / "dense_weights.npy").unlink()
    (folder / "dense_weights.npy").symlink_to("/dev/zero")
    assert_refused(folder, UnsafePathError, "dense_weights.npy")


def test_symlink_inside_the_folder_is_fine(folder: Path) -> None:
    (folder / "real").mkdir()
    shutil.move(folder / "labels.txt", folder / "real" / "labels.txt")
    (folder / "labels.txt").symlink_to(folder / "real" / "labels.txt")
    assert ModelFolder.load(folder).labels[0] == "circle"


@pytest.mark.parametrize("name", ["bad\x00name.npy", "\ud800.npy"])
def test_unrepresentable_file_names(folder: Path, name: str) -> None:
    def rename(m: dict) -> None:
        m["files"]["weights"] = name
        m["sha256"][name] = "0" * 64

    edit(folder, rename)
    assert_refused(folder, ManifestError, "files.weights")


# --- weights, bias, labels ------------------------------------------------------------------------------------


class Marker:
    """Unpickling this creates a file: proof that code from the model folder ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_pickles_are_refused_without_running_them(folder: Path, tmp_path: Path) -> None:
    proof = tmp_path / "payload_works"
    pickle.loads(pickle.dumps(Marker(proof)))
    assert proof.exists()  # the payload is live: unpickling it would leave a file behind

    marker = tmp_path / "code_ran"
    object_npy = npy_bytes(np.array([Marker(marker), 1.0], dtype=object), allow_pickle=True)
    raw_pickle = pickle.dumps(Marker(marker))
    for payload in (object_npy, raw_pickle):
        replace_file(folder, "dense_weights.npy", payload)
        message = assert_refused(folder, WeightsError, "dense_weights.npy")
        assert "pickle" in message
        assert not marker.exists()
    replace_file(folder, "dense_bias.npy", object_npy)
    assert_refused(folder, WeightsError, "pickle")
    assert not marker.exists()


@pytest.mark.parametrize(("name", "content", "text"), [
    ("dense_weights.npy", npy_bytes(np.ones((8, 6), np.float32)), "shape [C, 5]"),
    ("dense_weights.npy", npy_bytes(np.ones(40, np.float32)), "shape [C, 5]"),
    ("dense_weights.npy", npy_bytes(np.ones((8, 5), np.int32)), "float array"),
    ("dense_weights.npy", npy_bytes(np.ones((8, 5), np.complex64)), "float array"),
    ("dense_weights.npy", npy_bytes(np.full((8, 5), 1e300)), "overflowing"),
    ("dense_weights.npy", npy_bytes(np.full((8, 5), np.nan, np.float32)), "NaN"),
    ("dense_weights.npy", npy_bytes(np.ones((8, 5), np.float32))[:-7], "truncated"),
    ("dense_weights.npy", npy_bytes(np.ones((8, 5), np.float32))[:40], "not a valid .npy"),
    ("dense_weights.npy", huge_header(), "truncated"),
    ("dense_weights.npy", b"not numpy at all", "not a valid .npy"),
    ("dense_bias.npy", npy_bytes(np.ones(4, np.float32)), "bias must have shape [5]"),
    ("labels.txt", b"a\nb\nc\n", "3 lines but num_classes is 5"),
    ("labels.txt", b"a\n\nb\nc\nd\ne\n", "blank lines"),
    ("labels.txt", b"\xff\xfe\xfa\n" * 5, "not UTF-8"),
])
def test_bad_weights_bias_and_labels(folder: Path, name: str, content: bytes, text: str) -> None:
    replace_file(folder, name, content)
    assert_refused(folder, WeightsError, text)


def test_npz_archive_is_refused(folder: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, weights=np.ones((8, 5), np.float32))
    replace_file(folder, "dense_weights.npy", buffer.getvalue())
    assert_refused(folder, WeightsError, ".npz")


def test_equivalent_weight_encodings_load(folder: Path) -> None:
    weights = np.load(folder / "dense_weights.npy")
    replace_file(folder, "dense_weights.npy", npy_bytes(np.asfortranarray(weights.astype(">f8"))))
    assert np.array_equal(ModelFolder.load(folder).weights, weights)


# --- the ONNX graph against the manifest -----------------------------------------------------------------------


@pytest.mark.parametrize(("change", "text"), [
    (lambda m: m["input"].__setitem__("name", "pixels"), "input named 'pixels'"),
    (lambda m: m["outputs"].__setitem__("features", "conv_out"), "'conv_out' missing"),
    (lambda m: m["outputs"].__setitem__("probabilities", "logits"), "'logits' missing"),
    (lambda m: m["input"].__setitem__("layout", "NCHW"), "input 'image' has shape"),
    (lambda m: m["input"].__setitem__("height", 64), "input 'image' has shape"),
])
def test_graph_not_matching_the_manifest(folder: Path, change: Callable[[dict], None], text: str) -> None:
    edit(folder, change)
    assert_refused(folder, GraphMismatchError, text)


def test_graph_with_other_sizes_than_the_weights(folder: Path) -> None:
    replace_file(folder, "model.onnx", tiny_onnx("NHWC", channels=4)[0])
    assert_refused(folder, GraphMismatchError, "features output")
    replace_file(folder, "model.onnx", tiny_onnx("NHWC", classes=7)[0])
    assert_refused(folder, GraphMismatchError, "probabilities output")


def test_garbage_onnx_is_refused(folder: Path) -> None:
    replace_file(folder, "model.onnx", b"\x08\x07garbage that is not a protobuf graph" * 10)
    assert_refused(folder, GraphCheckError, "model.onnx: not a valid ONNX file")


def test_graph_with_wrong_input_dtype(folder: Path) -> None:
    import onnx
    from onnx import TensorProto

    model = onnx.load_from_string(tiny_onnx("NHWC")[0])
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    cast = onnx.helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT)
    for node in model.graph.node:
        node.input[:] = ["image_f" if i == "image" else i for i in node.input]
    model.graph.node.insert(0, cast)
    replace_file(folder, "model.onnx", model.SerializeToString())
    assert_refused(folder, GraphMismatchError, "float")


def test_external_data_escaping_the_folder_is_refused(folder: Path) -> None:
    import onnx
    from onnx import TensorProto

    model = onnx.load_from_string(tiny_onnx("NHWC")[0])
    weight = next(t for t in model.graph.initializer if t.name == "dense_w")
    (folder.parent / "secret.bin").write_bytes(weight.raw_data)
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../secret.bin", "offset": "0", "length": str(len(weight.raw_data))}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    weight.ClearField("raw_data")
    replace_file(folder, "model.onnx", model.SerializeToString())
    # Refused by the project itself (cam_runtime.model.graph), whatever onnxruntime's version would do.
    assert_refused(folder, ExternalDataError, "'../secret.bin' that points outside the model folder")


# --- the command line: exit 2 and one line -----------------------------------------------------------------------


@pytest.mark.parametrize("breakage", ["tamper", "pickle", "escape", "json", "graph"])
def test_cli_refuses_broken_folders_with_one_line(folder: Path, photo: Path, tmp_path: Path, breakage: str) -> None:
    if breakage == "tamper":
        (folder / "dense_bias.npy").write_bytes(npy_bytes(np.zeros(5, np.float32)))
    elif breakage == "pickle":
        replace_file(folder, "dense_weights.npy", pickle.dumps(Marker(tmp_path / "ran")))
    elif breakage == "escape":
        edit(folder, lambda m: m["files"].__setitem__("labels", "../../etc/passwd"))
    elif breakage == "json":
        (folder / "manifest.json").write_text('{"format": "cam-model", ')
    else:
        edit(folder, lambda m: m["input"].__setitem__("name", "pixels"))
    commands = [["info", folder]] if breakage in ("escape", "json") else []
    commands.append(["explain", "--model", folder, "--output", tmp_path / "out", "--quiet", photo])
    for args in commands:
        result = runner.invoke(app, [str(a) for a in args])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.output
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
