"""Seeded, non-degenerate initialisation for ``--weights random`` exports.

Keras' random initialisation leaves BatchNormalization at moving mean 0 / variance 1, so activations shrink layer
after layer in inference mode (MobileNetV2's features end up around 1e-13 and every probability is exactly
1/1000). Such a model tests nothing. Here, deterministically from a seed:

1. every BatchNormalization's moving statistics are set to the batch statistics of a fixed calibration batch
   (the bundled example photos, seeded crops of them and the exporter's seeded noise parity inputs: with
   statistics from smooth photos alone, noise's high-frequency energy grows layer after layer, EfficientNet's
   features reach ~1e4 and Keras and ONNX round-off then differ beyond the parity tolerance), so each layer's
   output is normalised;
2. the classifier Dense is re-drawn from a seeded normal scaled so the logits spread by about one unit, and centred
   so no class wins on every image by its bias alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cam_runtime.model import InputSpec, Preprocess

from .heads import CamHead

LOGIT_SPREAD = 1.0
"""Target standard deviation of the logits over the calibration images and classes (larger spreads amplify
Keras/ONNX round-off: random EfficientNetB0 features differ by ~5e-4 relative, which a spread of 3 turns into
probability differences above the 1e-4 parity tolerance)."""
CALIBRATION_CROPS = 4
"""Seeded random crops added to the example photos in the calibration batch."""


def calibration_batch(prep: Preprocess, height: int, width: int, seed: int) -> np.ndarray:
    """The bundled example photos plus seeded crops of them, preprocessed as the manifest will describe."""
    from importlib import resources

    from cam_runtime.imaging import load_image
    from cam_runtime.preprocess import Preprocessor

    folder = resources.files("cam_runtime").joinpath("data/examples")
    photos = [load_image(bytes(p.read_bytes())).bgr for p in sorted(folder.iterdir(), key=lambda p: p.name)
              if p.name.endswith(".jpg")]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(CALIBRATION_CROPS):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 0.8)), int(w * rng.uniform(0.4, 0.8))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crops.append(np.ascontiguousarray(photo[y:y + ch, x:x + cw]))
    preprocessor = Preprocessor(InputSpec("image", "NHWC", height, width), prep)
    return preprocessor.batch(photos + crops)


def initialise_random_model(keras: Any, model: Any, head: CamHead | None, batch: np.ndarray, seed: int) -> None:
    """Calibrate BatchNormalization statistics on ``batch`` and redraw a GAP → Dense head's classifier (in place);
    other heads (``head`` None) keep their seeded initialisation."""
    from .exporter import _all_layers

    layers = _all_layers(model)
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    # Dropout (EfficientNet's stochastic depth drops whole residual branches) is off during the pass, so the
    # statistics describe the activations inference will see.
    dropouts = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer, "momentum", layer.momentum) for layer in norms] + \
        [(layer, "rate", layer.rate) for layer in dropouts]
    try:
        for layer in norms:
            layer.momentum = 0.0  # one training-mode pass sets moving stats to this batch's statistics
        for layer in dropouts:
            layer.rate = 0.0
        model(batch, training=True)
    finally:
        for layer, name, value in saved:
            setattr(layer, name, value)
    if head is None:
        return
    features = np.asarray(keras.Model(model.inputs, head.features)(batch, training=False), dtype=np.float64)
    pooled = features.mean(axis=(1, 2))
    kernel_shape = tuple(int(d) for d in head.kernel.shape)  # [C, K], also for a 1×1 Conv2D classifier
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal(kernel_shape)
    logits = pooled @ kernel
    scale = LOGIT_SPREAD / max(float(logits.std()), 1e-30)
    kernel *= scale
    head.dense.kernel.assign(kernel.reshape(tuple(head.dense.kernel.shape)).astype(np.float32))
    if head.dense.use_bias:
        head.dense.bias.assign((-(pooled @ kernel).mean(axis=0)).astype(np.float32))
