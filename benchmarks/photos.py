"""Benchmark photos: deterministic crops and resizes of scikit-image's bundled photographs, written as JPEG."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
           "stereo_motorcycle", "camera", "coins")
"""scikit-image photos available without a download (the last two are grayscale)."""


def source_photos() -> dict[str, np.ndarray]:
    """The bundled photos as BGR uint8 arrays."""
    from skimage import data

    photos = {}
    for name in SOURCES:
        image = getattr(data, name)()
        image = image[0] if isinstance(image, tuple) else image
        photos[name] = (cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2
                        else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return photos


def make_photos(folder: Path, count: int = 64, seed: int = 0, quality: int = 90) -> list[Path]:
    """``count`` JPEGs of mixed sizes (random crops of 40-100% of a photo, resized to 240-1280 px long side)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cached = sorted(folder.glob("*.jpg"))
    if len(cached) >= count and all(p.name[:3].isdigit() for p in cached[:count]):
        return cached[:count]  # already written (scikit-image not needed, e.g. on a machine without it)
    photos = list(source_photos().items())
    paths = []
    for i in range(count):
        name, image = photos[i % len(photos)]
        h, w = image.shape[:2]
        ch, cw = (max(32, int(s * rng.uniform(0.4, 1.0))) for s in (h, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = image[y:y + ch, x:x + cw]
        long_side = int(rng.integers(240, 1281))
        scale = long_side / max(ch, cw)
        size = (max(16, round(cw * scale)), max(16, round(ch * scale)))
        resized = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        path = folder / f"{i:03d}-{name}.jpg"
        if not path.exists():
            cv2.imwrite(str(path), resized, [cv2.IMWRITE_JPEG_QUALITY, quality])
        paths.append(path)
    return paths
