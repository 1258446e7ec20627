"""Vector-Jacobian products of a Keras head written with forward TensorFlow ops only.

TensorFlow's own backward pass emits gradient kernels (``ReluGrad``, ``BroadcastGradientArgs``, ``ShapeN``…)
that neither tf2onnx nor ONNX define, so a ``GradientTape`` cannot be converted. Instead each head layer type
has a small rule here: a forward pass that keeps what the backward needs, and the backward written with
ordinary ops (MatMul, Mul, Where, Erf, Reshape…) that convert to plain ONNX. Every exported gradient graph is
verified against ``tf.GradientTape`` on the whole Keras model (:func:`export.head_graphs.check_head_graphs`),
so a wrong rule cannot reach a model folder. Layers without a rule are refused with their name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import UnsupportedHeadError

IDENTITY_LAYERS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "GaussianNoise",
                   "AlphaDropout", "Identity")

Backward = Callable[[Any], Any]
"""Cotangent of a layer's output [N·T, ...] → cotangent of its input [N·T, ...]."""
Param = Callable[[Any], Any]
"""A layer's variable → the tensor the traced graph reads it from (a constant, or a graph input standing for it)."""


def _repeat(tf: Any, tensor: Any, targets: Any) -> Any:
    return tf.repeat(tensor, targets, axis=0)


def _activation_rule(tf: Any, name: str, z: Any) -> tuple[Any, Any]:
    """(activation(z), activation'(z)) with TensorFlow's own conventions at the kinks."""
    if name == "linear":
        return z, tf.ones_like(z)
    if name == "relu":
        return tf.nn.relu(z), tf.cast(z > 0, z.dtype)
    if name == "relu6":
        return tf.nn.relu6(z), tf.cast((z > 0) & (z < 6), z.dtype)
    if name == "sigmoid":
        s = tf.sigmoid(z)
        return s, s * (1 - s)
    if name == "tanh":
        t = tf.tanh(z)
        return t, 1 - t * t
    if name in ("silu", "swish"):
        s = tf.sigmoid(z)
        return z * s, s + z * s * (1 - s)
    if name == "hard_sigmoid":
        inside = tf.cast((z > -3) & (z < 3), z.dtype)
        return tf.nn.relu6(z + 3) / 6, inside / 6
    if name in ("hard_silu", "hard_swish"):
        hs = tf.nn.relu6(z + 3) / 6
        inside = tf.cast((z > -3) & (z < 3), z.dtype)
        return z * hs, hs + z * inside / 6
    if name == "gelu":  # keras.activations.gelu's default (approximate=False): z Φ(z)
        cdf = 0.5 * (1 + tf.math.erf(z / math.sqrt(2.0)))
        pdf = tf.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return z * cdf, cdf + z * pdf
    if name == "elu":
        y = tf.where(z > 0, z, tf.exp(z) - 1)
        return y, tf.where(z > 0, tf.ones_like(z), y + 1)
    if name == "softplus":
        return tf.nn.softplus(z), tf.sigmoid(z)
    raise KeyError(name)


ACTIVATIONS = ("linear", "relu", "relu6", "sigmoid", "tanh", "silu", "swish", "hard_sigmoid", "hard_silu",
               "hard_swish", "gelu", "elu", "softplus")
"""Activations with a gradient rule."""


def _activation_of(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return "linear" if activation is None else getattr(activation, "__name__", str(activation))


def check_supported(layers: tuple[Any, ...], model_name: str, linear_last: bool) -> None:
    """Refuse a head with a layer (or activation) that has no gradient rule, before anything is traced."""
    for i, layer in enumerate(layers):
        kind = type(layer).__name__
        if kind not in RULES:
            raise UnsupportedHeadError(model_name, f"the head layer {layer.name!r} ({kind}) has no gradient rule; "
                                                   f"supported: {', '.join(sorted(RULES))}")
        activation = _activation_of(layer)
        if linear_last and i == len(layers) - 1:
            continue
        if kind in ("Dense", "Conv2D", "Activation") and activation not in ACTIVATIONS:
            raise UnsupportedHeadError(model_name, f"the head layer {layer.name!r} uses activation {activation!r}, "
                                                   f"which has no gradient rule; supported: {', '.join(ACTIVATIONS)}")
        if kind == "Conv2D" and (tuple(layer.kernel_size) != (1, 1) or tuple(layer.strides) != (1, 1)
                                 or layer.groups != 1):
            raise UnsupportedHeadError(model_name, f"the head conv {layer.name!r} is not a 1×1, stride-1 "
                                                   "convolution (only those follow the spatial pooling)")
        if kind == "LayerNormalization" and list(layer.axis) not in ([-1], [len(layer.input.shape) - 1]):
            raise UnsupportedHeadError(model_name, f"LayerNormalization {layer.name!r} normalises axes "
                                                   f"{layer.axis}; only the last axis has a gradient rule")
        if kind == "LayerNormalization" and getattr(layer, "rms_scaling", False):
            raise UnsupportedHeadError(model_name, f"LayerNormalization {layer.name!r} uses rms_scaling")
        if kind == "ReLU" and (layer.negative_slope or layer.threshold or layer.max_value not in (None, 6.0)):
            raise UnsupportedHeadError(model_name, f"ReLU {layer.name!r} has a slope, threshold or max other than 6")


def _dense(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    kernel = param(layer.kernel)
    if len(kernel.shape) == 4:  # a 1×1 Conv2D is a Dense over the channels
        kernel = tf.reshape(kernel, kernel.shape[2:])
    c_in, c_out = int(kernel.shape[0]), int(kernel.shape[1])
    in_shape = tf.shape(x)
    z = tf.matmul(tf.reshape(x, (-1, c_in)), kernel)
    if layer.use_bias:
        z = z + param(layer.bias)
    y, slope = _activation_rule(tf, "linear" if linear else _activation_of(layer), z)
    out_shape = tf.concat([in_shape[:-1], [c_out]], axis=0)
    slope = _repeat(tf, slope, targets)

    def backward(g: Any) -> Any:
        gz = tf.reshape(g, (-1, c_out)) * slope
        # (W · gzᵀ)ᵀ rather than gz · Wᵀ: a transposed constant kernel would be folded into a second copy.
        gx = tf.transpose(tf.matmul(kernel, gz, transpose_b=True))
        return tf.reshape(gx, tf.concat([[-1], in_shape[1:]], axis=0))

    return tf.reshape(y, out_shape), backward


def _activation(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    name = "linear" if linear else _activation_of(layer)
    if type(layer).__name__ == "ReLU":
        name = "relu6" if layer.max_value == 6.0 else "relu"
    y, slope = _activation_rule(tf, name, x)
    slope = _repeat(tf, slope, targets)
    return y, lambda g: g * slope


def _identity(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    return tf.identity(x), lambda g: g


def _reshape(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    in_shape = tf.shape(x)
    y = layer(x, training=False)
    return y, lambda g: tf.reshape(g, tf.concat([[-1], in_shape[1:]], axis=0))


def _global_average(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    h, w, c = (int(d) for d in x.shape[1:])
    y = tf.reduce_mean(x, axis=[1, 2], keepdims=bool(getattr(layer, "keepdims", False)))

    def backward(g: Any) -> Any:
        return tf.tile(tf.reshape(g, (-1, 1, 1, c)) / float(h * w), (1, h, w, 1))

    return y, backward


def _global_max(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    c = int(x.shape[3])
    peak = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    mask = tf.cast(tf.equal(x, peak), x.dtype)
    share = _repeat(tf, mask / tf.reduce_sum(mask, axis=[1, 2], keepdims=True), targets)  # ties split evenly
    y = peak if getattr(layer, "keepdims", False) else tf.reshape(peak, (-1, c))
    return y, lambda g: tf.reshape(g, (-1, 1, 1, c)) * share


def _layer_norm(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    centred = x - mean
    inv_std = tf.math.rsqrt(tf.reduce_mean(centred * centred, axis=-1, keepdims=True) + layer.epsilon)
    normed = centred * inv_std
    gamma = param(layer.gamma) if layer.scale else None
    y = normed * gamma if gamma is not None else normed
    if layer.center:
        y = y + param(layer.beta)
    normed_t, inv_std_t = _repeat(tf, normed, targets), _repeat(tf, inv_std, targets)

    def backward(g: Any) -> Any:
        gn = g * gamma if gamma is not None else g
        return inv_std_t * (gn - tf.reduce_mean(gn, axis=-1, keepdims=True)
                            - normed_t * tf.reduce_mean(gn * normed_t, axis=-1, keepdims=True))

    return y, backward


def _batch_norm(tf: Any, layer: Any, x: Any, targets: Any, linear: bool, param: Param) -> tuple[Any, Backward]:
    scale = tf.math.rsqrt(param(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * param(layer.gamma)
    y = (x - param(layer.moving_mean)) * scale
    if layer.center:
        y = y + param(layer.beta)
    return y, lambda g: g * scale


Rule = Callable[[Any, Any, Any, Any, bool, Param], tuple[Any, Backward]]
RULES: dict[str, Rule] = {
    "Dense": _dense, "Conv2D": _dense, "Activation": _activation, "ReLU": _activation,
    "Flatten": _reshape, "Reshape": _reshape,
    "GlobalAveragePooling2D": _global_average, "GlobalMaxPooling2D": _global_max,
    "LayerNormalization": _layer_norm, "BatchNormalization": _batch_norm,
    **{kind: _identity for kind in IDENTITY_LAYERS},
}
"""Keras layer type → forward-with-backward rule."""


def _forward(layers: tuple[Any, ...], features: Any, targets: Any, linear_last: bool,
             param: Param) -> tuple[Any, list[Backward]]:
    import tensorflow as tf

    x = features
    backwards = []
    for i, layer in enumerate(layers):
        x, backward = RULES[type(layer).__name__](tf, layer, x, targets, linear_last and i == len(layers) - 1, param)
        backwards.append(backward)
    return x, backwards


def constant_param(variable: Any) -> Any:
    """The default :data:`Param`: the variable's value embedded in the graph."""
    import tensorflow as tf

    return tf.convert_to_tensor(variable)


def head_logits(layers: tuple[Any, ...], features: Any, linear_last: bool,
                param: Param = constant_param) -> Any:
    """Logits [N, K] of the head's layers applied to the features, by the same rules as :func:`logits_and_vjp`."""
    import tensorflow as tf

    x, _ = _forward(layers, features, tf.constant(1), linear_last, param)
    return tf.reshape(x, (tf.shape(x)[0], -1))


def logits_and_vjp(layers: tuple[Any, ...], features: Any, directions: Any, linear_last: bool,
                   param: Param = constant_param) -> tuple[Any, Any]:
    """(logits [N, K], ∂(Σ_k directions_tk · logits_k)/∂features [N·T, h, w, C]) with forward ops only.

    The forward runs once per image; the saved derivatives are repeated T times for the backward.
    """
    import tensorflow as tf

    x, backwards = _forward(layers, features, tf.shape(directions)[1], linear_last, param)
    out_shape = tf.shape(x)
    logits = tf.reshape(x, (out_shape[0], -1))
    g = tf.reshape(directions, tf.concat([[-1], out_shape[1:]], axis=0))
    for backward in reversed(backwards):
        g = backward(g)
    return logits, g


def masked_logits(layers: tuple[Any, ...], features: Any, masks: Any, linear_last: bool,
                  param: Param = constant_param) -> Any:
    """Logits [N·P, K] of the head on ``features ⊙ mask_p`` for each spatial mask (``masks`` [P, h·w]), image-major.

    Equal to running the head on the P masked copies of each image, but the first linear stage is computed from
    per-position contributions instead: a global average pooling of a masked map is ``masks · A / (h·w)``, and a
    Flatten → Dense of one is ``Σ_q mask_pq · (A_q · W_q) + b`` with ``A_q · W_q`` formed once per position. With
    the single all-ones mask it is the plain head. Other first layers get the masked copies.
    """
    import tensorflow as tf

    h, w, c = (int(d) for d in features.shape[1:])
    positions = tf.reshape(features, (-1, h * w, c))  # [N, Q, C]
    batch_masks = masks[None]  # [1, P, Q]: MatMul broadcasts it over the images
    first = type(layers[0]).__name__
    rest_start = 1
    if first == "GlobalAveragePooling2D":
        pooled = tf.matmul(batch_masks, positions) / float(h * w)  # [N, P, C]
        x = tf.reshape(pooled, (-1, 1, 1, c) if getattr(layers[0], "keepdims", False) else (-1, c))
    elif first == "Flatten" and len(layers) > 1 and type(layers[1]).__name__ == "Dense":
        dense = layers[1]
        kernel = tf.reshape(param(dense.kernel), (h * w, c, -1))  # NHWC flattening: row q·C + channel
        contributions = tf.transpose(tf.matmul(tf.transpose(positions, (1, 0, 2)), kernel), (1, 0, 2))  # [N, Q, K1]
        z = tf.matmul(batch_masks, contributions)  # [N, P, K1]
        k1 = int(dense.kernel.shape[-1])
        z = tf.reshape(z, (-1, k1))
        if dense.use_bias:
            z = z + param(dense.bias)
        last = len(layers) == 2
        x, _ = _activation_rule(tf, "linear" if linear_last and last else _activation_of(dense), z)
        rest_start = 2
    else:
        masked = positions[:, None] * batch_masks[..., None]  # [N, P, Q, C]
        x = tf.reshape(masked, (-1, h, w, c))
        rest_start = 0
    rest = layers[rest_start:]
    if rest:
        x, _ = _forward(rest, x, tf.constant(1), linear_last, param)
    return tf.reshape(x, (tf.shape(x)[0], -1))
