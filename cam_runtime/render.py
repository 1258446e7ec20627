"""Heatmap colouring and overlays with OpenCV colormaps; channel order always explicit.

Overlay weights are named for what they weigh: ``heatmap_weight`` is the coloured map's share of each pixel
and ``image_weight`` (pytorch-grad-cam's name) the photo's, ``heatmap_weight = 1 − image_weight``. torch-cam's
``overlay_mask(alpha=a)`` weighs the *image* by ``a``: it is ``image_weight=a`` here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from .boxes import Box
from .errors import InvalidArgumentError
from .maps import upsample

COLORMAPS: dict[str, int] = {
    name.removeprefix("COLORMAP_").lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}
"""OpenCV colormap names (lower case, e.g. ``jet``, ``turbo``, ``inferno``) → cv2 constants."""


def colormap_id(name: str) -> int:
    """The cv2 constant for a colormap name."""
    try:
        return COLORMAPS[name.lower()]
    except KeyError:
        raise InvalidArgumentError(f"unknown colormap {name!r}; available: {', '.join(sorted(COLORMAPS))}") from None


def colorize(heatmap: npt.NDArray[np.float32], colormap: str = "jet") -> npt.NDArray[np.uint8]:
    """A [0, 1] map → BGR uint8 colour image."""
    colormap_code = colormap_id(colormap)
    if heatmap.dtype == np.float32 and heatmap.size and float(heatmap.min()) >= 0.0:
        # One saturating, round-half-to-even pass: the same levels as rint + clip for non-negative maps,
        # ~4x faster at 720p (every video frame pays it). Negative or NaN maps take the NumPy path.
        levels = cast("npt.NDArray[np.uint8]", cv2.convertScaleAbs(heatmap, alpha=255.0))
    else:
        levels = np.clip(np.rint(heatmap * 255.0), 0, 255).astype(np.uint8)
    if levels.ndim != 2 or not levels.size:
        return cast("npt.NDArray[np.uint8]", cv2.applyColorMap(levels, colormap_code))
    # cv2.applyColorMap on a gray image is a 256-entry lookup, but it expands the image to three channels
    # first (~0.3 ms at 450x300); one gather of 4-byte BGRx entries and a BGRA→BGR pass give the same pixels
    # in about a third of the time.
    packed = np.take(_packed_colormap(colormap_code), levels)
    return cast("npt.NDArray[np.uint8]", cv2.cvtColor(packed.view(np.uint8).reshape(*levels.shape, 4),
                                                      cv2.COLOR_BGRA2BGR))


@functools.cache
def _packed_colormap(colormap_code: int) -> npt.NDArray[np.uint32]:
    """OpenCV's colours for the 256 levels, each BGR plus a zero byte packed in one uint32 (native order)."""
    colours = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), colormap_code).reshape(256, 3)
    packed = np.zeros((256, 4), np.uint8)
    packed[:, :3] = colours
    table = packed.view(np.uint32).reshape(256)
    table.flags.writeable = False  # shared by every call
    return table


def overlay_bgr(image_bgr: npt.NDArray[np.uint8], heatmap: npt.NDArray[np.float32], *, alpha: float = 0.5,
                colormap: str = "jet", boxes: Sequence[Box] = (),
                box_color: tuple[int, int, int] = (0, 255, 0)) -> npt.NDArray[np.uint8]:
    """Blend a coloured heatmap over a BGR image (``(1-alpha)·image + alpha·colour``) and draw boxes."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape != image_bgr.shape[:2]:
        raise InvalidArgumentError(f"heatmap shape {heatmap.shape} differs from image shape {image_bgr.shape[:2]}")
    colours = colorize(heatmap, colormap)
    # Blended into the colour image's own buffer: one image-size allocation fewer per overlay.
    blended = cast("npt.NDArray[np.uint8]", cv2.addWeighted(image_bgr, 1.0 - alpha, colours, alpha, 0.0, dst=colours))
    thickness = max(1, round(max(image_bgr.shape[:2]) / 300))
    for box in boxes:
        cv2.rectangle(blended, (box.x0, box.y0), (box.x1 - 1, box.y1 - 1), box_color, thickness)
    return blended


def to_order(image_bgr: npt.NDArray[np.uint8], order: str) -> npt.NDArray[np.uint8]:
    """Return a BGR image in the requested channel order ("RGB" or "BGR")."""
    if order == "BGR":
        return image_bgr
    if order == "RGB":
        return cast("npt.NDArray[np.uint8]", cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
    raise InvalidArgumentError(f"channel order must be 'RGB' or 'BGR', got {order!r}")


def blend_weight(heatmap_weight: float | None, image_weight: float | None, default: float = 0.5) -> float:
    """The heatmap's share from either name (they must agree when both are given), checked to be in [0, 1]."""
    if heatmap_weight is None and image_weight is None:
        return default
    if heatmap_weight is not None and image_weight is not None and abs(heatmap_weight + image_weight - 1.0) > 1e-9:
        raise InvalidArgumentError(f"heatmap_weight ({heatmap_weight}) and image_weight ({image_weight}) must add "
                                   "up to 1; give one of them")
    weight = heatmap_weight if heatmap_weight is not None else 1.0 - cast(float, image_weight)
    if not 0.0 <= weight <= 1.0:
        raise InvalidArgumentError(f"overlay weights must be in [0, 1], got heatmap_weight={weight}")
    return weight


def _as_uint8_bgr(image: npt.NDArray[np.generic], channel_order: str) -> npt.NDArray[np.uint8]:
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None].repeat(3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidArgumentError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got shape {list(array.shape)}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise InvalidArgumentError("a float image must hold finite values in [0, 1] (uint8 for 0-255)")
        pixels = np.rint(array * 255.0).astype(np.uint8)
    else:
        raise InvalidArgumentError(f"image dtype must be uint8 or float in [0, 1], got {array.dtype}")
    if channel_order not in ("RGB", "BGR"):
        raise InvalidArgumentError(f"channel order must be 'RGB' or 'BGR', got {channel_order!r}")
    return np.ascontiguousarray(pixels[..., ::-1] if channel_order == "RGB" else pixels)


def overlay(image: npt.NDArray[np.generic], heatmap: npt.NDArray[np.floating], *, heatmap_weight: float | None = None,
            image_weight: float | None = None, colormap: str = "jet", channel_order: str = "RGB",
            boxes: Sequence[Box] = ()) -> npt.NDArray[np.uint8]:
    """Any image with any [0, 1] map on top: the map is resized bilinearly to the image, coloured and blended.

    ``image`` is uint8 or float in [0, 1], grey or 3/4 channels in ``channel_order`` ("RGB", as from PIL or
    skimage; "BGR" for OpenCV), and the result is uint8 in the same order. ``heatmap_weight`` (default 0.5)
    or ``image_weight`` set the blend (see the module notes for the names other libraries use).
    """
    weight = blend_weight(heatmap_weight, image_weight)
    bgr = _as_uint8_bgr(image, channel_order)
    levels = np.asarray(heatmap, dtype=np.float32)
    if levels.ndim != 2 or levels.size == 0:
        raise InvalidArgumentError(f"heatmap must be a non-empty [h, w] array, got shape {list(levels.shape)}")
    if not np.isfinite(levels).all() or levels.min() < 0.0 or levels.max() > 1.0:
        raise InvalidArgumentError("heatmap values must be finite and in [0, 1]; normalise a raw map first "
                                   "(cam_runtime.maps.normalize)")
    if levels.shape != bgr.shape[:2]:
        levels = np.clip(upsample(levels, bgr.shape[0], bgr.shape[1]), 0.0, 1.0)
    return to_order(overlay_bgr(bgr, levels, alpha=weight, colormap=colormap, boxes=boxes), channel_order)
