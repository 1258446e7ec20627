"""Image decoding with OpenCV: files, bytes and arrays to 8-bit BGR, with a pixel limit checked first."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

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

ImageInput = Union[str, Path, bytes, bytearray, memoryview, npt.NDArray[np.generic]]
"""What the engine accepts as one image: a path, encoded bytes, or a decoded array."""

AlphaMode = Literal["drop", "composite"]
ChannelOrder = Literal["RGB", "BGR"]

DEFAULT_MAX_PIXELS = 100_000_000
"""Images whose header declares more pixels are refused before decoding (decompression-bomb guard)."""

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
        return cv2.cvtColor(self.bgr, cv2.COLOR_BGR2RGB)


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
        data = read_file_bytes(Path(image))
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        raise InvalidArgumentError(
            f"unsupported image input of type {type(image).__name__}; expected a path, bytes or a numpy array"
        )
    return DecodedImage(decode_bytes(data, name, max_pixels=max_pixels, alpha=alpha), name)


def read_file_bytes(path: Path) -> bytes:
    """Read a whole file, mapping OS errors to image errors."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageNotFoundError(path) from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from None


def decode_bytes(data: bytes, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 alpha: AlphaMode = "drop") -> npt.NDArray[np.uint8]:
    """Decode encoded image bytes to 8-bit BGR, refusing oversized images from their header."""
    if not data:
        raise ImageDecodeError(source, "file is empty")
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(source, size[0], size[1], max_pixels)
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
        raise ImageDecodeError(source, "not a supported image or corrupt data")
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise ImageTooLargeError(source, bgr.shape[1], bgr.shape[0], max_pixels)
    return bgr


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
        return cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        if order == "RGB":
            img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
        return composite_over_white(img) if alpha == "composite" else np.ascontiguousarray(img[:, :, :3])
    return cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if order == "RGB" else np.ascontiguousarray(img)


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


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, JPEG, GIF, BMP, WebP or TIFF header without decoding; None if unknown."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if data.startswith(b"BM") and len(data) >= 26:
            width, height = struct.unpack("<ii", data[18:26])
            return abs(int(width)), abs(int(height))
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except struct.error:
        return None
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return int(width), int(height)
        pos += 2 + length
    return None


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


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(endian + "I", data[4:8])[0]
    count = struct.unpack(endian + "H", data[offset:offset + 2])[0]
    width = height = None
    for i in range(min(count, 512)):
        entry = data[offset + 2 + 12 * i: offset + 14 + 12 * i]
        tag, kind = struct.unpack(endian + "HH", entry[:4])
        value = struct.unpack(endian + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
        if tag == 256:
            width = int(value)
        elif tag == 257:
            height = int(value)
    return (width, height) if width is not None and height is not None else None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
