"""cam_runtime.derive on a graph-head folder (no TensorFlow): INT8 and FP16 copies with the head graphs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cam_runtime.derive import fp16_folder, quantize_folder
from cam_runtime.derive.fidelity import class_maps
from cam_runtime.engine import CamEngine
from cam_runtime.heads import GraphHead
from cam_runtime.model import HeadSpec, InputSpec, OutputSpec, Preprocess, write_model_folder
from tiny_models import CLASSES, SIZE, tiny_onnx

FEAT, CHANNELS, HIDDEN = SIZE // 4, 8, 6


def head_graphs(seed: int = 1) -> tuple[bytes, bytes, tuple[np.ndarray, ...]]:
    """head.onnx (features → mean → Dense → ReLU → Dense → softmax) and its exact gradient.onnx, NHWC."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1, (CHANNELS, HIDDEN)).astype(np.float32)
    b1 = rng.normal(0.2, 0.1, HIDDEN).astype(np.float32)
    w2 = rng.normal(0, 1, (HIDDEN, CLASSES)).astype(np.float32)
    b2 = rng.normal(0, 0.1, CLASSES).astype(np.float32)
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEAT, FEAT, CHANNELS])
    common = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
              numpy_helper.from_array(np.array([1, 2], np.int64), "hw_axes")]
    front = [helper.make_node("ReduceMean", ["features", "hw_axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w1"], ["pre0"]), helper.make_node("Add", ["pre0", "b1"], ["pre"])]
    head = helper.make_graph(
        [*front, helper.make_node("Relu", ["pre"], ["hidden"]), helper.make_node("MatMul", ["hidden", "w2"], ["z0"]),
         helper.make_node("Add", ["z0", "b2"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probabilities"])],
        "head", [features],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        [*common, numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    # d(Σ_k d_tk z_k)/dF[n,i,j,c] = Σ_m (d_t · W2ᵀ)_m · [pre_m > 0] · W1[c, m] / (h·w), the same at every (i, j).
    gradient = helper.make_graph(
        [*front, helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32))),
         helper.make_node("Greater", ["pre", "zero"], ["on"]), helper.make_node("Cast", ["on"], ["mask"], to=1),
         helper.make_node("MatMul", ["directions", "w2t"], ["dh"]),
         helper.make_node("Unsqueeze", ["mask", "axis1"], ["mask3"]),
         helper.make_node("Mul", ["dh", "mask3"], ["dpre"]), helper.make_node("MatMul", ["dpre", "w1t"], ["dc"]),
         helper.make_node("Unsqueeze", ["dc", "axes23"], ["dc5"]),
         helper.make_node("Mul", ["dc5", "spread"], ["gradients"])],
        "gradient", [features, helper.make_tensor_value_info("directions", TensorProto.FLOAT, ["N", "T", CLASSES])],
        [helper.make_tensor_value_info("gradients", TensorProto.FLOAT, ["N", "T", FEAT, FEAT, CHANNELS])],
        [*common, numpy_helper.from_array(w2.T.copy(), "w2t"), numpy_helper.from_array(w1.T.copy(), "w1t"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"),
         numpy_helper.from_array(np.full((1, 1, FEAT, FEAT, 1), 1 / FEAT ** 2, np.float32), "spread")])
    graphs = []
    for graph in (head, gradient):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        graphs.append(model.SerializeToString())
    return graphs[0], graphs[1], (w1, b1, w2, b2)


@pytest.fixture(scope="module")
def graph_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _, _ = tiny_onnx("NHWC")
    head, gradient, _ = head_graphs()
    dest = tmp_path_factory.mktemp("derive") / "graph-head"
    write_model_folder(dest, model=model, weights=None, bias=None, labels=None, name="tiny-graph-head",
                       input_spec=InputSpec("image", "NHWC", SIZE, SIZE),
                       preprocess=Preprocess("RGB", (127.5,) * 3, (127.5,) * 3, "bilinear"),
                       outputs=OutputSpec("probabilities", "features", "NHWC"),
                       graph_head=(head, gradient), head_spec=HeadSpec(), num_classes=CLASSES)
    return dest


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("derive-images")
    rng = np.random.default_rng(5)
    for i in range(10):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    return folder


def test_gradient_graph_is_exact(graph_folder: Path) -> None:
    """The hand-written gradient graph agrees with finite differences of the head graph (so the maps mean it)."""
    engine = CamEngine.load(graph_folder, device="cpu")
    assert isinstance(engine.head, GraphHead)
    rng = np.random.default_rng(0)
    features = np.abs(rng.normal(0, 1, (1, FEAT, FEAT, CHANNELS))).astype(np.float32)
    direction = np.zeros((1, 1, CLASSES), np.float32)
    direction[0, 0, 2] = 1.0
    grads = engine.head.logit_gradients(features, direction)[0, 0]
    bumped = features.copy()
    bumped[0, 1, 2, 3] += 1e-2
    numeric = (engine.head.logits(bumped)[0, 2] - engine.head.logits(features)[0, 2]) / 1e-2
    assert abs(numeric - grads[1, 2, 3]) < 1e-3 * max(1.0, abs(numeric))


def test_fp16_derives_the_head_graphs(graph_folder: Path, images: Path, tmp_path: Path) -> None:
    result = fp16_folder(graph_folder, tmp_path / "fp16", calibration=images, device="cpu", timing_runs=1)
    assert result.details["graphs"] == ["model", "head", "gradient"]
    for name in ("model.onnx", "head.onnx", "gradient.onnx"):
        graph = onnx.load(str(tmp_path / "fp16" / name))
        assert any(t.data_type == TensorProto.FLOAT16 for t in graph.graph.initializer), name
        assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*graph.graph.input,
                                                                              *graph.graph.output]), name
    fp32, fp16 = CamEngine.load(graph_folder, device="cpu"), CamEngine.load(tmp_path / "fp16", device="cpu")
    assert fp16.manifest.head == fp32.manifest.head
    assert result.fidelity["calibration"].map_correlation_min > 0.99
    assert result.fidelity["calibration"].top1_agreement == 1.0
    batch = np.stack([fp32.preprocessor.tensor(fp32.load_image(p).bgr) for p in sorted(images.iterdir())])
    _, features = fp32.run(batch)
    classes = np.arange(len(batch)) % CLASSES
    ref, new = class_maps(fp32, features, classes), class_maps(fp16, features, classes)
    assert np.abs(ref).max() > 0 and np.allclose(new, ref, rtol=0.02, atol=0.02 * np.abs(ref).max())


def test_int8_keeps_float_head_graphs(graph_folder: Path, images: Path, tmp_path: Path) -> None:
    result = quantize_folder(graph_folder, tmp_path / "int8", calibration=images, activation="u8", timing_runs=1,
                             accept_low_fidelity=True)  # random weights: the thresholds are not the point here
    assert result.details["graphs"] == ["model"]
    for name in ("head.onnx", "gradient.onnx"):
        assert (tmp_path / "int8" / name).read_bytes() == (graph_folder / name).read_bytes()
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    sets = result.manifest.provenance["fidelity"]["sets"] if result.manifest else {}
    assert sets["calibration"]["images"] == 10
    CamEngine.load(tmp_path / "int8", device="cpu").explain([sorted(images.iterdir())[0]], method="gradcam")
