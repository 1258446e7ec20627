"""`camr import` without torch: graphs built with onnx.helper for every recognised head, error cases, tf2onnx."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="camr import needs the onnx package (extra onnx-import)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cam_runtime import CamEngine  # noqa: E402
from cam_runtime.errors import OutputExistsError  # noqa: E402
from cam_runtime.model import read_manifest  # noqa: E402
from export.errors import (  # noqa: E402
    LabelsError,
    OnnxHeadError,
    OnnxModelLoadError,
    OnnxModelNotFoundError,
    ParityError,
    UnsupportedOnnxModelError,
)
from export.onnx_import import PRESETS, import_onnx  # noqa: E402

SIZE, STRIDE, C, K = 32, 4, 6, 5
H = SIZE // STRIDE
IR = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 9, 19: 9, 20: 10, 21: 10}
MEAN, STD = PRESETS["torchvision"].mean, PRESETS["torchvision"].std


class Net:
    """Random weights of the test network: a stride-4 patch conv + ReLU backbone and a linear head."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.conv_w = rng.normal(0, 0.3, (C, 3, STRIDE, STRIDE)).astype(np.float32)
        self.conv_b = rng.normal(0, 0.1, C).astype(np.float32)
        self.w = rng.normal(0, 1.0, (C, K)).astype(np.float32)  # the format's [C, K]
        self.b = rng.normal(0, 0.5, K).astype(np.float32)

    def features(self, x_nchw: np.ndarray) -> np.ndarray:
        """The backbone in NumPy: [N, 3, S, S] → ReLU(conv) as [N, h, w, C]."""
        n = x_nchw.shape[0]
        patches = x_nchw.reshape(n, 3, H, STRIDE, H, STRIDE).transpose(0, 2, 4, 1, 3, 5).reshape(n, H, H, -1)
        return np.maximum(patches.astype(np.float64) @ self.conv_w.reshape(C, -1).T + self.conv_b, 0)


def _const(nodes: list, inits: list, name: str, value: np.ndarray, as_node: bool = False) -> str:
    if as_node:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_v")))
    else:
        inits.append(numpy_helper.from_array(value, name))
    return name


def build(net: Net, head: str, *, layout: str = "NCHW", ending: str = "logits", opset: int = 17,
          batch: int | str = "N", spatial: int | str = SIZE, extra_input: bool = False) -> onnx.ModelProto:
    """A classifier whose head follows one of the patterns exporters emit."""
    nodes: list = []
    inits: list = []
    conv_in = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]))
        conv_in = "image_nchw"
    _const(nodes, inits, "conv_w", net.conv_w)
    _const(nodes, inits, "conv_b", net.conv_b)
    nodes += [helper.make_node("Conv", [conv_in, "conv_w", "conv_b"], ["conv"], strides=[STRIDE, STRIDE]),
              helper.make_node("Relu", ["conv"], ["feat"])]
    feat = "feat"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["feat"], ["feat_nhwc"], perm=[0, 2, 3, 1]))
        feat = "feat_nhwc"
    spatial_axes = [2, 3] if layout == "NCHW" else [1, 2]

    def reduce_mean(inp: str, out: str, axes: list[int], keepdims: int) -> None:
        if opset >= 18:
            nodes.append(helper.make_node("ReduceMean", [inp, _const(nodes, inits, out + "_axes",
                                                                     np.asarray(axes, np.int64))], [out],
                                          keepdims=keepdims))
        else:
            nodes.append(helper.make_node("ReduceMean", [inp], [out], axes=axes, keepdims=keepdims))

    if head == "gap_flatten_gemm":
        nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", net.w),
                                            _const(nodes, inits, "fc_b", net.b)], ["logits"])]
    elif head == "gap_flatten_gemm_transB":
        # alpha/beta scale W and b: the importer must fold them in.
        nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", np.ascontiguousarray(net.w.T / 2)),
                                            _const(nodes, inits, "fc_b", net.b / 4)], ["logits"],
                                   transB=1, alpha=2.0, beta=4.0)]
    elif head == "reducemean_matmul_add":
        reduce_mean(feat, "vec", spatial_axes, 0)
        nodes += [helper.make_node("MatMul", ["vec", _const(nodes, inits, "fc_w", net.w, as_node=True)], ["mm"]),
                  helper.make_node("Add", [_const(nodes, inits, "fc_b", net.b), "mm"], ["logits"])]
    elif head == "reducemean_negative_axes_squeeze":
        reduce_mean(feat, "pool", [-1, -2] if layout == "NCHW" else [-2, -3], 1)
        nodes.append(helper.make_node("Squeeze", ["pool", _const(nodes, inits, "sq", np.asarray(
            spatial_axes, np.int64))], ["vec"]))
        nodes += [helper.make_node("MatMul", ["vec", _const(nodes, inits, "fc_w", net.w)], ["mm"]),
                  helper.make_node("Add", ["mm", _const(nodes, inits, "fc_b", net.b[None])], ["logits"])]
    elif head == "avgpool_reshape_gemm":
        nodes += [helper.make_node("AveragePool", [feat], ["pool"], kernel_shape=[H, H]),
                  helper.make_node("Reshape", ["pool", _const(nodes, inits, "shape", np.asarray([0, -1], np.int64))],
                                   ["vec"]),
                  helper.make_node("Dropout", ["vec"], ["vec_d"]),
                  helper.make_node("Gemm", ["vec_d", _const(nodes, inits, "fc_w", net.w),
                                            _const(nodes, inits, "fc_b", net.b)], ["logits"])]
    elif head == "reshape_reducemean":
        shape = [0, C, -1] if layout == "NCHW" else [0, -1, C]
        nodes.append(helper.make_node("Reshape", [feat, _const(nodes, inits, "shape", np.asarray(shape, np.int64))],
                                      ["flat"]))
        reduce_mean("flat", "vec", [-1] if layout == "NCHW" else [1], 0)
        nodes.append(helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", np.ascontiguousarray(net.w.T)),
                                               _const(nodes, inits, "fc_b", net.b)], ["logits"], transB=1))
    # --- heads that must be refused -----------------------------------------------------------------------
    elif head == "flatten_gemm":  # VGG-style: every position has its own weights
        big = np.tile(net.w, (H * H, 1))
        nodes += [helper.make_node("Flatten", [feat], ["vec"], axis=1),
                  helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", big),
                                            _const(nodes, inits, "fc_b", net.b)], ["logits"])]
    elif head == "gap_relu_gemm":  # a non-linearity between the pooling and the classifier
        nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Relu", ["vec"], ["vec_r"]),
                  helper.make_node("Gemm", ["vec_r", _const(nodes, inits, "fc_w", net.w),
                                            _const(nodes, inits, "fc_b", net.b)], ["logits"])]
    elif head == "gmp_gemm":
        nodes += [helper.make_node("GlobalMaxPool", [feat], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", net.w)], ["logits"])]
    elif head == "local_avgpool":
        nodes += [helper.make_node("AveragePool", [feat], ["pool"], kernel_shape=[2, 2], strides=[H, H]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", net.w)], ["logits"])]
    elif head == "gap_gemm_sigmoid":
        nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", net.w)], ["pre"]),
                  helper.make_node("Sigmoid", ["pre"], ["logits"])]
    elif head == "gap_tanh_gemm":  # an activation the gradient graph has no rule for
        nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Tanh", ["vec"], ["vec_t"], name="act"),
                  helper.make_node("Gemm", ["vec_t", _const(nodes, inits, "fc_w", net.w)], ["logits"])]
    elif head == "gap_gemm_branch":  # a residual branch in the head
        nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
                  helper.make_node("Flatten", ["pool"], ["vec"], axis=1),
                  helper.make_node("Relu", ["vec"], ["vec_r"]),
                  helper.make_node("Add", ["vec", "vec_r"], ["vec_s"], name="residual"),
                  helper.make_node("Gemm", ["vec_s", _const(nodes, inits, "fc_w", net.w)], ["logits"])]
    elif head == "gap_reshape_batch1":  # a graph that hard-codes batch 1 in a Reshape
        nodes += [helper.make_node("GlobalAveragePool", [feat], ["pool"]),
                  helper.make_node("Reshape", ["pool", _const(nodes, inits, "shape", np.asarray([1, C], np.int64))],
                                   ["vec"]),
                  helper.make_node("Gemm", ["vec", _const(nodes, inits, "fc_w", net.w),
                                            _const(nodes, inits, "fc_b", net.b)], ["logits"])]
    else:
        raise ValueError(head)
    out = "logits"
    if ending == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=-1 if opset >= 13 else 1))
        out = "scores"
    elif ending == "log_softmax":
        nodes.append(helper.make_node("LogSoftmax", ["logits"], ["scores"], axis=1))
        out = "scores"
    in_shape = [batch, 3, spatial, spatial] if layout == "NCHW" else [batch, spatial, spatial, 3]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1]))
    graph = helper.make_graph(nodes, f"{head}_{layout}", inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnx.helper")
    model.ir_version = IR[opset]
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, folder: Path, name: str = "net.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(model, str(path))
    return path


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_folder(folder: Path, net: Net, layout: str, rng_seed: int = 7) -> None:
    """Explain a random image and compare probabilities and CAM with NumPy from the original weights."""
    manifest = read_manifest(folder)
    assert manifest.input.layout == layout and (manifest.input.height, manifest.input.width) == (SIZE, SIZE)
    np.testing.assert_allclose(np.load(folder / "dense_weights.npy"), net.w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.load(folder / "dense_bias.npy"), net.b, rtol=1e-6, atol=1e-6)
    rgb = np.random.default_rng(rng_seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    x = ((rgb.astype(np.float64) - MEAN) / STD).transpose(2, 0, 1)[None]  # [1, 3, S, S], RGB
    feats = net.features(x)[0]  # [h, w, C]
    logits = feats.mean(axis=(0, 1)) @ net.w + net.b
    engine = CamEngine.load(folder, device="cpu")
    (result,) = engine.explain(rgb, top_k=K, method="cam")
    probs = softmax(logits)
    assert [p.class_id for p in result.top_k] == list(np.argsort(-probs))
    for target in result.targets:
        assert target.probability == pytest.approx(probs[target.class_id], abs=1e-5)
        cam = feats @ net.w[:, target.class_id]  # Zhou et al.: Σ_k W[k, c] A_k
        np.testing.assert_allclose(target.raw, cam, rtol=1e-4, atol=1e-4)
    parity = manifest.provenance["parity"]
    assert parity["probabilities_max_abs"] <= 1e-5 and parity["head_reconstruction_max_abs"] <= 1e-5
    assert parity["tolerances"] == {"probabilities_atol": 1e-4, "head_atol": 1e-4}


# --- recognised heads ------------------------------------------------------------------------------------------

HEADS = ["gap_flatten_gemm", "gap_flatten_gemm_transB", "reducemean_matmul_add", "reducemean_negative_axes_squeeze",
         "avgpool_reshape_gemm", "reshape_reducemean"]
NHWC_HEADS = ["reducemean_matmul_add", "reducemean_negative_axes_squeeze", "reshape_reducemean"]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("ending", ["logits", "softmax"])
def test_every_nchw_head_gives_the_paper_cam(head: str, ending: str, tmp_path: Path) -> None:
    net = Net(seed=1)
    src = save(build(net, head, ending=ending), tmp_path / "src")
    folder = import_onnx(src, tmp_path / "model", labels=None)
    check_folder(folder, net, "NCHW")
    manifest = read_manifest(folder)
    assert manifest.outputs.features == "feat" and manifest.outputs.features_layout == "NCHW"
    assert manifest.provenance["softmax_appended"] is (ending == "logits")
    assert manifest.provenance["model_ending"] == ending
    assert manifest.provenance["feature_shape"] == [H, H, C]


@pytest.mark.parametrize("head", NHWC_HEADS)
@pytest.mark.parametrize("ending", ["logits", "softmax"])
def test_nhwc_features_are_found(head: str, ending: str, tmp_path: Path) -> None:
    net = Net(seed=2)
    src = save(build(net, head, layout="NHWC", ending=ending), tmp_path / "src")
    folder = import_onnx(src, tmp_path / "model")
    check_folder(folder, net, "NHWC")
    manifest = read_manifest(folder)
    assert manifest.outputs.features == "feat_nhwc" and manifest.outputs.features_layout == "NHWC"


@pytest.mark.parametrize("opset", range(13, 22))
def test_opsets_13_to_21(opset: int, tmp_path: Path) -> None:
    """ReduceMean's axes move from an attribute to an input at opset 18; both are read."""
    net = Net(seed=opset)
    head = "reducemean_matmul_add" if opset % 2 else "reshape_reducemean"
    src = save(build(net, head, opset=opset, ending="softmax" if opset % 3 else "logits"), tmp_path / "src")
    folder = import_onnx(src, tmp_path / "model")
    check_folder(folder, net, "NCHW")
    assert read_manifest(folder).provenance["opset"] == opset


def test_log_softmax_ending_gets_probabilities(tmp_path: Path) -> None:
    net = Net(seed=3)
    folder = import_onnx(save(build(net, "gap_flatten_gemm", ending="log_softmax"), tmp_path / "src"),
                         tmp_path / "model")
    check_folder(folder, net, "NCHW")


def test_extended_graph_keeps_the_original_and_a_dynamic_batch(tmp_path: Path) -> None:
    import onnxruntime as ort

    net = Net(seed=4)
    original = build(net, "gap_flatten_gemm")
    folder = import_onnx(save(original, tmp_path / "src"), tmp_path / "model")
    extended = onnx.load(str(folder / "model.onnx"))
    assert [n.op_type for n in extended.graph.node[:len(original.graph.node)]] == \
        [n.op_type for n in original.graph.node]
    assert extended.graph.node[:len(original.graph.node)] == original.graph.node[:]
    assert [o.name for o in extended.graph.output] == ["logits", "probabilities", "feat"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    logits, probs, feats = session.run(None, {"image": x})
    assert probs.shape == (3, K) and feats.shape == (3, C, H, H)
    np.testing.assert_allclose(probs, softmax(logits), atol=1e-6)


def test_fixed_batch_is_made_dynamic(tmp_path: Path) -> None:
    net = Net(seed=5)
    folder = import_onnx(save(build(net, "gap_flatten_gemm", batch=1), tmp_path / "src"), tmp_path / "model")
    check_folder(folder, net, "NCHW")
    assert read_manifest(folder).provenance["batch_made_dynamic"] is True
    engine = CamEngine.load(folder, device="cpu")
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    assert len(engine.explain([rgb, rgb, rgb], batch_size=3)) == 3


def test_fixed_batch_hard_coded_in_the_graph_is_refused(tmp_path: Path) -> None:
    src = save(build(Net(), "gap_reshape_batch1", batch=1), tmp_path / "src")
    with pytest.raises(UnsupportedOnnxModelError, match="dynamic batch axis"):
        import_onnx(src, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_dynamic_spatial_size_needs_size(tmp_path: Path) -> None:
    net = Net(seed=6)
    src = save(build(net, "gap_flatten_gemm", spatial="S"), tmp_path / "src")
    with pytest.raises(UnsupportedOnnxModelError, match="--size"):
        import_onnx(src, tmp_path / "model")
    folder = import_onnx(src, tmp_path / "model", size=SIZE)
    check_folder(folder, net, "NCHW")
    with pytest.raises(UnsupportedOnnxModelError, match="fixed at 32"):
        import_onnx(save(build(net, "gap_flatten_gemm"), tmp_path / "fixed"), tmp_path / "m2", size=(64, 64))


def test_features_override_picks_an_equivalent_tensor(tmp_path: Path) -> None:
    """In an NHWC graph the NCHW tensor before the Transpose is just as exact; --features selects it."""
    net = Net(seed=8)
    src = save(build(net, "reducemean_matmul_add", layout="NHWC"), tmp_path / "src")
    folder = import_onnx(src, tmp_path / "model", features="feat")
    manifest = read_manifest(folder)
    assert manifest.outputs.features == "feat" and manifest.outputs.features_layout == "NCHW"
    check_folder(folder, net, "NHWC")


def test_external_data_inside_the_folder_is_embedded(tmp_path: Path) -> None:
    net = Net(seed=9)
    src = tmp_path / "src" / "net.onnx"
    src.parent.mkdir()
    onnx.save(build(net, "gap_flatten_gemm"), str(src), save_as_external_data=True, location="net.onnx.data",
              size_threshold=0)
    assert (src.parent / "net.onnx.data").is_file()
    folder = import_onnx(src, tmp_path / "model")
    check_folder(folder, net, "NCHW")
    assert sorted(p.name for p in folder.iterdir()) == ["dense_bias.npy", "dense_weights.npy", "manifest.json",
                                                        "model.onnx"]


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src" / "net.onnx"
    src.parent.mkdir()
    onnx.save(build(Net(), "gap_flatten_gemm"), str(src), save_as_external_data=True, location="net.onnx.data",
              size_threshold=0)
    (src.parent / "net.onnx.data").rename(tmp_path / "secret.data")
    model = onnx.load(str(src), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(model, str(src))
    with pytest.raises(OnnxModelLoadError, match="outside the model's folder"):
        import_onnx(src, tmp_path / "model")
    assert not (tmp_path / "model").exists()


# --- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "reason"), [
    ("gmp_gemm", "max pooling"),
    ("local_avgpool", "local pooling"),
    ("gap_tanh_gemm", "Tanh 'act', which the gradient graph does not support"),
    ("gap_gemm_branch", "Add 'residual' in the head has 2 non-constant inputs"),
])
def test_unsupported_heads_are_refused_with_the_reason(head: str, reason: str, tmp_path: Path) -> None:
    src = save(build(Net(), head), tmp_path / "src")
    with pytest.raises(OnnxHeadError, match=reason) as info:
        import_onnx(src, tmp_path / "model")
    assert "head/gradient graphs" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "model").exists()
    assert not list(tmp_path.glob(".model*"))


@pytest.mark.parametrize("head", ["flatten_gemm", "gap_relu_gemm", "gap_gemm_sigmoid"])
def test_non_linear_heads_become_graph_heads(head: str, tmp_path: Path) -> None:
    """Heads the closed form cannot express are imported with head.onnx and gradient.onnx (verified there)."""
    src = save(build(Net(), head), tmp_path / "src")
    folder = import_onnx(src, tmp_path / "model")
    manifest = read_manifest(folder)
    assert manifest.files.weights is None and manifest.head is not None
    assert (folder / "head.onnx").is_file() and (folder / "gradient.onnx").is_file()
    assert max(manifest.provenance["parity"]["head_graphs"]["gradient_fd_max_rel"].values()) <= 1e-3


def test_refusal_lists_pooling_candidates_and_features_lets_parity_decide(tmp_path: Path) -> None:
    net = Net(seed=10)
    with pytest.raises(OnnxHeadError, match=r"pooled tensors found in the graph: feat \(GlobalAveragePool\)"):
        import_onnx(save(build(net, "gap_tanh_gemm"), tmp_path / "tanh"), tmp_path / "model")
    assert not (tmp_path / "model").exists()
    src = save(build(net, "gap_relu_gemm"), tmp_path / "src")
    # The ReLU after the pooling acts on a mean of ReLU outputs (≥ 0), so it is the identity: the head
    # reconstruction check accepts the named candidate, and the maps are exact.
    folder = import_onnx(src, tmp_path / "model", features="feat")
    check_folder(folder, net, "NCHW")
    assert read_manifest(folder).provenance["pooling"] == "(given with --features)"


def test_wrong_features_fail_parity_with_the_largest_difference(tmp_path: Path) -> None:
    src = save(build(Net(), "gap_flatten_gemm"), tmp_path / "src")
    with pytest.raises(ParityError, match=r"differ by up to \d"):
        import_onnx(src, tmp_path / "model", features="conv")  # before the ReLU
    assert not (tmp_path / "model").exists()


def test_input_problems_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelNotFoundError):
        import_onnx(tmp_path / "missing.onnx", tmp_path / "model")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(OnnxModelLoadError):
        import_onnx(junk, tmp_path / "model")
    two = save(build(Net(), "gap_flatten_gemm", extra_input=True), tmp_path / "two")
    with pytest.raises(UnsupportedOnnxModelError, match="2 inputs"):
        import_onnx(two, tmp_path / "model")
    with pytest.raises(UnsupportedOnnxModelError, match="not a tensor computed"):
        import_onnx(save(build(Net(), "gap_flatten_gemm"), tmp_path / "x"), tmp_path / "model", features="nope")
    assert not (tmp_path / "model").exists()


def test_labels_and_existing_output(tmp_path: Path) -> None:
    src = save(build(Net(), "gap_flatten_gemm"), tmp_path / "src")
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(LabelsError, match="2 lines but the model has 5 classes"):
        import_onnx(src, tmp_path / "model", labels=bad)
    good = tmp_path / "labels.txt"
    good.write_text("\n".join("abcde") + "\n")
    folder = import_onnx(src, tmp_path / "model", labels=good)
    assert (folder / "labels.txt").read_text().split() == list("abcde")
    before = (folder / "manifest.json").read_bytes()
    with pytest.raises(OutputExistsError):
        import_onnx(src, folder)
    assert (folder / "manifest.json").read_bytes() == before
    import_onnx(src, folder, force=True, preset="keras-caffe")
    assert read_manifest(folder).preprocess.color_order == "BGR"


def test_explicit_preprocessing_overrides_the_preset(tmp_path: Path) -> None:
    src = save(build(Net(), "gap_flatten_gemm"), tmp_path / "src")
    folder = import_onnx(src, tmp_path / "model", preset="keras-tf", mean=(1, 2, 3), color_order="bgr",
                         resize="area")
    prep = read_manifest(folder).preprocess
    assert (prep.color_order, prep.mean, prep.std, prep.resize) == ("BGR", (1.0, 2.0, 3.0), (127.5,) * 3, "area")


# --- the command line ----------------------------------------------------------------------------------------


def test_cli_import_then_explain(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cam_runtime.cli import app

    runner = CliRunner()
    src = save(build(Net(), "avgpool_reshape_gemm", spatial="S"), tmp_path / "src")
    result = runner.invoke(app, ["import", str(src), "-o", str(tmp_path / "m"), "--size", "32",
                                 "--mean", "0,0,0", "--std", "255,255,255"])
    assert result.exit_code == 0, result.output
    assert "imported net" in result.stdout and "parity" in result.stdout
    prep = read_manifest(tmp_path / "m").preprocess
    assert prep.mean == (0.0, 0.0, 0.0) and prep.std == (255.0, 255.0, 255.0)
    photo = Path(__file__).resolve().parents[1] / "cam_runtime" / "data" / "examples" / "cat.jpg"
    result = runner.invoke(app, ["explain", str(photo), "-m", str(tmp_path / "m"), "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "cat_jpg.json").read_text())["status"] == "ok"
    for args, message in [(["--size", "0x3"], "--size must be"), (["--mean", "1,2"], "--mean needs three"),
                          (["--preset", "nope"], "unknown preset"), ([], "dynamic")]:
        result = runner.invoke(app, ["import", str(src), "-o", str(tmp_path / "m2"), *args])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "m2").exists()


def test_cli_without_onnx_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cam_runtime.cli import app

    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.delitem(sys.modules, "export.onnx_import", raising=False)
    result = CliRunner().invoke(app, ["import", str(tmp_path / "x.onnx"), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "pip install 'cam-runtime[onnx-import,cpu]'" in result.stderr


# --- tf2onnx: a Keras model converted by the user agrees with the exporter's own folder -----------------------


@pytest.mark.tensorflow
@pytest.mark.slow
def test_tf2onnx_converted_keras_model_matches_the_exporter(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="the export extra (tensorflow, tf2onnx) is not installed")
    from export.exporter import export_model, import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(3)
    inputs = keras.Input((40, 40, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(K, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    keras_file = tmp_path / "tiny.keras"
    model.save(keras_file)
    exported = tmp_path / "exported"
    export_model(exported, model_path=keras_file)

    spec = (tf.TensorSpec((None, 40, 40, 3), tf.float32, name="input"),)
    onnx_file = tmp_path / "tiny.onnx"
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(onnx_file))
    imported = import_onnx(onnx_file, tmp_path / "imported", preset="none")
    manifest = read_manifest(imported)
    # tf2onnx's optimiser moves the Transpose in front of the pooling, so the features may come out NCHW.
    assert manifest.input.layout == "NHWC" and manifest.provenance["feature_shape"] == [9, 9, 12]
    np.testing.assert_allclose(np.load(imported / "dense_weights.npy"), np.load(exported / "dense_weights.npy"))
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for method in ("cam", "gradcam++"):
        (a,) = CamEngine.load(exported, device="cpu").explain(rgb, top_k=K, method=method)
        (b,) = CamEngine.load(imported, device="cpu").explain(rgb, top_k=K, method=method)
        assert [p.class_id for p in a.top_k] == [p.class_id for p in b.top_k]
        for ta, tb in zip(a.targets, b.targets, strict=True):
            assert ta.probability == pytest.approx(tb.probability, abs=1e-5)
            np.testing.assert_allclose(ta.raw, tb.raw, rtol=1e-4, atol=1e-4)
