"""Non-linear CNN heads: locating the feature tensor, and tracing the head and its gradient to ONNX.

For a head that is not GAP → Dense (VGG's flatten + dense stack, MobileNetV3's 1×1 conv head, ConvNeXt's
LayerNorm, a user's hidden Dense layer) no closed form exists, so the folder carries two small graphs:

* ``head.onnx``: features ``[N, h, w, C]`` → ``logits [N, K]``, ``probabilities [N, K]``;
* ``gradient.onnx``: features ``[N, h, w, C]`` and logit directions ``v [N, T, K]`` →
  ``gradients [N, T, h, w, C] = ∂(Σ_k v_k z_k)/∂features`` (one vector-Jacobian product per target).

``head.onnx`` is the head's layers and ``gradient.onnx`` its vector-Jacobian product, both written with forward
ops by one rule per layer type (:mod:`export.gradients`, since TensorFlow's gradient kernels have no ONNX form)
and converted with tf2onnx with the head's weights as graph inputs that become initializers afterwards
(:mod:`export.onnx_graphs`); ``model.onnx`` is the backbone up to the features with ``head.onnx`` appended. All
three are verified: the probabilities against Keras, the gradients against ``tf.GradientTape`` on the whole
Keras model. The
probability score needs no second graph: by the chain rule ``∂p_c/∂A = ∂(Σ_k u_k z_k)/∂A`` with ``u = p ∘ e_c −
p p_c`` (the softmax Jacobian applied to the direction), which the runtime forms from the head's probabilities."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import gradients
from .errors import ParityError, UnsupportedHeadError
from .gradients import check_supported
from .memory import release_memory
from .onnx_graphs import append_head, inline_inputs

FEATURES_INPUT = "features"
DIRECTIONS_INPUT = "directions"
MASKS_INPUT = "position_masks"
"""head.onnx's optional input [P, h·w] (default: one all-ones mask): logits of the P masked copies of each image."""
LOGITS_OUTPUT = "logits"
PROBABILITIES_OUTPUT = "probabilities"
GRADIENTS_OUTPUT = "gradients"
HEAD_FILE = "head.onnx"
GRADIENT_FILE = "gradient.onnx"

GLOBAL_POOLING = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")
FLATTENING = ("Flatten", "Reshape")
GRADIENT_RTOL = 1e-4
"""Max |gradient.onnx − GradientTape| relative to the largest |GradientTape| value, per class and score (for the
probability score, relative to the larger of that and p_c·max|∂z_c/∂A|, the size of the terms it is the
difference of)."""
HEAD_PROBABILITY_ATOL = 1e-4
"""Max |head.onnx(features) − Keras probabilities|."""
MAX_CHAIN = 64
"""Longest head (layers between features and output) that is searched."""


@dataclass(frozen=True)
class GraphHead:
    """A located non-linear head: the feature tensor and the single-input layer chain that maps it to logits."""

    features: Any  # KerasTensor: the last 4-D conv tensor before the head
    layers: tuple[Any, ...]  # applied in order to the features; the last one produces the logits
    probabilities: Any  # KerasTensor: the model's output (probabilities, or logits when needs_softmax)
    needs_softmax: bool  # the model outputs logits (no softmax at the end)
    strip_activation: bool  # the last layer applies softmax itself: call it with a linear activation
    logits: Any | None  # KerasTensor of the logits when the model has one (None when strip_activation)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(h, w, C) of the features."""
        shape = tuple(self.features.shape[1:])
        return (int(shape[0]), int(shape[1]), int(shape[2]))

    def describe(self) -> list[str]:
        """The head's layers as "name (Type)" strings, for the manifest."""
        return [f"{layer.name} ({type(layer).__name__})" for layer in self.layers]


def _producer(tensor: Any, model_name: str) -> tuple[Any, list[Any]]:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise UnsupportedHeadError(model_name, "cannot trace the Keras graph (not a functional or Sequential model)")
    layer = history.operation
    node = layer._inbound_nodes[history.node_index]
    return layer, list(node.input_tensors)


def _activation_name(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation))


def _is_softmax_layer(layer: Any) -> bool:
    kind = type(layer).__name__
    return kind == "Softmax" or (kind == "Activation" and _activation_name(layer) == "softmax")


def find_graph_head(model: Any) -> GraphHead:
    """Locate the feature tensor of any CNN head, or raise UnsupportedHeadError with the reason.

    Walking back from the output along single-input layers, the features are the input of the global pooling
    nearest to the output or, without one, the 4-D input of the nearest flattening layer (VGG).
    """
    name = getattr(model, "name", "model")
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) != 1:
        raise UnsupportedHeadError(name, f"the model has {len(outputs)} outputs; expected one classifier output")
    output = outputs[0]
    chain: list[tuple[Any, Any]] = []  # (layer, its input tensor), from the output backwards
    tensor = output
    for _ in range(MAX_CHAIN):
        layer, inputs = _producer(tensor, name)
        if type(layer).__name__ == "InputLayer" or len(inputs) != 1:
            break
        chain.append((layer, inputs[0]))
        if type(layer).__name__ in GLOBAL_POOLING:
            break
        tensor = inputs[0]
    cut = next((i for i, (layer, _) in enumerate(chain) if type(layer).__name__ in GLOBAL_POOLING), None)
    if cut is None:
        cut = next((i for i, (layer, t) in enumerate(chain)
                    if type(layer).__name__ in FLATTENING and len(t.shape) == 4), None)
    if cut is None:
        raise UnsupportedHeadError(name, "no spatial conv features before the head: no global pooling or "
                                         "flattening of a 4-D tensor on the single-input path to the output "
                                         "(e.g. a vision transformer's token head)")
    features = chain[cut][1]
    if len(features.shape) != 4 or any(d is None for d in features.shape[1:]):
        raise UnsupportedHeadError(name, f"the pooled tensor has shape {features.shape}, expected [N, h, w, C]")
    if getattr(chain[cut][0], "data_format", "channels_last") != "channels_last":
        raise UnsupportedHeadError(name, "only channels_last feature maps are supported")
    layers = [layer for layer, _ in reversed(chain[:cut + 1])]
    last = layers[-1]
    needs_softmax = strip = False
    logits: Any | None = None
    if _is_softmax_layer(last):
        layers = layers[:-1]
        logits = chain[0][1]
    elif _activation_name(last) == "softmax":
        strip = True
    elif _activation_name(last) in ("linear", "None") or type(last).__name__ in FLATTENING:
        needs_softmax = True
        logits = output
    else:
        raise UnsupportedHeadError(name, f"the output layer {last.name!r} ends in activation "
                                         f"{_activation_name(last)!r}; expected softmax or linear logits")
    if not layers:
        raise UnsupportedHeadError(name, "nothing between the features and the softmax")
    return GraphHead(features=features, layers=tuple(layers), probabilities=output, needs_softmax=needs_softmax,
                     strip_activation=strip, logits=logits)


@dataclass(frozen=True)
class HeadGraphs:
    """The two ONNX graphs of a non-linear head."""

    head: bytes
    gradient: bytes


def head_variables(head: GraphHead) -> list[Any]:
    """The head layers' variables (kernels, biases, normalisation parameters), each once, in layer order."""
    seen: dict[int, Any] = {}
    for layer in head.layers:
        for variable in layer.weights:
            seen.setdefault(id(variable), variable)
    return list(seen.values())


def convert_head(head: GraphHead, num_classes: int, opset: int) -> HeadGraphs:
    """Trace the head and its vector-Jacobian product and convert both to ONNX.

    Both are traced from the same layer rules (:mod:`export.gradients`), with the head's weights as extra graph
    inputs that become initializers after conversion (:mod:`export.onnx_graphs`: tf2onnx multiplies constants).
    """
    import tensorflow as tf

    h, w, c = head.feature_shape
    check_supported(head.layers, "model", head.strip_activation)
    variables = head_variables(head)
    names = [f"head_param_{i}" for i in range(len(variables))]
    index = {id(v): i for i, v in enumerate(variables)}
    param_specs = [tf.TensorSpec(tuple(v.shape), tf.float32, name=n) for v, n in zip(variables, names, strict=True)]
    feature_spec = tf.TensorSpec((None, h, w, c), tf.float32, name=FEATURES_INPUT)
    direction_spec = tf.TensorSpec((None, None, num_classes), tf.float32, name=DIRECTIONS_INPUT)

    def reader(params: list[Any]) -> Any:
        def param(variable: Any) -> Any:
            if id(variable) not in index:
                raise UnsupportedHeadError("model", f"the head reads a variable it does not own: {variable.path}")
            return params[index[id(variable)]]
        return param

    mask_spec = tf.TensorSpec((None, h * w), tf.float32, name=MASKS_INPUT)

    @tf.function(input_signature=(feature_spec, mask_spec, param_specs))
    def forward(features: Any, masks: Any, params: list[Any]) -> dict[str, Any]:
        logits = gradients.masked_logits(head.layers, features, masks, head.strip_activation, reader(params))
        return {LOGITS_OUTPUT: tf.identity(logits), PROBABILITIES_OUTPUT: tf.nn.softmax(logits, axis=-1)}

    @tf.function(input_signature=(feature_spec, direction_spec, param_specs))
    def gradient(features: Any, directions: Any, params: list[Any]) -> dict[str, Any]:
        _, grads = gradients.logits_and_vjp(head.layers, features, directions, head.strip_activation,
                                            reader(params))
        shape = tf.concat([tf.shape(directions)[:2], tf.constant([h, w, c])], axis=0)
        return {GRADIENTS_OUTPUT: tf.reshape(grads, shape)}

    values = {n: np.asarray(v.numpy(), np.float32) for v, n in zip(variables, names, strict=True)}
    out = []
    for function, signature in ((forward, (feature_spec, mask_spec, param_specs)),
                                (gradient, (feature_spec, direction_spec, param_specs))):
        proto = _from_function(function, signature, opset)
        inline_inputs(proto, values)
        if function is forward:  # the plain head unless a caller passes its own masks (ReciproCAM)
            inline_inputs(proto, {MASKS_INPUT: np.ones((1, h * w), np.float32)}, keep_inputs=True)
        out.append(proto.SerializeToString())
        del proto
    return HeadGraphs(out[0], out[1])


def _from_function(function: Any, signature: tuple[Any, ...], opset: int) -> Any:
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    release_memory()
    return proto


def convert_model(model: Any, head: GraphHead, graphs: HeadGraphs, height: int, width: int, opset: int) -> bytes:
    """model.onnx: the backbone up to the features, converted alone, with head.onnx appended for the
    probabilities (the head's weights are never traced through tf2onnx with the whole model)."""
    import keras
    import onnx
    import tensorflow as tf

    from . import exporter

    exporter._freeze_normalization(keras, model)
    backbone = keras.Model(model.inputs, head.features, name=f"{model.name}_features")
    spec = (tf.TensorSpec((None, height, width, 3), tf.float32, name=exporter.INPUT_NAME),)

    @tf.function(input_signature=spec)
    def serve(image: Any) -> dict[str, Any]:
        return {exporter.FEATURES_NAME: tf.identity(backbone([image], training=False))}

    with exporter.convertible_layers(keras, model):
        proto = _from_function(serve, spec, opset)
    merged = append_head(proto, onnx.load_from_string(graphs.head), features=exporter.FEATURES_NAME,
                         head_features=FEATURES_INPUT, outputs={PROBABILITIES_OUTPUT: exporter.PROBABILITIES_NAME})
    return bytes(merged.SerializeToString())


def parity_session(model: bytes) -> Any:
    """An onnxruntime CPU session for the export checks, without the memory arena (it keeps its peak)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # head.onnx's overridable position_masks input is reported as a warning
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class GradientParity:
    """Largest differences of the head and gradient graphs against Keras / GradientTape."""

    samples: int
    classes: list[int]
    scores: list[str]
    head_probabilities_max_abs: float
    masked_probabilities_max_abs: float
    gradient_max_rel: dict[str, float]
    tolerances: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


def tape_gradients(model: Any, head: GraphHead, inputs: np.ndarray, class_id: int,
                   score: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, ∂score/∂features) by tf.GradientTape on the whole Keras model, as in Keras' Grad-CAM example.

    The logit score reads the model's pre-softmax tensor; where the last layer applies the softmax itself, its
    activation is switched to linear for the tape (as the Keras example does) and restored afterwards.
    """
    import keras
    import tensorflow as tf

    last = head.layers[-1]
    saved = last.activation if head.strip_activation else None
    try:
        if head.strip_activation and score == "logit":
            last.activation = keras.activations.linear
        target = head.logits if head.logits is not None else head.probabilities
        grad_model = keras.Model(model.inputs, [head.features, target])
        with tf.GradientTape() as tape:
            features, out = grad_model([inputs], training=False)
            if score == "logit":
                selected = out[:, class_id]
            elif head.logits is not None:
                selected = tf.nn.softmax(out, axis=-1)[:, class_id]
            else:  # the output is already the softmax
                selected = out[:, class_id]
        grads = tape.gradient(selected, features)
    finally:
        if saved is not None:
            last.activation = saved
    return np.asarray(features), np.asarray(grads)


PROBABILITY_FLOOR = 1e-4
"""The probability score's parity scale is at least this probability times the largest logit gradient."""


def check_head_graphs(model: Any, head: GraphHead, graphs: HeadGraphs, inputs: np.ndarray,
                      keras_probabilities: np.ndarray, num_classes: int) -> GradientParity:
    """Verify head.onnx against the Keras probabilities and gradient.onnx against GradientTape (both scores)."""
    head_session = parity_session(graphs.head)
    grad_session = parity_session(graphs.gradient)
    order = np.argsort(-keras_probabilities[0])
    classes = sorted({int(order[0]), int(order[min(4, num_classes - 1)]), int(order[-1])})
    errors: dict[str, float] = {}
    head_err = 0.0
    logit_scale: dict[int, float] = {}
    for score in ("logit", "probability"):  # logit first: its scale bounds the probability score's rounding
        worst = 0.0
        for class_id in classes:
            features, expected = tape_gradients(model, head, inputs, class_id, score)
            _, probs = head_session.run([LOGITS_OUTPUT, PROBABILITIES_OUTPUT], {FEATURES_INPUT: features})
            head_err = max(head_err, float(np.abs(probs.astype(np.float64) - keras_probabilities).max()))
            direction = np.zeros((features.shape[0], 1, num_classes), np.float32)
            direction[:, 0, class_id] = 1.0
            scale = float(np.abs(expected).max())
            if score == "probability":
                p = probs.astype(np.float64)[:, None, :]
                direction = (p * direction - p * p[..., class_id:class_id + 1]).astype(np.float32)
                # ∂p_c/∂A = p_c (∂z_c − Σ_j p_j ∂z_j): near a saturated softmax the two terms cancel, and float32
                # rounding is relative to their size, p_c·max(|∂z_c|, |Σ_j p_j ∂z_j|) ≤ p_c·max_j |∂z_j/∂A|, not to
                # the small difference. The checked classes include the top one, which dominates Σ_j p_j ∂z_j.
                # Below PROBABILITY_FLOOR the gradient is < 2·p_c·max|∂z| and lives in float32's denormals, which
                # onnxruntime may flush to zero: it is checked against the floor instead.
                p_c = max(float(probs[:, class_id].max()), PROBABILITY_FLOOR)
                scale = max(scale, p_c * max(logit_scale.values()))
            else:
                logit_scale[class_id] = scale
            (grads,) = grad_session.run([GRADIENTS_OUTPUT], {FEATURES_INPUT: features, DIRECTIONS_INPUT: direction})
            diff = float(np.abs(grads[:, 0].astype(np.float64) - expected).max())
            rel = diff / scale if scale > 0 else diff
            worst = max(worst, rel)
            if not rel <= GRADIENT_RTOL:
                raise ParityError(f"gradient.onnx and tf.GradientTape ({score} score, class {class_id}, relative)",
                                  rel, GRADIENT_RTOL)
        errors[score] = worst
    if not head_err <= HEAD_PROBABILITY_ATOL:
        raise ParityError("head.onnx(features) and the Keras probabilities", head_err, HEAD_PROBABILITY_ATOL)
    masked_err = check_masked_head(head, head_session, features)
    return GradientParity(samples=int(inputs.shape[0]), classes=classes, scores=["logit", "probability"],
                          head_probabilities_max_abs=head_err, masked_probabilities_max_abs=masked_err,
                          gradient_max_rel=errors,
                          tolerances={"gradient_rtol": GRADIENT_RTOL, "head_probabilities_atol": HEAD_PROBABILITY_ATOL})


def keras_head_logits(head: GraphHead, features: np.ndarray) -> np.ndarray:
    """The head's own Keras layers applied to features (inference mode) → logits [N, K]: the reference."""
    import keras

    x = features
    for layer in head.layers[:-1]:
        x = layer(x, training=False)
    last = head.layers[-1]
    saved = last.activation if head.strip_activation else None
    try:
        if head.strip_activation:  # the same layer without its softmax
            last.activation = keras.activations.linear
        x = last(x, training=False)
    finally:
        if saved is not None:
            last.activation = saved
    out = np.asarray(x, np.float64)
    return out.reshape(len(out), -1)


MASKED_SAMPLES = 5
"""Random spatial masks on which head.onnx's position_masks input is checked against the Keras head."""


def check_masked_head(head: GraphHead, head_session: Any, features: np.ndarray) -> float:
    """Max |probabilities| difference of head.onnx with masks vs the Keras head on the masked features."""
    from .parity import softmax

    _, h, w, c = features.shape
    rng = np.random.default_rng(0)
    masks = rng.uniform(0, 1, (MASKED_SAMPLES, h * w)).astype(np.float32)
    masks[0] = 0.0
    masks[0, rng.integers(h * w)] = 1.0  # one position alone, as ReciproCAM's masks without the Gaussian
    (probs,) = head_session.run([PROBABILITIES_OUTPUT], {FEATURES_INPUT: features, MASKS_INPUT: masks})
    masked = (features[:, None] * masks.reshape(1, -1, h, w, 1)).reshape(-1, h, w, c)
    expected = softmax(keras_head_logits(head, masked))
    err = float(np.abs(probs.astype(np.float64) - expected).max()) if len(expected) == len(probs) else np.inf
    if not err <= HEAD_PROBABILITY_ATOL:
        raise ParityError("head.onnx(features, position_masks) and the Keras head on masked features", err,
                          HEAD_PROBABILITY_ATOL)
    return err


def locate_head(model: Any, kind: str = "auto") -> GraphHead | None:
    """The graph head to export, or None where the linear GAP → Dense export applies.

    "auto": None for a GAP → Dense head, else the graph head (or the reason it cannot be differentiated);
    "linear": always None (the linear export refuses other heads); "graph": the graph head, whatever it is.
    """
    from .heads import find_cam_head

    if kind not in ("auto", "linear", "graph"):
        raise ValueError(f"head kind must be auto, linear or graph, got {kind!r}")
    if kind == "linear":
        return None
    if kind == "auto":
        try:
            find_cam_head(model)
            return None
        except UnsupportedHeadError:
            pass
    head = find_graph_head(model)
    check_supported(head.layers, getattr(model, "name", "model"), head.strip_activation)
    return head


def export_graph_head(model: Any, head: GraphHead, output: str | Path, *, labels: list[str] | None,
                      labels_path: str | Path | None, name: str, prep: Any, opset: int, force: bool,
                      meta: dict[str, Any], imagenet_default: bool) -> Any:
    """Convert the backbone (probabilities + features), the head and its gradient; verify all three; write."""
    import keras

    from cam_runtime.model import HeadSpec, InputSpec, OutputSpec, imagenet_labels, write_model_folder

    from . import exporter
    from .errors import LabelsError
    from .parity import FEATURE_RTOL, PROBABILITY_ATOL, softmax

    num_classes = int(head.probabilities.shape[-1])
    if labels is None and imagenet_default and num_classes == 1000:
        labels = imagenet_labels()
    if labels is not None and len(labels) != num_classes:
        raise LabelsError(labels_path or "(ImageNet labels)",
                          f"has {len(labels)} lines but the model has {num_classes} classes")
    height, width = (int(d) for d in model.inputs[0].shape[1:3])
    backbone: Any = head  # duck-typed like heads.CamHead: features, probabilities, needs_softmax
    graphs = convert_head(head, num_classes, opset)
    model_bytes = convert_model(model, head, graphs, height, width, opset)

    rng = np.random.default_rng(exporter.PARITY_SEED)
    pixels = rng.uniform(0, 255, (exporter.PARITY_SAMPLES, height, width, 3)).astype(np.float32)
    inputs = ((pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)).astype(np.float32)
    probs_k, feats_k = (np.asarray(t) for t in exporter._two_output_model(keras, model, backbone)([inputs],
                                                                                               training=False))
    if head.needs_softmax:
        probs_k = softmax(probs_k).astype(np.float32)
    session = parity_session(model_bytes)
    probs_o, feats_o = session.run([exporter.PROBABILITIES_NAME, exporter.FEATURES_NAME],
                                   {exporter.INPUT_NAME: inputs})
    del session  # its copy of the weights (0.5 GB for VGG16) is not needed for the head checks
    release_memory()
    prob_err = float(np.abs(probs_k.astype(np.float64) - probs_o).max())
    scale = float(np.abs(feats_k).max())
    feat_abs = float(np.abs(feats_k.astype(np.float64) - feats_o).max())
    feat_rel = feat_abs / scale if scale > 0 else feat_abs
    if not prob_err <= PROBABILITY_ATOL:
        raise ParityError("ONNX and Keras probabilities", prob_err, PROBABILITY_ATOL)
    if not feat_rel <= FEATURE_RTOL:
        raise ParityError("ONNX and Keras features (relative to their scale)", feat_rel, FEATURE_RTOL)
    gradient_parity = check_head_graphs(model, head, graphs, inputs, probs_k, num_classes)
    parity = {"samples": int(inputs.shape[0]), "seed": exporter.PARITY_SEED, "probabilities_max_abs": prob_err,
              "features_max_abs": feat_abs, "features_max_rel": feat_rel,
              "tolerances": {"probabilities_atol": PROBABILITY_ATOL, "features_rtol": FEATURE_RTOL},
              "head_graphs": gradient_parity.to_dict()}
    producer = head.features._keras_history.operation
    provenance = {**meta, "feature_layer": f"{producer.name}.output", "head_layers": head.describe(),
                  "feature_shape": list(head.feature_shape), "opset": opset, "softmax_appended": head.needs_softmax,
                  "gradient_graph": "vector-Jacobian product with forward ops (export/gradients.py)",
                  "tool_versions": exporter._tool_versions(), "parity": parity}
    return write_model_folder(
        output, model=model_bytes, weights=None, bias=None, labels=labels, name=name,
        input_spec=InputSpec(exporter.INPUT_NAME, "NHWC", height, width), preprocess=prep,
        outputs=OutputSpec(exporter.PROBABILITIES_NAME, exporter.FEATURES_NAME, "NHWC"), provenance=provenance,
        force=force, graph_head=(graphs.head, graphs.gradient), head_spec=HeadSpec(), num_classes=num_classes)
