"""Bounding boxes from a map, as in the CAM paper: threshold at a fraction of the max, then components."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError

DEFAULT_THRESHOLD = 0.2


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
        ox0, oy0, ox1, oy1 = ((other.x0, other.y0, other.x1, other.y1) if isinstance(other, Box) else other)
        iw = max(0, min(self.x1, ox1) - max(self.x0, ox0))
        ih = max(0, min(self.y1, oy1) - max(self.y0, oy0))
        inter = iw * ih
        union = self.width * self.height + (ox1 - ox0) * (oy1 - oy0) - inter
        return inter / union if union > 0 else 0.0


def boxes_from_map(heatmap: npt.NDArray[np.float32], threshold: float = DEFAULT_THRESHOLD,
                   all_components: bool = False) -> list[Box]:
    """Boxes around the regions where ``heatmap >= threshold * heatmap.max()``.

    The largest connected component (8-connectivity) by default, or every component, largest first.
    An all-zero or non-positive map has no boxes.
    """
    if not 0.0 < threshold <= 1.0:
        raise InvalidArgumentError(f"box threshold must be in (0, 1], got {threshold}")
    if heatmap.ndim != 2:
        raise InvalidArgumentError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    peak = float(heatmap.max()) if heatmap.size else 0.0
    if not peak > 0.0:
        return []
    mask = (heatmap >= threshold * peak).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return []
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1
    if not all_components:
        order = order[:1]
    boxes = []
    for label in order:
        x, y, w, h, area = (int(v) for v in stats[label])
        region = heatmap[y:y + h, x:x + w][labels[y:y + h, x:x + w] == label]
        boxes.append(Box(x, y, x + w, y + h, area, float(region.mean() / peak)))
    return boxes
