"""A PNG of mean deletion and insertion curves per method, drawn with OpenCV (no matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import numpy.typing as npt

from .errors import ImageEncodeError

PANEL_W, PANEL_H, MARGIN = 420, 300, 48
COLOURS_BGR: tuple[tuple[int, int, int], ...] = (
    (180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
    (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23))
"""The tab10 palette in BGR, one colour per method."""
FONT = cv2.FONT_HERSHEY_SIMPLEX

Curves = Mapping[str, Sequence[float] | npt.NDArray[np.floating]]
"""Method name → curve sampled at equal steps over [0, 1] of the pixels."""


def _panel(title: str, curves: Curves) -> npt.NDArray[np.uint8]:
    panel = np.full((PANEL_H + 2 * MARGIN, PANEL_W + 2 * MARGIN, 3), 255, dtype=np.uint8)
    x0, y0, x1, y1 = MARGIN, MARGIN, MARGIN + PANEL_W, MARGIN + PANEL_H
    for tick in range(6):
        fraction = tick / 5
        gx, gy = round(x0 + fraction * PANEL_W), round(y1 - fraction * PANEL_H)
        cv2.line(panel, (gx, y0), (gx, y1), (230, 230, 230), 1)
        cv2.line(panel, (x0, gy), (x1, gy), (230, 230, 230), 1)
        cv2.putText(panel, f"{fraction:.1f}", (gx - 10, y1 + 16), FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(panel, f"{fraction:.1f}", (x0 - 30, gy + 4), FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(panel, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(panel, title, (x0, y0 - 14), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, "fraction of pixels", (x0 + PANEL_W // 2 - 60, y1 + 34), FONT, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    for index, (name, curve) in enumerate(curves.items()):
        values = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 1.0)
        if values.size < 2:
            continue
        xs = x0 + np.linspace(0.0, 1.0, values.size) * PANEL_W
        ys = y1 - values * PANEL_H
        points = np.round(np.stack([xs, ys], axis=1) * 16).astype(np.int32)  # 4 fractional bits
        colour = COLOURS_BGR[index % len(COLOURS_BGR)]
        cv2.polylines(panel, [points], False, colour, 2, cv2.LINE_AA, shift=4)
        ly = y0 + int(0.3 * PANEL_H) + 16 * index  # mid-height: clear of both curve families
        cv2.line(panel, (x1 - 120, ly - 4), (x1 - 100, ly - 4), colour, 2, cv2.LINE_AA)
        cv2.putText(panel, name, (x1 - 95, ly), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def curves_image(deletion: Curves, insertion: Curves) -> npt.NDArray[np.uint8]:
    """Two panels side by side (deletion, insertion): target probability against the fraction of pixels."""
    return np.hstack([_panel("deletion (lower is better)", deletion), _panel("insertion (higher is better)",
                                                                               insertion)])


def curves_png(deletion: Curves, insertion: Curves) -> bytes:
    """The two-panel plot encoded as PNG bytes."""
    ok, buffer = cv2.imencode(".png", curves_image(deletion, insertion))
    if not ok:
        raise ImageEncodeError("png")
    return buffer.tobytes()
