"""Frame sources for video explain: files and URLs (OpenCV's FFmpeg backend), cameras, raw RGB24 pipes, arrays.

Every source yields :class:`VideoFrame` objects (frame index, timestamp, 8-bit BGR pixels) lazily, one at a time,
after selecting frames by time range and stride; frames that are skipped are not converted to BGR
(``VideoCapture.grab`` without ``retrieve``).
"""

from __future__ import annotations

import math
import os
import re
import select
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Union, cast

import cv2
import numpy as np
import numpy.typing as npt

from . import imaging  # noqa: F401  (silences OpenCV's own log lines: errors are raised as exceptions)
from .errors import (
    InvalidArgumentError,
    StreamStalledError,
    VideoDecodeError,
    VideoFrameTooLargeError,
    VideoNotFoundError,
    VideoOpenError,
    VideoTruncatedError,
)
from .imaging import DEFAULT_MAX_PIXELS

# FFmpeg's own log lines (e.g. a probed hardware encoder that is absent) would break one-line errors.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                    ".wmv", ".flv", ".3gp", ".ogv", ".mjpeg", ".mjpg", ".y4m")
"""File endings that ``camr explain`` treats as videos."""
_URL = re.compile(r"^(rtsp|rtsps|rtmp|rtmps|http|https|udp|tcp|srt|rtp)://", re.IGNORECASE)
DEFAULT_TIMEOUT_S = 10.0
"""How long a live source or pipe may deliver no frame before :class:`StreamStalledError`."""
TRUNCATION_TOLERANCE = 1
"""Frames a file may end short of its container's declared count without being reported truncated
(some containers estimate the count from the duration)."""

VideoInput = Union[str, Path, int, "FrameSource", Iterable[npt.NDArray[np.uint8]]]
"""A path, a URL, a camera index, a FrameSource, or an iterable of HxWx3 uint8 frames."""


def is_video_name(name: str | Path) -> bool:
    """Whether a file name has a video extension."""
    return str(name).lower().endswith(VIDEO_EXTENSIONS)


def is_stream_url(name: str) -> bool:
    """Whether a string is a network stream URL (rtsp://, http(s)://, udp://, ...)."""
    return bool(_URL.match(name))


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a source before its first frame."""

    source: str
    width: int
    height: int
    fps: float
    """Frames per second (the container's, or the one given; 0 when unknown)."""
    frame_count: int | None
    """Frames the container declares (None for live sources and pipes)."""
    live: bool
    """Cameras, URLs and pipes: timestamps are wall-clock seconds since the first frame."""


@dataclass(frozen=True)
class VideoFrame:
    """One selected frame: its index in the source (0-based), its time in seconds and its BGR pixels."""

    index: int
    time_s: float
    bgr: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class FrameSelection:
    """Which frames to explain: those with ``start <= time < end``, then every ``every``-th of them."""

    every: int = 1
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InvalidArgumentError(f"every must be ≥ 1, got {self.every}")
        if self.start is not None and (self.start < 0 or not math.isfinite(self.start)):
            raise InvalidArgumentError(f"start must be a time ≥ 0 in seconds, got {self.start}")
        if self.end is not None and not (self.end > (self.start or 0.0)):
            raise InvalidArgumentError(f"end ({self.end} s) must be after start ({self.start or 0.0} s)")


class FrameSource:
    """Base class: ``info`` plus ``frames(selection)``; ``close()`` releases the decoder."""

    info: VideoInfo

    def frames(self, selection: FrameSelection) -> Iterator[VideoFrame]:
        """Selected frames, lazily, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder or device (idempotent)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_pixels(source: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise VideoFrameTooLargeError(source, width, height, max_pixels)


class _Selector:
    """Applies a FrameSelection to (index, time) pairs: 'skip', 'take' or 'stop'."""

    def __init__(self, selection: FrameSelection) -> None:
        self.selection = selection
        self.first: int | None = None

    def decide(self, index: int, time_s: float) -> Literal["skip", "take", "stop"]:
        s = self.selection
        if s.end is not None and time_s >= s.end:
            return "stop"
        if s.start is not None and time_s < s.start:
            return "skip"
        if self.first is None:
            self.first = index
        return "take" if (index - self.first) % s.every == 0 else "skip"


class CaptureSource(FrameSource):
    """A file, URL or camera read with ``cv2.VideoCapture`` (FFmpeg backend for files and URLs).

    Files: timestamps are ``index / fps`` (constant frame rate assumed), and a file that ends more than
    :data:`TRUNCATION_TOLERANCE` frames before its declared frame count raises :class:`VideoTruncatedError`.
    Cameras and URLs: timestamps are wall-clock seconds since the first frame; a read that fails after
    ``timeout_s`` raises :class:`StreamStalledError`, one that fails sooner ends the stream.
    """

    def __init__(self, source: str | Path | int, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        if isinstance(source, int):
            name, live = f"camera {source}", True
            capture = cv2.VideoCapture(source)
        elif isinstance(source, str) and is_stream_url(source):
            name, live = source, True
            ms = int(timeout_s * 1000)
            capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            path = Path(source)
            name, live = str(path), False
            if not path.exists():
                raise VideoNotFoundError(path)
            if path.is_dir():
                raise VideoOpenError(name, "is a directory")
            if not os.access(path, os.R_OK):
                raise VideoOpenError(name, "permission denied")
            capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            reason = ("no such camera, or it is busy" if isinstance(source, int) else
                      "not a video OpenCV's FFmpeg backend can read (or its index is missing: truncated?)")
            raise VideoOpenError(name, reason)
        self._capture: cv2.VideoCapture | None = capture
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            fps = 0.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        try:
            if width <= 0 or height <= 0:
                raise VideoOpenError(name, "the stream declares no frame size")
            _check_pixels(name, width, height, max_pixels)
        except BaseException:
            self.close()
            raise
        self.info = VideoInfo(name, width, height, fps, None if live or count <= 0 else count, live)

    def close(self) -> None:
        """Release the capture."""
        capture = getattr(self, "_capture", None)
        if capture is not None:
            capture.release()
            self._capture = None

    def frames(self, selection: FrameSelection) -> Iterator[VideoFrame]:
        """Selected frames; skipped ones are only grabbed (decoded, never converted to BGR)."""
        info, capture = self.info, self._capture
        if capture is None:
            raise InvalidArgumentError("the source is closed")
        chooser = _Selector(selection)
        index = 0
        t0: float | None = None
        while True:
            started = time.monotonic()
            if not capture.grab():
                if info.live and time.monotonic() - started >= self.timeout_s:
                    raise StreamStalledError(info.source, index, self.timeout_s)
                break
            now = time.monotonic()
            if info.live:
                t0 = now if t0 is None else t0
                time_s = now - t0
            else:
                time_s = index / info.fps if info.fps > 0 else 0.0
            decision = chooser.decide(index, time_s)
            if decision == "stop":
                return
            if decision == "take":
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    raise VideoDecodeError(info.source, index, "the decoder returned no image")
                if frame.shape[:2] != (info.height, info.width) or frame.ndim != 3:
                    raise VideoDecodeError(info.source, index, f"frame is {frame.shape[1]}x{frame.shape[0]}, "
                                                               f"the stream's size is {info.width}x{info.height}")
                yield VideoFrame(index, time_s, cast("npt.NDArray[np.uint8]", frame))
            index += 1
        if info.frame_count is not None and index < info.frame_count - TRUNCATION_TOLERANCE:
            raise VideoTruncatedError(info.source, index, f"the container declares {info.frame_count} frames")


class ArraySource(FrameSource):
    """Frames from any iterable of HxWx3 uint8 arrays (RGB unless ``order="BGR"``), pulled lazily.

    Timestamps are ``index / fps`` when ``fps`` > 0, else wall-clock seconds since the first frame.
    """

    def __init__(self, frames: Iterable[npt.NDArray[np.uint8]], *, fps: float = 0.0,
                 order: Literal["RGB", "BGR"] = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str = "<frames>") -> None:
        if order not in ("RGB", "BGR"):
            raise InvalidArgumentError(f"order must be 'RGB' or 'BGR', got {order!r}")
        self._name = name
        self._iterator = iter(frames)
        self._order = order
        self._max_pixels = max_pixels
        self._first = self._next(0)
        if self._first is None:
            raise VideoOpenError(name, "no frames")
        height, width = self._first.shape[:2]
        _check_pixels(name, width, height, max_pixels)
        self.info = VideoInfo(name, width, height, float(fps), None, fps <= 0)

    def _next(self, index: int) -> npt.NDArray[np.uint8] | None:
        try:
            frame = next(self._iterator)
        except StopIteration:
            return None
        array = np.asarray(frame)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise VideoDecodeError(self._name, index, f"expected an HxWx3 uint8 array, got shape {array.shape} "
                                                      f"and dtype {array.dtype}")
        return array

    def frames(self, selection: FrameSelection) -> Iterator[VideoFrame]:
        """Selected frames in order (one pulled from the iterable at a time)."""
        info = self.info
        chooser = _Selector(selection)
        frame, index, t0 = self._first, 0, time.monotonic()
        while frame is not None:
            if frame.shape[:2] != (info.height, info.width):
                raise VideoDecodeError(info.source, index, f"frame is {frame.shape[1]}x{frame.shape[0]}, the "
                                                           f"stream's size is {info.width}x{info.height}")
            time_s = index / info.fps if info.fps > 0 else time.monotonic() - t0
            decision = chooser.decide(index, time_s)
            if decision == "stop":
                return
            if decision == "take":
                bgr = frame if self._order == "BGR" else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                yield VideoFrame(index, time_s, np.ascontiguousarray(bgr))
            frame = None  # not held while the next one is pulled
            index += 1
            frame = self._next(index)


class RawStreamSource(FrameSource):
    """Raw RGB24 frames (``width*height*3`` bytes each, no header) from a binary stream such as stdin.

    A read that waits longer than ``timeout_s`` raises :class:`StreamStalledError`; a stream that ends inside
    a frame raises :class:`VideoTruncatedError`. Timestamps: ``index / fps`` when ``fps`` > 0, else wall-clock.
    """

    def __init__(self, stream: BinaryIO, width: int, height: int, *, fps: float = 0.0,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str = "<stdin>") -> None:
        if width < 1 or height < 1:
            raise InvalidArgumentError(f"frame size must be positive, got {width}x{height}")
        _check_pixels(name, width, height, max_pixels)
        self._stream = stream
        self._frame_bytes = width * height * 3
        self.timeout_s = timeout_s
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream: no timeout possible or needed
            self._fd = None
        self.info = VideoInfo(name, width, height, float(fps), None, True)

    def _read_frame(self, index: int) -> bytes | None:
        buffer = bytearray(self._frame_bytes)
        view = memoryview(buffer)
        got = 0
        while got < self._frame_bytes:
            if self._fd is not None:
                ready, _, _ = select.select([self._fd], [], [], self.timeout_s)
                if not ready:
                    raise StreamStalledError(self.info.source, index, self.timeout_s)
                chunk = os.read(self._fd, self._frame_bytes - got)
            else:
                chunk = self._stream.read(self._frame_bytes - got)
            if not chunk:
                if got == 0:
                    return None
                raise VideoTruncatedError(self.info.source, index,
                                          f"the stream ended inside frame {index}: {got} of {self._frame_bytes} bytes")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
        return bytes(buffer)

    def frames(self, selection: FrameSelection) -> Iterator[VideoFrame]:
        """Frames as they arrive."""
        info = self.info
        chooser = _Selector(selection)
        index, t0 = 0, time.monotonic()
        while True:
            data = self._read_frame(index)
            if data is None:
                return
            time_s = index / info.fps if info.fps > 0 else time.monotonic() - t0
            decision = chooser.decide(index, time_s)
            if decision == "stop":
                return
            if decision == "take":
                rgb = np.frombuffer(data, dtype=np.uint8).reshape(info.height, info.width, 3)
                yield VideoFrame(index, time_s, cast("npt.NDArray[np.uint8]", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
            index += 1


def open_source(source: VideoInput, *, max_pixels: int = DEFAULT_MAX_PIXELS, fps: float = 0.0,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> FrameSource:
    """A FrameSource for a path, URL, camera index, FrameSource, or iterable of RGB frames."""
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, bool):
        raise InvalidArgumentError("a video source must be a path, URL, camera index or frames, not a bool")
    if isinstance(source, str | Path | int):
        return CaptureSource(source, max_pixels=max_pixels, timeout_s=timeout_s)
    if isinstance(source, bytes | bytearray | np.ndarray):
        raise InvalidArgumentError("a video source must be a path, URL, camera index, FrameSource or an iterable "
                                   "of frames (pass a single image to CamEngine.explain instead)")
    return ArraySource(source, fps=fps, max_pixels=max_pixels)
