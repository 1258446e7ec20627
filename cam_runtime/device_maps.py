"""CAM on the session's device: the model graph extended in memory with TopK → Gather → MatMul.

At ~10k images/s, copying 7×7×2048 float32 features per image to the host is ~4 GB/s; the extra outputs
bring back only the top-k maps [N, k, h, w], their classes and probabilities. The model folder's files are
never rewritten (their checksums were verified); the extended graph lives in memory only. ``onnx`` is needed
only here, so it is imported when device maps are requested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import DeviceMapsError, OnnxMissingError
from .model.manifest import Manifest

MAPS = "cam_maps"
CLASSES = "cam_classes"
SCORES = "cam_scores"
TOP_K = "cam_top_k"
"""Extra graph input: the k of TopK, fed with every run so one session serves every top_k."""
_WEIGHTS = "cam_class_weights"
_PREFIX = "cam_device_"


@dataclass(frozen=True)
class DeviceMaps:
    """What one device-map run brings back: probabilities, top-k classes and their CAMs."""

    probabilities: npt.NDArray[np.float32]  # [N, K]
    classes: npt.NDArray[np.intp]  # [N, k], by decreasing probability (ties: lower id first, as np.argsort stable)
    maps: npt.NDArray[np.float32]  # [N, k, h, w], CAM = Σ_c W[c, class] A_c


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise OnnxMissingError("device_maps") from None
    return onnx


def extend_model(model_path: str | Path, manifest: Manifest, weights: npt.NDArray[np.float32]) -> bytes:
    """The serialized model with ``cam_maps``/``cam_classes``/``cam_scores`` outputs appended (not written)."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # protobuf raises its own decode errors
        raise DeviceMapsError(f"cannot read {Path(model_path).name}: {str(exc).strip()[:200]}") from None
    graph = model.graph
    names = {o.name for o in graph.output} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    clash = sorted(n for n in (MAPS, CLASSES, SCORES, TOP_K, _WEIGHTS) if n in names)
    if clash:
        raise DeviceMapsError(f"the graph already has tensors named {clash}")
    outputs = {o.name: o for o in graph.output}
    probs, feats = manifest.outputs.probabilities, manifest.outputs.features
    for name in (probs, feats):
        if name not in outputs:
            raise DeviceMapsError(f"output {name!r} missing; graph outputs are {sorted(outputs)}")
    channels = int(weights.shape[0])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise DeviceMapsError(f"the graph's opset {opset} is below 13 (needed for this TopK/Reshape form)")

    def t(name: str) -> str:
        return _PREFIX + name

    nodes = []
    feature_in = feats
    if outputs[feats].type.tensor_type.elem_type != TensorProto.FLOAT:  # e.g. an fp16 graph without io types
        nodes.append(helper.make_node("Cast", [feats], [t("features_f32")], to=TensorProto.FLOAT))
        feature_in = t("features_f32")
    probs_in = probs
    if outputs[probs].type.tensor_type.elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [probs], [t("probs_f32")], to=TensorProto.FLOAT))
        probs_in = t("probs_f32")
    nchw = manifest.outputs.features_layout == "NCHW"
    spatial = (2, 4) if nchw else (1, 3)
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(weights.T, dtype=np.float32), _WEIGHTS),  # W^T [K, C]
        numpy_helper.from_array(np.array([0, channels, -1] if nchw else [0, -1, channels], np.int64), t("flat")),
    ]
    nodes += [
        helper.make_node("TopK", [probs_in, TOP_K], [SCORES, t("classes")], axis=1, largest=1, sorted=1),
        helper.make_node("Identity", [t("classes")], [CLASSES]),
        helper.make_node("Gather", [_WEIGHTS, t("classes")], [t("class_w")], axis=0),  # [N, k, C]
        helper.make_node("Reshape", [feature_in, t("flat")], [t("flat_features")]),
    ]
    hw = static_spatial(outputs[feats], spatial) or _inferred_spatial(model, feats, spatial)
    if hw is not None:
        # A constant target shape: no Shape/Slice/Concat, which onnxruntime places on the CPU (a device→host
        # copy per run, and a graph that CUDA graphs refuse because not every node runs on CUDA).
        inits.append(numpy_helper.from_array(np.array([0, 0, *hw], np.int64), t("map_shape")))
    else:
        inits += [
            numpy_helper.from_array(np.array([spatial[0]], np.int64), t("hw_start")),
            numpy_helper.from_array(np.array([spatial[1]], np.int64), t("hw_end")),
            numpy_helper.from_array(np.array([0, 0], np.int64), t("keep_nk")),
        ]
        nodes += [
            helper.make_node("Shape", [feature_in], [t("shape")]),
            helper.make_node("Slice", [t("shape"), t("hw_start"), t("hw_end")], [t("hw")]),
            helper.make_node("Concat", [t("keep_nk"), t("hw")], [t("map_shape")], axis=0),  # [0, 0, h, w]
        ]
    if nchw:  # [N, k, C] @ [N, C, hw] → [N, k, hw]
        nodes.append(helper.make_node("MatMul", [t("class_w"), t("flat_features")], [t("flat_maps")]))
    else:  # ([N, hw, C] @ [N, C, k])ᵀ: transposes the small [N, k, C] and result, never the features
        nodes += [
            helper.make_node("Transpose", [t("class_w")], [t("class_w_t")], perm=[0, 2, 1]),
            helper.make_node("MatMul", [t("flat_features"), t("class_w_t")], [t("maps_hw_k")]),
            helper.make_node("Transpose", [t("maps_hw_k")], [t("flat_maps")], perm=[0, 2, 1]),
        ]
    nodes.append(helper.make_node("Reshape", [t("flat_maps"), t("map_shape")], [MAPS]))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    # A real input, not an overridable initializer: IOBinding can bind only real inputs.
    graph.input.append(helper.make_tensor_value_info(TOP_K, TensorProto.INT64, [1]))
    graph.output.extend([
        helper.make_tensor_value_info(MAPS, TensorProto.FLOAT, ["N", "k", "h", "w"]),
        helper.make_tensor_value_info(CLASSES, TensorProto.INT64, ["N", "k"]),
        helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["N", "k"]),
    ])
    return bytes(model.SerializeToString())


def static_spatial(output: Any, spatial: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of a features output whose spatial dims are fixed integers in the graph, else None."""
    dims = output.type.tensor_type.shape.dim
    if len(dims) != 4:
        return None
    values = [dims[i].dim_value if dims[i].HasField("dim_value") else 0 for i in range(*spatial)]
    return (int(values[0]), int(values[1])) if all(v > 0 for v in values) else None


def _inferred_spatial(model: Any, name: str, spatial: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of tensor ``name`` from ONNX shape inference (outputs are often declared without dims)."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # e.g. a model over protobuf's 2 GB limit: the run-time shape path still works
        return None
    for value in [*inferred.graph.output, *inferred.graph.value_info]:
        if value.name == name:
            return static_spatial(value, spatial)
    return None


def top_k_feed(k: int) -> npt.NDArray[np.int64]:
    """The value fed to :data:`TOP_K` for ``k`` targets."""
    return np.array([k], dtype=np.int64)
