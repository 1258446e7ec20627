"""Keras classifier → verified cam-model folder (ONNX with probabilities + features, dense weights, manifest)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cam_runtime.errors import OutputExistsError
from cam_runtime.model import (
    InputSpec,
    Manifest,
    OutputSpec,
    Preprocess,
    imagenet_labels,
    sha256_file,
    write_model_folder,
)

from .architectures import ARCHITECTURES, SUPPORTED, Architecture
from .errors import (
    DegenerateModelError,
    DegenerateModelWarning,
    KerasModelLoadError,
    KerasModelNotFoundError,
    LabelsError,
    UnknownArchitectureError,
    UnsupportedHeadError,
    WeightsFileError,
    WeightsUnavailableError,
    short_reason,
)
from .head_graphs import export_graph_head, locate_head
from .heads import CamHead, find_cam_head
from .labels import read_labels_arg
from .memory import release_memory
from .parity import check_parity

INPUT_NAME = "image"
PROBABILITIES_NAME = "probabilities"
FEATURES_NAME = "features"
DEFAULT_OPSET = 17
PARITY_SAMPLES = 4
PARITY_SEED = 1234
RANDOM_WEIGHTS_SEED = 0


def import_tensorflow_quietly() -> None:
    """Import TensorFlow, Keras and tf2onnx with the C++ start-up log lines (oneDNN, CPU features) silenced.

    TensorFlow writes them to file descriptor 2 before its logging is configured, so no environment variable
    turns them off; fd 2 is pointed at /dev/null for the duration of the imports and device discovery only.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401
            import tensorflow
            import tf2onnx  # noqa: F401

            # Device discovery (cuInit on CUDA builds without a GPU) logs an error line once; do it here.
            tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def export_model(output: str | Path, *, arch: str = "resnet50", weights: str = "imagenet",
                 model_path: str | Path | None = None, labels_path: str | Path | None = None,
                 input_size: int | None = None, force: bool = False, opset: int = DEFAULT_OPSET,
                 name: str | None = None, preprocess: Preprocess | None = None,
                 provenance: dict[str, Any] | None = None, head_kind: str = "auto") -> Manifest:
    """Export a keras.applications model (``arch``/``weights``) or a user model (``model_path``) to ``output``.

    ``weights`` is "imagenet" (downloaded by Keras), "random" (seeded random init, recorded in the manifest) or a
    path to a weights file. A user model needs ``preprocess`` unless its inputs are raw 0-255 RGB pixels.
    ``head_kind``: "auto" (GAP → Dense heads keep the closed forms, any other CNN head gets head and gradient
    graphs), "linear" (refuse other heads) or "graph" (head graphs even for a GAP → Dense head).
    """
    output = Path(output)
    if output.exists() and not force:
        raise OutputExistsError(output)
    labels = read_labels_arg(labels_path)
    if model_path is None:
        _architecture(arch)  # an unknown name fails before the slow TensorFlow import
    import_tensorflow_quietly()
    import keras

    if model_path is not None:
        model = _load_user_model(Path(model_path))
        source = {"source": "keras model file", "model_file": Path(model_path).name,
                  "model_sha256": sha256_file(Path(model_path))}
        prep = preprocess or Preprocess("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")
        model_name = name or Path(model_path).stem
        weights_record: str = "from model file"
    else:
        architecture = _architecture(arch)
        model, weights_record = _build_application(architecture, weights, input_size)
        source = {"source": f"keras.applications.{architecture.constructor}", "arch": architecture.name}
        prep = preprocess or architecture.preprocess
        model_name = name or (architecture.name if weights == "imagenet"
                              else f"{architecture.name}-{'random' if weights == 'random' else 'custom'}")
    graph = locate_head(model, head_kind)
    if graph is not None:  # a non-linear head (or head_kind="graph"): see export/head_graphs.py
        return export_graph_head(model, graph, output, labels=labels, labels_path=labels_path, name=model_name,
                                 prep=prep, opset=opset, force=force, imagenet_default=model_path is None,
                                 meta={**source, "weights": weights_record, **(provenance or {})})
    head = find_cam_head(model)
    dense_weights, dense_bias = _dense_parameters(head)
    num_classes = dense_weights.shape[1]
    if labels is None and model_path is None and num_classes == 1000:
        labels = imagenet_labels()
    if labels is not None and len(labels) != num_classes:
        raise LabelsError(labels_path or "(ImageNet labels)",
                          f"has {len(labels)} lines but the model has {num_classes} classes")
    height, width = (int(d) for d in model.inputs[0].shape[1:3])
    onnx_bytes = _convert(keras, model, head, height, width, opset)
    parity = _verify(model, head, onnx_bytes, dense_weights, dense_bias, prep, height, width)
    if parity.constant_outputs:
        message = (f"the model's probabilities are constant on the parity inputs (spread over classes "
                   f"{parity.class_spread:.1e}, over inputs {parity.input_spread:.1e}): it computes nothing useful")
        if weights == "random" and model_path is None:
            raise DegenerateModelError(message)
        warnings.warn(DegenerateModelWarning(message), stacklevel=2)
    versions = _tool_versions()
    meta = {**source, "weights": weights_record, "feature_layer": head.pooling.name + ".input",
            "dense_layer": head.dense.name, "feature_shape": list(head.feature_shape), "opset": opset,
            "softmax_appended": head.needs_softmax, "tool_versions": versions, "parity": parity.to_dict(),
            **(provenance or {})}
    return write_model_folder(
        output, model=onnx_bytes, weights=dense_weights, bias=dense_bias, labels=labels, name=model_name,
        input_spec=InputSpec(INPUT_NAME, "NHWC", height, width),
        preprocess=prep, outputs=OutputSpec(PROBABILITIES_NAME, FEATURES_NAME, "NHWC"),
        provenance=meta, force=force)


def _architecture(arch: str) -> Architecture:
    try:
        return ARCHITECTURES[arch.lower()]
    except KeyError:
        raise UnknownArchitectureError(arch, SUPPORTED) from None


def _build_application(architecture: Architecture, weights: str, input_size: int | None) -> tuple[Any, str]:
    import keras

    if weights == "random":
        from .random_init import calibration_batch, initialise_random_model

        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
        model = architecture.build(None, input_size)
        height, width = (int(d) for d in model.inputs[0].shape[1:3])
        batch = np.concatenate([calibration_batch(architecture.preprocess, height, width, RANDOM_WEIGHTS_SEED),
                                parity_inputs(architecture.preprocess, height, width)])
        try:
            head: CamHead | None = find_cam_head(model)
        except UnsupportedHeadError:  # a head for the graph path (VGG, MobileNetV3): its own init is kept
            head = None
        initialise_random_model(keras, model, head, batch, RANDOM_WEIGHTS_SEED)
        release_memory()  # the calibration pass's activations
        return model, (f"random (seed {RANDOM_WEIGHTS_SEED}; BatchNormalization statistics calibrated on the "
                       "bundled example photos" + (", classifier redrawn)" if head is not None else ")"))
    if weights == "imagenet":
        try:
            # Keras prints "Downloading data from https://…" on stdout; stdout belongs to the command's result.
            with contextlib.redirect_stdout(sys.stderr):
                return architecture.build("imagenet", input_size), "imagenet"
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise WeightsUnavailableError(architecture.name, short_reason(exc)) from None
        except Exception as exc:  # keras wraps urllib errors in a plain Exception ("URL fetch failure ...")
            if "fetch" in str(exc).lower() or "url" in str(exc).lower():
                raise WeightsUnavailableError(architecture.name, short_reason(exc)) from None
            raise
    path = Path(weights)
    if not path.is_file():
        raise WeightsFileError(path, "file not found (use 'imagenet', 'random' or a path to a weights file)")
    try:
        return architecture.build(str(path), input_size), f"file {path.name} sha256 {sha256_file(path)}"
    except Exception as exc:  # h5py/keras raise many types for a wrong file
        raise WeightsFileError(path, short_reason(exc)) from None


def _load_user_model(path: Path) -> Any:
    import keras

    if not path.exists():
        raise KerasModelNotFoundError(path)
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise KerasModelLoadError(path, "expected a .keras or .h5 file")
    try:
        # safe_mode refuses lambda layers that would run arbitrary code from the file.
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ... for bad files
        raise KerasModelLoadError(path, short_reason(exc)) from None


def _dense_parameters(head: CamHead) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.asarray(head.kernel, dtype=np.float32)
    bias = (np.asarray(head.dense.bias.numpy(), dtype=np.float32) if head.dense.use_bias
            else np.zeros(kernel.shape[1], dtype=np.float32))
    return kernel, bias


def _two_output_model(keras: Any, model: Any, head: CamHead) -> Any:
    return keras.Model(model.inputs, [head.probabilities, head.features], name=f"{model.name}_cam")


def _freeze_normalization(keras: Any, model: Any) -> int:
    """Turn each adapted Normalization layer's mean/variance into NumPy constants; returns how many were frozen.

    Keras computes them once as eager tensors from the layer's variables (``finalize_state``); a tf.function
    captures eager tensors as extra graph inputs, which tf2onnx leaves as inputs the ONNX graph then requires
    (EfficientNet, EfficientNetV2). NumPy arrays are embedded as constants instead.
    """
    frozen = 0
    for layer in _all_layers(model):
        # Adapted layers (EfficientNet) and layers built with a given mean/variance (EfficientNetV2) alike.
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "mean", None) is not None \
                and not isinstance(layer.mean, np.ndarray):
            layer.mean = keras.ops.convert_to_numpy(layer.mean)
            layer.variance = keras.ops.convert_to_numpy(layer.variance)
            frozen += 1
    return frozen


@contextlib.contextmanager
def convertible_layers(keras: Any, model: Any) -> Iterator[int]:
    """While converting, compute the layers tf2onnx cannot convert with equivalent plain TensorFlow ops.

    * Grouped Conv2D (ConvNeXt's depthwise 7×7): Keras' TensorFlow backend computes it in a
      ``tf.function(jit_compile=True)`` (TensorFlow has no CPU kernel for it), which tf2onnx keeps as a
      ``StatefulPartitionedCall`` onnxruntime cannot run. A depthwise one becomes ``depthwise_conv2d`` (ONNX
      Conv with group = C), others a split / conv / concat.
    * The exact GELU (ConvNeXt's MLPs): ``tf.nn.gelu`` uses ``Erfc``, which tf2onnx has no mapping for; it is
      written as ``x·(1 + erf(x/√2))/2`` (``Erf`` converts).

    Yields how many layers were rewritten; they are restored afterwards (each override shadows a method or
    attribute on that instance only).
    """
    import tensorflow as tf

    patched: list[tuple[Any, str, Any]] = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D) and getattr(layer, "groups", 1) > 1 \
                and layer.data_format == "channels_last":
            patched.append((layer, "convolution_op", _grouped_conv(tf, layer)))
        if getattr(getattr(layer, "activation", None), "__name__", "") == "gelu":
            patched.append((layer, "activation", _erf_gelu(tf)))
    saved = [(layer, name, vars(layer).get(name, _MISSING)) for layer, name, _ in patched]
    for layer, name, value in patched:
        vars(layer)[name] = value
    try:
        yield len(patched)
    finally:
        for layer, name, value in saved:
            if value is _MISSING:
                vars(layer).pop(name, None)
            else:
                vars(layer)[name] = value


_MISSING = object()


def _erf_gelu(tf: Any) -> Any:
    def gelu(x: Any) -> Any:
        return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / np.sqrt(2.0))))

    return gelu


def _grouped_conv(tf: Any, layer: Any) -> Any:
    groups = int(layer.groups)
    strides = [1, *layer.strides, 1]
    padding = layer.padding.upper()
    dilations = list(layer.dilation_rate)

    def convolution_op(inputs: Any, kernel: Any) -> Any:
        kh, kw, group_in, filters = (int(d) for d in kernel.shape)
        if group_in == 1 and filters == groups:  # depthwise, one output channel per input channel
            return tf.nn.depthwise_conv2d(inputs, tf.reshape(kernel, (kh, kw, filters, 1)), strides, padding,
                                          dilations=dilations)
        parts = zip(tf.split(inputs, groups, axis=-1), tf.split(kernel, groups, axis=-1), strict=True)
        return tf.concat([tf.nn.conv2d(x, k, strides, padding, dilations=dilations) for x, k in parts], axis=-1)

    return convolution_op


def _all_layers(model: Any) -> list[Any]:
    layers = []
    for layer in getattr(model, "layers", []):
        layers.append(layer)
        layers.extend(_all_layers(layer))
    return layers


def _convert(keras: Any, model: Any, head: CamHead, height: int, width: int, opset: int) -> bytes:
    import tensorflow as tf
    import tf2onnx

    _freeze_normalization(keras, model)
    cam_model = _two_output_model(keras, model, head)
    spec = (tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec)
    def serve(image: Any) -> dict[str, Any]:
        probabilities, features = cam_model([image], training=False)
        if head.needs_softmax:
            probabilities = tf.nn.softmax(probabilities, axis=-1)
        return {PROBABILITIES_NAME: tf.identity(probabilities), FEATURES_NAME: tf.identity(features)}

    with tempfile.TemporaryDirectory() as tmp, convertible_layers(keras, model):
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset,
                                                 output_path=str(Path(tmp) / "model.onnx"))
        return bytes(proto.SerializeToString())


def _verify(model: Any, head: CamHead, onnx_bytes: bytes, weights: np.ndarray, bias: np.ndarray,
            prep: Preprocess, height: int, width: int) -> Any:
    import keras
    import onnxruntime as ort

    inputs = parity_inputs(prep, height, width)
    probs_k, feats_k = (np.asarray(t) for t in _two_output_model(keras, model, head)([inputs], training=False))
    if head.needs_softmax:
        from .parity import softmax

        probs_k = softmax(probs_k).astype(np.float32)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs_o, feats_o = session.run([PROBABILITIES_NAME, FEATURES_NAME], {INPUT_NAME: inputs})
    return check_parity(probs_k, feats_k, probs_o, feats_o, weights, bias, seed=PARITY_SEED)


def parity_inputs(prep: Preprocess, height: int, width: int) -> np.ndarray:
    """The seeded uniform-noise images (preprocessed) on which Keras and ONNX are compared."""
    rng = np.random.default_rng(PARITY_SEED)
    pixels = rng.uniform(0, 255, (PARITY_SAMPLES, height, width, 3)).astype(np.float32)
    return ((pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)).astype(np.float32)


def _tool_versions() -> dict[str, str]:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
