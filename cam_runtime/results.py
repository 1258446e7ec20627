"""Per-image results: predictions, maps, boxes, overlays and a JSON-ready summary."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .boxes import Box
from .errors import InvalidArgumentError, OutputExistsError
from .imaging import DecodedImage
from .render import blend_weight, colorize, overlay_bgr, to_order

SAVE_KINDS: tuple[str, ...] = ("overlay", "heatmap", "json", "map")
"""What :meth:`ExplainResult.save` writes: the overlay, the coloured heatmap, the JSON summary, the raw map (.npy)."""
DEFAULT_SAVE: tuple[str, ...] = ("overlay", "heatmap", "json")
_IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


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

    def overlay(self, target: int = 0, *, heatmap_weight: float | None = None, image_weight: float | None = None,
                colormap: str = "jet", draw_boxes: bool = True, channel_order: str = "RGB",
                alpha: float | None = None) -> npt.NDArray[np.uint8]:
        """The heatmap blended over the original image, in ``channel_order`` ("RGB" default, or "BGR").

        ``heatmap_weight`` (default 0.5) is the map's share of each pixel, ``image_weight`` the photo's
        (pytorch-grad-cam's name); ``alpha`` is the old name of ``heatmap_weight`` (deprecated: torch-cam's
        ``alpha`` means the image's weight).
        """
        if alpha is not None:
            warnings.warn("overlay(alpha=...) is deprecated: use heatmap_weight= (same meaning) or image_weight=",
                          DeprecationWarning, stacklevel=2)
            if heatmap_weight is None:
                heatmap_weight = alpha
        t = self._target(target)
        image = overlay_bgr(self.image.bgr, t.heatmap, alpha=blend_weight(heatmap_weight, image_weight),
                            colormap=colormap, boxes=t.boxes if draw_boxes else ())
        return to_order(image, channel_order)

    def colored_heatmap(self, target: int = 0, *, colormap: str = "jet",
                        channel_order: str = "RGB") -> npt.NDArray[np.uint8]:
        """The coloured heatmap alone at the original size."""
        return to_order(colorize(self._target(target).heatmap, colormap), channel_order)

    def save(self, path: str | Path, what: str | Sequence[str] = DEFAULT_SAVE, *,
             target: int = 0, image_format: str = "png", overwrite: bool = False, colormap: str = "jet",
             heatmap_weight: float | None = None) -> list[Path]:
        """Write the result's files, channel order right for the format; returns the paths written.

        ``path`` ending in .png/.jpg/.jpeg/.webp writes one image (``what`` "overlay", the default there, or
        "heatmap"), in .json the summary, in .npy the raw map; any other path is a folder that receives
        ``<name>.overlay.<fmt>``, ``<name>.heatmap.<fmt>``, ``<name>.json`` and ``<name>.map.npy`` for the kinds
        in ``what`` (``<name>`` from the source). Each file is written atomically; existing files are kept and
        reported unless ``overwrite``.
        """
        from .outputs import safe_part, save_npy_atomic, strict_json, write_image_atomic, write_text_atomic

        kinds = [what] if isinstance(what, str) else list(what)
        unknown = [k for k in kinds if k not in SAVE_KINDS]
        if unknown or not kinds:
            raise InvalidArgumentError(f"what must be one or more of {', '.join(SAVE_KINDS)}, got {what!r}")
        destination = Path(path)
        suffix = destination.suffix.lower()
        single = {".json": "json", ".npy": "map", **dict.fromkeys(_IMAGE_SUFFIXES, "overlay")}.get(suffix)
        if single is not None:
            if len(kinds) == 1:
                single = kinds[0]
            elif tuple(kinds) != DEFAULT_SAVE:
                raise InvalidArgumentError(f"{destination.name} is one file: save one kind to it, not {kinds}")
            expected = {"json": (".json",), "map": (".npy",)}.get(single, tuple(_IMAGE_SUFFIXES))
            if suffix not in expected:
                raise InvalidArgumentError(f"{single!r} cannot be written as {suffix} (use {', '.join(expected)})")
            plan = [(single, destination)]
            image_format = _IMAGE_SUFFIXES.get(suffix, image_format)
        else:
            name = safe_part(Path(self.source).stem or "image") if not self.source.startswith("<") else "image"
            names = {"overlay": f"{name}.overlay.{image_format}", "heatmap": f"{name}.heatmap.{image_format}",
                     "json": f"{name}.json", "map": f"{name}.map.npy"}
            plan = [(kind, destination / names[kind]) for kind in dict.fromkeys(kinds)]
        existing = [p for _, p in plan if p.exists()]
        if existing and not overwrite:
            raise OutputExistsError(existing[0])
        written = []
        for kind, file in plan:
            if kind == "overlay":
                bgr = self.overlay(target, heatmap_weight=heatmap_weight, colormap=colormap, channel_order="BGR")
                written.append(write_image_atomic(file, bgr, image_format))
            elif kind == "heatmap":
                written.append(write_image_atomic(file, self.colored_heatmap(target, colormap=colormap,
                                                                             channel_order="BGR"), image_format))
            elif kind == "json":
                written.append(write_text_atomic(file, strict_json(self.to_dict()) + "\n"))
            else:
                written.append(save_npy_atomic(file, self._target(target).raw))
        return written

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
