"""ONNX graph surgery for the exporter: weights fed as graph inputs during conversion, and a head appended to a
backbone.

Why: tf2onnx freezes every captured variable into a constant and then copies the graph many times (grappler,
its own optimizers, the proto), so a head with large dense layers (VGG16's 0.5 GB at 224 px) needed more than
20 GB to convert, three times over. Converting with the head's weights as graph inputs keeps every graph small;
the weights are then written once per ONNX file as initializers, straight from NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def inline_inputs(model: Any, values: Mapping[str, np.ndarray], keep_inputs: bool = False) -> None:
    """Turn the graph inputs named in ``values`` into initializers holding those arrays (in place).

    ``keep_inputs``: they stay graph inputs too, so the arrays are defaults a caller may override (onnxruntime's
    overridable initializers)."""
    from onnx import TensorProto

    graph = model.graph
    present = {i.name for i in graph.input}
    missing = sorted(set(values) - present)
    if missing:
        raise ValueError(f"the converted graph has no input {missing[0]!r} (inputs: {sorted(present)})")
    if not keep_inputs:
        kept = [i for i in graph.input if i.name not in values]
        del graph.input[:]
        graph.input.extend(kept)
    for name, array in values.items():
        tensor = graph.initializer.add()  # filled in place: append() would copy a 0.4 GB tensor once more
        tensor.name = name
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(array.shape)
        tensor.raw_data = np.ascontiguousarray(array, "<f4").tobytes()


def prune(graph: Any) -> None:
    """Remove the nodes and initializers no graph output depends on (in place)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def append_head(backbone: Any, head: Any, features: str, head_features: str, outputs: Mapping[str, str],
                prefix: str = "head/") -> Any:
    """The backbone with the head graph fed by its ``features`` output: keeps ``features`` as an output and adds
    the head's outputs as ``outputs`` (head output name → name in the result). Consumes ``head``'s contents."""
    graph = backbone.graph
    if any(a.type in (5, 10) for node in head.graph.node for a in node.attribute):  # GRAPH, GRAPHS
        raise ValueError("the head graph has subgraphs; appending them is not supported")
    renames = {head_features: features, **outputs}

    def rename(name: str) -> str:
        return name if not name else renames.get(name, prefix + name)

    for node in head.graph.node:
        node.name = prefix + node.name
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for tensor in head.graph.initializer:
        tensor.name = rename(tensor.name)
    graph.node.extend(head.graph.node)
    graph.initializer.extend(head.graph.initializer)
    for output in head.graph.output:
        if output.name in outputs:
            output.name = outputs[output.name]
            graph.output.append(output)
    versions = {o.domain: o.version for o in backbone.opset_import}
    for o in head.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del backbone.opset_import[:]
    for domain, version in versions.items():
        backbone.opset_import.add(domain=domain, version=version)
    prune(graph)
    return backbone
