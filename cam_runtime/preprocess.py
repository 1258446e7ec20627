"""Manifest-driven preprocessing: resize, channel order, mean/std, layout."""

from __future__ import annotations

from functools import lru_cache
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError
from .model.manifest import RESIZE_MODES, InputSpec, Preprocess

_CV2_RESIZE = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC}


def pil_nearest_indices(src: int, dst: int) -> npt.NDArray[np.intp]:
    """Source indices that Pillow's NEAREST resize picks (what ``keras.utils.load_img`` uses).

    Pillow walks ``x = 0.5*scale + i*scale`` by repeated addition in double precision and truncates;
    ``np.cumsum`` adds sequentially too, so the picks match Pillow's pixel for pixel. ``cv2.INTER_NEAREST``
    truncates ``i*scale`` instead and picks different pixels.
    """
    scale = src / dst
    steps = np.full(dst, scale, dtype=np.float64)
    steps[0] = scale * 0.5
    return np.minimum(np.cumsum(steps).astype(np.intp), src - 1)


@lru_cache(maxsize=64)
def _pil_nearest_maps(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[npt.NDArray[np.float32], ...]:
    """cv2.remap maps that pick Pillow's NEAREST pixels (whole-number coordinates, so no rounding is involved)."""
    rows = pil_nearest_indices(src_h, dst_h).astype(np.float32)
    cols = pil_nearest_indices(src_w, dst_w).astype(np.float32)
    return (np.ascontiguousarray(np.broadcast_to(cols[None, :], (dst_h, dst_w))),
            np.ascontiguousarray(np.broadcast_to(rows[:, None], (dst_h, dst_w))))


def resize_image(image: npt.NDArray[np.uint8], height: int, width: int, mode: str) -> npt.NDArray[np.uint8]:
    """Resize an HxWx3 image to (height, width) with the manifest's resize mode."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    if mode == "nearest":
        if max(image.shape[:2]) < 32767:  # cv2.remap's coordinate limit (SHRT_MAX)
            # The same pixels as the fancy-indexing gather below, ~15x faster.
            map_x, map_y = _pil_nearest_maps(image.shape[0], image.shape[1], height, width)
            return cast("npt.NDArray[np.uint8]", cv2.remap(image, map_x, map_y, cv2.INTER_NEAREST))
        rows = pil_nearest_indices(image.shape[0], height)
        cols = pil_nearest_indices(image.shape[1], width)
        return image[rows[:, None], cols[None, :]]
    try:
        interpolation = _CV2_RESIZE[mode]
    except KeyError:
        raise InvalidArgumentError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}") from None
    return cast("npt.NDArray[np.uint8]", cv2.resize(image, (width, height), interpolation=interpolation))


class Preprocessor:
    """Turns 8-bit BGR images into the model's input tensor exactly as the manifest describes."""

    def __init__(self, spec: InputSpec, preprocess: Preprocess, resize: str | None = None) -> None:
        self.spec = spec
        self.preprocess = preprocess
        self.resize_mode = resize or preprocess.resize
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidArgumentError(
                f"unknown resize mode {self.resize_mode!r}; expected one of {', '.join(RESIZE_MODES)}")
        mean = np.asarray(preprocess.mean, dtype=np.float32)
        std = np.asarray(preprocess.std, dtype=np.float32)
        # (x - mean) / std computed as x * scale + offset: one fused pass instead of two.
        self._scale = (1.0 / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)
        self._needs_rgb = preprocess.color_order == "RGB"
        # Every uint8 value's result, computed with exactly the float32 operations above (x * scale, then
        # + offset): cv2.LUT then does cast, scale and offset in one pass, bit-identical and ~5x faster.
        levels = np.arange(256, dtype=np.float32)[:, None] * self._scale
        levels += self._offset
        self._lut = np.ascontiguousarray(levels.reshape(1, 256, 3), dtype=np.float32)
        # NCHW: one single-channel table per model channel, and the BGR plane each one reads (the RGB swap
        # folded into the plane order): split + 3 LUTs into the output planes replace cvtColor, a 3-channel
        # LUT and a float32 transpose copy (~6x less work after the resize, same bits).
        self._plane_luts = [np.ascontiguousarray(levels[:, c].reshape(1, 256)) for c in range(3)]
        self._plane_source = (2, 1, 0) if self._needs_rgb else (0, 1, 2)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's input shape without the batch axis: (H, W, 3) or (3, H, W)."""
        h, w = self.spec.height, self.spec.width
        return (3, h, w) if self.spec.layout == "NCHW" else (h, w, 3)

    def tensor(self, bgr: npt.NDArray[np.uint8],
               out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
        """One image → its HxWxC (or CxHxW for NCHW) float32 input, without the batch axis.

        ``out`` (C-contiguous float32 of :attr:`shape`, e.g. a row of a batch) receives it without a copy.
        """
        if out is not None and (out.shape != self.shape or out.dtype != np.float32 or not out.flags.c_contiguous):
            raise InvalidArgumentError(f"out must be a C-contiguous float32 array of shape {self.shape}")
        resized = np.ascontiguousarray(resize_image(bgr, self.spec.height, self.spec.width, self.resize_mode))
        if self.spec.layout == "NCHW":
            planes = cv2.split(resized)
            x = np.empty(self.shape, dtype=np.float32) if out is None else out
            for c in range(3):
                cv2.LUT(planes[self._plane_source[c]], self._plane_luts[c], dst=x[c])
            return x
        if self._needs_rgb:
            resized = cast("npt.NDArray[np.uint8]", cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
        if out is None:
            return cast("npt.NDArray[np.float32]", cv2.LUT(resized, self._lut))
        cv2.LUT(resized, self._lut, dst=out)
        return out

    def tensor_from_float(self, pixels: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Float BGR pixels (0-255, already at the input size; e.g. masked or blended) → the model input."""
        x = np.asarray(pixels, dtype=np.float32)
        if self._needs_rgb:
            x = x[..., ::-1]
        x = x * self._scale
        x += self._offset
        if self.spec.layout == "NCHW":
            return np.ascontiguousarray(x.transpose(2, 0, 1))
        return np.ascontiguousarray(x)

    def batch(self, images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Several images → one contiguous batch tensor."""
        out = np.empty((len(images), *self.shape), dtype=np.float32)
        for i, image in enumerate(images):
            self.tensor(image, out=out[i])
        return out
