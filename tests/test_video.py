"""Video and streams: clips generated here with cv2.VideoWriter, explained through the API, the CLI and raw pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cam_runtime import CamEngine
from cam_runtime.cli import app
from cam_runtime.cli.video_cmd import VideoOptions, preview_available, run_video
from cam_runtime.errors import (
    StreamStalledError,
    VideoFrameTooLargeError,
    VideoNotFoundError,
    VideoOpenError,
    VideoTruncatedError,
)
from cam_runtime.maps import heatmap_at
from cam_runtime.video import MapSmoother
from cam_runtime.video_sources import ArraySource, CaptureSource, FrameSelection, RawStreamSource
from cam_runtime.video_writer import AtomicVideoWriter, Timeline
from export.shapes_data import glyph_mask, textured_background

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "models" / "fixtures" / "shapes"
FPS = 30
N_FRAMES = 30
SIDE = 96
runner = CliRunner()


def moving_glyph(n: int = N_FRAMES) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """BGR frames (96×96) of a magenta square sliding left to right over a fixed texture, and its centres."""
    background = textured_background(np.random.default_rng(7), 48)
    mask = glyph_mask("square", 22, np.random.default_rng(1)).astype(np.float32) / 255.0
    colour = np.array([230.0, 40.0, 200.0], dtype=np.float32)
    frames, centres = [], []
    for i in range(n):
        x, y = i * 26 // max(1, n - 1), 13
        alpha = np.zeros((48, 48), np.float32)
        alpha[y:y + 22, x:x + 22] = mask
        rgb = np.clip(np.rint(background * (1 - alpha[..., None]) + colour * alpha[..., None]), 0, 255)
        rgb = cv2.resize(rgb.astype(np.uint8), (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
        frames.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        centres.append((2 * x + 22.0, 2 * y + 22.0))
    return frames, centres


def write_clip(path: Path, frames: list[np.ndarray], fourcc: str = "mp4v", fps: float = FPS) -> Path:
    """Encode BGR frames with OpenCV's FFmpeg backend."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), fourcc
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def decode_all(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    """Every frame of a video, its fps and (width, height), read back with OpenCV."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert capture.isOpened(), path
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps, size


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def engine() -> CamEngine:
    return CamEngine.load(SHAPES)


@pytest.fixture(scope="module")
def glyph() -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    return moving_glyph()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, glyph: tuple[list[np.ndarray], list]) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "glyph.mp4", glyph[0])


# --- API ------------------------------------------------------------------------------------------------------


def test_results_equal_per_frame_explain_on_the_decoded_frames(engine: CamEngine, clip: Path) -> None:
    decoded, _, _ = decode_all(clip)
    expected = engine.explain(decoded, array_order="BGR", top_k=2, batch_size=4)
    stream = engine.iter_explain_video(clip, top_k=2, batch_size=4)
    assert (stream.info.width, stream.info.height, stream.info.fps, stream.info.frame_count) == (SIDE, SIDE, FPS,
                                                                                                 N_FRAMES)
    got = list(stream)
    assert [f.index for f in got] == list(range(N_FRAMES))
    assert [f.time_s for f in got] == pytest.approx([i / FPS for i in range(N_FRAMES)])
    for frame, want in zip(got, expected, strict=True):
        assert frame.top_k == want.top_k  # exact: same frames, same batches
        assert [t.boxes for t in frame.targets] == [t.boxes for t in want.targets]
        np.testing.assert_array_equal(frame.result.heatmap, want.heatmap)


def test_boxes_follow_the_moving_glyph(engine: CamEngine, clip: Path,
                                       glyph: tuple[list[np.ndarray], list[tuple[float, float]]]) -> None:
    # The paper's 0.2 boxes cover the whole 44-px glyph, so their centres track its centre; the default 0.5 boxes
    # sit on the strongest evidence inside it.
    frames = list(engine.iter_explain_video(clip, box_threshold=0.2))
    centres = np.array([((f.boxes[0].x0 + f.boxes[0].x1) / 2, (f.boxes[0].y0 + f.boxes[0].y1) / 2) for f in frames])
    truth = np.array(glyph[1])
    assert sum(f.top_k[0].label == "square" for f in frames) >= 0.9 * len(frames)
    assert np.abs(centres[:, 0] - truth[:, 0]).max() <= 10.0  # 96-px frames, 44-px glyph moving 52 px
    assert np.corrcoef(centres[:, 0], truth[:, 0])[0, 1] > 0.97
    assert np.abs(centres[:, 1] - truth[:, 1]).max() <= 4.0


def test_every_start_end_select_frames(engine: CamEngine, clip: Path) -> None:
    frames = list(engine.iter_explain_video(clip, every=3, start=0.2, end=0.8))
    # times i/30 in [0.2, 0.8): frames 6..23, every third from the first of them
    assert [f.index for f in frames] == [6, 9, 12, 15, 18, 21]
    assert [f.time_s for f in frames] == pytest.approx([i / FPS for i in (6, 9, 12, 15, 18, 21)])
    with pytest.raises(ValueError, match="every"):
        engine.iter_explain_video(clip, every=0)
    with pytest.raises(ValueError, match="end"):
        engine.iter_explain_video(clip, start=0.5, end=0.5)


def test_smoothing_is_the_documented_ema_per_class(engine: CamEngine, clip: Path) -> None:
    alpha = 0.3
    plain = list(engine.iter_explain_video(clip, classes=[1, 3], batch_size=5))
    smoothed = list(engine.iter_explain_video(clip, classes=[1, 3], batch_size=5, smooth=alpha))
    for t in range(2):
        ema = plain[0].targets[t].raw.astype(np.float64)
        for i, (p, s) in enumerate(zip(plain, smoothed, strict=True)):
            if i:
                ema = alpha * p.targets[t].raw.astype(np.float64) + (1 - alpha) * ema
            np.testing.assert_allclose(s.targets[t].raw, ema, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(s.targets[t].heatmap, heatmap_at(s.targets[t].raw, SIDE, SIDE))
            assert s.top_k == p.top_k  # smoothing changes maps, never predictions
    assert not np.allclose(smoothed[10].targets[0].raw, plain[10].targets[0].raw)


def test_smoother_restarts_a_class_that_left_the_targets() -> None:
    smoother = MapSmoother(0.5)
    a, b = np.full((2, 2), 2.0, np.float32), np.full((2, 2), 4.0, np.float32)
    assert smoother.update([0], [a])[0][0, 0] == 2.0
    assert smoother.update([0], [b])[0][0, 0] == 3.0   # 0.5·4 + 0.5·2
    assert smoother.update([1], [b])[0][0, 0] == 4.0   # class 1 starts at its own map
    assert smoother.update([0], [b])[0][0, 0] == 4.0   # class 0 was absent: starts afresh
    with pytest.raises(ValueError, match="smooth"):
        MapSmoother(0.0)


def test_frames_are_pulled_lazily(engine: CamEngine, glyph: tuple[list[np.ndarray], list]) -> None:
    pulled = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal pulled
        for _ in range(10):  # 10 × 30 = 300 frames, never all in memory
            for frame in glyph[0]:
                pulled += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    stream = engine.iter_explain_video(ArraySource(frames(), fps=FPS), batch_size=4)
    iterator = iter(stream)
    first = next(iterator)
    assert first.index == 0
    assert pulled <= 3 * 4  # the batch being consumed, the one prefetched, and the next one read
    count = 1 + sum(1 for _ in iterator)
    assert count == pulled == 300


def test_array_source_rgb_matches_bgr_file_frames(engine: CamEngine, glyph: tuple[list[np.ndarray], list]) -> None:
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in glyph[0][:6]]
    got = list(engine.iter_explain_video(rgb, fps=FPS, batch_size=3))
    want = engine.explain(rgb, batch_size=3)
    assert [f.top_k for f in got] == [w.top_k for w in want]


def test_source_errors(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(VideoNotFoundError):
        CaptureSource(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoOpenError, match="cannot open video"):
        CaptureSource(garbage)
    with pytest.raises(VideoFrameTooLargeError, match="above the limit"):
        CaptureSource(clip, max_pixels=SIDE * SIDE - 1)
    with open(os.devnull, "rb") as empty, pytest.raises(VideoFrameTooLargeError):
        RawStreamSource(empty, 4000, 4000, max_pixels=1000)


def truncated_avi(folder: Path, frames: list[np.ndarray]) -> Path:
    """An MJPG AVI cut in the middle: the header still declares every frame."""
    full = write_clip(folder / "full.avi", frames, "MJPG")
    data = full.read_bytes()
    cut = folder / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_truncated_file_raises_after_the_frames_before_it(engine: CamEngine, tmp_path: Path,
                                                          glyph: tuple[list[np.ndarray], list]) -> None:
    cut = truncated_avi(tmp_path, glyph[0])
    stream = engine.iter_explain_video(cut, batch_size=4)
    got = []
    with pytest.raises(VideoTruncatedError) as info:
        for frame in stream:
            got.append(frame.index)
    assert 0 < info.value.frame < N_FRAMES
    assert got == list(range(info.value.frame))  # every frame read before the error was explained
    assert f"frame {info.value.frame}" in str(info.value)


# --- CLI ------------------------------------------------------------------------------------------------------


def test_cli_explain_video_writes_video_jsonl_and_report(engine: CamEngine, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", clip, "-m", SHAPES, "-o", out, "-k", "2", "-q")
    assert result.exit_code == 0, result.stderr
    frames, fps, size = decode_all(out / "glyph_mp4.overlay.mp4")
    assert (len(frames), fps, size) == (N_FRAMES, FPS, (SIDE, SIDE))
    records = read_jsonl(out / "glyph_mp4.frames.jsonl")
    expected = engine.explain(decode_all(clip)[0], array_order="BGR", top_k=2, batch_size=8)
    assert [r["frame"] for r in records] == list(range(N_FRAMES))
    assert [r["time"] for r in records] == pytest.approx([i / FPS for i in range(N_FRAMES)], abs=1e-6)
    for record, want in zip(records, expected, strict=True):
        assert record["top_k"] == [p.to_dict() for p in want.top_k]
        assert [t["boxes"] for t in record["targets"]] == [[b.to_dict() for b in t.boxes] for t in want.targets]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["status"] == "ok" and report["meta"]["frames_explained"] == N_FRAMES
    segments = report["timeline"]["segments"]
    assert sum(s["frames"] for s in segments) == N_FRAMES
    tops = [r["top_k"][0]["class_id"] for r in records]
    assert [s["class_id"] for s in segments] == [c for i, c in enumerate(tops) if i == 0 or tops[i - 1] != c]
    assert report["timeline"]["classes"][0]["label"] == "square"
    assert "Top-1 class over time" in (out / "report.html").read_text(encoding="utf-8")
    # the overlay frames are the blended maps, not the input frames
    assert np.abs(frames[15].astype(int) - decode_all(clip)[0][15].astype(int)).mean() > 10

    again = invoke("explain", clip, "-m", SHAPES, "-o", out, "-q")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert invoke("explain", clip, "-m", SHAPES, "-o", out, "-q", "--force").exit_code == 0
    assert not list(out.glob(".camr-*"))


def test_cli_every_start_end(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("video", clip, "-m", SHAPES, "-o", out, "--every", "3", "--start", "0.2", "--end", "0.8",
                    "--smooth", "0.5", "-q")
    assert result.exit_code == 0, result.stderr
    records = read_jsonl(out / "glyph_mp4.frames.jsonl")
    assert [r["frame"] for r in records] == [6, 9, 12, 15, 18, 21]
    frames, fps, size = decode_all(out / "glyph_mp4.overlay.mp4")
    assert (len(frames), fps, size) == (6, FPS / 3, (SIDE, SIDE))


def test_cli_truncated_video_keeps_partial_outputs(tmp_path: Path, glyph: tuple[list[np.ndarray], list]) -> None:
    cut = truncated_avi(tmp_path, glyph[0])
    out = tmp_path / "out"
    result = invoke("explain", cut, "-m", SHAPES, "-o", out, "-q", "-b", "4")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "truncated" in lines[0]
    reached = int(lines[0].split("stopped at frame ")[1].split()[0])
    assert 0 < reached < N_FRAMES
    records = read_jsonl(out / "cut_avi.frames.jsonl")
    assert [r["frame"] for r in records] == list(range(reached))
    frames, fps, _ = decode_all(out / "cut_avi.overlay.mp4")  # finalised: it decodes
    assert (len(frames), fps) == (reached, FPS)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["status"] == "failed" and "truncated" in report["meta"]["error"]


def test_cli_unreadable_video_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    result = invoke("explain", bad, "-m", SHAPES, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: cannot open video")
    assert invoke("video", "-m", SHAPES, "-o", tmp_path / "o2").exit_code == 2  # neither SOURCE nor --camera


def test_interrupt_finalises_outputs(engine: CamEngine, tmp_path: Path,
                                     glyph: tuple[list[np.ndarray], list]) -> None:
    def frames() -> Iterator[np.ndarray]:
        for i, frame in enumerate(glyph[0]):
            if i == 20:
                raise KeyboardInterrupt
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    out = tmp_path / "out"
    code = run_video(engine, ArraySource(frames(), fps=FPS), out, VideoOptions(batch_size=4, quiet=True))
    assert code == 130
    records = read_jsonl(out / "frames.frames.jsonl")
    decoded, _, _ = decode_all(out / "frames.overlay.mp4")
    assert 0 < len(records) == len(decoded) <= 20
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["status"] == "interrupted" and report["meta"]["frames_explained"] == len(records)


@pytest.mark.skipif(preview_available(), reason="this OpenCV has a GUI and a display: a window would open")
def test_preview_without_display_writes_files(clip: Path, tmp_path: Path) -> None:
    result = invoke("video", clip, "-m", SHAPES, "-o", tmp_path / "out", "--preview", "--end", "0.1", "-q")
    assert result.exit_code == 0, result.stderr
    assert "no preview window" in result.stderr
    assert (tmp_path / "out" / "glyph_mp4.overlay.mp4").is_file()


def test_video_writer_and_timeline_units(tmp_path: Path) -> None:
    writer = AtomicVideoWriter(tmp_path / "v.mp4", 10, 32, 24)
    assert writer.codec in ("avc1", "mp4v")
    assert not (tmp_path / "v.mp4").exists()  # only the temporary file until close
    for i in range(5):
        writer.write(np.full((24, 32, 3), i * 40, np.uint8))
    assert writer.close() == tmp_path / "v.mp4"
    frames, fps, size = decode_all(tmp_path / "v.mp4")
    assert (len(frames), fps, size) == (5, 10, (32, 24))
    timeline = Timeline(frame_step_s=0.5)
    for i, c in enumerate([2, 2, 0, 0, 0, 2]):
        timeline.add(i, i * 0.5, c, f"c{c}", 0.5)
    data = timeline.to_dict()
    assert [(s["class_id"], s["first_frame"], s["last_frame"], s["start_s"], s["end_s"]) for s in data["segments"]] \
        == [(2, 0, 1, 0.0, 1.0), (0, 2, 4, 1.0, 2.5), (2, 5, 5, 2.5, 3.0)]
    assert [(c["class_id"], c["frames"], c["seconds"], c["segments"]) for c in data["classes"]] == [
        (0, 3, 1.5, 1), (2, 3, 1.5, 2)]


# --- raw stream mode (real processes) ------------------------------------------------------------------------------


def camr(*args: object, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cam_runtime", *map(str, args)], env=env, input=stdin,
                          capture_output=True, timeout=timeout, check=False)


def test_stream_mode_pipe(engine: CamEngine, tmp_path: Path, glyph: tuple[list[np.ndarray], list]) -> None:
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in glyph[0][:8]]
    data = b"".join(f.tobytes() for f in rgb)
    result = camr("stream", "--width", SIDE, "--height", SIDE, "--fps", 10, "-m", SHAPES, stdin=data)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    want = engine.explain(rgb, batch_size=1)
    assert [r["frame"] for r in records] == list(range(8))
    assert [r["time"] for r in records] == pytest.approx([i / 10 for i in range(8)])
    assert [r["top_k"] for r in records] == [[p.to_dict() for p in w.top_k] for w in want]

    jsonl = tmp_path / "frames.jsonl"
    result = camr("stream", "-W", SIDE, "-H", SIDE, "-m", SHAPES, "--overlay-stdout", "--jsonl", jsonl,
                  stdin=data + data[: SIDE * SIDE])  # plus a third of a frame: truncated
    assert result.returncode == 1
    assert "ended inside frame 8" in result.stderr.decode()
    assert len(read_jsonl(jsonl)) == 8
    overlays = np.frombuffer(result.stdout, np.uint8).reshape(8, SIDE, SIDE, 3)
    np.testing.assert_array_equal(overlays[3], want[3].overlay(0))
    again = camr("stream", "-W", SIDE, "-H", SIDE, "-m", SHAPES, "--jsonl", jsonl, stdin=data)
    assert again.returncode == 2 and b"already exists" in again.stderr


def test_stream_mode_stall_times_out(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "cam_runtime", "stream", "-W", "8", "-H", "8", "-m", SHAPES,
                                "--timeout", "1"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(bytes(8 * 8 * 3))  # one frame, then silence with the pipe still open
    process.stdin.flush()
    start = time.monotonic()
    try:
        process.wait(timeout=60)  # stdin stays open: only the timeout can end the process
    finally:
        process.stdin.close()
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout.read(), process.stderr.read()
    assert process.returncode == 1, stderr.decode()
    assert "stalled" in stderr.decode() and "after frame 1" in stderr.decode()
    assert len(stdout.decode().splitlines()) == 1
    assert time.monotonic() - start < 50


def test_raw_source_stall_in_process() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as reader:
            source = RawStreamSource(reader, 2, 2, timeout_s=0.2)
            os.write(write_fd, bytes(12))
            frames = source.frames(FrameSelection())
            assert next(frames).index == 0
            with pytest.raises(StreamStalledError, match="after frame 1"):
                next(frames)
    finally:
        os.close(write_fd)


def test_colorize_fast_path_equals_numpy_levels() -> None:
    from cam_runtime.render import colorize

    rng = np.random.default_rng(3)
    heat = rng.random((90, 160)).astype(np.float32)
    heat[0, :256 // 2] = (np.arange(128) + 0.5) / 255  # exact half steps round to even either way
    expected = cv2.applyColorMap(np.clip(np.rint(heat * 255.0), 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(colorize(heat), expected)
    negative = heat - 0.5  # the NumPy path clips negatives to 0
    expected = cv2.applyColorMap(np.clip(np.rint(negative * 255.0), 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(colorize(negative), expected)


def test_stale_video_temps_are_removed_with_the_others(tmp_path: Path) -> None:
    """A killed run's temporary overlay video keeps its extension (.tmp.mp4); the shared cleanup removes it."""
    from cam_runtime.outputs import TEMP_PREFIX, TEMP_SUFFIX, remove_stale_temps

    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f"{TEMP_PREFIX}clip.overlay.mp4.x1{TEMP_SUFFIX}.mp4",
             tmp_path / "sub" / f"{TEMP_PREFIX}a.jpg.x2{TEMP_SUFFIX}"]
    kept = [tmp_path / "clip.overlay.mp4", tmp_path / "notes.tmp.mp4"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
