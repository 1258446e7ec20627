"""Feature-resolution maps to image-size heatmaps: bilinear upsampling, then ReLU-max normalisation."""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np
import numpy.typing as npt


def upsample(raw: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    """Bilinear resize with half-pixel centres (cv2.INTER_LINEAR) of an [h, w] map to [height, width]."""
    return cast("npt.NDArray[np.float32]", cv2.resize(np.ascontiguousarray(raw, dtype=np.float32), (width, height),
                                                     interpolation=cv2.INTER_LINEAR))


def normalize(heatmap: npt.NDArray[np.float32], *, inplace: bool = False) -> npt.NDArray[np.float32]:
    """``max(m, 0) / max(m)``: positive evidence scaled to [0, 1]; all zeros when no value is positive.

    Negative values (evidence against the class, present in CAM) are clipped, the largest value becomes 1,
    and zero stays zero, so a box threshold of 0.5 means "half the maximum" (the CAM paper used 0.2).
    ``inplace`` reuses a float32 ``heatmap``'s memory (the same numbers, one image-size pass fewer).
    """
    peak = float(heatmap.max()) if heatmap.size else 0.0
    if not peak > 0.0 or not np.isfinite(peak):
        if inplace and heatmap.dtype == np.float32:
            heatmap.fill(0.0)
            return heatmap
        return np.zeros_like(heatmap, dtype=np.float32)
    if inplace and heatmap.dtype == np.float32 and heatmap.flags.c_contiguous:
        # cv2's TOZERO threshold is max(m, 0) at ~10x the speed of np.maximum with a scalar (no NaN here:
        # a NaN would have made the peak non-finite above).
        out = cast("npt.NDArray[np.float32]", cv2.threshold(heatmap, 0.0, 0.0, cv2.THRESH_TOZERO, dst=heatmap)[1])
    else:
        out = np.maximum(heatmap, 0.0)
    if peak < np.finfo(np.float32).tiny:  # 1/peak would overflow float32: divide instead of multiplying
        out /= np.float32(peak)
    else:
        out *= np.float32(1.0 / peak)
    return out.astype(np.float32, copy=False)


def heatmap_at(raw: npt.NDArray[np.float32], height: int, width: int) -> npt.NDArray[np.float32]:
    """Upsample a raw map to the image size and normalise it (in the upsampled buffer: no extra copy)."""
    return normalize(upsample(raw, height, width), inplace=True)
