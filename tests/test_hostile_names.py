"""Hostile names and reports: bytes names, long names, escapes, report collisions, CSV/JSON/HTML injection."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cam_runtime.cli.inputs import StdinTooLargeError, collect_inputs, read_stdin
from cam_runtime.outputs import OutputLayout, cut_bytes, readable, safe_part, strict_json
from cam_runtime.report import Report, csv_cell, thumbnail_from_file, validated_record
from tiny_models import make_tiny_folder

LONG_NAME = "漢" * 83 + ".png"  # 253 bytes: legal on ext4, too long once ".overlay-1.jpg" is added


def _no_constants(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


def strict_load(text: str) -> object:
    """json.loads that fails on NaN / Infinity, as JavaScript's JSON.parse does."""
    return json.loads(text, parse_constant=_no_constants)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("hostile-names") / "tiny", "NHWC", seed=5)


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    ok, buffer = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    assert ok
    return buffer.tobytes()


def camr(*args: object, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "cam_runtime", *map(str, args)], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=120, check=False)


# --- names --------------------------------------------------------------------------------------------------------


def test_readable_escapes_only_what_cannot_be_shown() -> None:
    assert readable("chat 猫 🐱.png") == "chat 猫 🐱.png"
    assert readable(os.fsdecode(b"bad\xe9.png")) == "bad\\xe9.png"
    assert readable("a\x1b[31mb\x00c\u202ed\x9b") == "a\\x1b[31mb\\x00c\\u202ed\\x9b"
    readable(os.fsdecode(b"\xff\xfe")).encode("utf-8")  # always encodable


def test_safe_part_is_bounded_in_bytes_and_unique() -> None:
    a, b = safe_part("漢" * 83 + "a"), safe_part("漢" * 83 + "b")
    assert a != b
    for part in (a, b):
        assert len(f"{part}-99.heatmap-999.npy".encode()) <= 255
    assert safe_part("ok_name") == "ok_name"
    assert cut_bytes("漢漢", 4) == "漢"
    assert safe_part(os.fsdecode(b"bad\xe9")) == "bad_xe9"


def test_report_names_are_reserved(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    keys = [layout.allocate(p) for p in ("report", "Report", "report.json/cat.png", "report.csv/x.png", "report_x.png")]
    names = {layout.record_name(k).casefold() for k in keys}
    assert not names & {"report.json", "report.csv", "report.html"}
    assert all(k.split("/")[0].casefold() not in {"report.json", "report.csv", "report.html"} for k in keys)
    assert len({k.casefold() for k in keys}) == len(keys)


def test_hostile_names_end_as_rows_and_the_report_is_written(model: Path, png_bytes: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "report.json").mkdir(parents=True)
    names = [b"bad\xe9.png", LONG_NAME.encode(), b"esc\x1b[2Jred.png", b"=cmd|calc.png", b"report.json/x.png",
             b"nl\nname.png"]
    for name in names:
        (src / os.fsdecode(name)).write_bytes(png_bytes)
    (src / "report").write_bytes(png_bytes)
    out = src / "out"
    result = camr("explain", src, src / "report", "-m", model, "-o", out, "--recursive")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"\x1b" not in result.stderr and b"\x1b" not in result.stdout
    report = strict_load((out / "report.json").read_text(encoding="utf-8"))
    assert isinstance(report, dict)
    sources = [r["source"] for r in report["images"]]
    assert len(sources) == len(names) + 1 and all(r["status"] == "ok" for r in report["images"])
    assert any(s.endswith("bad\\xe9.png") for s in sources)
    assert any(s.endswith("esc\\x1b[2Jred.png") for s in sources)
    assert (out / "report.csv").is_file() and (out / "report.html").is_file()
    for path in out.rglob("*"):
        assert len(os.fsencode(path.name)) <= 255
    # -o inside the recursive input: a rerun explains the same inputs, not the previous run's overlays.
    again = camr("explain", src, src / "report", "-m", model, "-o", out, "--recursive", "--force")
    assert again.returncode == 0
    assert len(strict_load((out / "report.json").read_text(encoding="utf-8"))["images"]) == len(sources)


def test_output_folder_is_skipped_by_the_walk(tmp_path: Path, png_bytes: bytes) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes)
    (tmp_path / "a_png.overlay-1.jpg").write_bytes(png_bytes)  # as if -o were the input folder itself
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").write_bytes(png_bytes)
    items = collect_inputs([str(tmp_path)], recursive=True, exclude=tmp_path / "out")
    assert [i.relative.as_posix() for i in items] == ["a.png", "a_png.overlay-1.jpg"]
    items = collect_inputs([str(tmp_path)], recursive=True, exclude=tmp_path)
    assert [i.relative.as_posix() for i in items] == ["a.png", "out/b.png"]


def test_stdin_is_capped() -> None:
    assert read_stdin(10, io.BytesIO(b"x" * 10)) == b"x" * 10
    with pytest.raises(StdinTooLargeError):
        read_stdin(10, io.BytesIO(b"x" * 11))


def test_cli_stdin_cap_is_one_line(model: Path, tmp_path: Path) -> None:
    result = camr("explain", "-", "-m", model, "-o", tmp_path / "o", "--max-pixels", "1000",
                  stdin=b"\xff" * (17 << 20))
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "stdin" in lines[0]


# --- reports ------------------------------------------------------------------------------------------------------


def test_csv_cells_never_start_a_formula() -> None:
    for text in ("=1+2", "+cmd", "-2+3", "@SUM(A1)", "\t=x", "\r=x"):
        cell = csv_cell(text)
        assert isinstance(cell, str) and not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert csv_cell("-1.5") == "-1.5" and csv_cell(3) == 3 and csv_cell("a\x00b\x1bc") == "a\\x00b\\x1bc"


def _record(source: str, label: str, probability: float) -> dict[str, object]:
    return {"source": source, "key": "k", "status": "ok", "resumed": False, "width": 4, "height": 4,
            "method": "cam", "top_k": [{"class_id": 0, "label": label, "probability": probability}],
            "targets": [{"class_id": 0, "label": label, "probability": probability, "boxes": [],
                         "overlay": "k.overlay-1.jpg", "heatmap": None}],
            "timings_ms": {"decode": 1.0}, "error": None, "error_type": None}


def test_reports_are_strict_safe_and_survive_a_bad_row(tmp_path: Path) -> None:
    report = Report({"model": "m\ud800x", "method": "cam"})
    report.add(_record("=HYPERLINK(\"http://x\")", "@evil", float("nan")))
    report.add({"source": "broken", "status": "ok", "top_k": "nonsense", "targets": 5})  # a malformed record
    report.add(_record("fine.png", "cat", 0.5))
    paths = report.write(OutputLayout(tmp_path))
    data = strict_load(paths["json"].read_text(encoding="utf-8"))
    assert data["images"][0]["top_k"][0]["probability"] is None and data["model"] == "m\\ud800x"
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    assert [r["source"] for r in rows] == ["'=HYPERLINK(\"http://x\")", "broken", "fine.png"]
    assert rows[0]["label"] == "'@evil" and rows[1]["error_type"] == "ReportRowError"
    page = paths["html"].read_text(encoding="utf-8")
    assert "fine.png" in page and "broken" in page
    assert strict_json({"a": np.float32("inf"), "b": np.int64(3)}) == '{"a": null, "b": 3}'


def test_records_read_back_are_validated(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path)
    good = _record("a.png", "cat", 0.5)
    assert validated_record(good, layout, "k", 1) is not None
    for field, value in (("width", "<script>alert(1)</script>"), ("source", 7), ("height", 1e308)):
        assert validated_record({**good, field: value}, layout, "k", 1) is None
    evil_target = {**good["targets"][0], "class_id": "<img src=x onerror=alert(1)>"}  # type: ignore[index]
    assert validated_record({**good, "targets": [evil_target]}, layout, "k", 1) is None
    escape_target = {**good["targets"][0], "overlay": "../../etc/passwd"}  # type: ignore[index]
    assert validated_record({**good, "targets": [escape_target]}, layout, "k", 1) is None
    boxed = {**good["targets"][0], "boxes": [{"x0": 0, "y0": 0, "x1": 2, "y1": "2'><script>", "score": 1}]}  # type: ignore[index]
    assert validated_record({**good, "targets": [boxed]}, layout, "k", 1) is None
    assert validated_record(good, layout, "k", 2) is None  # a different number of targets


def test_doctored_record_is_redone_and_never_reaches_the_page(model: Path, png_bytes: bytes, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes)
    assert camr("explain", src, "-m", model, "-o", out).returncode == 0
    record_path = out / "a_png.json"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    record["width"] = "<script>alert(1)</script>"
    record["targets"][0]["class_id"] = "<img src=x onerror=alert(1)>"
    record_path.write_text(json.dumps(record), encoding="utf-8")
    result = camr("explain", src, "-m", model, "-o", out, "--skip-existing")
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<img src=x" not in page
    assert json.loads(record_path.read_text(encoding="utf-8"))["width"] == 48  # redone, not resumed


def test_thumbnails_of_existing_overlays_respect_the_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.zeros((300, 300, 3), np.uint8))
    assert thumbnail_from_file(path, max_pixels=1000) == ""
    assert thumbnail_from_file(path, max_pixels=10**6).startswith("data:image/jpeg")


def test_unrendered_fields_of_a_record_survive_validation(tmp_path: Path) -> None:
    record = {**_record("a.png", "cat", 0.5), "identity": {"sha256": "ab" * 32, "score": float("inf")}}
    rebuilt = validated_record(record, OutputLayout(tmp_path), "k", 1)
    assert rebuilt is not None and rebuilt["identity"] == {"sha256": "ab" * 32, "score": None}


def test_deep_trees_are_flattened_and_stay_unique() -> None:
    from cam_runtime.outputs import MAX_KEY_BYTES, output_key

    deep = "/".join("d" * 200 + str(i) for i in range(40))
    a, b = output_key(f"{deep}/x.png"), output_key(f"{deep}/y/x.png")
    assert a != b and a.startswith("_deep/") and len(a.encode()) <= MAX_KEY_BYTES
    assert output_key("a/b/c.png") == "a/b/c_png"


def test_strict_json_escapes_what_terminals_and_scripts_act_on() -> None:
    text = strict_json({"label": "x\x9b[2Jy\u202e\u2028 漢", "p": float("-inf")})
    assert "\x9b" not in text and "\u202e" not in text and "\u2028" not in text and "漢" in text
    assert strict_load(text) == {"label": "x\x9b[2Jy\u202e\u2028 漢", "p": None}
