"""A corpus of hostile inputs (images, names, resume records, model folders) for ``camr explain`` and ``camr info``,
and a runner that checks every run ends well.

As a library (tests/test_hostile_corpus.py): :func:`build` writes the corpus under a folder and returns the
:class:`Case` runs; :func:`run_case` runs one CLI process, bounded in time, and measures its peak RSS.

As a script, for the numbers of a closing note::

    python tests/hostile_corpus.py /tmp/corpus            # write the corpus, run every case, print a table
    python tests/hostile_corpus.py /tmp/corpus --write-only
    python tests/hostile_corpus.py /tmp/corpus --no-default-limit   # skip the 16 x 100 MP run (the CI subset)

A run is good when it exits 0, 1 (some images failed: they are rows of the report) or 2 (one ``error:`` line before
any work), never 3 (an unexpected exception) or a signal, finishes within its time limit, and, if it explained
anything, left a report.json that strict JSON parsers accept. A case may also name the exit status and the reason
(text in the output or report) it must end with: the model-folder cases do, so a folder refused for the wrong reason
(a checksum instead of the attack) fails.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 4_000_000
"""The runs use this pixel limit so the images "at the limit" stay cheap on a shared CI box."""
TIMEOUT_S = 90.0


@dataclass
class Case:
    """One ``camr explain`` run over part of the corpus."""

    name: str
    args: list[str]
    output: Path
    files: int
    """Hostile files and folders this run covers (the corpus size is their sum)."""
    stdin: bytes | None = None
    setup: list[tuple[Path, bytes]] = field(default_factory=list)
    """Files (re)written just before the run (resume cases doctor an earlier run's records)."""
    expect_exit: int | None = None
    """The exit status this run must end with (None: any good one)."""
    expect_text: str | None = None
    """Text the run's output must contain (the reason it was refused or its rows failed)."""
    timeout: float | None = None
    """This run's time bound instead of the runner's (tighter for a run that ``--run-timeout`` must stop, looser
    for the 16 images at the default pixel limit)."""
    json_out: bool = False
    """``info --json``: the output is one strict JSON document (exit 2 when a file is unsafe) or one error line."""


@dataclass
class Outcome:
    """What one run did."""

    case: str
    returncode: int
    wall_s: float
    peak_rss_mb: float
    report_images: int | None
    failed_rows: int
    problems: list[str]


# --- image bytes -------------------------------------------------------------------------------------------------


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params or [])
    assert ok, ext
    return buffer.tobytes()


def _photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with one tiny zlib stream (a decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + \
        _chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is patched to declare width x height."""
    data = bytearray(_encode(".jpg", _photo()))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rle_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP of a few hundred bytes declaring width x height (decoded, it fills width*height*3 bytes)."""
    palette = b"".join(struct.pack("<BBBB", i, i, i, 0) for i in range(256))
    pixels = b"\x00\x01"  # end of bitmap: the rest is background
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return header + info + palette + pixels


def scan_bomb(side: int, repeats: int) -> bytes:
    """A progressive JPEG repeating its last scan: each repeat re-runs the decoder over the whole frame."""
    data = _encode(".jpg", np.full((side, side, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + b"\xff\xd9"


def _images() -> dict[str, bytes]:
    """name → bytes of every hostile or awkward image (one folder)."""
    photo = _photo()
    png, jpg = _encode(".png", photo), _encode(".jpg", photo)
    files: dict[str, bytes] = {
        "ok.png": png, "ok.jpg": jpg, "ok.webp": _encode(".webp", photo), "ok.bmp": _encode(".bmp", photo),
        "ok.tif": _encode(".tiff", photo), "ok.ppm": _encode(".ppm", photo),
        "one_pixel.png": _encode(".png", photo[:1, :1]), "tall.png": _encode(".png", np.zeros((2000, 1, 3), np.uint8)),
        "grey16.png": _encode(".png", (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)),
        "alpha.png": _encode(".png", np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])),
        "empty.png": b"", "garbage.jpg": os.urandom(4096), "text.png": b"hello, I am not an image\n",
        "html.gif": b"<html><script>alert(1)</script></html>", "pdf.png": b"%PDF-1.4\n%\xe2\xe3\n",
        "zip.tiff": b"PK\x03\x04" + os.urandom(200), "png_named.jpg": png, "jpg_named.png": jpg,
        "polyglot.png": png + b"<script>alert(1)</script>" + os.urandom(64),
        "bomb_png.png": png_header(100_000, 100_000), "bomb_jpeg.jpg": jpeg_with_size(65_000, 65_000),
        "bomb_gif.gif": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 8,
        "bomb_bmp.bmp": rle_bmp(50_000, 50_000),
        "bomb_webp.webp": b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00" * 4
        + (16383).to_bytes(3, "little") * 2,
        "bomb_tiff.tif": b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2)
        + struct.pack("<HHII", 256, 4, 1, 1_000_000) + struct.pack("<HHII", 257, 4, 1, 1_000_000) + b"\x00" * 4,
        "bomb_pnm.ppm": b"P6\n100000 100000\n255\n" + b"\x00" * 100,
        "scan_bomb.jpg": scan_bomb(1024, 5000), "scan_at_budget.jpg": scan_bomb(256, 80),
        "zero_size.png": png_header(0, 0), "negative.bmp": rle_bmp(-5, -5),
    }
    for fraction in (0.02, 0.1, 0.5, 0.9, 0.99):
        files[f"truncated_{int(fraction * 100)}.png"] = png[: int(len(png) * fraction)]
        files[f"truncated_{int(fraction * 100)}.jpg"] = jpg[: int(len(jpg) * fraction)]
    for i in range(120):  # mutated real images: flipped bytes after the header
        data = bytearray(jpg if i % 2 else png)
        rng = np.random.default_rng(100 + i)
        for pos in rng.integers(16, len(data), 8):
            data[int(pos)] = int(rng.integers(0, 256))
        files[f"mutated_{i:03d}.{'jpg' if i % 2 else 'png'}"] = bytes(data)
    return files


# --- the corpus ---------------------------------------------------------------------------------------------------

_NAME_BYTES: list[bytes] = [
    b"bad\xe9.png", b"\xff\xfe.png", b"latin1_caf\xe9_\xe0.jpg", b"half_utf8_\xe6\xbc.png",
    ("漢" * 83 + ".png").encode(), ("漢" * 83 + ".jpg").encode(), ("é" * 120 + ".png").encode(),
    b"esc\x1b[2J\x1b[31mred.png", b"bell\x07.png", b"nl\nname.png", b"cr\rname.png", b"tab\tname.png",
    "bidi_\u202egnp.exe.png".encode(), b"=cmd|' /C calc'!A0.png", b"+SUM(1).png", b"-2+3.png", b"@evil.png",
    b"<script>alert(1)<\\script>.png", b"quote'\"name.png", b"  spaces  .png", b"..png", b".hidden.png",
    b"Case.png", b"case.png", b"CASE.PNG", b"cat.jpg", b"cat.png", b"cat_jpg.png", b"con.png", b"nul.png",
    b"a.b.c.d.png", b"%2e%2e%2fescape.png", b"back\\slash.png", b"report", b"report.png", b"report_.png",
    b"_report.png", b"-o.png", b"--force.png",
]
_NAME_BYTES += [b"ctrl_%02x_" % c + bytes([c]) + b".png" for c in range(1, 32)]  # every C0 control character
_NAME_BYTES += [b"byte_%02x_" % c + bytes([c]) + b".jpg" for c in range(0x80, 0x100, 2)]  # lone non-UTF-8 bytes


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _names(root: Path) -> int:
    png = _encode(".png", _photo(seed=1))
    count = 0
    for raw in _NAME_BYTES:
        _write(Path(os.fsdecode(os.fsencode(root) + b"/" + raw)), png)
        count += 1
    for folder in ("report.json", "report.csv", "report.html", "Report.JSON", "漢" * 80, "deep"):
        _write(root / folder / "x.png", png)
        count += 1
    deep = root / "deep"
    for level in range(40):  # deep nesting: output paths get long too
        deep = deep / f"level_{level:02d}"
    _write(deep / "bottom.png", png)
    long_dirs = root
    for level in range(8):  # 8 folders of 240 bytes each: a 1.9 KB relative path, flattened under -o
        long_dirs = long_dirs / ("d" * 236 + f"_{level:03d}")
    _write(long_dirs / "x.png", png)
    (root / "output_inside").mkdir()  # -o points here: the walk must skip it
    return count + 2


def _links(root: Path) -> int:
    png = _encode(".png", _photo(seed=2))
    _write(root / "target.png", png)
    links = {"dangling.png": root / "missing.png", "to_dev_zero.png": Path("/dev/zero"),
             "to_passwd.png": Path("/etc/passwd"), "to_self.png": root / "to_self.png", "to_dir.png": root,
             "to_target.png": root / "target.png", "to_target_again.png": root / "target.png"}
    for name, target in links.items():
        os.symlink(target, root / name)
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "loop")  # a folder loop (not followed)
    os.mkfifo(root / "fifo.png")
    (root / "folder.png").mkdir()
    with open(root / "sparse_huge.png", "wb") as handle:  # larger than any image within the limit: never read
        handle.truncate(200 << 20)
    return len(links) + 5


def _at_the_limit(root: Path, copies: int = 16, pixels: int = MAX_PIXELS) -> int:
    """RLE BMPs of ~1 KB each declaring exactly ``pixels``: cheap on disk, costly decoded."""
    side = int(pixels ** 0.5)
    for i in range(copies):
        _write(root / f"rle_{i:02d}.bmp", rle_bmp(side, pixels // side))
    return copies


def _run_identity(model: Path) -> dict[str, object]:
    """The identity a default ``camr explain`` run records, so doctored records pass the same-run check."""
    from cam_runtime.engine import CamEngine
    from cam_runtime.jobs.explain_folder import ExplainOptions

    return ExplainOptions().identity(CamEngine.load(model))


def _resume_records(root: Path, output: Path, model: Path) -> tuple[int, list[tuple[Path, bytes]]]:
    """Inputs plus an 'earlier run' of the same run identity whose records and overlays were doctored (applied
    just before the run): the resume must re-validate them, not trust them."""
    identity = _run_identity(model)
    png = _encode(".png", _photo(seed=3))
    evil = {
        "html_width": {"width": "<script>alert(1)</script>"},
        "html_class": {"targets": [{"class_id": "<img src=x onerror=alert(1)>", "label": "x", "probability": 0.5,
                                    "boxes": [], "overlay": "html_class_png.overlay-1.jpg", "heatmap": None}]},
        "html_box": {"targets": [{"class_id": 0, "label": "x", "probability": 0.5, "overlay":
                                  "html_box_png.overlay-1.jpg", "heatmap": None,
                                  "boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": "1'><script>", "score": 1}]}]},
        "nan_probability": {"top_k": [{"class_id": 0, "label": "x", "probability": float("nan")}]},
        "escape_overlay": {"targets": [{"class_id": 0, "label": "x", "probability": 0.5, "boxes": [],
                                        "overlay": "../../../etc/passwd", "heatmap": None}]},
        "wrong_key": {"key": "other"}, "huge_number": {"height": 10 ** 400},
        "bomb_overlay": {},  # a valid record whose overlay file is a 30000^2 PNG header
    }
    setup: list[tuple[Path, bytes]] = []
    for name, patch in evil.items():
        _write(root / f"{name}.png", png)
        key = f"{name}_png"
        record = {"source": str(root / f"{name}.png"), "key": key, "status": "ok", "resumed": False, "width": 64,
                  "height": 48, "method": "cam", "top_k": [{"class_id": 0, "label": "x", "probability": 0.5}],
                  "targets": [{"class_id": 0, "label": "x", "probability": 0.5, "boxes": [],
                               "overlay": f"{key}.overlay-1.jpg", "heatmap": None}],
                  "timings_ms": {"decode": 1.0}, "error": None, "error_type": None, "run": identity, **patch}
        setup.append((output / f"{key}.json", json.dumps(record).encode()))
        overlay = png_header(30_000, 30_000) if name == "bomb_overlay" else _encode(".jpg", _photo(seed=4))
        setup.append((output / f"{key}.overlay-1.jpg", overlay))
    for name, data in (("not_json", b"{not json"), ("deep_json", b"[" * 100_000 + b"]" * 100_000),
                       ("empty_record", b"")):
        _write(root / f"{name}.png", png)
        setup.append((output / f"{name}_png.json", data))
        setup.append((output / f"{name}_png.overlay-1.jpg", _encode(".jpg", _photo(seed=5))))
    return len(evil) + 3, setup


# --- hostile model folders ----------------------------------------------------------------------------------------
# Each folder is a copy of the tiny model with one file swapped for an attack and the manifest's sha256 rewritten,
# so the checksums match and the check under test is the one after them.

RUN_TIMEOUT_S = 2.0
"""``--run-timeout`` of the never-ending graph's run: the run must end within a few times this."""


def _sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hostile_folder(pristine: Path, dest: Path, files: dict[str, bytes] | None = None,
                    manifest: dict[str, object] | None = None) -> Path:
    """A copy of ``pristine`` with ``files`` (re)written and ``manifest`` keys replaced; digests rewritten."""
    import shutil

    shutil.copytree(pristine, dest)
    for name, data in (files or {}).items():
        (dest / name).write_bytes(data)
    _rehash(dest, manifest or {}, list(files or {}))
    return dest


def _rehash(folder: Path, manifest: dict[str, object], names: list[str]) -> None:
    """Rewrite manifest.json with ``manifest``'s keys and fresh digests of ``names`` (ASCII escapes kept)."""
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    data.update(manifest)
    for name in names:
        data["sha256"][name] = _sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_header(shape: str, data: bytes) -> bytes:
    """A hand-written .npy v1.0 file whose header declares ``shape`` whatever the data holds."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def _graph(edit: str) -> bytes:
    """The tiny NHWC classifier's ONNX with one hostile edit (see :func:`_model_folders` for each)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tiny_models import CHANNELS, SIZE, tiny_onnx

    model = onnx.load_from_string(tiny_onnx("NHWC", seed=0)[0])
    graph = model.graph

    def const(name: str, values: list[int]) -> None:
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))

    def rename_output(old: str, new: str) -> None:
        node = next(n for n in graph.node if old in n.output)
        node.output[:] = [new if o == old else o for o in node.output]

    if edit in ("ConstantOfShape", "Expand"):  # 16 GiB asked for by a few bytes, reduced into a dead output
        const("bomb_shape", [1, 1 << 16, 1 << 16])
        if edit == "ConstantOfShape":
            graph.node.append(helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"]))
        else:
            graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
            graph.node.append(helper.make_node("Expand", ["one", "bomb_shape"], ["bomb"]))
        graph.node.append(helper.make_node("ReduceMax", ["bomb"], ["bomb_max"], keepdims=0))
        graph.output.append(helper.make_tensor_value_info("bomb_max", TensorProto.FLOAT, []))
    elif edit == "zero_features":  # the feature map sliced to zero rows
        rename_output("features", "features_full")
        const("z_start", [0])
        const("z_end", [0])
        const("z_axis", [1])
        graph.node.append(helper.make_node("Slice", ["features_full", "z_start", "z_end", "z_axis"], ["features"]))
    elif edit == "batch1_only":  # features reshaped to a fixed batch of 1: any larger batch fails in the graph
        rename_output("features", "features_any")
        const("batch1_shape", [1, SIZE // 4, SIZE // 4, CHANNELS])
        graph.node.append(helper.make_node("Reshape", ["features_any", "batch1_shape"], ["features"]))
    elif edit == "endless_loop":
        # Probabilities pass through a Loop with no trip count whose condition starts as "the input is not all
        # zeros" and never changes: the zero warm-up batch runs 0 iterations (so the folder loads), a real
        # image loops for ever.
        rename_output("probabilities", "probs_raw")
        graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Identity", ["v_in"], ["v_out"])],
            "forever",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
        graph.node.extend([
            helper.make_node("ReduceL1", ["image"], ["magnitude"], keepdims=0),
            helper.make_node("Greater", ["magnitude", "zero"], ["nonzero"]),
            helper.make_node("Loop", ["", "nonzero", "probs_raw"], ["probabilities"], body=body),
        ])
    elif edit == "external_outside":  # dense_w's bytes in ../secret.bin
        weight = next(t for t in graph.initializer if t.name == "dense_w")
        length = len(weight.raw_data or numpy_helper.to_array(weight).tobytes())
        weight.ClearField("float_data")
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in {"location": "../secret.bin", "offset": "0", "length": str(length)}.items():
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    else:
        raise ValueError(edit)
    return bytes(model.SerializeToString())


def _model_folders(root: Path, pristine: Path, photos: Path) -> list[Case]:
    """Hostile model folders whose checksums match, each run through ``camr explain`` (and ``info``)."""
    root.mkdir(parents=True)
    cases: list[Case] = []

    def add(name: str, folder: Path, expect_exit: int, expect_text: str | None, *,
            info: tuple[int, str] | None = None, extra: tuple[str, ...] = (), timeout: float | None = None,
            files: int = 1) -> None:
        """An explain run over ``folder`` (``files`` corpus cases: 0 for another run of a folder already counted)
        and, with ``info``, an ``info --json`` run expected to end with that exit status and text."""
        out = root / f"out_{name}"
        cases.append(Case(f"model_{name}", ["explain", str(photos), "-m", str(folder), "-o", str(out),
                                             "--batch-size", "4", "-q", *extra], out, files, expect_exit=expect_exit,
                          expect_text=expect_text, timeout=timeout))
        if info:
            cases.append(Case(f"model_{name}_info", ["info", str(folder), "--json"], root / f"out_{name}_info", 0,
                              expect_exit=info[0], expect_text=info[1], json_out=True))

    # A 192 MiB labels file (sparse: no disk) whose digest matches: refused by its size, never read into memory.
    labels = _hostile_folder(pristine, root / "labels_192mib")
    with open(labels / "labels.txt", "wb") as handle:
        handle.truncate(192 << 20)
    _rehash(labels, {}, ["labels.txt"])
    # info reports digests, not contents: the file matches its digest (hashed in blocks), so exit 0.
    add("labels_192mib", labels, 2, "more than the 5130 allowed", info=(0, '"bytes": 201326592'))

    loop = _hostile_folder(pristine, root / "labels_symlink_loop")
    (loop / "labels.txt").unlink()
    (loop / "labels.txt").symlink_to("labels.txt")
    add("labels_symlink_loop", loop, 2, "symbolic link loop", info=(2, '"status": "unsafe path"'))

    add("name_lone_surrogate", _hostile_folder(pristine, root / "surrogate", manifest={"name": "\ud800x"}),
        2, "lone surrogate", info=(2, "lone surrogate"))
    add("npy_negative_shape", _hostile_folder(pristine, root / "npy_negative", {
        "dense_weights.npy": _npy_header("(-1, -5)", b"\0" * 20)}), 2, "non-negative sizes")
    add("npy_huge_shape", _hostile_folder(pristine, root / "npy_huge", {
        "dense_weights.npy": _npy_header("(1099511627776, 5)", b"\0" * 20)}), 2, "truncated or padded")
    add("weights_subnormal", _hostile_folder(pristine, root / "subnormal", {
        "dense_weights.npy": _npy(np.full((8, 5), 1e-40, np.float32))}), 2, "subnormal")
    nan = np.ones((8, 5), np.float32)
    nan[3, 2] = np.nan
    add("weights_nan", _hostile_folder(pristine, root / "nan", {"dense_weights.npy": _npy(nan)}), 2, "NaN")
    for bomb in ("ConstantOfShape", "Expand"):
        folder = _hostile_folder(pristine, root / bomb.lower(), {"model.onnx": _graph(bomb)})
        add(f"{bomb.lower()}_16gib", folder, 2, "17,179,869,184 bytes")
        add(f"{bomb.lower()}_16gib_trusted", folder, 2, "17,179,869,184 bytes", extra=("--trust-model-graph",),
            files=0)
    add("zero_size_features", _hostile_folder(pristine, root / "zero_features", {"model.onnx": _graph(
        "zero_features")}), 2, "zero-size dimension")
    endless = _hostile_folder(pristine, root / "endless_loop", {"model.onnx": _graph("endless_loop")})
    add("endless_loop", endless, 2, "--trust-model-graph")
    add("endless_loop_trusted", endless, 1, "RunTimeoutError",
        extra=("--trust-model-graph", "--run-timeout", str(RUN_TIMEOUT_S)), timeout=RUN_TIMEOUT_S * 4 + 30, files=0)
    add("batch1_only", _hostile_folder(pristine, root / "batch1_only", {"model.onnx": _graph("batch1_only")}),
        0, None)
    outside = _hostile_folder(pristine, root / "external_outside", {"model.onnx": _graph("external_outside")})
    weights = np.load(pristine / "dense_weights.npy")
    (root / "secret.bin").write_bytes(weights.astype(np.float32).tobytes())
    add("external_outside", outside, 2, "points outside the model folder")
    return cases


def build(root: Path, model: Path, *, default_limit: bool = False) -> list[Case]:
    """Write the corpus under ``root`` (which must not exist) and return the runs that cover it.

    ``default_limit`` adds 16 RLE BMPs at the default 100 MP limit in one batch of 16 (about 80 s and 2 GB on a
    2-core box: the script's run, too slow for CI). Before the in-flight pixel budget that run peaked at 8.7 GB.
    """
    root.mkdir(parents=True)
    common = ["-m", str(model), "--max-pixels", str(MAX_PIXELS), "-q"]
    cases: list[Case] = []

    names = root / "names"
    count = _names(names)
    out = names / "output_inside"
    cases.append(Case("names", ["explain", str(names), str(names / "report"), "--recursive", "-o", str(out), *common],
                      out, count))
    cases.append(Case("names_rerun", ["explain", str(names), "--recursive", "-o", str(out), "--force", *common],
                      out, 1))

    images = root / "images"
    files = _images()
    for name, data in files.items():
        _write(images / name, data)
    cases.append(Case("images", ["explain", str(images), "-o", str(root / "out_images"), *common],
                      root / "out_images", len(files)))
    cases.append(Case("images_default_limit", ["explain", str(images), "-o", str(root / "out_images_default"),
                                               "-m", str(model), "-q"], root / "out_images_default", 0))
    cases.append(Case("images_json_lines", ["explain", str(images), "-o", str(root / "out_images_json"), "--json",
                                            "--batch-size", "3", *common], root / "out_images_json", 1))

    links = root / "links"
    links.mkdir()
    count = _links(links)
    cases.append(Case("links_fifos", ["explain", str(links), "--recursive", "-o", str(root / "out_links"), *common],
                      root / "out_links", count))

    limit = root / "at_the_limit"
    count = _at_the_limit(limit)
    cases.append(Case("rle_at_the_limit", ["explain", str(limit), "-o", str(root / "out_limit"), "--batch-size", "8",
                                           *common], root / "out_limit", count))

    if default_limit:
        from cam_runtime.imaging import DEFAULT_MAX_PIXELS

        limit = root / "at_the_default_limit"
        count = _at_the_limit(limit, pixels=DEFAULT_MAX_PIXELS)
        cases.append(Case("rle_at_default_limit", ["explain", str(limit), "-o", str(root / "out_default_limit"),
                                                   "--batch-size", "16", "-m", str(model), "-q"],
                          root / "out_default_limit", count, timeout=600))

    resume = root / "resume"
    out = root / "out_resume"
    count, setup = _resume_records(resume, out, model)
    cases.append(Case("resume_doctored", ["explain", str(resume), "-o", str(out), "--skip-existing", *common],
                      out, count, setup=setup))

    collide = root / "report_squatted"
    _write(collide / "a.png", _encode(".png", _photo(seed=6)))
    out = root / "out_squatted"
    (out / "report.json").mkdir(parents=True)  # a folder where the report goes
    cases.append(Case("report_squatted", ["explain", str(collide), "-o", str(out), "--skip-existing", *common],
                      out, 2))

    cases.append(Case("stdin_garbage", ["explain", "-", "-o", str(root / "out_stdin"), *common],
                      root / "out_stdin", 1, stdin=os.urandom(10_000)))
    cases.append(Case("stdin_over_cap", ["explain", "-", "-o", str(root / "out_stdin_cap"), *common],
                      root / "out_stdin_cap", 1, stdin=b"\x00" * (MAX_PIXELS * 16 + (16 << 20) + 1)))

    photos = root / "model_photos"
    for seed in range(4):  # one batch of 4: a batch-1-only graph must fail it and be retried image by image
        _write(photos / f"photo_{seed}.png", _encode(".png", _photo(seed=10 + seed)))
    cases += _model_folders(root / "models", model, photos)
    return cases


# --- running ------------------------------------------------------------------------------------------------------


def run_case(case: Case, timeout: float = TIMEOUT_S) -> Outcome:
    """Run one case in its own process; time-bounded (killed after ``timeout``), peak RSS from its VmHWM."""
    timeout = case.timeout or timeout
    case.output.parent.mkdir(parents=True, exist_ok=True)
    for path, data in case.setup:
        _write(path, data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = case.output.parent / f".{case.name}.log"
    problems: list[str] = []
    start = time.perf_counter()
    with open(log, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "cam_runtime", *case.args], env=env, cwd=ROOT,
                                stdin=subprocess.PIPE if case.stdin is not None else subprocess.DEVNULL,
                                stdout=handle, stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        peak = [0]
        watcher = threading.Thread(target=_watch_peak, args=(proc.pid, peak), daemon=True)
        watcher.start()
        if case.stdin is not None:
            feeder = threading.Thread(target=_feed, args=(proc, case.stdin), daemon=True)
            feeder.start()
        _, status, _usage = os.wait4(proc.pid, 0)
        killer.cancel()
        watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    output = log.read_bytes()
    rc = proc.returncode
    if rc < 0 or wall >= timeout:
        problems.append(f"killed (signal {-rc}) or hung past {timeout:.0f} s")
    elif rc not in (0, 1, 2):
        problems.append(f"exit {rc}: {output[-400:].decode(errors='replace')}")
    report_images, failed = None, 0
    report = case.output / "report.json"
    if report.is_file():
        try:
            data = json.loads(report.read_text(encoding="utf-8"), parse_constant=_reject)
            report_images = len(data["images"])
            failed = sum(r["status"] != "ok" for r in data["images"])
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"report.json unreadable: {exc}")
    elif rc in (0, 1) and case.args[0] == "explain":
        problems.append("explained images but wrote no report.json")
    error_line = any(line.startswith(b"error: ") for line in output.splitlines())
    if case.json_out and not error_line:
        try:
            json.loads(output, parse_constant=_reject)
        except ValueError as exc:
            problems.append(f"--json output is not strict JSON: {exc}")
    elif rc == 2 and not error_line:
        problems.append("exit 2 without an 'error:' line")
    if b"Traceback" in output:
        problems.append("a traceback was printed")
    if case.expect_exit is not None and rc != case.expect_exit:
        problems.append(f"exit {rc}, expected {case.expect_exit}: {output[-300:].decode(errors='replace')}")
    if case.expect_exit == 2 and error_line and len([line for line in output.splitlines() if line.strip()]) != 1:
        problems.append(f"not one line: {output[-300:].decode(errors='replace')}")
    seen = output.decode(errors="replace") + (report.read_text(encoding="utf-8", errors="replace")
                                              if report.is_file() else "")
    if case.expect_text is not None and case.expect_text not in seen:
        problems.append(f"{case.expect_text!r} not in the output or report: {output[-300:].decode(errors='replace')}")
    return Outcome(case.name, rc, wall, peak[0] / 1024, report_images, failed, problems)


def _watch_peak(pid: int, peak: list[int]) -> None:
    """Poll the process's own high-water mark (VmHWM, kB) until it exits.

    Not getrusage(RUSAGE_CHILDREN) nor wait4's ru_maxrss: Linux folds the forking parent's memory high-water mark
    into the child's at exec, so a child of a 2 GB pytest process would "peak" at 2 GB whatever it did.
    """
    path = f"/proc/{pid}/status"
    while True:
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            return
        if "VmHWM" not in fields:  # a zombie: the memory is gone, the last reading stands
            return
        peak[0] = max(peak[0], int(fields["VmHWM"].split()[0]))
        time.sleep(0.02)


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        for i in range(0, len(data), 1 << 20):
            proc.stdin.write(data[i:i + (1 << 20)])
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # the CLI stopped reading at its cap


def _reject(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def main(argv: list[str]) -> int:
    """Write the corpus (and run it unless --write-only); print one line per run and the totals."""
    from tiny_models import make_tiny_folder

    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    root = Path(argv[0])
    model = make_tiny_folder(root.parent / f"{root.name}-model", "NHWC", seed=0)
    cases = build(root, model, default_limit="--no-default-limit" not in argv)
    print(f"corpus: {sum(c.files for c in cases)} hostile files and folders in {len(cases)} runs under {root}")
    if "--write-only" in argv:
        return 0
    outcomes = [run_case(case) for case in cases]
    print(f"{'run':<36} {'exit':>4} {'wall s':>7} {'peak RSS MB':>11} {'rows':>5} {'failed':>6}  problems")
    for o in outcomes:
        print(f"{o.case:<36} {o.returncode:>4} {o.wall_s:>7.2f} {o.peak_rss_mb:>11.0f} "
              f"{o.report_images if o.report_images is not None else '-':>5} {o.failed_rows:>6}  "
              f"{'; '.join(o.problems) or 'none'}")
    worst = max(outcomes, key=lambda o: o.peak_rss_mb)
    slowest = max(outcomes, key=lambda o: o.wall_s)
    bad = [o for o in outcomes if o.problems]
    hangs = sum(any("hung past" in p for p in o.problems) for o in outcomes)
    lost = sum(any("report.json" in p for p in o.problems) for o in outcomes)
    print(f"cases {sum(c.files for c in cases)} in {len(cases)} runs; bad runs {len(bad)}; exit-3 runs "
          f"{sum(o.returncode == 3 for o in outcomes)}; hangs {hangs}; lost reports {lost}; "
          f"failed rows {sum(o.failed_rows for o in outcomes)}; "
          f"peak RSS {worst.peak_rss_mb:.0f} MB ({worst.case}); slowest {slowest.wall_s:.1f} s ({slowest.case})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
