"""Any ONNX image classifier (one output: logits or probabilities) → verified cam-model folder.

The graph is walked backwards from its output: optional Softmax/LogSoftmax, a linear layer (Gemm, or MatMul with
an optional Add), shape-only nodes (Flatten, Reshape, Squeeze, Identity, Dropout), then the global average
pooling (GlobalAveragePool, ReduceMean over H and W, an AveragePool whose kernel covers the map, or a
Reshape/Flatten to [N, C, h·w] / [N, h·w, C] followed by ReduceMean). The pooling's input becomes a second
graph output; a Softmax output is appended when the model ends in logits. Nothing else in the graph changes.
Parity (extended vs original, and softmax(mean_hw(features)·W + b) vs probabilities) is checked on seeded
inputs before the folder is written atomically. Needs ``onnx`` and ``onnxruntime``, never TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cam_runtime.errors import OutputExistsError
from cam_runtime.model import imagenet_labels, sha256_file, write_model_folder
from cam_runtime.model.manifest import (
    COLOR_ORDERS,
    LAYOUTS,
    RESIZE_MODES,
    HeadSpec,
    InputSpec,
    OutputSpec,
    Preprocess,
)

from .errors import (
    LabelsError,
    OnnxHeadError,
    OnnxModelLoadError,
    OnnxModelNotFoundError,
    ParityError,
    UnsupportedOnnxModelError,
    short_reason,
)
from .labels import read_labels_arg
from .onnx_head_graphs import OnnxGraphHead, Shapes, build_head_graphs, find_onnx_graph_head
from .parity import HEAD_ATOL, PROBABILITY_ATOL, softmax

_TORCH_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_TORCH_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
PRESETS: dict[str, Preprocess] = {
    "torchvision": Preprocess("RGB", _TORCH_MEAN, _TORCH_STD, "bilinear"),
    "keras-caffe": Preprocess("BGR", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "nearest"),
    "keras-tf": Preprocess("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), "nearest"),
    "keras-torch": Preprocess("RGB", _TORCH_MEAN, _TORCH_STD, "nearest"),
    "tf-lite": Preprocess("RGB", (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), "bilinear"),
    "none": Preprocess("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"),
}
"""Named preprocessing: ``(pixels_0_255_in_color_order - mean) / std`` (see docs/model-format.md)."""

HEAD_KINDS = ("auto", "linear", "graph")
FORCED_FEATURES = "(given with --features)"
PARITY_SAMPLES = 4
PARITY_SEED = 1234
PROBABILITIES_NAME = "probabilities"
MAX_PROTO_BYTES = (1 << 31) - 1

_IDENTITIES = ("Identity", "Dropout")
_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze")
_POOLS = ("GlobalAveragePool", "ReduceMean", "AveragePool")
_NONLINEAR_HINTS = {
    "Relu": "a ReLU", "Clip": "a clipping activation", "Sigmoid": "a sigmoid", "HardSigmoid": "a hard sigmoid",
    "HardSwish": "a hard swish", "Tanh": "a tanh", "BatchNormalization": "a BatchNormalization",
    "LayerNormalization": "a LayerNormalization (e.g. ConvNeXt)", "Concat": "a concatenation",
    "Mul": "an element-wise product", "Div": "a division", "Gelu": "a GELU",
}


@dataclass(frozen=True)
class LinearHead:
    """The classifier: its input tensor, W [C, K], b [K] and the nodes it spans."""

    input: str
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class DetectedHead:
    """Everything the import needs to know about the graph's head."""

    output: str  # the model's single output
    ending: str  # "softmax", "logits" or "log_softmax"
    linear: LinearHead
    features: str
    features_layout: str  # NCHW or NHWC
    pooling: str  # description of the pooling node(s)
    pass_through: tuple[str, ...] = field(default_factory=tuple)


class _Graph:
    """Producer/constant/shape look-ups over one ONNX graph."""

    def __init__(self, model: Any, shapes: dict[str, list[int | None]]) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.producer = {out: node for node in self.graph.node for out in node.output if out}
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.constants = {node.output[0]: node for node in self.graph.node if node.op_type == "Constant"}
        self.shapes = shapes
        self._to_array = numpy_helper.to_array
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(self, name: str) -> npt.NDArray[Any] | None:
        """The value of an initializer or Constant node output (through Identity), else None."""
        if name in self.initializers:
            return np.asarray(self._to_array(self.initializers[name]))
        node = self.constants.get(name)
        if node is not None:
            from onnx import helper

            for attr in node.attribute:
                value = helper.get_attribute_value(attr)
                if attr.name == "value":
                    return np.asarray(self._to_array(value))
                if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    return np.asarray(value)
            return None
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":
            return self.const(node.input[0])
        return None

    def node_of(self, name: str) -> Any | None:
        return self.producer.get(name)

    def shape(self, name: str) -> list[int | None] | None:
        return self.shapes.get(name)

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for attribute in node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default


def _describe(node: Any) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else node.op_type


def _skip(graph: _Graph, tensor: str, ops: tuple[str, ...], seen: list[str]) -> str:
    """Follow producers of the listed op types upwards; returns the first tensor not produced by one."""
    while (node := graph.node_of(tensor)) is not None and node.op_type in ops:
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = graph.const(node.input[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                break  # training_mode on (or unknown) is not an identity
        seen.append(_describe(node))
        tensor = node.input[0]
    return tensor


def _linear(graph: _Graph, tensor: str, path: Path) -> LinearHead:
    """W [C, K] and b [K] of the Gemm / MatMul(+Add) producing ``tensor``."""
    node = graph.node_of(tensor)
    if node is None:
        raise OnnxHeadError(path, f"the output {tensor!r} is not computed by any node")
    if node.op_type == "Gemm":
        if graph.attr(node, "transA", 0):
            raise OnnxHeadError(path, f"{_describe(node)} transposes its input (transA=1)")
        w = graph.const(node.input[1])
        if w is None or w.ndim != 2:
            raise OnnxHeadError(path, f"{_describe(node)} has no constant 2-D weight")
        w = w.T if graph.attr(node, "transB", 0) else w
        w = w * float(graph.attr(node, "alpha", 1.0))
        gemm_bias = np.zeros(w.shape[1])
        if len(node.input) > 2 and node.input[2]:
            c = graph.const(node.input[2])
            if c is None:
                raise OnnxHeadError(path, f"{_describe(node)} has a non-constant bias")
            gemm_bias = np.broadcast_to(c, (1, w.shape[1])).reshape(-1) * float(graph.attr(node, "beta", 1.0))
        return LinearHead(node.input[0], w.astype(np.float32), gemm_bias.astype(np.float32), (_describe(node),))
    bias_node: Any = None
    bias: npt.NDArray[Any] | None = None
    if node.op_type == "Add":
        for mine, other in ((0, 1), (1, 0)):
            producer = graph.node_of(node.input[mine])
            value = graph.const(node.input[other])
            if producer is not None and producer.op_type == "MatMul" and value is not None:
                bias_node, bias, node = node, value, producer
                break
        else:
            raise OnnxHeadError(path, f"the classifier ends in {_describe(node)}, which is not a linear layer's "
                                      "bias (MatMul + constant)")
    if node.op_type != "MatMul":
        what = _NONLINEAR_HINTS.get(node.op_type, f"a {node.op_type} node")
        raise OnnxHeadError(path, f"the head is not linear: the classifier output comes from {what} "
                                  f"({_describe(node)}), not from Gemm or MatMul + Add")
    w = graph.const(node.input[1])
    if w is None or w.ndim != 2:
        raise OnnxHeadError(path, f"{_describe(node)} has no constant 2-D weight matrix")
    k = w.shape[1]
    if bias is None:
        b = np.zeros(k)
    else:
        if bias.size not in (1, k) or (bias.ndim > 1 and bias.shape[-1] not in (1, k)):
            raise OnnxHeadError(path, f"the bias of {_describe(bias_node)} has shape {list(bias.shape)}, "
                                      f"expected [{k}]")
        b = np.broadcast_to(bias.reshape(-1), (k,))
    nodes = (_describe(node),) + ((_describe(bias_node),) if bias_node is not None else ())
    return LinearHead(node.input[0], w.astype(np.float32), b.astype(np.float32), nodes)


def _axes(graph: _Graph, node: Any, rank: int) -> tuple[int, ...] | None:
    """ReduceMean's axes, normalised (attribute before opset 18, second input from 18 on)."""
    axes: Any = graph.attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.const(node.input[1])
        if value is None:
            return None
        axes = value.reshape(-1).tolist()
    if axes is None:
        return tuple(range(rank)) if not graph.attr(node, "noop_with_empty_axes", 0) else ()
    return tuple(sorted(int(a) % rank for a in axes))


def _pooling(graph: _Graph, tensor: str, path: Path) -> tuple[str, str, str]:
    """(features tensor, layout, description) of the global average pooling producing ``tensor``."""
    node = graph.node_of(tensor)
    if node is None:
        raise OnnxHeadError(path, f"the linear layer reads the graph input {tensor!r} directly")
    op = node.op_type
    features = node.input[0]
    shape = graph.shape(features)
    if op == "GlobalAveragePool":
        return features, "NCHW", _describe(node)
    if op == "AveragePool":
        kernel = list(graph.attr(node, "kernel_shape", []))
        pads = list(graph.attr(node, "pads", []) or [])
        auto_pad = graph.attr(node, "auto_pad", b"NOTSET")
        if shape is None or len(shape) != 4 or None in shape[2:]:
            raise OnnxHeadError(path, f"{_describe(node)}: the feature map size is unknown, so it cannot be "
                                      "checked that the kernel covers it")
        if kernel != shape[2:] or any(pads) or auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            raise OnnxHeadError(path, f"{_describe(node)} has kernel {kernel} (pads {pads}) on a "
                                      f"{shape[2]}x{shape[3]} map: a local pooling, not a global average")
        return features, "NCHW", _describe(node)
    if op == "ReduceMean":
        rank = len(shape) if shape is not None else None
        if rank is None:
            raise OnnxHeadError(path, f"{_describe(node)}: the rank of its input is unknown")
        axes = _axes(graph, node, rank)
        if rank == 4 and axes in ((2, 3), (1, 2)):
            return features, ("NCHW" if axes == (2, 3) else "NHWC"), _describe(node)
        if rank == 3 and axes in ((1,), (2,)):
            inner = _skip(graph, features, _IDENTITIES, [])
            source = graph.node_of(inner)
            if source is not None and source.op_type in ("Reshape", "Flatten"):
                grid = graph.shape(source.input[0])
                if grid is not None and len(grid) == 4 and shape is not None:
                    if axes == (2,) and grid[1] == shape[1] and _prod(grid[2:]) == shape[2]:
                        return source.input[0], "NCHW", f"{_describe(source)} + {_describe(node)}"
                    if axes == (1,) and grid[3] == shape[2] and _prod(grid[1:3]) == shape[1]:
                        return source.input[0], "NHWC", f"{_describe(source)} + {_describe(node)}"
        raise OnnxHeadError(path, f"{_describe(node)} averages axes {list(axes or ())} of a rank-{rank} tensor, "
                                  "not the two spatial axes of a feature map")
    if op in ("GlobalMaxPool", "MaxPool", "ReduceMax"):
        raise OnnxHeadError(path, f"the head uses max pooling ({_describe(node)}), not average pooling")
    if op in ("Flatten", "Reshape") and shape is not None and len(shape) == 4 and _prod(shape[2:]) != 1:
        raise OnnxHeadError(path, f"the head flattens the feature map ({_describe(node)}) instead of pooling it, "
                                  "so each position has its own weights")
    what = _NONLINEAR_HINTS.get(op, f"a {op} node")
    raise OnnxHeadError(path, f"the linear classifier is fed by {what} ({_describe(node)}), not by a global "
                              "average pooling", _pool_candidates(graph))


def _refuse_flattened_map(graph: _Graph, start: str, stop: str, path: Path) -> None:
    """A Flatten/Reshape of a map with several positions (VGG-style) between pooling and classifier is refused."""
    tensor = start
    while tensor != stop and (node := graph.node_of(tensor)) is not None:
        dims = graph.shape(node.input[0])
        if node.op_type in ("Flatten", "Reshape") and dims is not None and len(dims) == 4:
            nchw, nhwc = _prod(dims[2:]), _prod(dims[1:3])
            if nchw is not None and nhwc is not None and nchw > 1 and nhwc > 1:
                raise OnnxHeadError(path, f"the head flattens the feature map {dims} ({_describe(node)}) instead of "
                                          "pooling it, so each position has its own weights")
        tensor = node.input[0]


def _prod(dims: Sequence[int | None]) -> int | None:
    if any(d is None for d in dims):
        return None
    return int(np.prod([int(d) for d in dims if d is not None]))


def _pool_candidates(graph: _Graph) -> list[str]:
    """Inputs of every pooling-like node, for error messages."""
    return [f"{node.input[0]} ({_describe(node)})" for node in graph.graph.node if node.op_type in _POOLS][:8]


def _ending(graph: _Graph, output: str, path: Path, passed: list[str]) -> tuple[str, str]:
    """("softmax", "log_softmax" or "logits", the logits tensor) at the model's output."""
    tensor = _skip(graph, output, _IDENTITIES, passed)
    node = graph.node_of(tensor)
    ending = "logits"
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        rank = len(graph.shape(tensor) or [0, 0])
        axis = int(graph.attr(node, "axis", -1 if graph.opset >= 13 else 1))
        if rank != 2 or axis % 2 != 1:
            raise OnnxHeadError(path, f"{_describe(node)} is over axis {axis} of a rank-{rank} tensor, "
                                      "expected the class axis of [N, K]")
        ending = "softmax" if node.op_type == "Softmax" else "log_softmax"
        passed.append(_describe(node))
        tensor = _skip(graph, node.input[0], _IDENTITIES, passed)
    return ending, tensor


def detect_graph_head(model: Any, shapes: dict[str, list[int | None]], path: Path, input_layout: str,
                      features: str | None = None, fallback: OnnxHeadError | None = None) -> OnnxGraphHead:
    """The non-linear head chain from the pooled (or flattened) feature map to the logits, or OnnxHeadError."""
    graph = _Graph(model, shapes)
    output = model.graph.output[0].name
    ending, logits = _ending(graph, output, path, [])
    if features is not None and features not in graph.producer:
        raise UnsupportedOnnxModelError(path, f"--features {features!r} is not a tensor computed by the graph")
    return find_onnx_graph_head(graph, logits, output, ending, shapes, input_layout, path, features, fallback,
                                _pool_candidates(graph))


def detect_head(model: Any, shapes: dict[str, list[int | None]], path: Path,
                features: str | None = None) -> DetectedHead:
    """Walk the graph from its output to the pooled features; raise OnnxHeadError saying why not."""
    graph = _Graph(model, shapes)
    output = model.graph.output[0].name
    passed: list[str] = []
    ending, tensor = _ending(graph, output, path, passed)
    linear = _linear(graph, tensor, path)
    pooled = _skip(graph, linear.input, _IDENTITIES + _SHAPE_OPS, passed)
    _refuse_flattened_map(graph, linear.input, pooled, path)
    try:
        found, layout, pooling = _pooling(graph, pooled, path)
    except OnnxHeadError:
        if features is None:
            raise
        found, layout, pooling = "", "", FORCED_FEATURES
    if features is not None and features != found:
        layout = _layout_of(graph, features, linear.weights.shape[0], layout, path)
        found = features
    return DetectedHead(output=output, ending=ending, linear=linear, features=found, features_layout=layout,
                        pooling=pooling, pass_through=tuple(passed))


def _layout_of(graph: _Graph, name: str, channels: int, hint: str, path: Path) -> str:
    """Layout of a user-named features tensor from its inferred shape and the number of channels."""
    if name not in graph.producer:
        raise UnsupportedOnnxModelError(path, f"--features {name!r} is not a tensor computed by the graph")
    shape = graph.shape(name)
    if shape is None or len(shape) != 4:
        raise UnsupportedOnnxModelError(path, f"--features {name!r} has shape {shape}; expected a 4-D feature map")
    nchw, nhwc = shape[1] == channels, shape[3] == channels
    if nchw and nhwc:
        if hint:
            return hint
        raise UnsupportedOnnxModelError(path, f"--features {name!r} has shape {shape}: cannot tell NCHW from NHWC")
    if not (nchw or nhwc):
        raise OnnxHeadError(path, f"--features {name!r} has shape {shape}, but the classifier reads {channels} "
                                  "channels")  # an OnnxHeadError: a non-linear head may still start there
    return "NCHW" if nchw else "NHWC"


# --- loading -------------------------------------------------------------------------------------------


def load_onnx(path: Path) -> Any:
    """Load a model with its external data, refusing data files outside the model's folder."""
    import onnx
    from onnx import external_data_helper

    if not path.is_file():
        raise OnnxModelNotFoundError(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxModelLoadError(path, f"not an ONNX model ({short_reason(exc)})") from None
    base = path.resolve().parent
    uses_external = False
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        uses_external = True
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(base):
            raise OnnxModelLoadError(path, f"tensor {tensor.name!r} points to external data {location!r} outside "
                                           "the model's folder; refused")
        if not target.is_file():
            raise OnnxModelLoadError(path, f"external data file {location!r} is missing")
    if uses_external:
        try:
            external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise OnnxModelLoadError(path, f"cannot read its external data ({short_reason(exc)})") from None
    # Without external data the file was parsed, so it is under protobuf's limit; ByteSize walks every tensor.
    if uses_external and model.ByteSize() > MAX_PROTO_BYTES:
        raise UnsupportedOnnxModelError(path, "the model is larger than 2 GiB (protobuf's limit for one file)")
    return model


def _graph_input(model: Any, path: Path) -> Any:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UnsupportedOnnxModelError(path, f"the model has {len(inputs)} inputs "
                                              f"({', '.join(i.name for i in inputs)}); expected one image input")
    if len(model.graph.output) != 1:
        raise UnsupportedOnnxModelError(path, f"the model has {len(model.graph.output)} outputs; expected one "
                                              "classifier output (logits or probabilities)")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != 1:  # TensorProto.FLOAT
        raise UnsupportedOnnxModelError(path, f"input {inputs[0].name!r} is not float32 (the runtime feeds float32)")
    if len(tensor_type.shape.dim) != 4:
        raise UnsupportedOnnxModelError(path, f"input {inputs[0].name!r} has rank {len(tensor_type.shape.dim)}; "
                                              "expected an image batch [N, 3, H, W] or [N, H, W, 3]")
    return inputs[0]


def _dims(value_info: Any) -> list[int | None]:
    return [int(d.dim_value) if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _input_geometry(dims: list[int | None], layout: str | None, size: tuple[int, int] | None,
                    path: Path) -> tuple[str, int, int]:
    """(layout, height, width) from the input's shape and the options."""
    if layout is None:
        if dims[1] == 3 and dims[3] != 3:
            layout = "NCHW"
        elif dims[3] == 3 and dims[1] != 3:
            layout = "NHWC"
        else:
            raise UnsupportedOnnxModelError(path, f"cannot tell the input layout from its shape {dims}; pass "
                                                  "--layout NCHW or NHWC")
    if layout not in LAYOUTS:
        raise UnsupportedOnnxModelError(path, f"layout must be NCHW or NHWC, got {layout!r}")
    channel, spatial = (dims[1], dims[2:4]) if layout == "NCHW" else (dims[3], dims[1:3])
    if channel not in (3, None):
        raise UnsupportedOnnxModelError(path, f"input shape {dims} has {channel} channels in {layout}; expected 3")
    if size is not None:
        for have, want, axis in zip(spatial, size, ("height", "width"), strict=True):
            if have is not None and have != want:
                raise UnsupportedOnnxModelError(path, f"--size gives {axis} {want} but the model's input is "
                                                      f"fixed at {have}")
        return layout, size[0], size[1]
    if spatial[0] is None or spatial[1] is None:
        raise UnsupportedOnnxModelError(path, f"the input's spatial size is dynamic ({dims}); pass --size H or "
                                              "HxW (the size the model was trained at)")
    return layout, int(spatial[0]), int(spatial[1])


def _infer_shapes(model: Any, input_name: str, layout: str, height: int, width: int) -> dict[str, list[int | None]]:
    """Inferred shapes of every tensor with the input's spatial size pinned (the model itself is not changed)."""
    import onnx

    dims = next(i for i in model.graph.input if i.name == input_name).type.tensor_type.shape.dim
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    saved = [dims[i].SerializeToString() for i in spatial]
    try:
        for axis, value in zip(spatial, (height, width), strict=True):
            dims[axis].Clear()
            dims[axis].dim_value = value
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is a help, not a requirement: parity has the last word
        inferred = None
    finally:
        for axis, data in zip(spatial, saved, strict=True):
            dims[axis].Clear()
            dims[axis].ParseFromString(data)
    shapes: dict[str, list[int | None]] = {}
    if inferred is not None:
        g = inferred.graph
        for info in [*g.value_info, *g.input, *g.output]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
                shapes[info.name] = _dims(info)
    return shapes


# --- extending and verifying -------------------------------------------------------------------------------


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def extend_graph(model: Any, head: DetectedHead | OnnxGraphHead) -> tuple[str, bool]:
    """Add the features output (and a Softmax output for logits); returns (probabilities name, batch made dynamic)."""
    from onnx import TensorProto, helper

    graph = model.graph
    first = _graph_input(model, Path("model"))
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | {
        t.name for t in graph.initializer}
    probabilities = head.output
    if head.ending != "softmax":
        probabilities = _unique(PROBABILITIES_NAME, taken)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        graph.node.append(helper.make_node("Softmax", [head.output], [probabilities],
                                           axis=-1 if opset >= 13 else 1, name=_unique("cam_softmax", taken)))
        graph.output.append(helper.make_tensor_value_info(probabilities, TensorProto.FLOAT, ["batch", None]))
    graph.output.append(helper.make_tensor_value_info(head.features, TensorProto.FLOAT, ["batch", None, None, None]))
    made_dynamic = False
    batch = first.type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value"):
        # A fixed batch (torch.onnx.export's default) is relaxed; the parity run with several images proves it.
        made_dynamic = True
        batch.Clear()
        batch.dim_param = "batch"
        for out in graph.output:
            dims = out.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value"):
                dims[0].Clear()
                dims[0].dim_param = "batch"
        del graph.value_info[:]
    return probabilities, made_dynamic


@dataclass(frozen=True)
class ImportParity:
    """Largest differences measured before writing."""

    samples: int
    seed: int
    probabilities_max_abs: float
    head_reconstruction_max_abs: float
    logits_reconstruction_max_abs: float | None
    tolerances: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        data: dict[str, object] = {
            "samples": self.samples, "seed": self.seed, "probabilities_max_abs": self.probabilities_max_abs,
            "head_reconstruction_max_abs": self.head_reconstruction_max_abs, "tolerances": self.tolerances}
        if self.logits_reconstruction_max_abs is not None:
            data["logits_reconstruction_max_abs"] = self.logits_reconstruction_max_abs
        return data


def _session(model: str | bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing run is reported as one error line, not onnxruntime's log too
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def parity_inputs(prep: Preprocess, layout: str, height: int, width: int, samples: int = PARITY_SAMPLES,
                  seed: int = PARITY_SEED) -> npt.NDArray[np.float32]:
    """Seeded random 0-255 pixels, normalised as the manifest says, in ``layout``."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, (samples, height, width, 3)).astype(np.float32)
    x = ((pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)


def _reference(path: Path, original: str | bytes, output: str, inputs: npt.NDArray[np.float32],
               fixed_batch: bool) -> tuple[str, npt.NDArray[np.float64]]:
    """(input name, the original model's output on ``inputs``)."""
    before = _session(original)
    input_name = before.get_inputs()[0].name
    try:
        if fixed_batch:
            reference = np.concatenate([before.run([output], {input_name: x[None]})[0] for x in inputs])
        else:
            reference = before.run([output], {input_name: inputs})[0]
    except Exception as exc:
        raise UnsupportedOnnxModelError(path, f"onnxruntime cannot run the model ({short_reason(exc)})") from None
    return input_name, np.asarray(reference, dtype=np.float64)


def _run_extended(path: Path, extended: bytes, names: list[str], feeds: dict[str, Any],
                  fixed_batch: bool) -> list[Any]:
    try:
        return list(_session(extended).run(names, feeds))
    except Exception as exc:
        hint = (" with a batch of several images: the graph hard-codes its fixed batch size; re-export with a "
                "dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
                if fixed_batch else "")
        raise UnsupportedOnnxModelError(path, f"onnxruntime cannot run the extended model{hint} "
                                              f"({short_reason(exc)})") from None


def verify(path: Path, original: str | bytes, extended: bytes, head: DetectedHead, probabilities: str,
           inputs: npt.NDArray[np.float32], fixed_batch: bool) -> tuple[ImportParity, list[int]]:
    """Run both graphs; returns the parity report and the features' [h, w, C]; raises ParityError beyond tolerance."""
    input_name, reference = _reference(path, original, head.output, inputs, fixed_batch)
    probs, features = _run_extended(path, extended, [probabilities, head.features], {input_name: inputs},
                                    fixed_batch)
    expected = reference if head.ending == "softmax" else softmax(reference)
    if features.ndim != 4 or probs.ndim != 2:
        raise UnsupportedOnnxModelError(path, f"the features have shape {list(features.shape)} and the "
                                              f"probabilities {list(probs.shape)}; expected 4-D and 2-D")
    nhwc = features.transpose(0, 2, 3, 1) if head.features_layout == "NCHW" else features
    if nhwc.shape[3] != head.linear.weights.shape[0]:
        raise ParityError(f"feature channels ({nhwc.shape[3]}) and classifier rows "
                          f"({head.linear.weights.shape[0]})", float("inf"), 0.0)
    logits = nhwc.astype(np.float64).mean(axis=(1, 2)) @ head.linear.weights.astype(np.float64) + head.linear.bias
    reconstructed = softmax(logits)
    prob_err = float(np.abs(probs.astype(np.float64) - expected).max())
    head_err = float(np.abs(reconstructed - probs).max())
    logit_err = float(np.abs(logits - reference).max()) if head.ending == "logits" else None
    report = ImportParity(samples=len(inputs), seed=PARITY_SEED, probabilities_max_abs=prob_err,
                          head_reconstruction_max_abs=head_err, logits_reconstruction_max_abs=logit_err,
                          tolerances={"probabilities_atol": PROBABILITY_ATOL, "head_atol": HEAD_ATOL})
    if not prob_err <= PROBABILITY_ATOL:
        raise ParityError("the extended graph's probabilities and the original model's (softmaxed) output",
                          prob_err, PROBABILITY_ATOL)
    if not head_err <= HEAD_ATOL:
        raise ParityError(f"softmax(mean_hw({head.features})·W + b) and the model's probabilities (wrong feature "
                          "tensor?)", head_err, HEAD_ATOL)
    return report, [int(nhwc.shape[1]), int(nhwc.shape[2]), int(nhwc.shape[3])]


GRADIENT_FD_RTOL = 1e-3
"""Max |finite difference − gradient.onnx| along a direction, relative to |gradient|·step. The differences are
central, of head.onnx evaluated in float64 by onnx's reference evaluator (an implementation independent of
onnxruntime), the best of steps 1e-3, 1e-5 and 1e-7 of |features| (truncation shrinks with the step, rounding
grows, a kink crossed costs once); a wrong rule is off by O(1) at every step. Not tighter: float32 gradients of a
saturated unit are themselves only that exact (σ′(x) ≈ e^−|x| amplifies x's rounding; measured 5.7e-4 on a
sigmoid output at |x| up to 10 in the tests), typical heads measure 1e-7. The tests compare with torch autograd
at 1e-4."""
FD_STEPS = (1e-3, 1e-5, 1e-7)


def _float64_evaluator(head_bytes: bytes) -> Any:
    """onnx's reference evaluator on head.onnx with float64 weights, inputs and outputs."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load_from_string(head_bytes)
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    return ReferenceEvaluator(model)


def _with_outputs(model_bytes: bytes, names: Sequence[str]) -> bytes:
    """The model with ``names`` added as float outputs (to measure the head's intermediate shapes)."""
    import onnx
    from onnx import TensorProto, helper

    probe = onnx.load_from_string(model_bytes)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in dict.fromkeys(names) if n not in present)
    return bytes(probe.SerializeToString())


def _probability_directions(p: npt.NDArray[np.float64], c: int) -> npt.NDArray[np.float32]:
    """The logit direction whose gradient is ∂p_c: p_c (e_c − p), [N, 1, K]."""
    onehot = np.zeros_like(p)
    onehot[:, c] = 1.0
    return (p[:, c:c + 1] * (onehot - p))[:, None, :].astype(np.float32)


def verify_graph(path: Path, original: str | bytes, extended: bytes, head: OnnxGraphHead, probabilities: str,
                 inputs: npt.NDArray[np.float32], fixed_batch: bool, source: Any, opset: int
                 ) -> tuple[dict[str, Any], list[int], tuple[bytes, bytes], int]:
    """Build and check head.onnx and gradient.onnx: (parity report, features [h, w, C], graphs, K).

    Checks the extended model against the original, head.onnx(features) against the model's probabilities and
    gradient.onnx against central finite differences of head.onnx for three classes and both scores."""
    input_name, reference = _reference(path, original, head.output, inputs, fixed_batch)
    tensors = head.tensors
    values = _run_extended(path, _with_outputs(extended, tensors), [probabilities, *tensors],
                           {input_name: inputs}, fixed_batch)
    probs = np.asarray(values[0], np.float64)
    measured: Shapes = {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(tensors, values[1:], strict=True)}
    features = np.asarray(values[1], np.float32)
    expected = reference if head.ending == "softmax" else softmax(reference)
    prob_err = float(np.abs(probs - expected).max())
    if not prob_err <= PROBABILITY_ATOL:
        raise ParityError("the extended graph's probabilities and the original model's (softmaxed) output",
                          prob_err, PROBABILITY_ATOL)
    if features.ndim != 4:
        raise UnsupportedOnnxModelError(path, f"the features {head.features!r} have shape {list(features.shape)}; "
                                              "expected a 4-D feature map")
    graphs = build_head_graphs(head, measured, source, opset, path)
    head_session, gradient_session = _session(graphs[0]), _session(graphs[1])
    reference64 = _float64_evaluator(graphs[0])

    def run_head(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        z, q = head_session.run(["logits", "probabilities"], {"features": x})
        return np.asarray(z, np.float64), np.asarray(q, np.float64)

    def run_head64(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        z, q = reference64.run(["logits", "probabilities"], {"features": x})
        return np.asarray(z, np.float64), np.asarray(q, np.float64)

    def gradient(x: npt.NDArray[np.float32], directions: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return np.asarray(gradient_session.run(["gradients"], {"features": x, "directions": directions})[0][:, 0],
                          np.float64)

    logits, head_probs = run_head(features)
    head_err = float(np.abs(head_probs - probs).max())
    logit_err = float(np.abs(logits - reference).max()) if head.ending == "logits" else None
    if not head_err <= HEAD_ATOL:
        raise ParityError("head.onnx's probabilities and the model's", head_err, HEAD_ATOL)
    k = int(logits.shape[1])
    order = np.argsort(-head_probs[0])
    classes = list(dict.fromkeys(int(c) for c in (order[0], order[min(1, k - 1)], order[-1])))
    n = len(features)
    flat = features.reshape(n, -1).astype(np.float64)
    rng = np.random.default_rng(PARITY_SEED)
    fd_err = {"logit": 0.0, "probability": 0.0}
    for c in classes:
        onehot = np.zeros((n, 1, k), np.float32)
        onehot[:, 0, c] = 1.0
        logit_grad = gradient(features, onehot).reshape(n, -1)
        for score, directions in (("logit", onehot), ("probability", _probability_directions(head_probs, c))):
            grad = logit_grad if score == "logit" else gradient(features, directions).reshape(n, -1)
            norms = np.linalg.norm(grad, axis=1)
            scale = np.maximum(norms, head_probs[:, c] * np.linalg.norm(logit_grad, axis=1) if score == "probability"
                               else norms)
            scale = np.maximum(scale, 1e-12)
            random = rng.choice([-1.0, 1.0], size=flat.shape)
            for u in (grad / np.maximum(norms, 1e-30)[:, None], random / np.sqrt(flat.shape[1])):
                best = np.full(n, np.inf)
                for relative in FD_STEPS:  # truncation error shrinks with the step, rounding grows
                    step = relative * np.linalg.norm(flat, axis=1, keepdims=True)
                    pick = 0 if score == "logit" else 1
                    plus = run_head64((flat + step * u).reshape(features.shape))[pick][:, c]
                    minus = run_head64((flat - step * u).reshape(features.shape))[pick][:, c]
                    fd = (plus - minus) / (2 * step[:, 0])
                    err = np.abs(fd - (grad * u).sum(axis=1)) / scale
                    best = np.minimum(best, err)
                fd_err[score] = max(fd_err[score], float(best.max()))
    for score, err in fd_err.items():
        if not err <= GRADIENT_FD_RTOL:
            raise ParityError(f"gradient.onnx's {score} gradients and finite differences of head.onnx", err,
                              GRADIENT_FD_RTOL)
    report: dict[str, Any] = {
        "samples": n, "seed": PARITY_SEED, "probabilities_max_abs": prob_err,
        "head_graphs": {"classes": classes, "scores": ["logit", "probability"],
                        "head_probabilities_max_abs": head_err, "gradient_fd_max_rel": fd_err,
                        "tolerances": {"gradient_fd_rtol": GRADIENT_FD_RTOL, "head_probabilities_atol": HEAD_ATOL}},
        "tolerances": {"probabilities_atol": PROBABILITY_ATOL}}
    if logit_err is not None:
        report["logits_reconstruction_max_abs"] = logit_err
    nhwc = features.transpose(0, 2, 3, 1) if head.features_layout == "NCHW" else features
    return report, [int(nhwc.shape[1]), int(nhwc.shape[2]), int(nhwc.shape[3])], graphs, k


# --- the public function -------------------------------------------------------------------------------


def resolve_preprocess(preset: str = "torchvision", *, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, color_order: str | None = None,
                       resize: str | None = None) -> Preprocess:
    """A preset with any explicitly given field replaced."""
    from .errors import OnnxImportError

    base = PRESETS.get(preset.lower())
    if base is None:
        raise OnnxImportError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} "
                              "or give --mean/--std/--color-order")
    if color_order is not None and color_order.upper() not in COLOR_ORDERS:
        raise OnnxImportError(f"color order must be RGB or BGR, got {color_order!r}")
    if resize is not None and resize not in RESIZE_MODES:
        raise OnnxImportError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and (len(values) != 3 or not all(np.isfinite(v) for v in values)):
            raise OnnxImportError(f"{label} needs 3 finite numbers, got {list(values)}")
    if std is not None and min(std) <= 0:
        raise OnnxImportError(f"std must be positive, got {list(std)}")
    return Preprocess(
        color_order=(color_order.upper() if color_order else base.color_order),  # type: ignore[arg-type]
        mean=tuple(float(v) for v in mean) if mean is not None else base.mean,  # type: ignore[arg-type]
        std=tuple(float(v) for v in std) if std is not None else base.std,  # type: ignore[arg-type]
        resize=resize or base.resize)  # type: ignore[arg-type]


def import_onnx(model_path: str | Path, output: str | Path, *, features: str | None = None,
                preset: str = "torchvision", mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, color_order: str | None = None, layout: str | None = None,
                size: int | tuple[int, int] | None = None, resize: str | None = None,
                labels: str | Path | None = None, name: str | None = None, force: bool = False,
                head_kind: str = "auto") -> Path:
    """Import an ONNX classifier into a verified model folder at ``output``; returns ``output``.

    ``head_kind``: "auto" (GAP → linear heads with the closed forms, other heads as head/gradient graphs),
    "linear" (refuse anything else) or "graph" (head graphs even for a linear head).
    Nothing is written unless the head is recognised and both parity checks pass.
    """
    if head_kind not in HEAD_KINDS:
        from .errors import OnnxImportError

        raise OnnxImportError(f"head kind must be one of {', '.join(HEAD_KINDS)}, got {head_kind!r}")
    path = Path(model_path)
    output = Path(output)
    if output.exists() and not force:
        raise OutputExistsError(output)
    prep = resolve_preprocess(preset, mean=mean, std=std, color_order=color_order, resize=resize)
    label_list = read_labels_arg(labels)
    model = load_onnx(path)
    graph_input = _graph_input(model, path)
    pinned = (size, size) if isinstance(size, int) else size
    in_layout, height, width = _input_geometry(_dims(graph_input), layout.upper() if layout else None, pinned, path)
    shapes = _infer_shapes(model, graph_input.name, in_layout, height, width)
    graph_head: OnnxGraphHead | None = None
    head: DetectedHead | OnnxGraphHead
    if head_kind == "graph":
        head = graph_head = detect_graph_head(model, shapes, path, in_layout, features)
    else:
        try:
            head = detect_head(model, shapes, path, features)
        except OnnxHeadError as linear_error:
            if head_kind == "linear":
                raise
            head = graph_head = detect_graph_head(model, shapes, path, in_layout, features, linear_error)
    num_classes = int(head.linear.weights.shape[1]) if isinstance(head, DetectedHead) else None
    if label_list is None and num_classes == 1000:
        label_list = imagenet_labels()
    if label_list is not None and num_classes is not None and len(label_list) != num_classes:
        raise LabelsError(labels or "(ImageNet labels)", f"has {len(label_list)} lines but the model has "
                                                         f"{num_classes} classes")
    opset = _Graph(model, {}).opset
    producer = f"{model.producer_name} {model.producer_version}".strip()
    probabilities, made_dynamic = extend_graph(model, head)
    extended = model.SerializeToString()
    inputs = parity_inputs(prep, in_layout, height, width)
    import onnx
    import onnxruntime

    meta: dict[str, Any] = {
        "source": "onnx import", "model_file": path.name, "model_sha256": sha256_file(path),
        "producer": producer or None, "opset": opset, "preset": preset.lower(), "feature_layer": head.features,
        "pooling": head.pooling}
    common = {"model_ending": head.ending, "softmax_appended": head.ending != "softmax",
              "batch_made_dynamic": made_dynamic,
              "tool_versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}}
    spec = InputSpec(graph_input.name, in_layout, height, width)  # type: ignore[arg-type]
    outputs = OutputSpec(probabilities, head.features, head.features_layout)  # type: ignore[arg-type]
    if graph_head is not None:
        report, feature_shape, graphs, k = verify_graph(path, str(path), extended, graph_head, probabilities,
                                                        inputs, made_dynamic, model, opset)
        if label_list is None and k == 1000:
            label_list = imagenet_labels()
        if label_list is not None and len(label_list) != k:
            raise LabelsError(labels or "(ImageNet labels)", f"has {len(label_list)} lines but the model has "
                                                             f"{k} classes")
        meta.update({"head_layers": graph_head.describe(), "feature_shape": feature_shape, **common,
                     "parity": report})
        write_model_folder(output, model=extended, weights=None, bias=None, labels=label_list,
                           name=name or path.stem, input_spec=spec, preprocess=prep, outputs=outputs,
                           provenance=meta, force=force, graph_head=graphs, head_spec=HeadSpec(), num_classes=k)
        return output
    assert isinstance(head, DetectedHead)
    try:
        parity, feature_shape = verify(path, str(path), extended, head, probabilities, inputs, made_dynamic)
    except ParityError:
        if head_kind != "auto" or head.pooling != FORCED_FEATURES:
            raise
        # --features past a non-linear head: the closed form does not hold there, the graph head may
        return import_onnx(path, output, features=features, preset=preset, mean=mean, std=std,
                           color_order=color_order, layout=layout, size=size, resize=resize, labels=labels,
                           name=name, force=force, head_kind="graph")
    meta.update({"dense_layer": " + ".join(head.linear.nodes), "feature_shape": feature_shape, **common,
                 "parity": parity.to_dict()})
    write_model_folder(
        output, model=extended, weights=head.linear.weights, bias=head.linear.bias, labels=label_list,
        name=name or path.stem, input_spec=spec, preprocess=prep, outputs=outputs, provenance=meta, force=force)
    return output
