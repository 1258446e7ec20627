"""Manifest-driven preprocessing: resize, channel order, mean/std, layout."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from .errors import InvalidArgumentError
from .manifest import RESIZE_MODES, InputSpec, Preprocess

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


def resize_image(image: npt.NDArray[np.uint8], height: int, width: int, mode: str) -> npt.NDArray[np.uint8]:
    """Resize an HxWx3 image to (height, width) with the manifest's resize mode."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    if mode == "nearest":
        rows = pil_nearest_indices(image.shape[0], height)
        cols = pil_nearest_indices(image.shape[1], width)
        return image[rows[:, None], cols[None, :]]
    try:
        interpolation = _CV2_RESIZE[mode]
    except KeyError:
        raise InvalidArgumentError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}") from None
    return cv2.resize(image, (width, height), interpolation=interpolation)


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

    def tensor(self, bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """One image → its HxWxC (or CxHxW for NCHW) float32 input, without the batch axis."""
        resized = resize_image(bgr, self.spec.height, self.spec.width, self.resize_mode)
        if self._needs_rgb:
            resized = resized[:, :, ::-1]
        x = resized.astype(np.float32)
        x *= self._scale
        x += self._offset
        if self.spec.layout == "NCHW":
            return np.ascontiguousarray(x.transpose(2, 0, 1))
        return x

    def batch(self, images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Several images → one contiguous batch tensor."""
        shape = ((3, self.spec.height, self.spec.width) if self.spec.layout == "NCHW"
                 else (self.spec.height, self.spec.width, 3))
        out = np.empty((len(images), *shape), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self.tensor(image)
        return out
