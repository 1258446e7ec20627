"""cam_runtime.model.graph: a folder's ONNX graphs are checked before any onnxruntime session exists."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from cam_runtime.cli import app
from cam_runtime.engine import CamEngine
from cam_runtime.errors import ExternalDataError, GraphCheckError, TensorBudgetError, UntrustedOperatorError
from cam_runtime.model import ModelFolder
from cam_runtime.model.graph import ALLOWED_OPS
from tiny_models import make_tiny_folder, tiny_onnx


def replace_model(folder: Path, model: onnx.ModelProto, extra: dict[str, bytes] | None = None) -> None:
    """Swap model.onnx (and extra files) and update the digests, so the graph check is what refuses."""
    data = json.loads((folder / "manifest.json").read_text())
    for name, content in {"model.onnx": model.SerializeToString(), **(extra or {})}.items():
        (folder / name).write_bytes(content)
        data["sha256"][name] = hashlib.sha256(content).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(data))


def tiny_model() -> onnx.ModelProto:
    return onnx.load_from_string(tiny_onnx("NHWC")[0])


def with_loop(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny classifier whose probabilities pass through a 3-iteration Loop (a legit, trusted use)."""
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "probs_raw"
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(3, np.int64), "trips"))
    model.graph.node.append(helper.make_node("Loop", ["trips", "", "probs_raw"], ["probabilities"], body=body))
    return model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_tiny_folder(tmp_path / "model")


def test_allowlisted_graphs_load(folder: Path) -> None:
    loaded = ModelFolder.load(folder)
    ops = {node.op_type for node in onnx.load(str(loaded.model_path)).graph.node}
    assert ops <= ALLOWED_OPS


def test_loop_refused_unless_trusted(folder: Path) -> None:
    replace_model(folder, with_loop(tiny_model()))
    with pytest.raises(UntrustedOperatorError) as info:
        CamEngine.load(folder, device="cpu")
    message = str(info.value)
    assert "(Loop)" in message and "--trust-model-graph" in message and "\n" not in message
    assert isinstance(info.value, ValueError)
    engine = CamEngine.load(folder, device="cpu", trust_graph=True)  # the user vouches for it: it runs
    probabilities, _ = engine.run(np.zeros((2, 32, 32, 3), np.float32))
    assert probabilities.shape == (2, 5) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("op", ["If", "Scan", "SequenceConstruct", "RandomNormal", "custom.domain::Evil"])
def test_other_refused_operators(folder: Path, op: str) -> None:
    model = tiny_model()
    domain, _, name = op.rpartition("::")
    model.graph.node.append(helper.make_node(name, [], ["unused"], domain=domain or None))
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    replace_model(folder, model)
    with pytest.raises(UntrustedOperatorError, match=op.replace("::", "::")):
        ModelFolder.load(folder)


@pytest.mark.parametrize("bomb", ["ConstantOfShape", "Expand"])
def test_huge_static_tensor_refused_before_any_session(folder: Path, bomb: str) -> None:
    """16 GiB asked for by a few bytes of graph: refused from shape inference, even for a trusted graph."""
    model = tiny_model()
    shape = numpy_helper.from_array(np.array([1, 1 << 16, 1 << 16], np.int64), "bomb_shape")
    model.graph.initializer.append(shape)
    if bomb == "ConstantOfShape":
        model.graph.node.append(helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"]))
    else:
        model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
        model.graph.node.append(helper.make_node("Expand", ["one", "bomb_shape"], ["bomb"]))
    model.graph.node.append(helper.make_node("ReduceMax", ["bomb"], ["bomb_max"], keepdims=0))
    replace_model(folder, model)
    with pytest.raises(TensorBudgetError) as info:
        CamEngine.load(folder, device="cpu", trust_graph=True)
    assert "'bomb'" in str(info.value) and "[1, 65536, 65536]" in str(info.value)
    assert "17,179,869,184 bytes" in str(info.value)


def test_budget_uses_the_folder_input_shape(folder: Path) -> None:
    """A symbolic-batch model is inferred at the manifest's fixed input size: activations count."""
    from cam_runtime.model.graph import check_graphs

    loaded = ModelFolder.load(folder)
    # The tiny model's largest activation is the 32x32x3 input (12 KiB): a 4 KiB budget refuses it.
    with pytest.raises(TensorBudgetError, match=r"\[1, 3, 32, 32\]"):
        check_graphs(loaded, max_tensor_bytes=4096)


def test_zero_size_feature_map_refused(folder: Path) -> None:
    model = tiny_model()
    transpose = next(n for n in model.graph.node if n.output[0] == "features")
    transpose.output[0] = "features_full"
    for name, value in (("z_start", 0), ("z_end", 0), ("z_axis", 1)):
        model.graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
    model.graph.node.append(helper.make_node("Slice", ["features_full", "z_start", "z_end", "z_axis"], ["features"]))
    replace_model(folder, model)
    with pytest.raises(GraphCheckError, match="'features' has a zero-size dimension"):
        ModelFolder.load(folder)


def external(model: onnx.ModelProto, location: str, offset: int = 0, length: int | None = None) -> bytes:
    """Move dense_w to external data at ``location``; returns the tensor's bytes."""
    weight = next(t for t in model.graph.initializer if t.name == "dense_w")
    data = weight.raw_data or numpy_helper.to_array(weight).tobytes()
    weight.ClearField("float_data")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": str(offset),
                       "length": str(len(data) if length is None else length)}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return data


def test_external_data_inside_and_listed_loads(folder: Path) -> None:
    model = tiny_model()
    data = external(model, "weights.bin")
    replace_model(folder, model, {"weights.bin": data})
    engine = CamEngine.load(folder, device="cpu")
    assert engine.run(np.zeros((1, 32, 32, 3), np.float32))[0].shape == (1, 5)


@pytest.mark.parametrize(("location", "listed", "offset", "problem"), [
    ("../secret.bin", False, 0, "points outside the model folder"),
    ("/etc/hostname", False, 0, "is not a relative path"),
    ("unlisted.bin", False, 0, "is not listed"),
    ("weights.bin", True, 4096, "reach past its"),
])
def test_external_data_refused(folder: Path, location: str, listed: bool, offset: int, problem: str) -> None:
    model = tiny_model()
    data = external(model, location, offset=offset)
    (folder.parent / "secret.bin").write_bytes(data)
    (folder / "unlisted.bin").write_bytes(data)
    replace_model(folder, model, {"weights.bin": data} if listed else None)
    with pytest.raises(ExternalDataError, match=problem) as info:
        CamEngine.load(folder, device="cpu", trust_graph=True)  # trust does not lift the folder boundary
    assert "\n" not in str(info.value)


def test_symlinked_external_data_escaping_is_refused(folder: Path) -> None:
    model = tiny_model()
    data = external(model, "weights.bin")
    (folder.parent / "secret.bin").write_bytes(data)
    replace_model(folder, model)
    (folder / "weights.bin").symlink_to(folder.parent / "secret.bin")
    with pytest.raises(ExternalDataError, match="points outside the model folder"):
        ModelFolder.load(folder)


def test_cli_trust_flag(folder: Path, tmp_path: Path) -> None:
    import cv2

    replace_model(folder, with_loop(tiny_model()))
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((40, 40, 3), 128, np.uint8))
    runner = CliRunner()
    refused = runner.invoke(app, ["explain", str(photo), "-m", str(folder), "-o", str(tmp_path / "a"), "-q"])
    assert refused.exit_code == 2, refused.output
    assert "--trust-model-graph" in refused.output and "Traceback" not in refused.output
    trusted = runner.invoke(app, ["explain", str(photo), "-m", str(folder), "-o", str(tmp_path / "b"), "-q",
                                  "--trust-model-graph"])
    assert trusted.exit_code == 0, trusted.output
    assert (tmp_path / "b" / "report.json").is_file()
