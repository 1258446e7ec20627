"""Ground-truth boxes from CSV (``filename,x0,y0,x1,y1[,label]``) or Pascal VOC XML files.

All boxes use the runtime's convention: 0-based pixel coordinates, ``x1``/``y1`` exclusive. VOC files are
1-based and inclusive, so ``x0 = xmin - 1`` and ``x1 = xmax``.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .errors import AnnotationError
from .safe_io import RefusedFileError, failure_reason, read_bounded

MAX_ANNOTATION_BYTES = 64 * 1024 * 1024
"""Boxes files above this size are refused rather than read into memory."""

_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)

Annotations = dict[str, list["GroundTruthBox"]]
"""Image file name (relative to the images folder) → its boxes."""


@dataclass(frozen=True)
class GroundTruthBox:
    """A ground-truth box: 0-based, ``x1``/``y1`` exclusive, with an optional class label."""

    x0: int
    y0: int
    x1: int
    y1: int
    label: str | None = None

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1)."""
        return (self.x0, self.y0, self.x1, self.y1)

    def contains(self, x: float, y: float) -> bool:
        """Whether the pixel at (x, y) lies inside the box."""
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


def read_boxes(path: str | Path) -> Annotations:
    """Boxes from a ``.csv`` file, one VOC ``.xml`` file, or a folder of VOC ``.xml`` files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
        if not files:
            raise AnnotationError(path, "folder holds no .xml (Pascal VOC) files")
        out: Annotations = {}
        for file in files:
            name, boxes = read_voc_xml(file)
            out.setdefault(name, []).extend(boxes)
        return out
    if path.suffix.lower() == ".csv":
        return read_boxes_csv(path)
    if path.suffix.lower() == ".xml":
        name, boxes = read_voc_xml(path)
        return {name: boxes}
    raise AnnotationError(path, "expected a .csv file, a Pascal VOC .xml file or a folder of .xml files")


def _read_bounded(path: Path) -> bytes:
    try:
        return read_bounded(path, MAX_ANNOTATION_BYTES)
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except (OSError, RefusedFileError) as exc:
        raise AnnotationError(path, failure_reason(exc)) from None


def _coordinate(text: str, path: Path, where: str, field: str) -> int:
    try:
        value = float(text.strip())
    except (ValueError, AttributeError):
        raise AnnotationError(path, f"{where}: {field} must be a number, got {text!r}") from None
    if not value == value or abs(value) > 1e9:  # NaN or absurd
        raise AnnotationError(path, f"{where}: {field} is not a finite pixel coordinate")
    return round(value)


def _checked(path: Path, where: str, x0: int, y0: int, x1: int, y1: int, label: str | None) -> GroundTruthBox:
    if x0 < 0 or y0 < 0:
        raise AnnotationError(path, f"{where}: negative coordinate in box ({x0}, {y0}, {x1}, {y1})")
    if x1 <= x0 or y1 <= y0:
        raise AnnotationError(path, f"{where}: empty box ({x0}, {y0}, {x1}, {y1}); need x1 > x0 and y1 > y0")
    return GroundTruthBox(x0, y0, x1, y1, label or None)


def read_boxes_csv(path: str | Path) -> Annotations:
    """``filename,x0,y0,x1,y1[,label]`` rows (a header row is optional); several rows per image allowed."""
    path = Path(path)
    try:
        text = _read_bounded(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AnnotationError(path, "not UTF-8 text") from None
    out: Annotations = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and row[0].strip().lower() == "filename":
            continue
        where = f"line {number}"
        if len(row) not in (5, 6):
            raise AnnotationError(path, f"{where}: expected filename,x0,y0,x1,y1[,label], got {len(row)} fields")
        name = row[0].strip()
        if not name:
            raise AnnotationError(path, f"{where}: empty filename")
        x0, y0, x1, y1 = (_coordinate(row[i], path, where, f) for i, f in enumerate(("x0", "y0", "x1", "y1"), 1))
        label = row[5].strip() if len(row) == 6 else None
        out.setdefault(name, []).append(_checked(path, where, x0, y0, x1, y1, label))
    if not out:
        raise AnnotationError(path, "no boxes found")
    return out


def read_voc_xml(path: str | Path) -> tuple[str, list[GroundTruthBox]]:
    """(image filename, boxes) from one Pascal VOC annotation; DOCTYPE and entity declarations are refused."""
    path = Path(path)
    data = _read_bounded(path)
    if _DTD.search(data):  # no defusedxml: refuse DTDs outright (entity expansion, external entities)
        raise AnnotationError(path, "DOCTYPE/ENTITY declarations are not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise AnnotationError(path, f"not well-formed XML ({exc})") from None
    if root.tag != "annotation":
        raise AnnotationError(path, f"root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
    name = (root.findtext("filename") or "").strip()
    if not name:
        raise AnnotationError(path, "missing <filename>")
    boxes = []
    for index, obj in enumerate(root.iter("object"), start=1):
        where = f"object {index}"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(path, f"{where}: missing <bndbox>")
        values = []
        for field in ("xmin", "ymin", "xmax", "ymax"):
            text = bndbox.findtext(field)
            if text is None:
                raise AnnotationError(path, f"{where}: missing <{field}>")
            values.append(_coordinate(text, path, where, field))
        xmin, ymin, xmax, ymax = values
        # max(…, 0): some tools write 0-based xmin/ymin into VOC files.
        boxes.append(_checked(path, where, max(xmin - 1, 0), max(ymin - 1, 0), xmax, ymax,
                              (obj.findtext("name") or "").strip()))
    if not boxes:
        raise AnnotationError(path, "no <object> with a <bndbox>")
    return name, boxes
