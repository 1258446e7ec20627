"""Fuzzing with hypothesis: random and mutated image bytes, random manifests; only CamError may escape.

Deterministic by default (CI); ``CAMR_FUZZ_RANDOM=1`` explores new cases and ``CAMR_FUZZ_SCALE=10`` runs ten
times more. Case counts are printed at the end of the module (visible with ``pytest -s``).
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cam_runtime.engine import CamEngine
from cam_runtime.errors import CamError
from cam_runtime.imaging import header_size, load_image, sniff_format
from cam_runtime.model import Manifest, parse_manifest
from cam_runtime.results import ExplainResult, ImageFailure
from tiny_models import make_tiny_folder

SCALE = float(os.environ.get("CAMR_FUZZ_SCALE", "1"))
FUZZ_LIMIT = 1 << 20  # a low pixel limit keeps mutated headers from asking for huge (slow) legal decodes
CASES: Counter[str] = Counter()


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    derandomize=not os.environ.get("CAMR_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    seeds = []
    for fmt, image, options in [("PNG", rgb, {}), ("PNG", rgb.convert("P"), {}), ("PNG", rgb.convert("RGBA"), {}),
                                ("JPEG", rgb, {}), ("JPEG", rgb, {"progressive": True}), ("GIF", rgb, {}),
                                ("BMP", rgb, {}), ("WEBP", rgb, {}), ("WEBP", rgb, {"lossless": True}),
                                ("TIFF", rgb, {}), ("PPM", rgb, {}), ("JPEG", rgb.convert("CMYK"), {})]:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real small image with a few byte-level mutations, biased towards the header."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "header", "truncate", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "header" and data:
            at = draw(st.integers(0, min(len(data) - 1, 48)))
            data[at:at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 32))]
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[pos:] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data)


def check_decode(data: bytes) -> None:
    """Either an 8-bit 3-channel image within the limit, or a CamError; header_size never raises."""
    size = header_size(data)
    assert size is None or (isinstance(size[0], int) and isinstance(size[1], int))
    try:
        image = load_image(data, max_pixels=FUZZ_LIMIT, alpha="composite")
    except CamError as exc:
        assert str(exc) and "\n" not in str(exc)
        CASES["decode: refused"] += 1
        return
    assert image.bgr.dtype == np.uint8 and image.bgr.ndim == 3 and image.bgr.shape[2] == 3
    assert image.height * image.width <= FUZZ_LIMIT
    CASES["decode: decoded"] += 1


@fuzz_settings(1500)
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_cam_error(data: bytes) -> None:
    check_decode(data)


@fuzz_settings(400)
@given(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8X",
                        b"II*\x00", b"MM\x00*", b"II+\x00", b"P6\n", b"P1 "]), st.binary(max_size=256))
def test_known_magic_with_random_tail(magic: bytes, tail: bytes) -> None:
    assert sniff_format(magic + tail) is not None or magic.startswith(b"RIFF")
    check_decode(magic + tail)


@fuzz_settings(2000)
@given(mutated_images())
def test_mutated_images_decode_or_raise_cam_error(data: bytes) -> None:
    check_decode(data)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> CamEngine:
    folder = make_tiny_folder(tmp_path_factory.mktemp("fuzz_model") / "tiny")
    return CamEngine.load(folder, threads=1, max_pixels=FUZZ_LIMIT)


@fuzz_settings(250)
@given(st.lists(st.one_of(mutated_images(), st.binary(max_size=64)), min_size=1, max_size=5),
       st.sampled_from(["cam", "gradcam++", "eigencam"]))
def test_engine_survives_mutated_batches(engine: CamEngine, images: list[bytes], method: str) -> None:
    results = list(engine.iter_explain(images, method=method, batch_size=3, prefetch=False))
    assert len(results) == len(images)
    for result in results:
        assert isinstance(result, ExplainResult | ImageFailure)
        if isinstance(result, ExplainResult):
            assert np.isfinite(result.heatmap).all() and result.heatmap.shape == (result.height, result.width)
        CASES[f"engine: {type(result).__name__}"] += 1


# --- manifests ------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _valid_manifest(tmp: Path) -> dict:
    folder = make_tiny_folder(tmp / "tiny")
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def valid_manifest(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _valid_manifest(tmp_path_factory.mktemp("fuzz_manifest"))


def check_manifest(data: object) -> None:
    try:
        parsed = parse_manifest(data)
    except CamError as exc:
        assert str(exc) and "\n" not in str(exc)
        CASES["manifest: refused"] += 1
        return
    assert isinstance(parsed, Manifest)
    parse_manifest(json.loads(parsed.to_json()))  # what parses also round-trips
    CASES["manifest: accepted"] += 1


@fuzz_settings(800)
@given(json_values)
def test_random_json_manifests(data: object) -> None:
    check_manifest(data)


def _paths(value: object, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*prefix, i))


@fuzz_settings(1500)
@given(st.data())
def test_mutated_valid_manifests(valid_manifest: dict, data: st.DataObject) -> None:
    manifest = copy.deepcopy(valid_manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(manifest) if p]
        path = data.draw(st.sampled_from(paths))
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "big", "path"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "big":
            parent[path[-1]] = data.draw(st.sampled_from([10**400, -(10**30), 1e308, float("nan"), float("inf"),
                                                          "x" * 10_000, [], {}, "..", "/", "\x00"]))
        elif action == "path":
            parent[path[-1]] = data.draw(st.sampled_from(["../x", "/abs", "a/../../b", "~/x", "ok.npy", "\ud800",
                                                          "a\\b", "", "."]))
        else:
            parent[path[-1]] = data.draw(json_values)
    check_manifest(manifest)


@pytest.fixture(scope="module", autouse=True)
def report_case_counts() -> Iterator[None]:
    yield
    total = sum(CASES.values())
    details = ", ".join(f"{name} {count}" for name, count in sorted(CASES.items()))
    print(f"\n[fuzz] {total} cases ran without an unexpected exception: {details}")
