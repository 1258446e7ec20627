"""Tiny ONNX classifiers (conv → ReLU → GAP → Gemm → Softmax) built with onnx.helper, as model folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cam_runtime.model import InputSpec, OutputSpec, Preprocess, write_model_folder

SIZE = 32
CHANNELS = 8
CLASSES = 5
LABELS = ["circle", "square", "triangle", "cross", "ring"]


def tiny_onnx(layout: str, seed: int = 0, size: int = SIZE, channels: int = CHANNELS,
              classes: int = CLASSES) -> tuple[bytes, np.ndarray, np.ndarray]:
    """ONNX bytes plus the dense weights [C, K] and bias [K] of a random tiny CNN in ``layout``."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.3, (channels, 3, 4, 4)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, channels).astype(np.float32)
    dense_w = rng.normal(0, 1.0, (channels, classes)).astype(np.float32)
    dense_b = rng.normal(0, 0.1, classes).astype(np.float32)
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(conv_b, "conv_b"),
             numpy_helper.from_array(dense_w, "dense_w"), numpy_helper.from_array(dense_b, "dense_b")]
    nodes = []
    conv_in = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]))
        conv_in = "image_nchw"
    nodes += [
        helper.make_node("Conv", [conv_in, "conv_w", "conv_b"], ["conv"], strides=[4, 4]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled4d"]),
        helper.make_node("Flatten", ["pooled4d"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    feat = size // 4
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["relu"], ["features"], perm=[0, 2, 3, 1]))
        in_shape, feat_shape = ["N", size, size, 3], ["N", feat, feat, channels]
    else:
        nodes.append(helper.make_node("Identity", ["relu"], ["features"]))
        in_shape, feat_shape = ["N", 3, size, size], ["N", channels, feat, feat]
    graph = helper.make_graph(
        nodes, f"tiny_{layout.lower()}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, feat_shape)],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), dense_w, dense_b


def make_tiny_folder(dest: Path, layout: str = "NHWC", seed: int = 0, *, color_order: str = "RGB",
                     mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), resize: str = "bilinear",
                     labels: list[str] | None = LABELS) -> Path:
    """A complete model folder around :func:`tiny_onnx` (torch-style RGB mean/std by default)."""
    model, w, b = tiny_onnx(layout, seed)
    write_model_folder(
        dest, model=model, weights=w, bias=b, labels=labels, name=f"tiny-{layout.lower()}",
        input_spec=InputSpec("image", layout, SIZE, SIZE),  # type: ignore[arg-type]
        preprocess=Preprocess(color_order, tuple(mean), tuple(std), resize),  # type: ignore[arg-type]
        outputs=OutputSpec("probabilities", "features", layout),  # type: ignore[arg-type]
        provenance={"source": "tests/tiny_models.py", "weights": "random", "seed": seed})
    return dest
