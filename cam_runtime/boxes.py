"""Bounding boxes from a map, as in the CAM paper: threshold at a fraction of the max, then components."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from .defaults import BOX_THRESHOLD as DEFAULT_THRESHOLD
from .errors import InvalidArgumentError

_MAX_CONTOUR_COMPONENTS = 64
"""Above this many components (noise-like maps) one labelling pass beats a flood fill per component."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates; ``x1``/``y1`` are exclusive (width = x1 - x0)."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    """Number of map pixels of the component inside the box."""
    score: float
    """Mean normalised map value over the component."""

    @property
    def width(self) -> int:
        """x1 - x0."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """y1 - y0."""
        return self.y1 - self.y0

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready fields."""
        return asdict(self)

    def iou(self, other: Box | tuple[int, int, int, int]) -> float:
        """Intersection over union with another box (x0, y0, x1, y1 exclusive)."""
        theirs = (other.x0, other.y0, other.x1, other.y1) if isinstance(other, Box) else other
        return box_iou((self.x0, self.y0, self.x1, self.y1), theirs)


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive x1/y1; 0 when the union is empty."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check_box_threshold(threshold: float, option: str = "box threshold") -> None:
    """The one check of a box threshold: 0 < threshold ≤ 1 (``option`` names it in the error)."""
    if not 0.0 < threshold <= 1.0:
        raise InvalidArgumentError(f"{option} must be in (0, 1], got {threshold}")


def boxes_from_map(heatmap: npt.NDArray[np.float32], threshold: float = DEFAULT_THRESHOLD,
                   all_components: bool = False) -> list[Box]:
    """Boxes around the regions where ``heatmap >= threshold * heatmap.max()``.

    The largest connected component (8-connectivity) by default, or every component, largest first
    (equal areas in the order ``cv2.connectedComponents`` would label them).
    An all-zero or non-positive map has no boxes.
    """
    check_box_threshold(threshold)
    if heatmap.ndim != 2:
        raise InvalidArgumentError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    peak = float(heatmap.max()) if heatmap.size else 0.0
    if not peak > 0.0:
        return []
    mask = (heatmap >= threshold * peak).view(np.uint8)
    # cv2.connectedComponentsWithStats costs ~6 ns per pixel whatever the content (0.45 ms for 450x300);
    # the outer contours (Suzuki: 8-connected foreground, like the components) give every component's
    # bounding box for ~30 us, and a flood fill inside that box gives its pixels, so the work scales with
    # the components' boxes rather than the image.
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    if len(contours) > _MAX_CONTOUR_COMPONENTS:
        return _boxes_by_labelling(heatmap, mask, peak, all_components)
    if len(contours) == 1 and heatmap.dtype == np.float32:
        # One component and no hole (flat maps cover the whole image): its pixels are the mask's, so the
        # area is a count and the score a thresholded sum, with no per-pixel flood fill.
        x, y, w, h = cv2.boundingRect(contours[0])
        values = np.ascontiguousarray(heatmap[y:y + h, x:x + w])
        below = float(np.nextafter(np.float32(threshold * peak), np.float32(-np.inf)))  # '>' below == '>='
        total = cv2.sumElems(cv2.threshold(values, below, 0.0, cv2.THRESH_TOZERO)[1])[0]
        area = cv2.countNonZero(mask[y:y + h, x:x + w])
        return [Box(x, y, x + w, y + h, area, float(total / area / peak))]
    # cv2's stubs type a Rect as Sequence[int]; boundingRect returns an (x, y, w, h) tuple.
    outer = [(*cast("tuple[int, int, int, int]", cv2.boundingRect(c)), c)
             for c, links in zip(contours, hierarchy[0], strict=True)
             if links[3] == -1]  # the rest are holes' boundaries
    if not all_components:  # a component has at most w*h pixels: boxes smaller than the best so far can't win
        outer.sort(key=lambda o: -o[2] * o[3])
    components = []
    best = 0
    for x, y, w, h, contour in outer:
        if not all_components and w * h < best:
            break
        seed = (int(contour[0, 0, 0]) - x, int(contour[0, 0, 1]) - y)
        region = mask[y:y + h, x:x + w].copy()
        area = cv2.floodFill(region, None, seed, 2, 0, 0, 8)[0]
        best = max(best, area)
        components.append((-area, _label_order(region, x, y), x, y, w, h, region))
    components.sort(key=lambda c: (c[0], c[1]))
    if not all_components:
        components = components[:1]
    boxes = []
    for neg_area, _, x, y, w, h, region in components:
        inside = (region == 2).view(np.uint8)
        values = heatmap[y:y + h, x:x + w]
        mean = cv2.mean(np.ascontiguousarray(values, dtype=values.dtype if values.dtype == np.float64
                                             else np.float32), inside)[0]
        boxes.append(Box(x, y, x + w, y + h, int(-neg_area), float(mean / peak)))
    return boxes


def _label_order(region: npt.NDArray[np.uint8], x: int, y: int) -> tuple[int, int]:
    """Where OpenCV's block-based labelling (2x2 blocks in raster order) first meets a filled component."""
    block_row = y // 2
    rows = region[:2 * block_row + 2 - y]  # the component's first block row (one or two image rows)
    first_col = int(np.argmax((rows == 2).any(axis=0)))
    return block_row, (x + first_col) // 2


def _boxes_by_labelling(heatmap: npt.NDArray[np.float32], mask: npt.NDArray[np.uint8], peak: float,
                        all_components: bool) -> list[Box]:
    """The same boxes from one full-image labelling with stats (for maps with very many components)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1
    if not all_components:
        order = order[:1]
    boxes = []
    for label in order:
        x, y, w, h, area = (int(v) for v in stats[label])
        region = heatmap[y:y + h, x:x + w][labels[y:y + h, x:x + w] == label]
        boxes.append(Box(x, y, x + w, y + h, area, float(region.mean() / peak)))
    return boxes
