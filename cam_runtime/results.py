"""Per-image results: predictions, maps, boxes, overlays and a JSON-ready summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .boxes import Box
from .errors import InvalidArgumentError
from .imaging import DecodedImage
from .render import colorize, overlay_bgr, to_order


@dataclass(frozen=True)
class Prediction:
    """One class of the top-k: id, label and probability."""

    class_id: int
    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"class_id": self.class_id, "label": self.label, "probability": self.probability}


@dataclass
class TargetMap:
    """The map of one target class for one image."""

    class_id: int
    label: str
    probability: float
    raw: npt.NDArray[np.float32]
    """The method's map at feature resolution [h, w], unnormalised (CAM keeps its sign)."""
    heatmap: npt.NDArray[np.float32]
    """``max(up(raw), 0) / max(up(raw))`` at the original image size, in [0, 1]; all zeros if nothing is > 0."""
    boxes: list[Box]

    def stats(self) -> dict[str, Any]:
        """Summary numbers of the map: raw min/max/mean and the peak position in image pixels."""
        peak_y, peak_x = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return {
            "raw_min": float(self.raw.min()), "raw_max": float(self.raw.max()), "raw_mean": float(self.raw.mean()),
            "peak": [int(peak_x), int(peak_y)],
            "active_fraction": float(np.count_nonzero(self.heatmap >= 0.5) / self.heatmap.size),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {"class_id": self.class_id, "label": self.label, "probability": self.probability,
                "boxes": [b.to_dict() for b in self.boxes], "stats": self.stats()}


@dataclass
class ExplainResult:
    """Everything explained about one image."""

    source: str
    image: DecodedImage
    method: str
    top_k: list[Prediction]
    targets: list[TargetMap]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """Original image width."""
        return self.image.width

    @property
    def height(self) -> int:
        """Original image height."""
        return self.image.height

    @property
    def boxes(self) -> list[Box]:
        """Boxes of the first target."""
        return self.targets[0].boxes if self.targets else []

    @property
    def heatmap(self) -> npt.NDArray[np.float32]:
        """The first target's [0, 1] map at the original image size."""
        return self._target(0).heatmap

    def _target(self, index: int) -> TargetMap:
        if not -len(self.targets) <= index < len(self.targets):
            raise InvalidArgumentError(f"target index {index} out of range (this result has {len(self.targets)})")
        return self.targets[index]

    def overlay(self, target: int = 0, *, alpha: float = 0.5, colormap: str = "jet", draw_boxes: bool = True,
                channel_order: str = "RGB") -> npt.NDArray[np.uint8]:
        """The heatmap blended over the original image, in ``channel_order`` ("RGB" default, or "BGR")."""
        t = self._target(target)
        image = overlay_bgr(self.image.bgr, t.heatmap, alpha=alpha, colormap=colormap,
                            boxes=t.boxes if draw_boxes else ())
        return to_order(image, channel_order)

    def colored_heatmap(self, target: int = 0, *, colormap: str = "jet",
                        channel_order: str = "RGB") -> npt.NDArray[np.uint8]:
        """The coloured heatmap alone at the original size."""
        return to_order(colorize(self._target(target).heatmap, colormap), channel_order)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary: source, size, method, top-k, per-target boxes and stats, timings."""
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "method": self.method,
            "top_k": [p.to_dict() for p in self.top_k],
            "targets": [t.to_dict() for t in self.targets],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


@dataclass(frozen=True)
class ImageFailure:
    """An input that could not be explained, with a one-line reason."""

    source: str
    error: str
    error_type: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"source": self.source, "error": self.error, "error_type": self.error_type}
