"""Hostile and unusual images through load_image and the engine: each bad one is a one-line CamError."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from cam_runtime.engine import CamEngine
from cam_runtime.errors import (
    CamError,
    ImageDecodeError,
    ImageNotFoundError,
    ImageReadError,
    ImageTooLargeError,
)
from cam_runtime.imaging import SUPPORTED_FORMATS, header_size, load_image, sniff_format
from cam_runtime.results import ExplainResult, ImageFailure
from tiny_models import make_tiny_folder

RNG = np.random.default_rng(7)
PIXELS = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # RGB


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring a huge image, followed by almost nothing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", 0)
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def jpeg_resync_bomb() -> bytes:
    """Garbage between SOI and a huge SOF: libjpeg skips it, so the header reader must too."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00"
    return b"\xff\xd8\xff\xe0\x00\x04ab" + b"junk-bytes" + sof + b"\x00" * 32


def gif_frames() -> bytes:
    first = Image.fromarray(np.full((16, 16, 3), (255, 0, 0), np.uint8)).convert("P")
    second = Image.fromarray(np.full((16, 16, 3), (0, 0, 255), np.uint8)).convert("P")
    return encode(first, "GIF", save_all=True, append_images=[second], duration=50, loop=0)


# name → (bytes, expected (height, width) or None when the decode must fail with the given error class)
GOOD: dict[str, tuple[bytes, tuple[int, int]]] = {}
BAD: dict[str, tuple[bytes, type[CamError], str]] = {}


def _build_cases() -> None:
    rgb = Image.fromarray(PIXELS)
    GOOD.update({
        "plain.png": (encode(rgb, "PNG"), (24, 40)),
        "plain.jpg": (encode(rgb, "JPEG", quality=95), (24, 40)),
        "progressive.jpeg": (encode(rgb, "JPEG", progressive=True), (24, 40)),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"), (1, 1)),
        "tall_1x4000.png": (encode(Image.new("RGB", (1, 4000), (50, 60, 70)), "PNG"), (4000, 1)),
        "wide_4000x1.jpg": (encode(Image.new("RGB", (4000, 1), (50, 60, 70)), "JPEG"), (1, 4000)),
        "sixteen_bit.png": (cv2.imencode(".png", PIXELS[..., ::-1].astype(np.uint16) * 257)[1].tobytes(), (24, 40)),
        "sixteen_bit.tif": (cv2.imencode(".tiff", PIXELS[..., ::-1].astype(np.uint16) * 257)[1].tobytes(), (24, 40)),
        "cmyk.jpg": (encode(rgb.convert("CMYK"), "JPEG", quality=95), (24, 40)),
        "palette.png": (encode(rgb.convert("P"), "PNG"), (24, 40)),
        "gray_alpha.png": (encode(rgb.convert("LA"), "PNG"), (24, 40)),
        "rgba.png": (encode(rgb.convert("RGBA"), "PNG"), (24, 40)),
        "animated.gif": (gif_frames(), (16, 16)),
        "lossy.webp": (encode(rgb, "WEBP"), (24, 40)),
        "lossless.webp": (encode(rgb, "WEBP", lossless=True), (24, 40)),
        "plain.bmp": (encode(rgb, "BMP"), (24, 40)),
        "plain.tif": (encode(rgb, "TIFF"), (24, 40)),
        "bigendian.tif": (_tiff(byteorder=">"), (24, 40)),
        "bigtiff.tif": (_tiff(bigtiff=True), (24, 40)),
        "plain.ppm": (encode(rgb, "PPM"), (24, 40)),
    })
    png = GOOD["plain.png"][0]
    jpg = GOOD["plain.jpg"][0]
    BAD.update({
        "empty.png": (b"", ImageDecodeError, "empty"),
        "truncated.png": (png[: len(png) // 2], ImageDecodeError, "truncated"),
        "truncated.jpg": (jpg[: len(jpg) * 2 // 3], ImageDecodeError, "truncated"),
        "header_only.jpg": (jpg[:20], ImageDecodeError, "JPEG header"),
        "corrupt_body.png": (png[:60] + bytes(RNG.integers(0, 256, 400, dtype=np.uint8)), ImageDecodeError, "PNG"),
        "random.jpg": (bytes(RNG.integers(0, 256, 2048, dtype=np.uint8)), ImageDecodeError, "supported format"),
        "text.png": (b"this is not a picture, just text\n" * 10, ImageDecodeError, "supported format"),
        "script.gif": (b"#!/bin/sh\necho hi\n", ImageDecodeError, "supported format"),
        "bomb.png": (png_header_bomb(100_000, 100_000), ImageTooLargeError, "above the limit"),
        "bomb_resync.jpg": (jpeg_resync_bomb(), ImageTooLargeError, "above the limit"),
        "garbage_ifd.tif": (b"II*\x00" + struct.pack("<I", 0xFFFFFFF0) + b"\x00" * 64, ImageDecodeError, "TIFF"),
        "zero_size.gif": (b"GIF89a" + b"\x00" * 20, ImageDecodeError, "empty image"),
        "jpeg2000.jp2": (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64, ImageDecodeError, "supported format"),
    })


def _tiff(**options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, PIXELS, **options)
    return buffer.getvalue()


_build_cases()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> CamEngine:
    folder = make_tiny_folder(tmp_path_factory.mktemp("robust_img_model") / "tiny")
    return CamEngine.load(folder, threads=1)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every good and bad case as a file, plus path oddities (unicode, spaces, links, a FIFO, a directory)."""
    root = tmp_path_factory.mktemp("robust_images")
    for name, (data, _) in GOOD.items():
        (root / name).write_bytes(data)
    for name, (data, _, _) in BAD.items():
        (root / name).write_bytes(data)
    (root / "façade 图像 ü.png").write_bytes(GOOD["plain.png"][0])
    (root / "with space.jpg").write_bytes(GOOD["plain.jpg"][0])
    (root / "link.png").symlink_to(root / "plain.png")
    (root / "dangling.png").symlink_to(root / "no-such-file.png")
    (root / "directory.jpg").mkdir()
    (root / "dir_link.png").symlink_to(root / "directory.jpg")
    (root / "device.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo.png")
    return root


@pytest.mark.parametrize("name", sorted(GOOD))
def test_unusual_but_valid_images_decode_to_8bit_bgr(name: str) -> None:
    data, (height, width) = GOOD[name]
    for alpha in ("drop", "composite"):
        image = load_image(data, alpha=alpha)  # type: ignore[arg-type]
        assert image.bgr.dtype == np.uint8 and image.bgr.shape == (height, width, 3)
        assert header_size(data) == (width, height)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_raise_one_line_project_errors(name: str) -> None:
    data, error, text = BAD[name]
    with pytest.raises(error) as info:
        load_image(data, source=name)
    message = str(info.value)
    assert text in message and name in message and "\n" not in message


def test_sixteen_bit_and_palette_keep_their_colours() -> None:
    for name in ("sixteen_bit.png", "sixteen_bit.tif"):
        assert np.array_equal(load_image(GOOD[name][0]).rgb(), PIXELS)
    palette = Image.fromarray(PIXELS).convert("P")
    expected = np.asarray(palette.convert("RGB"))
    assert np.array_equal(load_image(encode(palette, "PNG")).rgb(), expected)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    decoded = load_image(GOOD["cmyk.jpg"][0]).rgb().astype(int)
    assert np.abs(decoded - PIXELS.astype(int)).mean() < 12  # lossy JPEG, but the colours survive


def test_alpha_is_dropped_or_composited_over_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red
    rgba[2:, :, 3] = 255  # bottom half opaque, top half fully transparent
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    dropped = load_image(data, alpha="drop").rgb()
    composited = load_image(data, alpha="composite").rgb()
    assert (dropped[:2] == (200, 0, 0)).all() and (dropped[2:] == (200, 0, 0)).all()
    assert (composited[:2] == 255).all() and (composited[2:] == (200, 0, 0)).all()


def test_animated_gif_yields_its_first_frame() -> None:
    assert sniff_format(GOOD["animated.gif"][0]) == "GIF"
    frame = load_image(GOOD["animated.gif"][0]).rgb()
    assert (frame == (255, 0, 0)).all()


def test_bomb_is_refused_from_the_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: object) -> None:
        raise AssertionError("the decoder must not run for an oversized image")

    monkeypatch.setattr(cv2, "imdecode", never)
    for name in ("bomb.png", "bomb_resync.jpg"):
        with pytest.raises(ImageTooLargeError):
            load_image(BAD[name][0])
    with pytest.raises(ImageTooLargeError, match="above the limit of 100"):
        load_image(GOOD["plain.png"][0], max_pixels=100)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM"])
def test_header_size_covers_every_supported_format(fmt: str) -> None:
    data = encode(Image.new("RGB", (4321, 3), (1, 2, 3)), fmt)
    assert sniff_format(data) is not None and header_size(data) == (4321, 3)
    assert len(SUPPORTED_FORMATS) == 7


def test_header_size_reads_os2_bmp_and_pnm_comments() -> None:
    os2 = b"BM" + b"\x00" * 12 + struct.pack("<IHHHH", 12, 300, 200, 1, 24)
    assert header_size(os2) == (300, 200)
    assert header_size(b"P6\n# made by hand\n 70000 # width\n70000\n255\n") == (70000, 70000)
    with pytest.raises(ImageTooLargeError):
        load_image(b"P6\n# comment\n70000 70000\n255\n" + b"\x00" * 100)


def test_path_errors_are_one_line(image_dir: Path) -> None:
    expectations = {
        "missing.png": (ImageNotFoundError, "not found"),
        "dangling.png": (ImageNotFoundError, "not found"),
        "directory.jpg": (ImageReadError, "directory"),
        "dir_link.png": (ImageReadError, "directory"),
        "device.jpg": (ImageReadError, "not a regular file"),
        "fifo.png": (ImageReadError, "not a regular file"),
    }
    for name, (error, text) in expectations.items():
        with pytest.raises(error, match=text) as info:
            load_image(image_dir / name)
        assert "\n" not in str(info.value)


def test_unreadable_file(image_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading, so this case cannot occur")
    target = tmp_path / "locked.png"
    target.write_bytes(GOOD["plain.png"][0])
    target.chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        load_image(target)


def test_unicode_space_and_symlink_paths_decode(image_dir: Path) -> None:
    for name in ("façade 图像 ü.png", "with space.jpg", "link.png"):
        image = load_image(image_dir / name)
        assert image.bgr.shape == (24, 40, 3) and image.source == str(image_dir / name)


def test_folder_run_reports_every_bad_file_and_continues(engine: CamEngine, image_dir: Path) -> None:
    paths = sorted(image_dir.iterdir())
    results = list(engine.iter_explain(paths, batch_size=4))
    assert [r.source for r in results] == [str(p) for p in paths]
    failures = {Path(r.source).name: r for r in results if isinstance(r, ImageFailure)}
    explained = {Path(r.source).name: r for r in results if isinstance(r, ExplainResult)}
    assert set(failures) == {*BAD, "dangling.png", "directory.jpg", "dir_link.png", "device.jpg", "fifo.png"}
    assert set(explained) == {*GOOD, "façade 图像 ü.png", "with space.jpg", "link.png"}
    for failure in failures.values():
        assert failure.error and "\n" not in failure.error and Path(failure.source).name in failure.error
    for name, result in explained.items():
        height, width = GOOD.get(name, (b"", (24, 40)))[1]
        assert (result.height, result.width) == (height, width)
        assert result.heatmap.shape == (height, width) and np.isfinite(result.heatmap).all()


def test_explain_raises_the_first_bad_input(engine: CamEngine, image_dir: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"truncated\.png"):
        engine.explain([image_dir / "plain.png", image_dir / "truncated.png", image_dir / "plain.jpg"])


def test_engine_pixel_limit_is_configurable(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = make_tiny_folder(tmp_path_factory.mktemp("robust_limit") / "tiny")
    small = CamEngine.load(folder, threads=1, max_pixels=500, warmup=False)
    (ok, refused) = small.iter_explain([GOOD["one_pixel.png"][0], GOOD["plain.png"][0]], prefetch=False)
    assert isinstance(ok, ExplainResult)
    assert isinstance(refused, ImageFailure) and "above the limit of 500" in refused.error


def test_file_larger_than_any_allowed_image_is_refused_before_reading(tmp_path: Path) -> None:
    from cam_runtime.imaging import max_file_bytes, read_file_bytes

    big = tmp_path / "huge.png"
    big.write_bytes(GOOD["plain.png"][0] + b"\x00" * 4096)
    with pytest.raises(ImageReadError, match="more than the 1000 allowed"):
        read_file_bytes(big, max_bytes=1000)
    assert max_file_bytes(100) > 1600 and read_file_bytes(big) == big.read_bytes()


def test_cli_folder_run_continues_and_exits_1(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from typer.testing import CliRunner

    from cam_runtime.cli import app

    root = tmp_path_factory.mktemp("robust_cli")
    model = make_tiny_folder(root / "model")
    out = root / "out"
    result = CliRunner().invoke(app, ["explain", str(image_dir), "-m", str(model), "-o", str(out), "-q",
                                      "--format", "png"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    images = {Path(r["source"]).name: r for r in json.loads((out / "report.json").read_text())["images"]}
    # link.png and plain.png are one file: the CLI explains it once. Folders named like images are not inputs.
    explained = {*GOOD, "façade 图像 ü.png", "with space.jpg", "link.png"} - {"plain.png"}
    assert {name for name, r in images.items() if r["status"] == "ok"} == explained
    failed = {name: r["error"] for name, r in images.items() if r["status"] != "ok"}
    assert set(failed) == {*BAD, "dangling.png", "device.jpg", "fifo.png"} - {"jpeg2000.jp2"}
    for name, error in failed.items():
        assert error and "\n" not in error and name in error, (name, error)
    for name in explained:
        overlays = [t["overlay"] for t in images[name]["targets"]]
        assert overlays and all(cv2.imread(str(out / o)) is not None for o in overlays)
