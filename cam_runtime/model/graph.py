"""Checks of a folder's ONNX graphs before any onnxruntime session exists: operators, tensor sizes, external data.

A model folder from elsewhere is untrusted input even when its checksums match (they prove only that the files
are the ones the manifest names). onnxruntime allocates what a graph asks for and runs loops as long as they
say, so the graph is read with the ``onnx`` package first (without its external data) and refused when:

- it uses an operator outside :data:`ALLOWED_OPS`, the operators of CNN classifiers and of their exported head
  and gradient graphs (control flow, sequences, random generators, strings, custom domains are not), unless the
  caller trusts the graph (``trust_graph=True``, ``--trust-model-graph``);
- ONNX shape inference, run with the folder's fixed input shape at batch 1, finds a tensor whose static size is
  above :data:`MAX_TENSOR_BYTES` (``ConstantOfShape``/``Expand`` to gigabytes), or a manifest output with a zero
  dimension; the trust flag does not lift this;
- a tensor's external data is not a file inside the folder listed (and so verified) in the manifest's sha256,
  or its offset/length reach past that file, whatever onnxruntime's own checks would do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    ExternalDataError,
    GraphCheckError,
    OnnxMissingError,
    TensorBudgetError,
    UnsafePathError,
    UntrustedOperatorError,
)
from ..safe_io import resolve_inside

if TYPE_CHECKING:
    from .reader import ModelFolder

MAX_TENSOR_BYTES = 2 << 30
"""Largest static tensor accepted at batch 1 (2 GiB; a ResNet50's largest activation at 224 px is 3 MiB)."""

_STANDARD_DOMAINS = ("", "ai.onnx")

ALLOWED_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvInteger", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div",
    "Dropout", "DynamicQuantizeLinear", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor",
    "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
    "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid", "HardSwish", "Hardmax", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual",
    "Log", "LogSoftmax", "LpNormalization", "LpPool", "MatMul", "MatMulInteger", "Max", "MaxPool", "Mean",
    "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg", "Not", "OneHot", "Or", "PRelu", "Pad", "Pow",
    "QLinearConv", "QLinearMatMul", "QuantizeLinear", "RMSNormalization", "Range", "Reciprocal", "ReduceL1",
    "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "Round", "ScatterElements", "ScatterND", "Selu",
    "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Swish", "Tan", "Tanh", "ThresholdedRelu", "Tile",
    "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})
"""Standard-domain operators a CNN classifier (and its head/gradient graphs, float, FP16 or QDQ) is made of."""

ALLOWED_MICROSOFT_OPS: frozenset[str] = frozenset({
    "BiasGelu", "FastGelu", "FusedConv", "FusedMatMul", "Gelu", "NhwcConv", "QLinearAdd", "QLinearAveragePool",
    "QLinearConcat", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearMul", "QLinearSigmoid",
    "QuantizeLinear", "DequantizeLinear", "QuickGelu", "SkipLayerNormalization",
})
"""onnxruntime's contrib operators (domain ``com.microsoft``) that its CNN optimisations and quantizer emit."""


def check_graphs(folder: ModelFolder, *, trust_graph: bool = False,
                 max_tensor_bytes: int = MAX_TENSOR_BYTES) -> None:
    """Check every ONNX file of ``folder`` (model, head, gradient); raises a :class:`ModelLoadingError`."""
    try:
        import onnx
    except ImportError:
        raise OnnxMissingError("checking a model folder's graphs before loading them") from None
    for path in folder.graph_paths():
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise GraphCheckError(path, f"not a valid ONNX file ({_short(exc)})") from None
        check_external_data(folder, path, model)
        if not trust_graph:
            check_operators(path, model)
        check_sizes(folder, path, model, max_tensor_bytes, fix_input=path == folder.model_path)


def check_operators(path: Path, model: Any) -> None:
    """Refuse operators outside the allowlists (subgraphs and local functions included)."""
    functions = {(f.domain, f.name) for f in model.functions}
    refused = sorted({f"{domain}::{op}" if domain else op for domain, op in _operators(model.graph)
                      if not _allowed(domain, op) and (domain, op) not in functions})
    for function in model.functions:
        refused += sorted({f"{d}::{op}" if d else op for d, op in _function_operators(function)
                           if not _allowed(d, op) and (d, op) not in functions} - set(refused))
    if refused:
        raise UntrustedOperatorError(path, refused)


def check_sizes(folder: ModelFolder, path: Path, model: Any, max_tensor_bytes: int, *, fix_input: bool) -> None:
    """Shape inference (the model at the folder's input shape, batch 1): refuse huge static tensors, empty outputs.

    Head and gradient graphs (``fix_input`` False) keep their own input shapes: what is static there is checked.
    """
    import onnx

    spec = folder.manifest.input
    fixed = (1, 3, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, 3)
    for graph_input in model.graph.input:
        if not fix_input or graph_input.name != spec.name:
            continue  # a mismatch is reported by the engine with the graph's own names
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) == len(fixed):
            for dim, size in zip(dims, fixed, strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = size
    _strip_large_initializers(model)
    # Declared shapes are the graph's claims: dropped, so every size below is inferred from the operators.
    del model.graph.value_info[:]
    for graph_output in model.graph.output:
        graph_output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # InferenceError, or a graph onnx cannot reason about
        raise GraphCheckError(path, f"ONNX shape inference failed ({_short(exc)})") from None
    graph = inferred.graph
    values = [*graph.value_info, *graph.output]
    for value in values:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if any(d is None for d in dims):
            continue  # not static: bounded at run time, not here
        known = [int(d) for d in dims if d is not None]
        nbytes = math.prod(known) * _itemsize(tensor_type.elem_type)
        if nbytes > max_tensor_bytes:
            raise TensorBudgetError(path, value.name, known, nbytes, max_tensor_bytes)
    outputs = {folder.manifest.outputs.probabilities, folder.manifest.outputs.features}
    for value in graph.output:
        if value.name in outputs and any(d.HasField("dim_value") and d.dim_value == 0
                                         for d in value.type.tensor_type.shape.dim):
            shape = [d.dim_value if d.HasField("dim_value") else "?" for d in value.type.tensor_type.shape.dim]
            raise GraphCheckError(path, f"output {value.name!r} has a zero-size dimension {shape}")


def check_external_data(folder: ModelFolder, path: Path, model: Any) -> None:
    """Every external-data reference must name a file inside the folder that the manifest's sha256 lists."""
    listed = set(folder.manifest.sha256)
    base = path.parent
    for tensor in _tensors(model):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        if not location or os.path.isabs(location) or "\\" in location or "\x00" in location:
            raise ExternalDataError(path, tensor.name, location, "is not a relative path inside the folder")
        try:
            target = resolve_inside(folder.root, os.path.relpath(base / location, folder.root))
        except (UnsafePathError, ValueError):
            raise ExternalDataError(path, tensor.name, location, "points outside the model folder") from None
        relative = target.relative_to(folder.root.resolve()).as_posix()
        if relative not in listed:
            raise ExternalDataError(path, tensor.name, location, "is not listed (and verified) in the manifest's "
                                                                 "sha256")
        if not target.is_file():
            raise ExternalDataError(path, tensor.name, location, "is missing or not a regular file")
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError:
            raise ExternalDataError(path, tensor.name, location, "has a non-numeric offset or length") from None
        size = target.stat().st_size
        if offset < 0 or (length is not None and (length < 0 or offset + length > size)) or offset > size:
            raise ExternalDataError(path, tensor.name, location, f"offset/length reach past its {size} bytes")


_SMALL_INITIALIZER = 4096
"""Initializers up to this many elements keep their values (shape arithmetic needs them); larger become inputs."""


def _strip_large_initializers(model: Any) -> None:
    """Turn large initializers into typed graph inputs: inference needs their shapes, not their megabytes."""
    from onnx import helper

    graph = model.graph
    keep, moved = [], []
    declared = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if math.prod(tensor.dims) > _SMALL_INITIALIZER and tensor.data_location != 1:
            moved.append(tensor)
        else:
            keep.append(tensor)
    if not moved:
        return
    for tensor in moved:
        if tensor.name not in declared:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _allowed(domain: str, op: str) -> bool:
    if domain in _STANDARD_DOMAINS:
        return op in ALLOWED_OPS
    return domain == "com.microsoft" and op in ALLOWED_MICROSOFT_OPS


def _operators(graph: Any) -> Iterator[tuple[str, str]]:
    for node in graph.node:
        yield node.domain, node.op_type
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _operators(attribute.g)
            for subgraph in attribute.graphs:
                yield from _operators(subgraph)


def _function_operators(function: Any) -> Iterator[tuple[str, str]]:
    for node in function.node:
        yield node.domain, node.op_type


def _tensors(model: Any) -> Iterator[Any]:
    """Initializers and tensor attributes of every (sub)graph."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield from graph.initializer
        yield from (sparse.values for sparse in graph.sparse_initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def _itemsize(elem_type: int) -> int:
    import onnx

    try:
        return int(onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8  # unknown or string types: counted generously


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
