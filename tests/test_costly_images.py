"""Images within the pixel limit that would still cost too much to decode: progressive-scan bombs."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from cam_runtime.errors import ImageDecodeError
from cam_runtime.imaging import MAX_JPEG_SCANS, jpeg_scan_count, load_image


def progressive_jpeg(side: int = 256, fill: int | None = None) -> bytes:
    rng = np.random.default_rng(1)
    image = (np.full((side, side, 3), fill, np.uint8) if fill is not None
             else rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    return buffer.tobytes()


def scan_bomb(data: bytes, repeats: int) -> bytes:
    """The JPEG with its last scan repeated: valid markers, decoding cost x repeats."""
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + b"\xff\xd9"


def test_ordinary_jpegs_are_within_the_scan_budget() -> None:
    ok, baseline = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))
    assert ok and jpeg_scan_count(baseline.tobytes()) == 1
    progressive = progressive_jpeg()
    assert 2 <= jpeg_scan_count(progressive) <= 20
    assert load_image(progressive).width == 256


def test_scan_markers_in_metadata_are_not_counted() -> None:
    data = progressive_jpeg(64)
    payload = b"Exif\x00\x00" + b"\xff\xda" * 500  # an embedded thumbnail holds its own SOS markers
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg_scan_count(data[:2] + app1 + data[2:]) == jpeg_scan_count(data)


def test_scan_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # 105 KB; decoding it unguarded takes ~19 s of CPU on the 2-core dev box.
    bomb = scan_bomb(progressive_jpeg(2048, fill=128), 5000)
    assert jpeg_scan_count(bomb) > MAX_JPEG_SCANS
    assert jpeg_scan_count(scan_bomb(progressive_jpeg(64), MAX_JPEG_SCANS)) > MAX_JPEG_SCANS

    def no_decode(*args: object) -> None:
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ImageDecodeError, match="scans"):
        load_image(bomb)
