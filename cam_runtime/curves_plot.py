"""A PNG of mean deletion and insertion curves per method, drawn with OpenCV (no matplotlib).

Each method has its own colour, dash pattern and marker (so curves stay apart in grey print and where colours are
close), and the legend sits in a column right of each plot, never over the curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from .errors import ImageEncodeError

PANEL_W, PANEL_H, MARGIN = 420, 300, 48
LEFT = 64
"""Left margin: tick labels and the vertical y-axis label."""
LEGEND_W = 150
"""The legend column right of each plot area."""
COLOURS_BGR: tuple[tuple[int, int, int], ...] = (
    (180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
    (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23))
"""The tab10 palette in BGR, one colour per method."""
DASHES: tuple[tuple[int, int] | None, ...] = (None, (10, 6), (3, 4))
"""Line patterns (on, off) in pixels: solid, dashed, dotted."""
MARKERS: tuple[int, ...] = (
    cv2.MARKER_SQUARE, cv2.MARKER_TRIANGLE_UP, cv2.MARKER_DIAMOND, cv2.MARKER_TILTED_CROSS,
    cv2.MARKER_TRIANGLE_DOWN, cv2.MARKER_STAR, cv2.MARKER_CROSS)
N_MARKERS = 6
"""Markers per curve, spread along x (shifted per method so overlapping curves show each)."""
FONT = cv2.FONT_HERSHEY_SIMPLEX
Y_LABEL = "target class probability"
X_LABEL = "fraction of pixels"

Curves = Mapping[str, Sequence[float] | npt.NDArray[np.floating]]
"""Method name → curve sampled at equal steps over [0, 1] of the pixels."""


@dataclass(frozen=True)
class LineStyle:
    """How one method's curve is drawn."""

    colour: tuple[int, int, int]
    dash: tuple[int, int] | None
    marker: int


def line_style(index: int) -> LineStyle:
    """The style of the ``index``-th method: colour, dash and marker cycle with co-prime periods (10, 3, 7)."""
    return LineStyle(COLOURS_BGR[index % len(COLOURS_BGR)], DASHES[index % len(DASHES)],
                     MARKERS[index % len(MARKERS)])


def plot_box() -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the plot area inside one panel; the legend column starts right of x1."""
    return LEFT, MARGIN, LEFT + PANEL_W, MARGIN + PANEL_H


def _polyline(image: npt.NDArray[np.uint8], points: npt.NDArray[np.float64], style: LineStyle) -> None:
    """Draw a polyline solid or in the style's dash pattern (measured along the line)."""
    if style.dash is None:
        fixed = np.round(points * 16).astype(np.int32)  # 4 fractional bits
        cv2.polylines(image, [fixed], False, style.colour, 2, cv2.LINE_AA, shift=4)
        return
    steps = np.hypot(*np.diff(points, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    if along[-1] <= 0:
        return
    samples = np.arange(0.0, along[-1], 1.0)
    dense = np.stack([np.interp(samples, along, points[:, 0]), np.interp(samples, along, points[:, 1])], axis=1)
    on, off = style.dash
    visible = (samples % (on + off)) < on
    edges = np.flatnonzero(np.diff(np.concatenate([[0], visible.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if stop - start >= 2:
            run = np.round(dense[start:stop] * 16).astype(np.int32)
            cv2.polylines(image, [run], False, style.colour, 2, cv2.LINE_AA, shift=4)


def _marker(image: npt.NDArray[np.uint8], x: float, y: float, style: LineStyle) -> None:
    cv2.drawMarker(image, (round(x), round(y)), style.colour, style.marker, 9, 2, cv2.LINE_AA)


def _y_label(panel: npt.NDArray[np.uint8], x0: int, y0: int, y1: int) -> None:
    """The y-axis label, written horizontally on a strip and rotated a quarter turn anticlockwise."""
    (width, height), baseline = cv2.getTextSize(Y_LABEL, FONT, 0.4, 1)
    strip = np.full((height + baseline + 4, width + 4, 3), 255, dtype=np.uint8)
    cv2.putText(strip, Y_LABEL, (2, height + 2), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    turned = np.ascontiguousarray(np.rot90(strip))
    top = max(0, (y0 + y1) // 2 - turned.shape[0] // 2)
    left = max(0, x0 - 44 - turned.shape[1])
    panel[top: top + turned.shape[0], left: left + turned.shape[1]] = turned


def _panel(title: str, curves: Curves) -> npt.NDArray[np.uint8]:
    panel = np.full((PANEL_H + 2 * MARGIN, LEFT + PANEL_W + LEGEND_W, 3), 255, dtype=np.uint8)
    x0, y0, x1, y1 = plot_box()
    for tick in range(6):
        fraction = tick / 5
        gx, gy = round(x0 + fraction * PANEL_W), round(y1 - fraction * PANEL_H)
        cv2.line(panel, (gx, y0), (gx, y1), (230, 230, 230), 1)
        cv2.line(panel, (x0, gy), (x1, gy), (230, 230, 230), 1)
        cv2.putText(panel, f"{fraction:.1f}", (gx - 10, y1 + 16), FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(panel, f"{fraction:.1f}", (x0 - 30, gy + 4), FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(panel, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(panel, title, (x0, y0 - 14), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, X_LABEL, (x0 + PANEL_W // 2 - 60, y1 + 34), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    _y_label(panel, x0, y0, y1)
    n = max(1, len(curves))
    for index, (name, curve) in enumerate(curves.items()):
        values = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 1.0)
        if values.size < 2:
            continue
        style = line_style(index)
        xs = x0 + np.linspace(0.0, 1.0, values.size) * PANEL_W
        ys = y1 - values * PANEL_H
        _polyline(panel, np.stack([xs, ys], axis=1), style)
        for k in range(N_MARKERS):
            fraction = (k + 0.5 + index / n) / (N_MARKERS + 1)
            _marker(panel, x0 + fraction * PANEL_W, y1 - float(np.interp(fraction, np.linspace(0, 1, values.size),
                                                                         values)) * PANEL_H, style)
        # The legend column right of the plot: a sample of the line (with its marker) and the name.
        ly = y0 + 10 + 18 * index
        sample = np.array([[x1 + 10, ly - 4], [x1 + 44, ly - 4]], dtype=np.float64)
        _polyline(panel, sample, style)
        _marker(panel, x1 + 27, ly - 4, style)
        cv2.putText(panel, name, (x1 + 50, ly), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
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
