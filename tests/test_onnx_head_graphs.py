"""gradient.onnx of an imported non-linear head (built with onnx.helper, no torch) against float64 finite
differences of the same head written in NumPy, for several classes and both scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="camr import needs onnx (extra onnx-import)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.heads import GraphHead  # noqa: E402
from export.onnx_import import import_onnx  # noqa: E402

C, H, K, HIDDEN = 4, 3, 5, 6
RNG = np.random.default_rng(11)
P = {"conv": RNG.normal(0, 0.5, (C, 3, 3, 3)), "w1": RNG.normal(0, 0.8, (C, HIDDEN)), "b1": RNG.normal(0, 0.3, HIDDEN),
     "scale": RNG.uniform(0.5, 2.0, (1, HIDDEN)), "shift": RNG.normal(0, 0.2, HIDDEN),
     "w2": RNG.normal(0, 0.8, (HIDDEN, HIDDEN)), "b2": RNG.normal(0, 0.3, HIDDEN), "div": RNG.uniform(0.5, 2, HIDDEN),
     "w3": RNG.normal(0, 0.8, (K, HIDDEN)), "b3": RNG.normal(0, 0.3, K)}
P = {k: v.astype(np.float32) for k, v in P.items()}


def _model() -> Any:
    inits = [numpy_helper.from_array(v, k) for k, v in P.items()]
    inits += [numpy_helper.from_array(np.asarray(v, dtype), k) for k, v, dtype in (
        ("axes", [2, 3], np.int64), ("shape", [0, -1], np.int64), ("lo", 0.0, np.float32), ("hi", 1.5, np.float32))]
    nodes = [
        helper.make_node("Conv", ["image", "conv"], ["feat"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["feat", "axes"], ["pool"], keepdims=1),
        helper.make_node("Reshape", ["pool", "shape"], ["vec"]),
        helper.make_node("Gemm", ["vec", "w1", "b1"], ["h1"], alpha=0.7, beta=0.5),
        helper.make_node("HardSigmoid", ["h1"], ["h2"], alpha=0.3, beta=0.4),
        helper.make_node("Mul", ["scale", "h2"], ["h3"]),
        helper.make_node("Sub", ["h3", "shift"], ["h4"]),
        helper.make_node("MatMul", ["h4", "w2"], ["h5"]),
        helper.make_node("Add", ["b2", "h5"], ["h6"]),
        helper.make_node("HardSwish", ["h6"], ["h7"]),
        helper.make_node("Clip", ["h7", "lo", "hi"], ["h8"]),
        helper.make_node("LeakyRelu", ["h6"], ["h9"], alpha=0.1),
        helper.make_node("Div", ["h9", "div"], ["h10"]),
        helper.make_node("Gemm", ["h10", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("LogSoftmax", ["logits"], ["scores"], axis=1),
    ]
    del nodes[10]  # Clip is checked on its own below; keep one chain: h6 → LeakyRelu
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                           ["batch", 3, 2 * H, 2 * H])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _head(features: np.ndarray) -> np.ndarray:
    """The same head in float64 NumPy: features [N, C, h, w] → logits [N, K]."""
    p = {k: v.astype(np.float64) for k, v in P.items()}
    h = 0.7 * features.mean(axis=(2, 3)) @ p["w1"] + 0.5 * p["b1"]
    h = np.clip(0.3 * h + 0.4, 0, 1) * p["scale"] - p["shift"]
    h = h @ p["w2"] + p["b2"]
    h = np.where(h > 0, h, 0.1 * h) / p["div"]
    return h @ p["w3"].T + p["b3"]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> CamEngine:
    tmp = tmp_path_factory.mktemp("mlp")
    onnx.save(_model(), str(tmp / "net.onnx"))
    return CamEngine.load(import_onnx(tmp / "net.onnx", tmp / "model", preset="none"))


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradients_match_finite_differences(engine: CamEngine, score: str) -> None:
    head = engine.head
    assert isinstance(head, GraphHead)
    features = np.random.default_rng(2).normal(0, 1.5, (2, C, H, H))
    nhwc = features.transpose(0, 2, 3, 1).astype(np.float32)
    logits, _probs = head.forward(nhwc)
    np.testing.assert_allclose(logits, _head(features), atol=1e-4)

    def f(x: np.ndarray, c: int) -> np.ndarray:
        z = _head(x)
        return z[:, c] if score == "logit" else _softmax(z)[:, c]

    for c in range(K):
        onehot = np.zeros((2, 1, K), np.float32)
        onehot[:, 0, c] = 1
        p64 = _softmax(_head(features))
        directions = onehot if score == "logit" else p64[:, c, None, None] * (onehot - p64[:, None])
        ours = head.logit_gradients(nhwc, directions.astype(np.float32))[:, 0].transpose(0, 3, 1, 2)
        expected = np.zeros_like(features)
        eps = 1e-6
        for index in np.ndindex(features.shape[1:]):
            step = np.zeros_like(features)
            step[(slice(None), *index)] = eps
            expected[(slice(None), *index)] = (f(features + step, c) - f(features - step, c)) / (2 * eps)
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(ours, expected, atol=1e-4 * np.abs(expected).max() + 1e-7)


def test_clip_head_and_refused_batch_broadcast(tmp_path: Path) -> None:
    """Clip (ReLU6) gets its rule; a constant with a batch axis of its own (4, the parity batch) is refused."""
    from export.errors import OnnxHeadError

    model = _model()
    nodes = list(model.graph.node)
    leaky = next(n for n in nodes if n.op_type == "LeakyRelu")
    leaky.op_type = "Clip"
    del leaky.attribute[:]
    leaky.input.extend(["lo", "hi"])
    onnx.save(model, str(tmp_path / "clip.onnx"))
    folder = import_onnx(tmp_path / "clip.onnx", tmp_path / "clip", preset="none")
    assert "Clip" in " ".join(CamEngine.load(folder).manifest.provenance["head_layers"])
    bad = _model()
    mul = next(n for n in bad.graph.node if n.op_type == "Mul")
    bad.graph.initializer.append(numpy_helper.from_array(np.ones((4, HIDDEN), np.float32), "batchy"))
    mul.input[0] = "batchy"
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(OnnxHeadError, match="Mul broadcasts its input"):
        import_onnx(tmp_path / "bad.onnx", tmp_path / "bad", preset="none")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("head", "layout"), [("gap_flatten_gemm_transB", "NCHW"), ("reducemean_matmul_add", "NHWC"),
                                              ("avgpool_reshape_gemm", "NCHW")])
def test_forced_graph_head_equals_the_closed_form(head: str, layout: str, tmp_path: Path) -> None:
    """--head graph on a GAP → linear head: the gradient graph gives the closed form's constant gradient."""
    from test_onnx_import import Net, build, save

    from cam_runtime.heads import LinearHead

    src = save(build(Net(seed=4), head, layout=layout), tmp_path / "src")
    linear = CamEngine.load(import_onnx(src, tmp_path / "linear")).head
    graph = CamEngine.load(import_onnx(src, tmp_path / "graph", head_kind="graph")).head
    assert isinstance(linear, LinearHead) and isinstance(graph, GraphHead)
    h, w, c = graph.feature_shape
    features = np.random.default_rng(0).normal(0, 1, (3, h, w, c)).astype(np.float32)
    directions = np.random.default_rng(1).normal(0, 1, (3, 2, linear.num_classes)).astype(np.float32)
    np.testing.assert_allclose(graph.forward(features)[1], linear.forward(features)[1], atol=1e-6)
    expected = linear.logit_gradients(features, directions)
    np.testing.assert_allclose(graph.logit_gradients(features, directions), expected,
                               atol=1e-5 * np.abs(expected).max())


def test_linear_head_kind_refuses_a_non_linear_head(tmp_path: Path) -> None:
    from test_onnx_import import Net, build, save

    from export.errors import OnnxHeadError, OnnxImportError

    src = save(build(Net(), "gap_gemm_sigmoid"), tmp_path / "src")
    with pytest.raises(OnnxHeadError, match="head is not linear"):
        import_onnx(src, tmp_path / "model", head_kind="linear")
    with pytest.raises(OnnxImportError, match="head kind must be one of"):
        import_onnx(src, tmp_path / "model", head_kind="mlp")
    assert not (tmp_path / "model").exists()
