"""Non-linear heads of imported ONNX classifiers: ``head.onnx`` and ``gradient.onnx`` in plain ONNX ops.

``camr import`` keeps the closed forms for GAP → linear heads. Any other head (MobileNetV3's Gemm → HardSwish →
Gemm, VGG's Flatten → Gemm → Relu → Gemm → Relu → Gemm, a user's hidden layer) is cut out of the graph: the chain
of single-input nodes between the feature map and the logits. ``head.onnx`` is that chain copied node for node;
``gradient.onnx`` is the same forward chain followed by its reverse-mode derivative, written by one small rule per
op with forward ONNX ops only (Reshape, Expand, MatMul, Mul, Where, Greater/Less), so onnxruntime alone runs it:
onnxruntime-training stopped at 1.19, replaces onnxruntime and its gradient ops are Microsoft-specific.
The cotangent carries a target axis T after the batch axis: ``directions [N, T, K]`` → ``gradients [N, T, *features]``.
Ops outside :data:`SUPPORTED` (and branches: a node with two non-constant inputs) are refused with their name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import OnnxHeadError

FEATURES_INPUT = "features"
DIRECTIONS_INPUT = "directions"
LOGITS_OUTPUT = "logits"
PROBABILITIES_OUTPUT = "probabilities"
GRADIENTS_OUTPUT = "gradients"
MAX_CHAIN = 64
"""Longest head (nodes between the features and the logits) that is searched."""
MIN_OPSET = 11

MAX_POOLS = ("GlobalMaxPool", "MaxPool", "ReduceMax")
GLOBAL_POOLS = ("GlobalAveragePool", "AveragePool", "ReduceMean")
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")
ELEMENTWISE = ("Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Clip")
SUPPORTED = (*GLOBAL_POOLS, *SHAPE_OPS, *ELEMENTWISE, "Identity", "Dropout", "Gemm", "MatMul", "Conv", "Add", "Sub",
             "Mul", "Div")
"""Ops a graph head may consist of (Add/Sub/Mul/Div with a constant operand only; Div by a constant; Conv 1×1)."""

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Step:
    """One head node: which input is on the chain, and the values of its constant inputs."""

    node: Any
    act: int
    consts: dict[int, npt.NDArray[Any]]

    @property
    def x(self) -> str:
        """The node's input on the chain."""
        return str(self.node.input[self.act])

    @property
    def y(self) -> str:
        """The node's output on the chain."""
        return str(self.node.output[0])


@dataclass(frozen=True)
class OnnxGraphHead:
    """A non-linear head: features → steps (in forward order) → logits (→ the model's ending)."""

    output: str
    ending: str  # "softmax", "logits" or "log_softmax"
    logits: str
    features: str
    features_layout: str
    steps: tuple[Step, ...]
    pooling: str

    def describe(self) -> list[str]:
        """The head's nodes as "OpType 'name'" strings, for the manifest."""
        return [_describe(step.node) for step in self.steps]

    @property
    def tensors(self) -> list[str]:
        """Every tensor on the chain, features first, logits last."""
        return [self.features, *(step.y for step in self.steps)]


def _describe(node: Any) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else str(node.op_type)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _step(graph: Any, node: Any, path: Path) -> Step:
    """The node as a head step, or OnnxHeadError naming it when the gradient graph cannot differentiate it."""
    op = node.op_type
    if op not in SUPPORTED:
        raise OnnxHeadError(path, f"the head contains {_describe(node)}, which the gradient graph does not "
                                  f"support (supported: {', '.join(SUPPORTED)})")
    consts: dict[int, npt.NDArray[Any]] = {}
    variable: list[int] = []
    for i, name in enumerate(node.input):
        if not name:
            continue
        value = graph.const(name)
        if value is None:
            variable.append(i)
        else:
            consts[i] = np.asarray(value)
    if op == "Reshape" and variable == [0, 1]:
        variable = [0]  # a shape computed from the input (x.view(x.size(0), -1)): replaced by the measured shape
    if len(variable) != 1:
        raise OnnxHeadError(path, f"{_describe(node)} in the head has {len(variable)} non-constant inputs (a "
                                  "branch or a product of two tensors); graph heads must be one chain of nodes")
    act = variable[0]
    if act != 0 and op not in ("Add", "Sub", "Mul"):
        raise OnnxHeadError(path, f"{_describe(node)} takes the features path as input {act}; only input 0 is "
                                  "supported for this op")
    if op == "Gemm":
        if _attr(node, "transA", 0):
            raise OnnxHeadError(path, f"{_describe(node)} transposes its input (transA=1)")
        if 1 not in consts or consts[1].ndim != 2:
            raise OnnxHeadError(path, f"{_describe(node)} has no constant 2-D weight")
    if op == "Conv":
        weight = consts.get(1)
        if (weight is None or weight.ndim < 3 or any(d != 1 for d in weight.shape[2:]) or _attr(node, "group", 1) != 1
                or any(v != 1 for v in _attr(node, "strides", []) or []) or any(_attr(node, "pads", []) or [])
                or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID")):
            raise OnnxHeadError(path, f"{_describe(node)} in the head is not a 1×1 convolution with constant "
                                      "weights, stride 1, no padding and one group (only those are supported)")
    if op == "MatMul" and (1 not in consts or consts[1].ndim != 2):
        raise OnnxHeadError(path, f"{_describe(node)} has no constant 2-D weight")
    if op == "Dropout" and 2 in consts and bool(consts[2].reshape(-1)[0]):
        raise OnnxHeadError(path, f"{_describe(node)} runs in training mode")
    if op == "Transpose" and (_attr(node, "perm") is None or int(_attr(node, "perm")[0]) != 0):
        raise OnnxHeadError(path, f"{_describe(node)} moves the batch axis")
    return Step(node, act, consts)


def _global_average_pool(node: Any, shape: list[int | None] | None) -> bool:
    """An AveragePool whose kernel covers the whole (known) map, without padding."""
    kernel = list(_attr(node, "kernel_shape", []))
    return (shape is not None and len(shape) >= 3 and None not in shape[2:] and kernel == list(shape[2:])
            and not any(_attr(node, "pads", []) or []))


def _spatial_map(dims: list[int | None] | None) -> bool:
    """A 4-D map with more than one position in either layout (a 1×1 map after a pooling is not the features)."""
    if dims is None or len(dims) != 4:
        return False
    return all(d is None or d > 1 for d in (np.prod([d or 2 for d in dims[2:]]), np.prod([d or 2 for d in dims[1:3]])))


def _reduced_axes(step: Step, rank: int, opset: int) -> tuple[int, ...]:
    node = step.node
    if node.op_type in ("GlobalAveragePool", "AveragePool"):
        return tuple(range(2, rank))
    axes: Any = _attr(node, "axes")
    if axes is None and 1 in step.consts:
        axes = step.consts[1].reshape(-1).tolist()
    if axes is None:
        return () if _attr(node, "noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(int(a) % rank for a in axes))


def find_onnx_graph_head(graph: Any, logits: str, output: str, ending: str, inferred: dict[str, list[int | None]],
                         input_layout: str, path: Path, features: str | None = None,
                         fallback: OnnxHeadError | None = None, candidates: list[str] | None = None
                         ) -> OnnxGraphHead:
    """Walk back from the logits along supported single-input nodes to the feature map.

    The features are the input of the global average pooling nearest to the output (a ReduceMean of a
    Reshape-flattened map: the Reshape's 4-D input) or, without one, the 4-D input of the nearest Flatten/Reshape
    (VGG); ``features`` names the tensor instead. ``inferred``: shapes from shape inference, where known.
    ``fallback`` (the linear detector's reason) is raised instead when no feature map is reached or the path
    stops at a pooling that is not a global average (max or local pooling: its reason is the better one).
    """
    ranks = {name: len(dims) for name, dims in inferred.items()}
    chain: list[Step] = []
    tensor = logits
    cut: int | None = None
    pooled_3d = False
    layout = input_layout
    pooling = "(given with --features)"
    stop: OnnxHeadError | None = None
    for _ in range(MAX_CHAIN):
        if features is not None and tensor == features:
            cut = len(chain)
            break
        node = graph.node_of(tensor)
        if node is None:
            break
        if node.op_type == "AveragePool" and not _global_average_pool(node, inferred.get(node.input[0])):
            stop = fallback or OnnxHeadError(path, f"{_describe(node)} is a local pooling, not a global average")
            break
        if node.op_type in MAX_POOLS:
            stop = fallback or OnnxHeadError(path, f"the head uses max pooling ({_describe(node)})")
            break
        try:
            step = _step(graph, node, path)
        except OnnxHeadError as exc:
            stop = OnnxHeadError(path, exc.reason, candidates)
            break
        chain.append(step)
        rank = ranks.get(step.x)
        if features is None and node.op_type in GLOBAL_POOLS and rank is not None:
            axes = _reduced_axes(step, rank, graph.opset)
            if rank == 4 and axes in ((2, 3), (1, 2)):
                cut, layout, pooling = len(chain), ("NCHW" if axes == (2, 3) else "NHWC"), _describe(node)
                tensor = step.x
                break
            if rank == 3 and axes in ((1,), (2,)):
                pooled_3d, layout = True, ("NCHW" if axes == (2,) else "NHWC")
        if features is None and pooled_3d and node.op_type in ("Reshape", "Flatten") and rank == 4:
            cut, pooling = len(chain), _describe(node) + " + ReduceMean"
            tensor = step.x
            break
        tensor = step.x
    if cut is None and features is None:
        flat = next((i for i, s in enumerate(chain) if s.node.op_type in ("Flatten", "Reshape")
                     and _spatial_map(inferred.get(s.x))), None)
        if flat is not None:
            cut, pooling, tensor = flat + 1, _describe(chain[flat].node) + " (no pooling)", chain[flat].x
    if cut is None:
        if stop is not None:
            raise stop
        if fallback is not None:
            raise fallback
        where = f"--features {features!r} is not on the path from the output" if features else \
            "no global average pooling or flattening of a 4-D feature map on the path from the output"
        raise OnnxHeadError(path, where)
    steps = tuple(reversed(chain[:cut]))
    if not steps:
        raise OnnxHeadError(path, f"--features {features!r} is the classifier's output itself")
    return OnnxGraphHead(output=output, ending=ending, logits=logits, features=tensor, features_layout=layout,
                         steps=steps, pooling=pooling)


class _Builder:
    """Nodes and initializers of one graph, with fresh names."""

    def __init__(self, prefix: str) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.prefix = prefix
        self.count = 0
        self.shared: dict[tuple[int, int], str] = {}

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, value: npt.ArrayLike, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def f32(self, value: float) -> str:
        return self.const(np.asarray(value, np.float32), "k")

    def op(self, op_type: str, inputs: list[str], hint: str = "t", **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh("n"), **attrs))
        return out


def _forward(b: _Builder, head: OnnxGraphHead, shapes: Shapes) -> dict[str, str]:
    """Copy the head's nodes into ``b`` (features input named FEATURES_INPUT); returns original → new names."""
    from onnx import helper, numpy_helper

    names = {head.features: FEATURES_INPUT}
    for i, step in enumerate(head.steps):
        node = step.node
        inputs: list[str] = []
        for j, name in enumerate(node.input):
            if j == step.act:
                inputs.append(names[name])
            elif not name:
                inputs.append("")
            elif j in step.consts:
                key = (i, j)
                if key not in b.shared:
                    b.shared[key] = b.fresh(f"w{i}")
                    b.initializers.append(numpy_helper.from_array(step.consts[j], b.shared[key]))
                inputs.append(b.shared[key])
            else:  # a Reshape whose target shape is computed from its input: the measured shape, batch inferred
                inputs.append(b.const(np.asarray([-1, *shapes[step.y][1:]], np.int64), "shape"))
        out = b.fresh(f"h{i}")
        copy = helper.make_node(node.op_type, inputs, [out], name=b.fresh(node.op_type))
        copy.attribute.extend(node.attribute)
        if node.domain:
            copy.domain = node.domain
        b.nodes.append(copy)
        names[step.y] = out
    return names


def _per_sample(b: _Builder, value: str, shape: tuple[int, ...]) -> str:
    """[N, *shape] → [N, 1, *shape], broadcastable against a cotangent [N, T, *shape]."""
    return b.op("Reshape", [value, b.const(np.asarray([0, 1, *shape], np.int64), "shape")])


def _check_broadcast(step: Step, value: npt.NDArray[Any], full: tuple[int, ...], path: Path) -> None:
    if (value.ndim > len(full) or (value.ndim == len(full) and value.shape[0] != 1)
            or np.broadcast_shapes(full, value.shape) != full):
        raise OnnxHeadError(path, f"{_describe(step.node)} broadcasts its input {list(full)} with a constant of "
                                  f"shape {list(value.shape)}; only constants that keep the input's shape and do "
                                  "not vary over the batch are supported")


def _aligned(value: npt.NDArray[Any], rank: int) -> npt.NDArray[Any]:
    """A constant broadcast against [N, *s] made broadcastable against [N, T, *s]."""
    if value.ndim == rank:
        return value.reshape(value.shape[0], 1, *value.shape[1:])
    return value


def _backward(b: _Builder, step: Step, index: int, g: str, names: dict[str, str], shapes: Shapes,
              opset: int, path: Path) -> str:
    """The cotangent of the step's input [N, T, *x] from that of its output [N, T, *y]."""
    node, op = step.node, step.node.op_type
    x_full, y_full = shapes[step.x], shapes[step.y]
    x_shape = x_full[1:]
    x, y = names[step.x], names[step.y]
    if op in ("Identity", "Dropout"):
        return g
    if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"):
        if not y_full or y_full[0] != x_full[0]:
            raise OnnxHeadError(path, f"{_describe(node)} changes the batch axis ({list(x_full)} → {list(y_full)})")
        if op == "Transpose":
            perm = [int(p) for p in _attr(node, "perm")]
            inverse = [perm.index(k) for k in range(len(perm))]
            return b.op("Transpose", [g], perm=[0, 1, *(p + 1 for p in inverse[1:])])
        return b.op("Reshape", [g, b.const(np.asarray([0, 0, *x_shape], np.int64), "shape")])
    if op == "Gemm":
        weight = b.shared[(index, 1)]
        if not _attr(node, "transB", 0):
            weight = b.op("Transpose", [weight])
        out = b.op("MatMul", [g, weight])
        alpha = float(_attr(node, "alpha", 1.0))
        return out if alpha == 1.0 else b.op("Mul", [out, b.f32(alpha)])
    if op == "MatMul":
        return b.op("MatMul", [g, b.op("Transpose", [b.shared[(index, 1)]])])
    if op == "Conv":  # 1×1: a matrix product over the channel axis at every position
        kernel = step.consts[1]
        rank = len(x_full) + 1  # the cotangent's rank
        moved = b.op("Transpose", [g], perm=[0, 1, *range(3, rank), 2])
        matrix = kernel.reshape(kernel.shape[0], kernel.shape[1]).astype(np.float32)
        product = b.op("MatMul", [moved, b.const(matrix)])
        return b.op("Transpose", [product], perm=[0, 1, rank - 1, *range(2, rank - 1)])
    if op in ("Add", "Sub", "Mul", "Div"):
        other = step.consts[1 - step.act]
        _check_broadcast(step, other, x_full, path)
        if op == "Add" or (op == "Sub" and step.act == 0):
            return g
        if op == "Sub":
            return b.op("Neg", [g])
        factor = other.astype(np.float64) if op == "Mul" else 1.0 / other.astype(np.float64)
        return b.op("Mul", [g, b.const(_aligned(factor.astype(np.float32), len(x_full)))])
    if op in GLOBAL_POOLS:
        axes = _reduced_axes(step, len(x_full), opset)
        if not axes or 0 in axes:
            raise OnnxHeadError(path, f"{_describe(node)} averages axes {list(axes)} of {list(x_full)}: the batch "
                                      "axis or nothing")
        if op == "AveragePool" and (any(_attr(node, "pads", []) or []) or list(y_full[2:]) != [1] * (len(y_full) - 2)):
            raise OnnxHeadError(path, f"{_describe(node)} is a local pooling ({list(x_full)} → {list(y_full)})")
        kept = tuple(1 if a + 1 in axes else d for a, d in enumerate(x_shape))
        count = int(np.prod([x_full[a] for a in axes]))
        g = b.op("Reshape", [g, b.const(np.asarray([0, 0, *kept], np.int64), "shape")])
        g = b.op("Expand", [g, b.const(np.asarray([1, 1, *x_shape], np.int64), "shape")])
        return b.op("Mul", [g, b.f32(1.0 / count)])
    zero, one = b.f32(0.0), b.f32(1.0)
    if op == "Relu":
        d = b.op("Where", [b.op("Greater", [x, zero]), one, zero])
    elif op == "LeakyRelu":
        d = b.op("Where", [b.op("Greater", [x, zero]), one, b.f32(float(_attr(node, "alpha", 0.01)))])
    elif op == "Sigmoid":
        d = b.op("Mul", [y, b.op("Sigmoid", [b.op("Neg", [x])])])  # σ(x)σ(−x): 1 − σ(x) cancels in float32
    elif op == "HardSigmoid":
        alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
        u = b.op("Add", [b.op("Mul", [x, b.f32(alpha)]), b.f32(beta)])
        inside = b.op("And", [b.op("Greater", [u, zero]), b.op("Less", [u, one])])
        d = b.op("Where", [inside, b.f32(alpha), zero])
    elif op == "HardSwish":  # x·hardsigmoid(x) with alpha 1/6, beta 1/2: slope x/3 + 1/2 on (-3, 3)
        ramp = b.op("Add", [b.op("Mul", [x, b.f32(1.0 / 3.0)]), b.f32(0.5)])
        d = b.op("Where", [b.op("Less", [x, b.f32(-3.0)]), zero,
                           b.op("Where", [b.op("Greater", [x, b.f32(3.0)]), one, ramp])])
    elif op == "Clip":
        low = step.consts.get(1, _attr(node, "min"))
        high = step.consts.get(2, _attr(node, "max"))
        inside = None
        for bound, compare in ((low, "Greater"), (high, "Less")):
            if bound is not None:
                test = b.op(compare, [x, b.f32(float(np.asarray(bound).reshape(-1)[0]))])
                inside = test if inside is None else b.op("And", [inside, test])
        if inside is None:
            return g
        d = b.op("Where", [inside, one, zero])
    else:  # pragma: no cover - _step refuses everything else
        raise OnnxHeadError(path, f"no gradient rule for {_describe(node)}")
    return b.op("Mul", [g, _per_sample(b, d, x_shape)])


def _model(b: _Builder, inputs: list[Any], outputs: list[Any], name: str, source: Any) -> Any:
    from onnx import helper

    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=list(source.opset_import), producer_name="cam-runtime import")
    model.ir_version = source.ir_version
    return model


def build_head_graphs(head: OnnxGraphHead, shapes: Shapes, source: Any, opset: int,
                      path: Path) -> tuple[bytes, bytes]:
    """(head.onnx, gradient.onnx) serialized. ``shapes``: measured shapes [N, ...] of every chain tensor."""
    from onnx import TensorProto, helper

    from .onnx_graphs import prune

    if opset < MIN_OPSET:
        raise OnnxHeadError(path, f"the model uses opset {opset}; graph heads need opset {MIN_OPSET} or later")
    logits_shape = shapes[head.logits]
    if len(logits_shape) != 2:
        raise OnnxHeadError(path, f"the logits have shape {list(logits_shape)}, expected [N, K]")
    k = int(logits_shape[1])
    feature_dims = list(shapes[head.features][1:])
    features_info = helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.FLOAT, ["batch", *feature_dims])

    head_b = _Builder("head/")
    names = _forward(head_b, head, shapes)
    head_b.nodes.append(helper.make_node("Identity", [names[head.logits]], [LOGITS_OUTPUT], name="head/logits"))
    head_b.nodes.append(helper.make_node("Softmax", [LOGITS_OUTPUT], [PROBABILITIES_OUTPUT], name="head/softmax",
                                         axis=-1 if opset >= 13 else 1))
    head_model = _model(head_b, [features_info], [
        helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["batch", k]),
        helper.make_tensor_value_info(PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["batch", k])], "head", source)

    grad_b = _Builder("grad/")
    names = _forward(grad_b, head, shapes)
    g = DIRECTIONS_INPUT
    for index in range(len(head.steps) - 1, -1, -1):
        g = _backward(grad_b, head.steps[index], index, g, names, shapes, opset, path)
    grad_b.nodes.append(helper.make_node("Identity", [g], [GRADIENTS_OUTPUT], name="grad/gradients"))
    gradient_model = _model(grad_b, [
        features_info, helper.make_tensor_value_info(DIRECTIONS_INPUT, TensorProto.FLOAT, ["batch", "targets", k])],
        [helper.make_tensor_value_info(GRADIENTS_OUTPUT, TensorProto.FLOAT, ["batch", "targets", *feature_dims])],
        "gradient", source)
    prune(gradient_model.graph)
    return head_model.SerializeToString(), gradient_model.SerializeToString()
