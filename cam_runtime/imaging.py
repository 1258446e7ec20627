"""Image decoding with OpenCV: files, bytes and arrays to 8-bit BGR, with a pixel limit checked first."""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union, cast

import cv2
import numpy as np
import numpy.typing as npt

from .errors import (
    ImageDecodeError,
    ImageNotFoundError,
    ImageReadError,
    ImageTooLargeError,
    InvalidArgumentError,
    InvalidImageArrayError,
)

if "OPENCV_LOG_LEVEL" not in os.environ:
    # Every decode failure becomes an ImageDecodeError; OpenCV's own stderr lines would break one-line reports.
    # OpenCV 4.x pip wheels have no cv2.utils.logging; cv2.setLogLevel takes the same level (1 = FATAL).
    _cv_logging = getattr(cv2.utils, "logging", None)
    if _cv_logging is not None:
        _cv_logging.setLogLevel(_cv_logging.LOG_LEVEL_FATAL)
    elif hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(1)

ImageInput = Union[str, Path, bytes, bytearray, memoryview, npt.NDArray[np.generic]]
"""What the engine accepts as one image: a path, encoded bytes, or a decoded array."""

AlphaMode = Literal["drop", "composite"]
ChannelOrder = Literal["RGB", "BGR"]

DEFAULT_MAX_PIXELS = 100_000_000
"""Images whose header declares more pixels are refused before decoding (decompression-bomb guard)."""

MAX_JPEG_SCANS = 100
"""Progressive JPEGs with more scans are refused before decoding: each scan re-runs the decoder over the whole
frame, so a small file repeating one scan thousands of times costs minutes of CPU within the pixel limit.
Encoders write 1 (baseline) to about 10-20 (progressive, optimised) scans."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".gif",
                    ".pbm", ".pgm", ".ppm", ".pnm")
"""File endings the folder walker treats as images."""


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit, 3-channel BGR image and where it came from."""

    bgr: npt.NDArray[np.uint8]
    source: str

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.bgr.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.bgr.shape[1])

    def rgb(self) -> npt.NDArray[np.uint8]:
        """The image in RGB order (a new array)."""
        return cast("npt.NDArray[np.uint8]", cv2.cvtColor(self.bgr, cv2.COLOR_BGR2RGB))


def describe_source(image: ImageInput, index: int | None = None) -> str:
    """A short human name for an input, used in errors and reports."""
    if isinstance(image, str | Path):
        return str(image)
    kind = "bytes" if isinstance(image, bytes | bytearray | memoryview) else "array"
    return f"<{kind} #{index}>" if index is not None else f"<{kind}>"


def load_image(image: ImageInput, *, source: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               alpha: AlphaMode = "drop", array_order: ChannelOrder = "RGB") -> DecodedImage:
    """Decode a path, encoded bytes or an array to an 8-bit BGR image.

    Arrays are taken as RGB(A) unless ``array_order="BGR"``; uint16 is scaled to 8 bit, floats are read as
    [0, 1]. Alpha is dropped (as Keras' ``load_img`` does) or composited over white.
    """
    if alpha not in ("drop", "composite"):
        raise InvalidArgumentError(f"alpha must be 'drop' or 'composite', got {alpha!r}")
    name = source or describe_source(image)
    if isinstance(image, np.ndarray):
        return DecodedImage(array_to_bgr(image, array_order, alpha), name)
    if isinstance(image, str | Path):
        data = read_file_bytes(Path(image), max_file_bytes(max_pixels))
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        raise InvalidArgumentError(
            f"unsupported image input of type {type(image).__name__}; expected a path, bytes or a numpy array"
        )
    return DecodedImage(decode_bytes(data, name, max_pixels=max_pixels, alpha=alpha), name)


def read_file_bytes(path: Path, max_bytes: int | None = None) -> bytes:
    """Read a whole regular file, mapping OS errors to image errors; refuses FIFOs, devices and huge files."""
    try:
        # O_NONBLOCK: opening a FIFO named like an image must not hang waiting for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageNotFoundError(path) from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except (OSError, ValueError) as exc:
        raise ImageReadError(path, getattr(exc, "strerror", None) or str(exc)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageReadError(path, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(path, "not a regular file (device, FIFO or socket)")
        if max_bytes is not None and info.st_size > max_bytes:
            raise ImageReadError(path, f"file has {info.st_size} bytes, more than the {max_bytes} allowed")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        try:
            if max_bytes is None:
                data = handle.read()
            else:
                # Read the size fstat gave (+1 to see growth) first: read(max_bytes + 1) would allocate the whole
                # limit (~1.6 GB of address space by default) for a 40 kB photo, ~45 us per image. A file that
                # grew, or reports no size (procfs), is read on up to the limit as before.
                data = handle.read(min(info.st_size, max_bytes) + 1)
                if len(data) > info.st_size:
                    data += handle.read(max_bytes + 1 - len(data))
        except OSError as exc:
            raise ImageReadError(path, exc.strerror or str(exc)) from None
    if max_bytes is not None and len(data) > max_bytes:  # the file grew while we read it
        raise ImageReadError(path, f"file has more than the {max_bytes} bytes allowed")
    return data


def max_file_bytes(max_pixels: int) -> int:
    """The largest file accepted for a pixel limit: 16 bytes per pixel (float RGBA) plus 16 MiB of metadata."""
    return max_pixels * 16 + (16 << 20)


def decode_bytes(data: bytes, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 alpha: AlphaMode = "drop") -> npt.NDArray[np.uint8]:
    """Decode encoded image bytes to 8-bit BGR, refusing oversized images from their header."""
    if not data:
        raise ImageDecodeError(source, "file is empty")
    kind = sniff_format(data)
    if kind is None:
        # Only formats whose size we can read from the header are decoded, so the pixel limit always holds.
        raise ImageDecodeError(source, f"not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})")
    size = header_size(data)
    if size is None:
        raise ImageDecodeError(source, f"truncated or corrupt {kind} header (no image size found)")
    if size[0] <= 0 or size[1] <= 0:
        raise ImageDecodeError(source, f"{kind} header declares an empty image ({size[0]}x{size[1]})")
    if size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(source, size[0], size[1], max_pixels)
    if kind == "JPEG":
        scans = jpeg_scan_count(data)
        if scans > MAX_JPEG_SCANS:
            raise ImageDecodeError(source, f"JPEG has {scans} scans, more than the {MAX_JPEG_SCANS} allowed "
                                           "(decoding cost grows with each)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        if alpha == "composite":
            raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
            if raw is not None and raw.ndim == 3 and raw.shape[2] == 4:
                return composite_over_white(to_uint8(raw))
        # IMREAD_COLOR applies EXIF orientation, expands gray/palette, converts CMYK and 16-bit to 8-bit BGR.
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(source, f"OpenCV refused it ({_first_line(str(exc))})") from None
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(source, f"corrupt or truncated {kind} data")
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise ImageTooLargeError(source, bgr.shape[1], bgr.shape[0], max_pixels)
    return cast("npt.NDArray[np.uint8]", bgr)  # IMREAD_COLOR always decodes to 8-bit BGR


def array_to_bgr(array: npt.NDArray[np.generic], order: ChannelOrder = "RGB",
                 alpha: AlphaMode = "drop") -> npt.NDArray[np.uint8]:
    """Convert a decoded HxW / HxWx{1,3,4} array (uint8, uint16 or float in [0,1]) to 8-bit BGR."""
    if order not in ("RGB", "BGR"):
        raise InvalidArgumentError(f"array channel order must be 'RGB' or 'BGR', got {order!r}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) \
            or array.shape[0] == 0 or array.shape[1] == 0 \
            or not (array.dtype == np.uint8 or array.dtype == np.uint16 or array.dtype.kind == "f"):
        raise InvalidImageArrayError(tuple(array.shape), array.dtype)
    img = to_uint8(array)
    if img.ndim == 2 or img.shape[2] == 1:
        return cast("npt.NDArray[np.uint8]", cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR))
    if img.shape[2] == 4:
        if order == "RGB":
            img = cast("npt.NDArray[np.uint8]", cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA))
        return composite_over_white(img) if alpha == "composite" else np.ascontiguousarray(img[:, :, :3])
    if order == "RGB":
        return cast("npt.NDArray[np.uint8]", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return np.ascontiguousarray(img)


def to_uint8(array: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Scale uint16 (÷257) or float [0,1] (×255) to uint8; uint8 passes through."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)  # type: ignore[return-value]
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(array.astype(np.float32), nan=0.0)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def composite_over_white(bgra: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Blend a BGRA image over a white background."""
    alpha = bgra[:, :, 3:4].astype(np.float32) / 255.0
    blended = bgra[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WebP", "TIFF", "PNM")
"""Formats decoded: exactly those whose image size :func:`header_size` can read before decoding."""

_PNM_MAGIC = re.compile(rb"P[1-6]\s")
# OpenCV's PNM reader skips whitespace and '#' comments between numbers; the two alternatives cannot
# overlap, so this pattern runs in linear time on hostile input.
_PNM_HEADER = re.compile(rb"P[1-6](?:\s|#[^\n\r]*)+(\d{1,20})(?:\s|#[^\n\r]*)+(\d{1,20})")
_PNM_HEADER_LIMIT = 1 << 16


def sniff_format(data: bytes) -> str | None:
    """The supported format named by the leading magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if _PNM_MAGIC.match(data):
        return "PNM"
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, JPEG, GIF, BMP, WebP, TIFF or PNM header without decoding; None if unknown."""
    readers = {"PNG": _png_size, "JPEG": _jpeg_size, "GIF": _gif_size, "BMP": _bmp_size, "WebP": _webp_size,
               "TIFF": _tiff_size, "PNM": _pnm_size}
    kind = sniff_format(data)
    if kind is None:
        return None
    try:
        return readers[kind](data)
    except struct.error:
        return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":  # libpng refuses a PNG whose first chunk is not IHDR
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _gif_size(data: bytes) -> tuple[int, int] | None:
    width, height = struct.unpack("<HH", data[6:10])
    return int(width), int(height)


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    # Mirrors OpenCV's BMP reader: OS/2 core headers (12 bytes) hold 16-bit sizes, newer ones 32-bit.
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12:
        width, height = struct.unpack("<HH", data[18:22])
        return int(width), int(height)
    if header >= 36:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(int(width)), abs(int(height))
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walks markers the way libjpeg does, including its resync over garbage bytes, so the frame size read
    # here is the one the decoder will allocate for.
    pos, end = 2, len(data)
    while pos < end:
        while pos < end and data[pos] != 0xFF:
            pos += 1
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            return int(width), int(height)
        if length < 2:
            return None
        pos += length
    return None


def jpeg_scan_count(data: bytes) -> int:
    """How many start-of-scan markers a JPEG holds (an upper bound), counted without decoding.

    Segments before the first scan are skipped by their lengths, so metadata (an EXIF thumbnail is a whole JPEG)
    is not counted; after it, every ``FF DA`` is counted: entropy-coded data never contains one (a coded ``FF`` is
    followed by ``00`` or a restart marker), so only a table segment's payload could add a spurious count.
    """
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return 0
            continue
        marker = data[pos + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:
            return data.count(b"\xff\xda", pos)
        if marker == 0xD9:
            return 0
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return 0


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    return None


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 64-bit offsets and counts
        count_code, value_count_size, entry_size = "Q", 8, 20
        offset = struct.unpack(endian + "Q", data[8:16])[0]
    else:
        count_code, value_count_size, entry_size = "H", 4, 12
        offset = struct.unpack(endian + "I", data[4:8])[0]
    count_size = struct.calcsize(count_code)
    count = struct.unpack(endian + count_code, data[offset:offset + count_size])[0]
    first = offset + count_size
    found: dict[int, int] = {}
    for i in range(min(count, max(0, (len(data) - first) // entry_size))):
        entry = data[first + entry_size * i:first + entry_size * (i + 1)]
        tag, kind = struct.unpack(endian + "HH", entry[:4])
        if tag not in (256, 257):
            continue
        code = _TIFF_TYPES.get(kind)
        values = entry[4 + value_count_size:]
        if code is None or struct.calcsize(code) > len(values):
            return None  # a size stored in a type we cannot read: refuse rather than guess
        value = int(struct.unpack(endian + code, values[:struct.calcsize(code)])[0])
        found[tag] = max(found.get(tag, value), value)  # duplicated tags: assume the largest
    if 256 not in found or 257 not in found:
        return None
    return found[256], found[257]


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    match = _PNM_HEADER.match(data[:_PNM_HEADER_LIMIT])
    return (int(match.group(1)), int(match.group(2))) if match else None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
