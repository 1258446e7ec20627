"""Video outputs: an overlay video and a JSONL file written atomically, and a class timeline of the frames.

The overlay video is encoded with OpenCV's FFmpeg backend into a hidden temporary file next to its destination
(``.camr-NAME.XXXX.tmp.mp4``: FFmpeg picks the container from the name's ending) and renamed into place when it
is closed, whatever ended the run: a truncated input, Ctrl-C or the end of the clip all leave a finalised,
playable file with the frames done so far. Codec ``auto`` tries H.264 (``avc1``) by opening a real
``cv2.VideoWriter`` and falls back to MPEG-4 Part 2 (``mp4v``), which every FFmpeg build of OpenCV has; the
opencv-python(-headless) wheels ship without an H.264 encoder, so they write ``mp4v``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
import numpy.typing as npt

from . import video_sources  # noqa: F401  (sets FFmpeg's log level before the first writer is opened)
from .errors import InvalidArgumentError, OutputFolderError, VideoWriteError
from .outputs import TEMP_PREFIX, TEMP_SUFFIX, strict_json
from .safe_io import current_umask

CODECS: tuple[str, ...] = ("avc1", "mp4v")
"""FourCCs tried in this order by codec "auto": H.264, then MPEG-4 Part 2."""
DEFAULT_LIVE_FPS = 25.0
"""Frame rate written for live sources that report none."""


def _temp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name[:60]}.", suffix=f"{TEMP_SUFFIX}{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    return Path(name)


@functools.cache
def encoder_available(fourcc: str, suffix: str = ".mp4") -> bool:
    """Whether this OpenCV build opens a ``cv2.VideoWriter`` for ``fourcc`` (tried once per process, on a tiny file).

    FFmpeg prints its own lines when an encoder is missing (e.g. the ``h264_v4l2m2m`` hardware encoder probed for
    ``avc1``) if its log level was fixed before this module set it; stderr is silenced during the probe.
    """
    with tempfile.TemporaryDirectory(prefix="camr-codec-") as folder, _stderr_silenced():
        writer = cv2.VideoWriter(str(Path(folder) / f"probe{suffix}"), cv2.CAP_FFMPEG,
                                 cv2.VideoWriter.fourcc(*fourcc), 10.0, (64, 48))
        opened = bool(writer.isOpened())
        writer.release()
    return opened


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class AtomicVideoWriter:
    """``cv2.VideoWriter`` into a temporary sibling file, renamed to ``path`` by :meth:`close`."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, *, codec: str = "auto") -> None:
        self.path = Path(path)
        if not fps > 0:
            raise InvalidArgumentError(f"video fps must be > 0, got {fps}")
        if codec != "auto" and len(codec) != 4:
            raise InvalidArgumentError(f"codec must be 'auto' or a four-character code such as mp4v, got {codec!r}")
        if codec == "auto":  # mp4v is tried even if its probe failed: the real open gives the error
            candidates = tuple(c for c in CODECS if encoder_available(c, self.path.suffix)) or CODECS[-1:]
        else:
            candidates = (codec,)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = _temp_path(self.path)
        except OSError as exc:
            raise OutputFolderError(self.path.parent, exc.strerror or str(exc)) from None
        self.fps, self.width, self.height = float(fps), int(width), int(height)
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        for fourcc in candidates:
            writer = cv2.VideoWriter(str(self._tmp), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*fourcc), self.fps,
                                     (self.width, self.height))
            if writer.isOpened():
                self._writer, self.codec = writer, fourcc
                break
            writer.release()
        if self._writer is None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise VideoWriteError(self.path, f"no encoder for {', '.join(candidates)} in this OpenCV build")

    def write(self, bgr: npt.NDArray[np.uint8]) -> None:
        """Append one BGR frame of the writer's size."""
        if self._writer is None:
            raise VideoWriteError(self.path, "the writer is closed")
        if bgr.shape[:2] != (self.height, self.width):
            raise InvalidArgumentError(f"frame is {bgr.shape[1]}x{bgr.shape[0]}, the video is {self.width}x"
                                       f"{self.height}")
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> Path | None:
        """Finalise the file and move it into place; returns its path (None, and no file, if no frame was written)."""
        if self._writer is None:
            return self.path if self.path.exists() and not self._tmp.exists() else None
        self._writer.release()
        self._writer = None
        if self.frames == 0:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            return None
        try:
            os.chmod(self._tmp, 0o644 & ~current_umask())
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise OutputFolderError(self.path.parent, exc.strerror or str(exc)) from None
        return self.path


class AtomicLineWriter:
    """JSON lines into a temporary sibling file, flushed on demand and renamed to ``path`` by :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = _temp_path(self.path)
            self._handle: IO[str] | None = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise OutputFolderError(self.path.parent, exc.strerror or str(exc)) from None
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line."""
        if self._handle is None:
            raise OutputFolderError(self.path.parent, "the JSONL file is closed")
        self._handle.write(strict_json(record) + "\n")
        self.lines += 1

    def flush(self) -> None:
        """Push the lines written so far to the operating system."""
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> Path:
        """Flush, fsync and move the file into place."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.chmod(self._tmp, 0o644 & ~current_umask())
                os.replace(self._tmp, self.path)
            except OSError as exc:
                raise OutputFolderError(self.path.parent, exc.strerror or str(exc)) from None
        return self.path


@dataclass
class Segment:
    """A run of consecutive explained frames with the same top-1 class."""

    class_id: int
    label: str
    first_frame: int
    last_frame: int
    start_s: float
    end_s: float
    frames: int = 0
    probability_sum: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (times rounded to the microsecond)."""
        return {"class_id": self.class_id, "label": self.label, "first_frame": self.first_frame,
                "last_frame": self.last_frame, "start_s": round(self.start_s, 6), "end_s": round(self.end_s, 6),
                "frames": self.frames, "mean_probability": round(self.probability_sum / max(1, self.frames), 6)}


@dataclass
class Timeline:
    """Which class is top-1 when: segments of constant top-1 and each class's share of the explained frames.

    A segment runs from its first frame's time to the next segment's first frame's time (the last one to its
    last frame's time plus ``frame_step_s``, the time between explained frames).
    """

    frame_step_s: float = 0.0
    segments: list[Segment] = field(default_factory=list)

    def add(self, frame: int, time_s: float, class_id: int, label: str, probability: float) -> bool:
        """Record one frame's top-1; True when it starts a new segment."""
        last = self.segments[-1] if self.segments else None
        new = last is None or last.class_id != class_id
        if new:
            if last is not None:
                last.end_s = time_s
            last = Segment(class_id, label, frame, frame, time_s, time_s + self.frame_step_s)
            self.segments.append(last)
        assert last is not None
        last.last_frame, last.end_s = frame, time_s + self.frame_step_s
        last.frames += 1
        last.probability_sum += probability
        return new

    def classes(self) -> list[dict[str, Any]]:
        """Per class: frames as top-1, their share, seconds as top-1 and segments; most frames first."""
        total = sum(s.frames for s in self.segments) or 1
        table: dict[int, dict[str, Any]] = {}
        for s in self.segments:
            row = table.setdefault(s.class_id, {"class_id": s.class_id, "label": s.label, "frames": 0,
                                                "seconds": 0.0, "segments": 0})
            row["frames"] += s.frames
            row["seconds"] += s.end_s - s.start_s
            row["segments"] += 1
        rows = sorted(table.values(), key=lambda r: (-r["frames"], r["class_id"]))
        for row in rows:
            row["share"] = round(row["frames"] / total, 6)
            row["seconds"] = round(row["seconds"], 6)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The summary written to the report: per-class totals and the segments."""
        return {"classes": self.classes(), "segments": [s.to_dict() for s in self.segments]}
