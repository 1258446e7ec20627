"""Finding the CAM head in a Keras graph: features → GlobalAveragePooling2D → (pass-through) → Dense.

A 1×1 Conv2D applied to the pooled vector reshaped to 1×1×C (MobileNet's ``conv_preds``) is the same linear map
as a Dense layer and is accepted as one: its kernel [1, 1, C, K] is the Dense kernel [C, K].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedHeadError

PASS_THROUGH = ("Dropout", "Flatten", "Reshape", "SpatialDropout1D", "GaussianDropout", "AlphaDropout")
"""Layers allowed between pooling and the Dense: identities at inference time on a pooled vector."""

SOFTMAX_LAYERS = ("Softmax",)


@dataclass(frozen=True)
class CamHead:
    """The located head: the feature tensor, the pooling layer, the dense layer and how probabilities arise."""

    features: Any  # KerasTensor feeding the GAP layer
    pooling: Any
    dense: Any
    probabilities: Any  # KerasTensor: the model's probability output (or the dense logits, see needs_softmax)
    needs_softmax: bool  # True when the model outputs logits; the exporter appends a softmax

    @property
    def kernel(self) -> Any:
        """The classifier's kernel as a [C, K] matrix (a 1×1 Conv2D's [1, 1, C, K] reshaped)."""
        import numpy as np

        kernel = np.asarray(self.dense.kernel.numpy())
        return kernel.reshape(kernel.shape[-2], kernel.shape[-1])

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(h, w, C) of the features."""
        shape = tuple(self.features.shape[1:])
        return (int(shape[0]), int(shape[1]), int(shape[2]))


def _producer(tensor: Any) -> tuple[Any, Any]:
    """The layer that produced ``tensor`` and its node."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise UnsupportedHeadError("model", "cannot trace the Keras graph (not a functional or Sequential model)")
    layer = history.operation
    node = layer._inbound_nodes[history.node_index]
    return layer, node


def _single_input(layer: Any, node: Any, model_name: str) -> Any:
    inputs = list(node.input_tensors)
    if len(inputs) != 1:
        raise UnsupportedHeadError(model_name, f"layer {layer.name!r} ({type(layer).__name__}) in the head has "
                                               f"{len(inputs)} inputs")
    return inputs[0]


def _activation_name(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation))


def _is_pointwise_classifier(layer: Any) -> bool:
    """A 1×1, stride-1 Conv2D on a 1×1 map: a Dense layer in disguise (MobileNet v1's head)."""
    if type(layer).__name__ != "Conv2D":
        return False
    node = layer._inbound_nodes[0]
    shape = tuple(node.input_tensors[0].shape) if len(node.input_tensors) == 1 else ()
    return (tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1) and len(shape) == 4
            and shape[1] == 1 and shape[2] == 1 and getattr(layer, "groups", 1) == 1)


def _classifier_kind(layer: Any) -> str:
    return "Dense" if _is_pointwise_classifier(layer) else type(layer).__name__


def find_cam_head(model: Any) -> CamHead:
    """Locate features, GAP and Dense, or raise UnsupportedHeadError saying why CAM would not be exact."""
    name = getattr(model, "name", "model")
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) != 1:
        raise UnsupportedHeadError(name, f"the model has {len(outputs)} outputs; expected one classifier output")
    output = outputs[0]
    layer, node = _producer(output)
    kind = _classifier_kind(layer)
    needs_softmax = False
    probabilities = output
    if kind in SOFTMAX_LAYERS or (kind == "Activation" and _activation_name(layer) == "softmax"):
        tensor = _single_input(layer, node, name)
        layer, node = _producer(tensor)
        kind = _classifier_kind(layer)
        while kind in PASS_THROUGH:
            layer, node = _producer(_single_input(layer, node, name))
            kind = _classifier_kind(layer)
        if kind == "Dense" and _activation_name(layer) != "linear":
            raise UnsupportedHeadError(name, f"Dense {layer.name!r} has activation {_activation_name(layer)!r} "
                                             "before the softmax")
    elif kind == "Dense":
        activation = _activation_name(layer)
        if activation == "linear":
            needs_softmax = True
        elif activation != "softmax":
            raise UnsupportedHeadError(name, f"the classifier Dense {layer.name!r} uses activation {activation!r}; "
                                             "only softmax (or linear logits) is supported")
    if kind != "Dense":
        raise UnsupportedHeadError(name, f"the classifier is a {kind} layer ({layer.name!r}), not a Dense layer "
                                         "(a convolutional or custom head mixes positions non-linearly)")
    dense = layer
    tensor = _single_input(layer, node, name)
    while True:
        layer, node = _producer(tensor)
        kind = type(layer).__name__
        if kind not in PASS_THROUGH:
            break
        tensor = _single_input(layer, node, name)
        shape = tuple(tensor.shape)
        if kind in ("Flatten", "Reshape") and len(shape) == 4 and (shape[1] or 2) * (shape[2] or 2) > 1:
            raise UnsupportedHeadError(name, f"the head flattens the {shape[1]}x{shape[2]} feature map "
                                             f"({layer.name!r}) instead of pooling it, so each position has its "
                                             "own weights")
    if kind != "GlobalAveragePooling2D":
        reason = {
            "Dense": "the Dense classifier follows another Dense layer (a fully connected head, e.g. VGG)",
            "Flatten": "the head flattens the feature map instead of pooling it",
            "LayerNormalization": "a LayerNormalization sits between pooling and the Dense (e.g. ConvNeXt); it is "
                                  "not linear in the features",
            "BatchNormalization": "a BatchNormalization sits between pooling and the Dense",
            "GlobalMaxPooling2D": "the head uses global max pooling, not average pooling",
            "Activation": "a non-linear activation sits between pooling and the Dense (e.g. MobileNetV3's conv head)",
        }.get(kind, f"the Dense classifier is fed by a {kind} layer ({layer.name!r}), not GlobalAveragePooling2D")
        raise UnsupportedHeadError(name, reason)
    pooling = layer
    if getattr(pooling, "data_format", "channels_last") != "channels_last":
        raise UnsupportedHeadError(name, "only channels_last feature maps are supported")
    features = _single_input(layer, node, name)
    if len(features.shape) != 4:
        raise UnsupportedHeadError(name, f"the pooled tensor has shape {features.shape}, expected [N, h, w, C]")
    return CamHead(features=features, pooling=pooling, dense=dense, probabilities=probabilities,
                   needs_softmax=needs_softmax)
