"""``camr video`` (files, URLs, cameras → overlay video + JSONL + report) and ``camr stream`` (raw RGB24 pipes).

``camr explain clip.mp4`` routes here too (see :func:`is_video_argument`). Light at import: the runtime, NumPy and
OpenCV are imported inside the commands.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cam_runtime.defaults import BOX_THRESHOLD

from .common import (
    DEFAULT_MODEL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    AllBoxesOpt,
    BatchSizeOpt,
    BoxesOpt,
    BoxThresholdOpt,
    ClassesOpt,
    ColormapOpt,
    Device,
    DeviceOpt,
    HeatmapWeightOpt,
    JsonOpt,
    MaxPixelsOpt,
    ModelOpt,
    ResizeOpt,
    ThreadsOpt,
    TrustGraphOpt,
    err_console,
    error_line,
    handle_errors,
    load_engine,
    warn_line,
)

if TYPE_CHECKING:
    from cam_runtime.engine import CamEngine
    from cam_runtime.video import VideoFrameResult
    from cam_runtime.video_sources import VideoInput

MAX_THUMBS = 200
"""Segment thumbnails embedded in report.html at most."""

EveryOpt = Annotated[int, typer.Option("--every", min=1, help="Video: explain every N-th frame (the overlay video "
                                                              "then has fps/N).")]
StartOpt = Annotated[float | None, typer.Option("--start", min=0.0, help="Video: first second to explain.",
                                                show_default=False)]
EndOpt = Annotated[float | None, typer.Option("--end", min=0.0, help="Video: stop at this second (exclusive).",
                                              show_default=False)]
SmoothOpt = Annotated[float | None, typer.Option("--smooth", min=0.0, max=1.0,
                                                 help="Video: EMA weight α of the newest map per class, in (0, 1] "
                                                      "(1 = none, smaller = smoother).", show_default=False)]


def is_video_argument(argument: str) -> bool:
    """Whether a command-line input is a video file (by extension) or a stream URL."""
    from cam_runtime.video_sources import is_stream_url, is_video_name

    return is_stream_url(argument) or is_video_name(argument)


@dataclass
class VideoOptions:
    """What a video run needs besides the engine, the source and the output folder."""

    method: str = "cam"
    top_k: int = 1
    classes: list[str] | None = None
    every: int = 1
    start: float | None = None
    end: float | None = None
    smooth: float | None = None
    batch_size: int = 8
    alpha: float = 0.5
    colormap: str = "jet"
    boxes: bool = True
    all_boxes: bool = False
    box_threshold: float = BOX_THRESHOLD
    codec: str = "auto"
    force: bool = False
    preview: bool | None = None
    timeout: float = 10.0
    max_frames: int | None = None
    quiet: bool = False
    json_summary: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the options before a model is loaded or a file written."""
        from cam_runtime.boxes import check_box_threshold
        from cam_runtime.errors import InvalidArgumentError
        from cam_runtime.methods import get_method
        from cam_runtime.render import colormap_id
        from cam_runtime.video_sources import FrameSelection

        get_method(self.method)
        colormap_id(self.colormap)
        FrameSelection(self.every, self.start, self.end)
        if self.smooth is not None and not 0.0 < self.smooth <= 1.0:
            raise InvalidArgumentError(f"--smooth must be in (0, 1] (1 = no smoothing), got {self.smooth}")
        check_box_threshold(self.box_threshold, "--box-threshold")
        if self.codec != "auto" and len(self.codec) != 4:
            raise InvalidArgumentError(f"--codec must be auto or a four-character code (avc1, mp4v), got "
                                       f"{self.codec!r}")
        if not self.timeout > 0:
            raise InvalidArgumentError(f"--timeout must be > 0 seconds, got {self.timeout}")


def preview_available() -> bool:
    """Whether OpenCV was built with a GUI backend and a display is reachable (never with opencv-python-headless)."""
    import cv2

    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if gui is None or gui.group(1).upper() == "NONE":
        return False
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _output_key(source: Any) -> str:
    from cam_runtime.outputs import output_key, safe_part

    if isinstance(source, int):
        return f"camera-{source}"
    if not isinstance(source, str | Path):
        return "frames"
    source = str(source)
    if "://" in source:
        return safe_part(re.sub(r"^[a-z]+://", "", source, flags=re.IGNORECASE).replace("/", "_"))[:60]
    return output_key(Path(source).name)


def run_video(engine: CamEngine, source: VideoInput, output: Path, options: VideoOptions, *,
              model_path: Path | None = None) -> int:
    """Explain one video source into ``output``; returns the exit code (0, 1 on a source error, 130 on Ctrl-C).

    ``source``: a path, URL, camera index, or anything :func:`cam_runtime.video.iter_explain_video` reads.
    """
    from cam_runtime.errors import OutputExistsError, VideoError
    from cam_runtime.jobs.explain_folder import sigterm_as_exit, version
    from cam_runtime.outputs import OutputLayout, remove_stale_temps
    from cam_runtime.report import now_iso, thumbnail_data_uri
    from cam_runtime.video_report import write_video_report
    from cam_runtime.video_writer import (
        DEFAULT_LIVE_FPS,
        AtomicLineWriter,
        AtomicVideoWriter,
        Timeline,
    )

    options.validate()
    engine.classes.check_classes(options.classes or None, options.top_k, "--top-k")
    layout = OutputLayout(output)
    layout.check_writable()
    key = _output_key(source)
    names = {"video": f"{key}.overlay.mp4", "frames_jsonl": f"{key}.frames.jsonl"}
    if not options.force:
        for name in [*names.values(), "report.json", "report.html"]:
            if layout.path(name).exists():
                raise OutputExistsError(layout.path(name))
    remove_stale_temps(layout.root)
    preview = options.preview
    live = isinstance(source, int) or "://" in str(source)
    if preview is None:
        preview = live and preview_available()
    elif preview and not preview_available():
        warn_line("no preview window: this OpenCV has no GUI backend or there is no display; writing files only")
        preview = False

    started = time.perf_counter()
    meta: dict[str, Any] = {"tool": "cam-runtime", "version": version(), "created": now_iso(),
                            "source": f"camera {source}" if isinstance(source, int) else str(source)
                            if isinstance(source, str | Path) else "<frames>",
                            "model": engine.manifest.name, "model_path": str(model_path) if model_path else None,
                            "device": engine.providers[0] if engine.providers else None, "method": options.method,
                            "top_k": options.top_k, "classes": options.classes, "every": options.every,
                            "start": options.start, "end": options.end, "smooth": options.smooth,
                            "batch_size": options.batch_size}
    try:
        stream = engine.iter_explain_video(
            source, every=options.every, start=options.start, end=options.end, smooth=options.smooth,
            batch_size=options.batch_size, method=options.method, top_k=options.top_k, classes=options.classes,
            box_threshold=options.box_threshold, all_boxes=options.all_boxes, timeout_s=options.timeout)
    except VideoError as exc:
        error_line(str(exc))
        return EXIT_SOME_FAILED
    info = stream.info
    meta["source"] = info.source
    fps_in = info.fps or DEFAULT_LIVE_FPS
    fps_out = fps_in / options.every
    meta.update({"width": info.width, "height": info.height, "fps": round(fps_in, 6),
                 "frame_count": info.frame_count, "live": info.live, "output_fps": round(fps_out, 6)})
    timeline = Timeline(frame_step_s=options.every / fps_in)
    thumbs: dict[int, str] = {}
    status, error, code = "ok", None, EXIT_OK
    writer: AtomicVideoWriter | None = None
    lines: AtomicLineWriter | None = None
    last_index = -1
    try:
        with sigterm_as_exit(), stream:
            writer = AtomicVideoWriter(layout.path(names["video"]), fps_out, info.width, info.height,
                                       codec=options.codec)
            lines = AtomicLineWriter(layout.path(names["frames_jsonl"]))
            meta["codec"] = writer.codec
            frame: VideoFrameResult
            for frame in stream:
                overlay = frame.overlay(0, heatmap_weight=options.alpha, colormap=options.colormap,
                                        draw_boxes=options.boxes, channel_order="BGR")
                writer.write(overlay)
                lines.write(frame.to_record())
                last_index = frame.index
                top = frame.top_k[0]
                if timeline.add(frame.index, frame.time_s, top.class_id, top.label, top.probability) \
                        and len(thumbs) < MAX_THUMBS:
                    thumbs[frame.index] = thumbnail_data_uri(overlay)
                if lines.lines % options.batch_size == 0:
                    lines.flush()
                if preview and _show(overlay):
                    status = "stopped"
                    break
                if options.max_frames is not None and lines.lines >= options.max_frames:
                    break
    except VideoError as exc:
        status, error, code = "failed", str(exc), EXIT_SOME_FAILED
    except KeyboardInterrupt:
        status, error, code = "interrupted", "interrupted (Ctrl-C)", EXIT_INTERRUPTED
    except SystemExit as exc:  # SIGTERM, turned into SystemExit by sigterm_as_exit
        status, error = "interrupted", "terminated (SIGTERM)"
        code = exc.code if isinstance(exc.code, int) else EXIT_INTERRUPTED
    finally:
        written = writer.close() if writer is not None else None
        if lines is not None:
            lines.close()
        if preview:
            _close_preview()
        meta.update({"status": status, "error": error, "last_frame": last_index if last_index >= 0 else None,
                     "frames_explained": lines.lines if lines is not None else 0,
                     "video": names["video"] if written else None,
                     "frames_jsonl": names["frames_jsonl"] if lines is not None else None,
                     "wall_s": round(time.perf_counter() - started, 3)})
        write_video_report(layout.root, meta, timeline, thumbs)
    if error is not None:
        error_line(error)
    if options.json_summary:
        typer.echo(json.dumps(meta, allow_nan=False, default=str))
    elif not options.quiet:
        _summary(meta, layout.root)
    return code


def _show(overlay: Any) -> bool:
    """Show a frame in the preview window; True when the user pressed q or Esc."""
    import cv2

    cv2.imshow("camr", overlay)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)


def _close_preview() -> None:
    import contextlib

    import cv2

    with contextlib.suppress(cv2.error):
        cv2.destroyAllWindows()


def _summary(meta: dict[str, Any], root: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="camr video", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    wall = meta.get("wall_s") or 0.0
    done = meta.get("frames_explained", 0)
    table.add_row("source", escape(str(meta.get("source"))))
    table.add_row("explained", f"{done} frames" + (f" ({done / wall:.1f}/s)" if wall > 0 else ""))
    table.add_row("status", escape(str(meta.get("status"))))
    for key in ("video", "frames_jsonl"):
        if meta.get(key):
            table.add_row(key.replace("_", " "), escape(str(root / meta[key])))
    table.add_row("report", escape(str(root / "report.html")))
    err_console().print(table)


@handle_errors
def video(
    source: Annotated[str | None, typer.Argument(help="Video file or rtsp/http(s) URL (or use --camera).",
                                                 show_default=False)] = None,
    camera: Annotated[int | None, typer.Option("--camera", min=0, help="Read this camera index instead.",
                                               show_default=False)] = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    method: Annotated[str, typer.Option("--method", help="CAM method (see camr explain).")] = "cam",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Explain the k most probable classes.")] = 1,
    classes: ClassesOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("outputs"),
    every: EveryOpt = 1,
    start: StartOpt = None,
    end: EndOpt = None,
    smooth: SmoothOpt = None,
    batch_size: BatchSizeOpt = 8,
    alpha: HeatmapWeightOpt = 0.5,
    colormap: ColormapOpt = "jet",
    boxes: BoxesOpt = True,
    all_boxes: AllBoxesOpt = False,
    box_threshold: BoxThresholdOpt = BOX_THRESHOLD,
    codec: Annotated[str, typer.Option("--codec", help="auto (H.264 'avc1' if this OpenCV can encode it, else "
                                                       "'mp4v'), or a FourCC.")] = "auto",
    preview: Annotated[bool | None, typer.Option("--preview/--no-preview", help="Show a window (default: for "
                                                 "cameras and URLs when a display exists).", show_default=False)]
    = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a live source may deliver no frame.")] = 10.0,
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1, help="Stop after this many explained "
                                                   "frames (for cameras).", show_default=False)] = None,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = 100_000_000,
    resize: ResizeOpt = None,
    trust_model_graph: TrustGraphOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary table.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Explain a video, URL or camera: OUT/NAME.overlay.mp4, OUT/NAME.frames.jsonl, OUT/report.json and .html.

    Exit status: 0 done, 1 the source failed (unreadable, truncated, stalled; outputs so far are kept),
    2 usage or model error, 130 interrupted (outputs so far are kept).
    """
    from cam_runtime.errors import InvalidArgumentError

    if (source is None) == (camera is None):
        raise InvalidArgumentError("give exactly one of SOURCE (a video file or URL) and --camera INDEX")
    options = VideoOptions(method=method, top_k=top_k, classes=list(classes) if classes else None, every=every,
                           start=start, end=end, smooth=smooth, batch_size=batch_size, alpha=alpha,
                           colormap=colormap, boxes=boxes, all_boxes=all_boxes, box_threshold=box_threshold,
                           codec=codec, force=force, preview=preview, timeout=timeout, max_frames=max_frames,
                           quiet=quiet, json_summary=as_json)
    options.validate()
    engine = load_engine(model, device, threads, max_pixels=max_pixels, resize=resize,
                         trust_graph=trust_model_graph)
    raise typer.Exit(run_video(engine, camera if camera is not None else str(source), output, options,
                               model_path=model))


@handle_errors
def stream(
    width: Annotated[int, typer.Option("--width", "-W", min=1, help="Frame width in pixels.")],
    height: Annotated[int, typer.Option("--height", "-H", min=1, help="Frame height in pixels.")],
    fps: Annotated[float, typer.Option("--fps", min=0.0, help="Timestamps = frame / fps (0: wall-clock seconds).")]
    = 0.0,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    method: Annotated[str, typer.Option("--method", help="CAM method (see camr explain).")] = "cam",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Explain the k most probable classes.")] = 1,
    classes: ClassesOpt = None,
    smooth: SmoothOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Frames per inference batch "
                                            "(results of a batch are written when it is complete).")] = 1,
    jsonl: Annotated[str, typer.Option("--jsonl", help="Where the per-frame JSON lines go: '-' (stdout) or a "
                                       "file.")] = "-",
    overlay_stdout: Annotated[bool, typer.Option("--overlay-stdout", help="Write raw RGB24 overlay frames "
                                                 "(same size) on stdout; needs --jsonl FILE.")] = False,
    alpha: HeatmapWeightOpt = 0.5,
    colormap: ColormapOpt = "jet",
    boxes: BoxesOpt = True,
    box_threshold: BoxThresholdOpt = BOX_THRESHOLD,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds stdin may deliver no byte.")] = 10.0,
    threads: ThreadsOpt = None,
    max_pixels: MaxPixelsOpt = 100_000_000,
    resize: ResizeOpt = None,
    trust_model_graph: TrustGraphOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --jsonl file.")] = False,
) -> None:
    """Explain raw RGB24 frames read from stdin (e.g. ffmpeg -f rawvideo -pix_fmt rgb24 -): one JSON line each.

    Exit status: 0 the stream ended, 1 it stalled or ended inside a frame (lines so far are written), 2 usage or
    model error, 130 interrupted.
    """
    from cam_runtime.errors import InvalidArgumentError, OutputExistsError, OutputFolderError, VideoError
    from cam_runtime.video_sources import RawStreamSource

    if overlay_stdout and jsonl == "-":
        raise InvalidArgumentError("--overlay-stdout writes frames on stdout: give --jsonl FILE for the JSON lines")
    options = VideoOptions(method=method, top_k=top_k, classes=list(classes) if classes else None, smooth=smooth,
                           batch_size=batch_size, alpha=alpha, colormap=colormap, boxes=boxes,
                           box_threshold=box_threshold, timeout=timeout)
    options.validate()
    target = Path(jsonl) if jsonl != "-" else None
    if target is not None and target.exists() and not force:
        raise OutputExistsError(target)
    engine = load_engine(model, device, threads, max_pixels=max_pixels, resize=resize,
                         trust_graph=trust_model_graph)
    source = RawStreamSource(sys.stdin.buffer, width, height, fps=fps, timeout_s=timeout, max_pixels=max_pixels)
    frames = engine.iter_explain_video(source, smooth=smooth, batch_size=batch_size, method=method, top_k=top_k,
                                       classes=options.classes, box_threshold=box_threshold, prefetch=False)
    try:
        # Written as it goes (a stream may never end): line-buffered, not atomic.
        handle = open(target, "w", encoding="utf-8") if target is not None else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise OutputFolderError(target.parent if target else Path("."), exc.strerror or str(exc)) from None
    import json

    code = EXIT_OK
    try:
        for frame in frames:
            handle.write(json.dumps(frame.to_record(), ensure_ascii=False) + "\n")
            handle.flush()
            if overlay_stdout:
                rgb = frame.overlay(0, heatmap_weight=alpha, colormap=colormap, draw_boxes=boxes, channel_order="RGB")
                sys.stdout.buffer.write(rgb.tobytes())
                sys.stdout.buffer.flush()
    except VideoError as exc:
        error_line(str(exc))
        code = EXIT_SOME_FAILED
    except BrokenPipeError:  # the reader went away: stop quietly, as pipes do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except KeyboardInterrupt:
        error_line("interrupted; the JSON lines so far are written")
        code = EXIT_INTERRUPTED
    finally:
        if handle is not sys.stdout:
            handle.close()
    raise typer.Exit(code)
