"""Run reports: per-image records, and report.json / report.csv / one offline report.html, written atomically."""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from .boxes import Box
from .maps import heatmap_at
from .outputs import OutputLayout, json_ready, readable, strict_json, write_text_atomic
from .render import overlay_bgr
from .results import ExplainResult, ImageFailure

REPORT_VERSION = 1
THUMB_SIDE = 160
MAX_EMBEDDED_ROWS = 2000
"""Rows beyond this get links but no embedded thumbnails, so huge runs keep a browsable HTML file."""
TIMING_KEYS: tuple[str, ...] = ("decode", "preprocess", "inference", "maps", "write")
CSV_COLUMNS: tuple[str, ...] = (
    "source", "status", "resumed", "width", "height", "method", "target_rank", "class_id", "label", "probability",
    "top_k", "n_boxes", "box_x0", "box_y0", "box_x1", "box_y1", "box_score", "overlay", "heatmap",
    *(f"{k}_ms" for k in TIMING_KEYS), "error_type", "error",
)


def record_from_result(result: ExplainResult, key: str, overlays: Sequence[str], heatmaps: Sequence[str | None],
                       write_ms: float) -> dict[str, Any]:
    """The JSON record of an explained image, with the relative names of the files written for it."""
    data = result.to_dict()
    for target, overlay, heatmap in zip(data["targets"], overlays, heatmaps, strict=True):
        target["overlay"] = overlay
        target["heatmap"] = heatmap
    timings = {**data["timings_ms"], "write": round(write_ms, 3)}
    return {"source": readable(data["source"]), "key": key, "status": "ok", "resumed": False, "width": data["width"],
            "height": data["height"], "method": data["method"], "top_k": data["top_k"], "targets": data["targets"],
            "timings_ms": timings, "error": None, "error_type": None}


def record_from_failure(failure: ImageFailure, key: str | None) -> dict[str, Any]:
    """The JSON record of an input that could not be explained."""
    return {"source": readable(failure.source), "key": key, "status": "failed", "resumed": False, "width": None,
            "height": None, "method": None, "top_k": [], "targets": [], "timings_ms": {},
            "error": readable(failure.error), "error_type": readable(failure.error_type)}


def thumbnail_size(height: int, width: int, side: int = THUMB_SIDE) -> tuple[int, int]:
    """(height, width) of an image scaled to fit ``side`` pixels; never enlarged."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(bgr: npt.NDArray[np.uint8], side: int = THUMB_SIDE) -> npt.NDArray[np.uint8]:
    """The image scaled (INTER_AREA) to fit ``side`` pixels, or the image itself if it already fits."""
    import cv2

    height, width = bgr.shape[:2]
    h, w = thumbnail_size(height, width, side)
    if (h, w) == (height, width):
        return bgr
    k = min(height // h, width // w)
    if k >= 2:
        # INTER_AREA by a whole factor is a plain k x k mean, ~4x cheaper than the general case: shrink by
        # the largest such factor first (dropping the < k pixels that do not fill a block, half on each side).
        top, left = height % k // 2, width % k // 2
        blocks = bgr[top: top + height // k * k, left: left + width // k * k]
        bgr = cast("npt.NDArray[np.uint8]", cv2.resize(blocks, (width // k, height // k), interpolation=cv2.INTER_AREA))
    return cast("npt.NDArray[np.uint8]", cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA))


def jpeg_data_uri(bgr: npt.NDArray[np.uint8]) -> str:
    """An image encoded as-is as a JPEG ``data:`` URI ('' if it cannot be encoded)."""
    import cv2

    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return "data:image/jpeg;base64," + base64.b64encode(buffer.tobytes()).decode("ascii") if ok else ""


def thumbnail_data_uri(bgr: npt.NDArray[np.uint8], side: int = THUMB_SIDE) -> str:
    """A small JPEG of an image as a ``data:`` URI, so report.html needs no extra files."""
    return jpeg_data_uri(shrink(bgr, side))


def result_thumbnails(result: ExplainResult, *, alpha: float = 0.5, colormap: str = "jet", draw_boxes: bool = True,
                      side: int = THUMB_SIDE) -> tuple[str, list[str]]:
    """Thumbnail data URIs of an explained image and of each target's overlay, built from one small copy.

    The overlays are blended at thumbnail size (the map upsampled straight to it, boxes scaled), which costs a
    fraction of shrinking each full-size overlay; pixels differ slightly from a shrunk full-size overlay.
    """
    small = shrink(result.image.bgr, side)
    h, w = small.shape[:2]
    thumbs = []
    for target in result.targets:
        if (h, w) == (result.height, result.width):
            heatmap, boxes = target.heatmap, target.boxes
        else:
            heatmap = heatmap_at(target.raw, h, w)
            boxes = [_scale_box(box, h / result.height, w / result.width) for box in target.boxes]
        thumbs.append(jpeg_data_uri(overlay_bgr(small, heatmap, alpha=alpha, colormap=colormap,
                                                boxes=boxes if draw_boxes else ())))
    return jpeg_data_uri(small), thumbs


def _scale_box(box: Box, sy: float, sx: float) -> Box:
    """A box in a scaled copy of its image: outward-rounded, at least one pixel wide and high."""
    x0, y0 = math.floor(box.x0 * sx), math.floor(box.y0 * sy)
    return replace(box, x0=x0, y0=y0, x1=max(x0 + 1, math.ceil(box.x1 * sx)), y1=max(y0 + 1, math.ceil(box.y1 * sy)))


def thumbnail_from_file(path: Path, side: int = THUMB_SIDE, *, max_pixels: int | None = None) -> str:
    """Thumbnail data URI of an image file on disk ('' if it cannot be read or is above ``max_pixels``).

    The file is decoded through :func:`~cam_runtime.imaging.load_image`, so an earlier run's overlay replaced by
    a decompression bomb costs no more than the run's own inputs may.
    """
    from .errors import CamError
    from .imaging import DEFAULT_MAX_PIXELS, load_image

    try:
        image = load_image(path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    except (CamError, OSError):
        return ""
    return thumbnail_data_uri(image.bgr, side)


# --- records read back from disk (--skip-existing) -------------------------------------------------------------

_MAX_TEXT = 4096
_MAX_ITEMS = 100_000


MAX_RECORD_BYTES = 4 << 20
"""A per-image record read back from disk may hold at most this many bytes (a real one holds a few KB)."""


def read_record(path: Path, layout: OutputLayout, key: str, targets: int | None = None) -> dict[str, Any] | None:
    """An earlier run's per-image record file, parsed with bounds and validated (None: redo the image)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            return None
        record = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the parser's stack
        return None
    return validated_record(record, layout, key, targets)


def validated_record(record: object, layout: OutputLayout, key: str,
                     targets: int | None = None) -> dict[str, Any] | None:
    """An earlier run's per-image record rebuilt from checked fields, or None if any field is off.

    Everything read back from disk is untrusted: types, ranges and finiteness are checked, strings are bounded,
    and file names must be exactly the ones this layout gives ``key``, so a doctored record can neither inject
    markup into report.html nor point the report at files outside the output folder.
    """
    try:
        return _rebuild_record(record, layout, key, targets)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _text(value: object, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError("not a bounded string")
    return readable(value)


def _integer(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError("not an integer in range")
    return value


def _number(value: object, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError("not a finite number in range")
    return float(value)


def _items(value: object) -> list[Any]:
    if not isinstance(value, list) or len(value) > _MAX_ITEMS:
        raise ValueError("not a bounded list")
    return value


def _rebuild_record(record: object, layout: OutputLayout, key: str, targets: int | None) -> dict[str, Any] | None:
    if not isinstance(record, dict) or record.get("status") != "ok" or record.get("key") != key:
        return None
    width, height = _integer(record["width"], 1, 1 << 31), _integer(record["height"], 1, 1 << 31)
    top_k = [{"class_id": _integer(p["class_id"], 0, 1 << 31), "label": _text(p["label"]),
              "probability": _number(p["probability"], 0.0, 1.0)} for p in _items(record["top_k"])]
    rebuilt_targets = []
    for index, target in enumerate(_items(record["targets"])):
        overlay, heatmap = target.get("overlay"), target.get("heatmap")
        if overlay != layout.overlay_name(key, index) or heatmap not in (None, layout.heatmap_name(key, index)):
            return None
        boxes = [{"x0": _integer(b["x0"], 0, width), "y0": _integer(b["y0"], 0, height),
                  "x1": _integer(b["x1"], 0, width), "y1": _integer(b["y1"], 0, height),
                  "score": _number(b["score"])} for b in _items(target["boxes"])]
        stats = target.get("stats")
        rebuilt_targets.append({
            "class_id": _integer(target["class_id"], 0, 1 << 31), "label": _text(target["label"]),
            "probability": _number(target["probability"], 0.0, 1.0), "boxes": boxes,
            "stats": {_text(k, 64): json_number_or_list(v) for k, v in stats.items()} if isinstance(stats, dict)
            else {}, "overlay": overlay, "heatmap": heatmap})
    if targets is not None and len(rebuilt_targets) != targets:
        return None
    timings = record.get("timings_ms") or {}
    if not isinstance(timings, dict):
        return None
    rebuilt = {"source": _text(record["source"]), "key": key, "status": "ok", "resumed": False, "width": width,
               "height": height, "method": _text(record["method"], 64), "top_k": top_k, "targets": rebuilt_targets,
               "timings_ms": {_text(k, 64): _number(v, 0.0) for k, v in timings.items()}, "error": None,
               "error_type": None}
    # Fields this module does not render (e.g. a run's identity) are kept, made strict-JSON-safe; report.html
    # shows only the checked fields above.
    extra = {_text(k, 64): json_ready(v) for k, v in record.items() if k not in rebuilt}
    return {**rebuilt, **extra}


def json_number_or_list(value: object) -> float | list[float] | None:
    """A stats value read back: a finite number, a short list of them, or None."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_number(v) for v in value[:8]]
    return _number(value)


@dataclass
class Report:
    """The records of one run, in input order, plus the thumbnails the HTML embeds."""

    meta: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    thumbs: list[dict[str, Any]] = field(default_factory=list)
    page: dict[str, Any] = field(default_factory=dict)
    """What only report.html shows (not in report.json): ``colormap`` for the legend, ``weights`` provenance."""

    def add(self, record: dict[str, Any], input_thumb: str = "", overlay_thumbs: Sequence[str] = ()) -> None:
        """Append one record (thumbnails are dropped beyond MAX_EMBEDDED_ROWS to bound memory)."""
        self.records.append(record)
        keep = len(self.records) <= MAX_EMBEDDED_ROWS
        self.thumbs.append({"input": input_thumb if keep else "", "overlays": list(overlay_thumbs) if keep else []})

    def summary(self) -> dict[str, int]:
        """Counts: total, ok, failed, resumed."""
        ok = sum(r["status"] == "ok" for r in self.records)
        return {"total": len(self.records), "ok": ok, "failed": len(self.records) - ok,
                "resumed": sum(bool(r.get("resumed")) for r in self.records)}

    def to_dict(self) -> dict[str, Any]:
        """The report.json document."""
        return {"report_version": REPORT_VERSION, **self.meta, "summary": self.summary(), "images": self.records}

    def write(self, layout: OutputLayout) -> dict[str, Path]:
        """Write report.json, report.csv and report.html atomically into the layout's folder.

        Each file is attempted even if another one fails (a full disk, a folder squatting a report name); the
        first error is raised afterwards.
        """
        paths: dict[str, Path] = {}
        first_error: BaseException | None = None
        for kind, name, render in (("json", "report.json", lambda: strict_json(self.to_dict(), indent=2) + "\n"),
                                   ("csv", "report.csv", self.to_csv),
                                   ("html", "report.html", lambda: self.to_html(layout))):
            try:
                paths[kind] = write_text_atomic(layout.path(name), render())
            except Exception as exc:  # the other two reports must still be written
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return paths

    def to_csv(self) -> str:
        """One row per (image, target); a failed image is one row with its error. Cells are spreadsheet-safe."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            try:
                rows = csv_rows(record)
            except Exception as exc:  # one malformed record must not cost the others their rows
                rows = [_broken_row(record, exc)]
            for row in rows:
                writer.writerow({k: csv_cell(v) for k, v in row.items()})
        return buffer.getvalue()

    def to_html(self, layout: OutputLayout) -> str:
        """A single static page (inline CSS, embedded thumbnails, relative links to files that exist)."""
        return render_html(self, layout)


_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text, never evaluates (OWASP's CSV injection advice).

    Numbers pass through; text is made printable (:func:`~cam_runtime.outputs.readable`: NUL, ESC, CR, tab and
    other control characters become escapes), and text that starts like a formula (``=``, ``+``, ``-``, ``@``)
    gets a leading ``'``; plain negative numbers written as text stay as they are.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    text = readable(str(value))
    if text.startswith(_FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _broken_row(record: object, exc: Exception) -> dict[str, Any]:
    source = record.get("source") if isinstance(record, dict) else None
    return {"source": str(source), "status": "failed", "error_type": "ReportRowError",
            "error": f"this record could not be rendered ({type(exc).__name__})"}


def csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV rows of one record."""
    timings = record.get("timings_ms") or {}
    base = {"source": record["source"], "status": record["status"], "resumed": int(bool(record.get("resumed"))),
            "width": record.get("width") or "", "height": record.get("height") or "",
            "method": record.get("method") or "",
            "top_k": ";".join(f"{p['class_id']}:{p['label']}:{p['probability']:.6g}" for p in record["top_k"]),
            **{f"{k}_ms": timings.get(k, "") for k in TIMING_KEYS},
            "error_type": record.get("error_type") or "", "error": record.get("error") or ""}
    if not record["targets"]:
        return [base]
    rows = []
    for rank, target in enumerate(record["targets"], start=1):
        box = target["boxes"][0] if target["boxes"] else {}
        rows.append({**base, "target_rank": rank, "class_id": target["class_id"], "label": target["label"],
                     "probability": f"{target['probability']:.6g}", "n_boxes": len(target["boxes"]),
                     **{f"box_{k}": box.get(k, "") for k in ("x0", "y0", "x1", "y1")},
                     "box_score": f"{box['score']:.4g}" if box else "",
                     "overlay": target.get("overlay") or "", "heatmap": target.get("heatmap") or ""})
    return rows


# --- HTML ----------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .3rem}.meta{color:#555;font-size:.9rem;margin-bottom:1rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:.4rem;vertical-align:top;text-align:left;font-size:.85rem}
th{background:#f0f0f0}img{max-width:160px;max-height:160px;display:block}
img.px{image-rendering:pixelated;max-width:none;max-height:none}
.failed td{background:#fff1f1}.err{color:#a00}.src{word-break:break-all;max-width:18rem}
.fig{display:inline-block;margin:0 .4rem .4rem 0}.small{color:#666;font-size:.75rem}
ol{margin:0;padding-left:1.2rem}.cnt b{margin-right:1rem}
.banner{background:#fff3cd;border:2px solid #d39e00;color:#5c4400;padding:.6rem .8rem;margin:0 0 1rem;font-weight:600}
.legend{display:flex;align-items:center;gap:.4rem;font-size:.8rem;color:#444;margin:.4rem 0 1rem}
.legend img.scale{width:256px;height:12px;max-width:none;border:1px solid #999}
#filter{margin:0 0 .6rem;padding:.3rem;width:20rem;max-width:100%}
th.sortable{cursor:pointer}th[data-dir=asc]:after{content:" \\25B2"}th[data-dir=desc]:after{content:" \\25BC"}
"""

_SCRIPT = """<script>
(function(){
var table=document.getElementById('rows');if(!table)return;var body=table.tBodies[0];
var box=document.getElementById('filter');box.hidden=false;
box.addEventListener('input',function(){var q=box.value.toLowerCase();
Array.prototype.forEach.call(body.rows,function(r){r.hidden=!!q&&r.textContent.toLowerCase().indexOf(q)<0;});});
Array.prototype.forEach.call(table.querySelectorAll('th[data-key]'),function(h){
h.classList.add('sortable');h.title='click to sort';
h.addEventListener('click',function(){var key=h.dataset.key,text=key==='name';
var dir=h.dataset.dir==='asc'?'desc':'asc';
Array.prototype.forEach.call(table.querySelectorAll('th[data-dir]'),function(o){delete o.dataset.dir;});
h.dataset.dir=dir;var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=a.dataset[key]||'',y=b.dataset[key]||'';
var v=text?x.localeCompare(y):parseFloat(x)-parseFloat(y);return dir==='asc'?v:-v;});
rows.forEach(function(r){body.appendChild(r);});});});
})();
</script>"""
"""Sorting and filtering for the report table; the page is complete without it (the filter box stays hidden)."""


def _esc(value: object) -> str:
    return html.escape(readable(str(value)), quote=True)


def _href(name: str) -> str:
    return quote(name, safe="/")


def percent(probability: float) -> str:
    """A probability as a percentage for display (``12.3%``; ``<0.1%`` for tiny non-zero values)."""
    if 0.0 < probability < 0.0005:
        return "<0.1%"
    return f"{probability * 100:.1f}%"


def is_random_weights(weights: object) -> bool:
    """Whether a manifest's ``weights`` provenance says the model was not trained (``random (seed …)``)."""
    return isinstance(weights, str) and weights.strip().lower().startswith("random")


def random_weights_banner(weights: object) -> str:
    """The warning banner of a model with random weights ('' for any other model)."""
    if not is_random_weights(weights):
        return ""
    return (f"<div class='banner' role='alert'>Random weights: this model was never trained ({_esc(weights)}), "
            "so its classes and maps mean nothing. Use it to test the pipeline, not to explain images.</div>")


def colormap_legend_uri(colormap: str = "jet", width: int = 256, height: int = 12) -> str:
    """A PNG ``data:`` URI of the colormap drawn from 0 (left) to 1 (right), as the overlays colour map values."""
    import cv2

    from .render import colorize

    ramp = np.repeat(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :], height, axis=0)
    ok, buffer = cv2.imencode(".png", colorize(ramp, colormap))
    return "data:image/png;base64," + base64.b64encode(buffer.tobytes()).decode("ascii") if ok else ""


def legend_html(colormap: str = "jet") -> str:
    """The colour-scale legend: the colormap's gradient between its 0 and 1 labels."""
    uri = colormap_legend_uri(colormap)
    if not uri:
        return ""
    return (f"<div class='legend'><span>colour scale ({_esc(colormap)}):</span><span>0</span>"
            f"<img class='scale' src='{uri}' alt='{_esc(colormap)} colour scale from 0 to 1'><span>1</span>"
            "<span>= the map's peak (each map is scaled to its own maximum; negative evidence shows as 0)</span></div>")


def short_sources(sources: Sequence[str]) -> tuple[str, list[str]]:
    """(common folder, each source relative to it) for display; sources that are not paths stay as they are."""
    pathlike = [s for s in sources if s and not s.startswith("<") and "://" not in s]
    root = ""
    if pathlike:
        try:
            root = os.path.commonpath([os.path.dirname(os.path.normpath(s)) or "." for s in pathlike])
        except ValueError:  # absolute and relative paths mixed, or different drives
            root = ""
    if root in ("", ".", os.sep):
        return "", list(sources)
    return root, [os.path.relpath(s, root) if s in pathlike else s for s in sources]


def display_size(width: int, height: int, side: int = THUMB_SIDE) -> tuple[int, int] | None:
    """(width, height) to show a small image's thumbnail at, scaled up to fit ``side``; None if it is not small."""
    if max(width, height) >= side or min(width, height) < 1:
        return None
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumb_img(uri: str, alt: str, width: int | None, height: int | None) -> str:
    """An ``<img>`` of a thumbnail; small images are enlarged, pixelated (no blur), to the thumbnail size."""
    size = display_size(width, height) if width and height else None
    if size is None:
        return f"<img src='{uri}' alt='{_esc(alt)}'>"
    return f"<img class='px' src='{uri}' alt='{_esc(alt)}' width='{size[0]}' height='{size[1]}'>"


def render_html(report: Report, layout: OutputLayout) -> str:
    """The report page; links point only at output files that exist now, as relative URLs."""
    meta, summary = report.meta, report.summary()
    head = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>cam-runtime report: {_esc(meta.get('model', ''))}</title><style>{_CSS}</style></head><body>")
    info = " · ".join(f"{_esc(k)}: {_esc(meta[k])}" for k in ("model", "method", "device", "created") if k in meta)
    root, shorts = short_sources([str(r["source"]) for r in report.records])
    if root:
        info += f" · inputs under: {_esc(root)}"
    counts = "".join(f"<b>{_esc(k)}: {v}</b>" for k, v in summary.items())
    parts = [head, "<h1>Class activation maps</h1>", random_weights_banner(report.page.get("weights")),
             f"<div class='meta'>{info}</div>", f"<div class='cnt'>{counts}</div>",
             legend_html(str(report.page.get("colormap") or "jet")),
             "<p class='small'>Files: <a href='report.json'>report.json</a> · "
             "<a href='report.csv'>report.csv</a></p>",
             "<input id='filter' type='search' placeholder='filter rows: name, class, error' "
             "aria-label='filter rows' hidden>",
             "<table id='rows'><thead><tr><th data-key='i'>#</th><th data-key='name'>input</th><th>image</th>"
             "<th>overlays (click for full size)</th><th data-key='p'>top-k</th><th>boxes (x0,y0,x1,y1)</th>"
             "<th data-key='ms'>timings ms</th></tr></thead><tbody>"]
    for index, (record, thumbs, short) in enumerate(zip(report.records, report.thumbs, shorts, strict=True), start=1):
        try:
            parts.append(_row(index, record, thumbs, layout, short))
        except Exception as exc:  # one malformed record must not cost the others their rows
            broken = _broken_row(record, exc)
            parts.append(f"<tr class='failed'><td>{index}</td><td class='src'>{_esc(readable(broken['source']))}"
                         f"</td><td colspan='5' class='err'>{_esc(broken['error'])}</td></tr>")
    parts.append(f"</tbody></table>{_SCRIPT}</body></html>\n")
    return "".join(parts)


def _row(index: int, record: dict[str, Any], thumbs: dict[str, Any], layout: OutputLayout, short: str) -> str:
    source = f"<td class='src' title='{_esc(record['source'])}'>{_esc(short)}"
    if record.get("resumed"):
        source += "<div class='small'>(from an earlier run)</div>"
    source += "</td>"
    top1 = record["top_k"][0] if record.get("top_k") else None
    total_ms = sum((record.get("timings_ms") or {}).values())
    data = (f" data-i='{index}' data-name='{_esc(short.lower())}' "
            f"data-p='{_esc(float(top1['probability']) if top1 else -1)}' data-ms='{float(total_ms):.3f}'")
    if record["status"] != "ok":
        return (f"<tr class='failed'{data}><td>{index}</td>{source}<td colspan='5' class='err'>"
                f"{_esc(record.get('error_type') or 'error')}: {_esc(record.get('error') or '')}</td></tr>")
    width, height = record.get("width"), record.get("height")
    image = thumb_img(thumbs["input"], "input", width, height) if thumbs.get("input") else ""
    image += f"<div class='small'>{_esc(width)}×{_esc(height)}</div>"
    figures, boxes = [], []
    overlay_thumbs = thumbs.get("overlays") or []
    for rank, target in enumerate(record["targets"]):
        caption = (f"{_esc(target['label'])} ({_esc(target['class_id'])}) "
                   f"<span title='p={float(target['probability']):.6g}'>{percent(float(target['probability']))}</span>")
        name = target.get("overlay")
        exists = bool(name) and layout.path(name).is_file()
        thumb = overlay_thumbs[rank] if rank < len(overlay_thumbs) else ""
        inner = thumb_img(thumb, f"overlay {rank + 1}", width, height) if thumb else _esc(name or "")
        if exists:
            inner = f"<a href='{_href(name)}'>{inner}</a>"
        heat = target.get("heatmap")
        extra = (f" · <a href='{_href(heat)}'>.npy</a>" if heat and layout.path(heat).is_file() else "")
        figures.append(f"<div class='fig'>{inner}<div class='small'>{caption}{extra}</div></div>")
        box_text = ", ".join(f"({b['x0']},{b['y0']},{b['x1']},{b['y1']})" for b in target["boxes"]) or "none"
        boxes.append(f"<div>{_esc(target['label'])}: {_esc(box_text)}</div>")
    top = "".join(f"<li>{_esc(p['label'])} ({_esc(p['class_id'])}): "
                  f"<span title='p={float(p['probability']):.6g}'>{percent(float(p['probability']))}</span></li>"
                  for p in record["top_k"])
    timings = "<br>".join(f"{_esc(k)}: {float(v):.1f}" for k, v in (record.get("timings_ms") or {}).items())
    return (f"<tr{data}><td>{index}</td>{source}<td>{image}</td><td>{''.join(figures)}</td><td><ol>{top}</ol></td>"
            f"<td>{''.join(boxes)}</td><td class='small'>{timings}</td></tr>")


def now_iso() -> str:
    """UTC timestamp for report metadata."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
