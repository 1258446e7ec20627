"""Seeded synthetic "shapes" images with known boxes: one filled glyph on a textured, noisy background.

NumPy + OpenCV only (no TensorFlow), so the held-out set can be regenerated and inspected anywhere.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
"""Class labels in id order."""

IMAGE_SIZE = 48
MIN_OBJECT, MAX_OBJECT = 18, 30
"""Object size range in pixels (side of the square the glyph is drawn in)."""


@dataclass(frozen=True)
class ShapesSet:
    """Images [N, H, W, 3] (uint8 RGB), labels [N] and one box [N, 4] (x0, y0, x1, y1; x1/y1 exclusive) each."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    boxes: npt.NDArray[np.int64]

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.labels.shape[0])


def textured_background(rng: np.random.Generator, size: int) -> npt.NDArray[np.float32]:
    """Smooth coloured blotches plus stripes and pixel noise, as float RGB in [0, 255]."""
    coarse = rng.uniform(60, 195, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + 0.4 * (image - grey)  # muted colours, so glyph colour and shape, not hue blotches, carry the class
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image += (stripes[..., None] * rng.uniform(0, 15, 3)).astype(np.float32)
    image += rng.normal(0, rng.uniform(3, 10), image.shape).astype(np.float32)
    return image


def glyph_mask(kind: str, side: int, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """A filled glyph of class ``kind`` drawn in a ``side``×``side`` mask, randomly rotated (except circles)."""
    mask = np.zeros((side, side), dtype=np.uint8)
    c, r = (side - 1) / 2.0, side / 2.0 - 0.5
    theta = rng.uniform(0, 2 * np.pi)

    def polygon(radii: list[float], count: int) -> npt.NDArray[np.int32]:
        angles = theta + np.arange(count * len(radii)) * 2 * np.pi / (count * len(radii))
        rad = np.tile(radii, count)
        pts = np.stack([c + rad * np.cos(angles), c + rad * np.sin(angles)], axis=1)
        return np.round(pts * 16).astype(np.int32)  # 4 fractional bits: smoother edges

    if kind == "circle":
        cv2.circle(mask, (round(c * 16), round(c * 16)), int(r * 16), 255, -1, cv2.LINE_AA, shift=4)
    elif kind == "square":
        cv2.fillPoly(mask, [polygon([r], 4)], 255, cv2.LINE_AA, shift=4)
    elif kind == "triangle":
        cv2.fillPoly(mask, [polygon([r], 3)], 255, cv2.LINE_AA, shift=4)
    elif kind == "star":
        cv2.fillPoly(mask, [polygon([r, r * 0.42], 5)], 255, cv2.LINE_AA, shift=4)
    elif kind == "cross":
        arm = r * 0.32
        corners = [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm), (arm, r), (-arm, r),
                   (-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]
        cos, sin = np.cos(theta), np.sin(theta)
        pts = np.array([(c + x * cos - y * sin, c + x * sin + y * cos) for x, y in corners])
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return mask


def make_sample(rng: np.random.Generator, label: int,
                size: int = IMAGE_SIZE) -> tuple[npt.NDArray[np.uint8], tuple[int, int, int, int]]:
    """One RGB image with a glyph of class ``label`` and the glyph's tight box (x0, y0, x1, y1)."""
    background = textured_background(rng, size)
    side = int(rng.integers(MIN_OBJECT, MAX_OBJECT + 1))
    mask = glyph_mask(CLASSES[label], side, rng)
    x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
    alpha = np.zeros((size, size), dtype=np.float32)
    alpha[y:y + side, x:x + side] = mask.astype(np.float32) / 255.0
    local = background[y:y + side, x:x + side].mean(axis=(0, 1))
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):  # the glyph must differ clearly from the background under it
        if np.abs(colour - local).max() > 90:
            break
        colour = rng.uniform(0, 255, 3)
    glyph = colour.astype(np.float32) + rng.normal(0, 6, background.shape).astype(np.float32)
    image = background * (1 - alpha[..., None]) + glyph * alpha[..., None]
    bx, by, bw, bh = cv2.boundingRect((alpha > 0.5).astype(np.uint8))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), (bx, by, bx + bw, by + bh)


def make_dataset(count: int, seed: int, size: int = IMAGE_SIZE) -> ShapesSet:
    """``count`` samples with balanced, shuffled classes, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASSES))
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    boxes = np.empty((count, 4), dtype=np.int64)
    for i, label in enumerate(labels):
        images[i], boxes[i] = make_sample(rng, int(label), size)
    return ShapesSet(images, labels.astype(np.int64), boxes)


VOC_TEMPLATE = """<annotation>
  <filename>{filename}</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  <object>
    <name>{label}</name>
    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>
  </object>
</annotation>
"""


def write_test_set(folder: str | Path, data: ShapesSet, *, voc_examples: int = 2) -> Path:
    """PNG files, ``boxes.csv`` (filename,x0,y0,x1,y1,label) and a few Pascal VOC ``.xml`` files.

    VOC boxes are 1-based and inclusive (xmax = x1 for a 0-based exclusive x1), as in the VOC devkit.
    """
    folder = Path(folder)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    voc_dir = folder / "voc"
    voc_dir.mkdir(exist_ok=True)
    with open(folder / "boxes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["filename", "x0", "y0", "x1", "y1", "label"])
        for i in range(len(data)):
            name = f"{i:04d}_{CLASSES[data.labels[i]]}.png"
            cv2.imwrite(str(images_dir / name), cv2.cvtColor(data.images[i], cv2.COLOR_RGB2BGR))
            x0, y0, x1, y1 = (int(v) for v in data.boxes[i])
            writer.writerow([name, x0, y0, x1, y1, CLASSES[data.labels[i]]])
            if i < voc_examples:
                (voc_dir / f"{Path(name).stem}.xml").write_text(VOC_TEMPLATE.format(
                    filename=name, width=data.images.shape[2], height=data.images.shape[1],
                    label=CLASSES[data.labels[i]], x0=x0 + 1, y0=y0 + 1, x1=x1, y1=y1), encoding="utf-8")
    return folder
