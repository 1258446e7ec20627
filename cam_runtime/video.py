"""Explaining videos, cameras and frame streams lazily: frames are decoded, batched and explained on demand.

:func:`iter_explain_video` returns a :class:`VideoStream`; iterating it yields one :class:`VideoFrameResult` per
selected frame, in order, while at most about three batches of frames are in memory (the engine's pipeline:
one batch being consumed, one in inference, one being decoded).

Smoothing (``smooth=α``, 0 < α ≤ 1) is an exponential moving average of each target class's raw map at feature
resolution, before upsampling and normalisation: ``S_c(t) = α·M_c(t) + (1 − α)·S_c(t′)`` where ``t′`` is the
previous explained frame, ``M_c`` the method's raw map of class ``c``, and ``S_c`` starts as ``M_c`` at the first
frame where ``c`` is a target. A class that is not a target of a frame loses its average (it starts afresh when it
comes back), so a map never carries stale evidence. The heatmap and boxes are then computed from ``S_c`` exactly as
for a still image (``max(up(S), 0) / max(up(S))``), and ``TargetMap.raw`` holds ``S_c``. α = 1 is no smoothing;
smaller α smooths more (about ``1/α`` frames of memory).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .boxes import DEFAULT_THRESHOLD, Box, boxes_from_map
from .errors import InvalidArgumentError, VideoDecodeError, VideoError
from .maps import heatmap_at
from .results import ExplainResult, Prediction, TargetMap
from .video_sources import DEFAULT_TIMEOUT_S, FrameSelection, FrameSource, VideoInfo, VideoInput, open_source

if TYPE_CHECKING:
    from .engine import CamEngine, Targets


@dataclass
class VideoFrameResult:
    """The explanation of one video frame: its index and time in the source, and the image result."""

    index: int
    time_s: float
    result: ExplainResult

    @property
    def top_k(self) -> list[Prediction]:
        """The frame's top-k classes."""
        return self.result.top_k

    @property
    def targets(self) -> list[TargetMap]:
        """The frame's target maps (smoothed when the stream smooths)."""
        return self.result.targets

    @property
    def boxes(self) -> list[Box]:
        """Boxes of the first target."""
        return self.result.boxes

    def overlay(self, target: int = 0, **options: Any) -> npt.NDArray[np.uint8]:
        """The overlay of a target (see :meth:`ExplainResult.overlay`)."""
        return self.result.overlay(target, **options)

    def to_record(self) -> dict[str, Any]:
        """The JSON line of this frame: frame index, time, top-k, and each target's class and boxes."""
        return {"frame": self.index, "time": round(self.time_s, 6),
                "top_k": [p.to_dict() for p in self.result.top_k],
                "targets": [{"class_id": t.class_id, "label": t.label, "probability": t.probability,
                             "boxes": [b.to_dict() for b in t.boxes]} for t in self.result.targets]}


class MapSmoother:
    """Exponential moving average of raw maps per target class (see the module docstring for the definition)."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise InvalidArgumentError(f"smooth must be in (0, 1] (1 = no smoothing), got {alpha}")
        self.alpha = float(alpha)
        self._state: dict[int, npt.NDArray[np.float32]] = {}

    def update(self, class_ids: list[int], maps: list[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
        """The averages after one frame whose targets are ``class_ids`` with raw ``maps``."""
        a = np.float32(self.alpha)
        state: dict[int, npt.NDArray[np.float32]] = {}
        out = []
        for class_id, raw in zip(class_ids, maps, strict=True):
            previous = self._state.get(class_id)
            if class_id in state:  # the same class twice among one frame's targets (e.g. --class 3 --class 3)
                smoothed = state[class_id]
            elif previous is None or previous.shape != raw.shape:
                smoothed = np.array(raw, dtype=np.float32)
            else:
                smoothed = a * raw.astype(np.float32, copy=False) + (np.float32(1.0) - a) * previous
            state[class_id] = smoothed
            out.append(smoothed)
        self._state = state
        return out


class VideoStream:
    """An iterable of :class:`VideoFrameResult`, with the source's :class:`VideoInfo` known before the first frame.

    A source error (truncated file, undecodable frame, stalled stream) is raised only after every frame read
    before it has been yielded; ``frames_done`` counts the results yielded so far.
    """

    def __init__(self, engine: CamEngine, source: VideoInput, *, selection: FrameSelection,
                 smooth: float | None, explain_options: dict[str, Any], box_threshold: float, all_boxes: bool,
                 fps: float = 0.0, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.engine = engine
        self.selection = selection
        self.smoother = MapSmoother(smooth) if smooth is not None else None
        self._options = explain_options
        self._box_threshold = box_threshold
        self._all_boxes = all_boxes
        self.source: FrameSource = open_source(source, max_pixels=engine.max_pixels, fps=fps, timeout_s=timeout_s)
        self.info: VideoInfo = self.source.info
        self.frames_done = 0
        self._started = False

    def __iter__(self) -> Iterator[VideoFrameResult]:
        if self._started:
            raise InvalidArgumentError("a VideoStream can be iterated only once")
        self._started = True
        return self._run()

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the source."""
        self.source.close()

    def _run(self) -> Iterator[VideoFrameResult]:
        pending: deque[tuple[int, float]] = deque()
        failure: list[VideoError] = []

        def feed() -> Iterator[npt.NDArray[np.uint8]]:
            try:
                for frame in self.source.frames(self.selection):
                    pending.append((frame.index, frame.time_s))
                    yield frame.bgr
            except VideoError as exc:  # raised after the frames already read have been explained
                failure.append(exc)

        try:
            stream = self.engine.iter_explain(feed(), array_order="BGR", box_threshold=self._box_threshold,
                                              all_boxes=self._all_boxes, **self._options)
            for item in stream:
                index, time_s = pending.popleft()
                if not isinstance(item, ExplainResult):
                    raise VideoDecodeError(self.info.source, index, item.error)
                item.source = f"{self.info.source}#{index}"
                if self.smoother is not None:
                    self._smooth(item)
                self.frames_done += 1
                yield VideoFrameResult(index, time_s, item)
            if failure:
                raise failure[0]
        finally:
            self.close()

    def _smooth(self, result: ExplainResult) -> None:
        assert self.smoother is not None
        smoothed = self.smoother.update([t.class_id for t in result.targets], [t.raw for t in result.targets])
        for target, raw in zip(result.targets, smoothed, strict=True):
            target.raw = raw
            target.heatmap = heatmap_at(raw, result.height, result.width)
            target.boxes = boxes_from_map(target.heatmap, self._box_threshold, self._all_boxes)


def iter_explain_video(engine: CamEngine, source: VideoInput, *, every: int = 1, start: float | None = None,
                       end: float | None = None, smooth: float | None = None, batch_size: int = 8,
                       method: str = "cam", top_k: int = 1, classes: Targets = None,
                       box_threshold: float = DEFAULT_THRESHOLD, all_boxes: bool = False, fps: float = 0.0,
                       timeout_s: float = DEFAULT_TIMEOUT_S, prefetch: bool = True,
                       **method_options: Any) -> VideoStream:
    """Explain a video file, URL, camera index, FrameSource or iterable of RGB frames, lazily.

    ``every``/``start``/``end`` select frames (every N-th of those with ``start <= time < end``, seconds);
    ``smooth`` is the EMA weight of the newest map (see the module docstring); ``fps`` gives iterables of frames
    timestamps; ``timeout_s`` bounds the wait for a live frame. The other options are those of
    :meth:`CamEngine.iter_explain`. Opening errors are raised here, reading errors while iterating.
    """
    selection = FrameSelection(every, start, end)
    options: dict[str, Any] = {"method": method, "top_k": top_k, "classes": classes, "batch_size": batch_size,
                               "prefetch": prefetch, **method_options}
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be ≥ 1, got {batch_size}")
    if smooth is not None and not 0.0 < smooth <= 1.0:
        raise InvalidArgumentError(f"smooth must be in (0, 1] (1 = no smoothing), got {smooth}")
    return VideoStream(engine, source, selection=selection, smooth=smooth, explain_options=options,
                       box_threshold=box_threshold, all_boxes=all_boxes, fps=fps, timeout_s=timeout_s)
