"""The gradient-defined CAM methods as their papers write them, from activations and per-position gradients.

The independent reference of the autograd tests: the runtime's closed forms (linear heads) and per-position
formulas (graph heads) must reproduce these on tf.GradientTape's gradients.
"""

from __future__ import annotations

import numpy as np


def maps_from_gradients(acts: np.ndarray, grads: np.ndarray) -> dict[str, np.ndarray]:
    """Grad-CAM, HiResCAM, XGrad-CAM, LayerCAM and Grad-CAM++ maps [h, w] from [h, w, C] activations and gradients."""
    acts, grads = acts.astype(np.float64), grads.astype(np.float64)
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    sums = acts.sum(axis=(0, 1))
    g2, g3 = grads**2, grads**3
    denominator = 2 * g2 + sums * g3
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=(grads != 0) & (denominator != 0))
    xgrad = np.divide((grads * acts).sum(axis=(0, 1)), sums, out=np.zeros_like(sums), where=sums != 0)
    return {
        "gradcam": relu(acts @ grads.mean(axis=(0, 1))),
        "hirescam": relu((grads * acts).sum(axis=2)),
        "xgradcam": relu(acts @ xgrad),
        "layercam": relu((relu(grads) * acts).sum(axis=2)),
        "gradcam++": relu(acts @ (alpha * relu(grads)).sum(axis=(0, 1))),
    }
