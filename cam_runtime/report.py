"""Run reports: per-image records, and report.json / report.csv / one offline report.html, written atomically."""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from .boxes import Box
from .maps import heatmap_at
from .outputs import OutputLayout, write_text_atomic
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
    return {"source": data["source"], "key": key, "status": "ok", "resumed": False, "width": data["width"],
            "height": data["height"], "method": data["method"], "top_k": data["top_k"], "targets": data["targets"],
            "timings_ms": timings, "error": None, "error_type": None}


def record_from_failure(failure: ImageFailure, key: str | None) -> dict[str, Any]:
    """The JSON record of an input that could not be explained."""
    return {"source": failure.source, "key": key, "status": "failed", "resumed": False, "width": None,
            "height": None, "method": None, "top_k": [], "targets": [], "timings_ms": {},
            "error": failure.error, "error_type": failure.error_type}


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


def thumbnail_from_file(path: Path, side: int = THUMB_SIDE) -> str:
    """Thumbnail data URI of an image file on disk ('' if it cannot be read)."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except (OSError, cv2.error):
        return ""
    return thumbnail_data_uri(cast("npt.NDArray[np.uint8]", image), side) if image is not None else ""


@dataclass
class Report:
    """The records of one run, in input order, plus the thumbnails the HTML embeds."""

    meta: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    thumbs: list[dict[str, Any]] = field(default_factory=list)

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
        """Write report.json, report.csv and report.html atomically into the layout's folder."""
        paths = {}
        paths["json"] = write_text_atomic(layout.path("report.json"),
                                          json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        paths["csv"] = write_text_atomic(layout.path("report.csv"), self.to_csv())
        paths["html"] = write_text_atomic(layout.path("report.html"), self.to_html(layout))
        return paths

    def to_csv(self) -> str:
        """One row per (image, target); a failed image is one row with its error."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            for row in csv_rows(record):
                writer.writerow(row)
        return buffer.getvalue()

    def to_html(self, layout: OutputLayout) -> str:
        """A single static page (inline CSS, embedded thumbnails, relative links to files that exist)."""
        return render_html(self, layout)


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
.failed td{background:#fff1f1}.err{color:#a00}.src{word-break:break-all;max-width:18rem}
.fig{display:inline-block;margin:0 .4rem .4rem 0}.small{color:#666;font-size:.75rem}
ol{margin:0;padding-left:1.2rem}.cnt b{margin-right:1rem}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(name: str) -> str:
    return quote(name, safe="/")


def render_html(report: Report, layout: OutputLayout) -> str:
    """The report page; links point only at output files that exist now, as relative URLs."""
    meta, summary = report.meta, report.summary()
    head = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>cam-runtime report: {_esc(meta.get('model', ''))}</title><style>{_CSS}</style></head><body>")
    info = " · ".join(f"{_esc(k)}: {_esc(meta[k])}" for k in ("model", "method", "device", "created") if k in meta)
    counts = "".join(f"<b>{_esc(k)}: {v}</b>" for k, v in summary.items())
    parts = [head, "<h1>Class activation maps</h1>", f"<div class='meta'>{info}</div>",
             f"<div class='cnt'>{counts}</div>", "<p class='small'>Files: <a href='report.json'>report.json</a> · "
             "<a href='report.csv'>report.csv</a></p>",
             "<table><thead><tr><th>#</th><th>input</th><th>image</th><th>overlays (click for full size)</th>"
             "<th>top-k</th><th>boxes (x0,y0,x1,y1)</th><th>timings ms</th></tr></thead><tbody>"]
    for index, (record, thumbs) in enumerate(zip(report.records, report.thumbs, strict=True), start=1):
        parts.append(_row(index, record, thumbs, layout))
    parts.append("</tbody></table></body></html>\n")
    return "".join(parts)


def _row(index: int, record: dict[str, Any], thumbs: dict[str, Any], layout: OutputLayout) -> str:
    source = f"<td class='src'>{_esc(record['source'])}"
    if record.get("resumed"):
        source += "<div class='small'>(from an earlier run)</div>"
    source += "</td>"
    if record["status"] != "ok":
        return (f"<tr class='failed'><td>{index}</td>{source}<td colspan='5' class='err'>"
                f"{_esc(record.get('error_type') or 'error')}: {_esc(record.get('error') or '')}</td></tr>")
    image = f"<img src='{thumbs['input']}' alt='input'>" if thumbs.get("input") else ""
    image += f"<div class='small'>{record['width']}×{record['height']}</div>"
    figures, boxes = [], []
    overlay_thumbs = thumbs.get("overlays") or []
    for rank, target in enumerate(record["targets"]):
        caption = f"{_esc(target['label'])} ({target['class_id']}) p={target['probability']:.3f}"
        name = target.get("overlay")
        exists = bool(name) and layout.path(name).is_file()
        thumb = overlay_thumbs[rank] if rank < len(overlay_thumbs) else ""
        inner = f"<img src='{thumb}' alt='overlay {rank + 1}'>" if thumb else _esc(name or "")
        if exists:
            inner = f"<a href='{_href(name)}'>{inner}</a>"
        heat = target.get("heatmap")
        extra = (f" · <a href='{_href(heat)}'>.npy</a>" if heat and layout.path(heat).is_file() else "")
        figures.append(f"<div class='fig'>{inner}<div class='small'>{caption}{extra}</div></div>")
        box_text = ", ".join(f"({b['x0']},{b['y0']},{b['x1']},{b['y1']})" for b in target["boxes"]) or "none"
        boxes.append(f"<div>{_esc(target['label'])}: {box_text}</div>")
    top = "".join(f"<li>{_esc(p['label'])} ({p['class_id']}): {p['probability']:.3f}</li>" for p in record["top_k"])
    timings = "<br>".join(f"{_esc(k)}: {v:.1f}" for k, v in (record.get("timings_ms") or {}).items())
    return (f"<tr><td>{index}</td>{source}<td>{image}</td><td>{''.join(figures)}</td><td><ol>{top}</ol></td>"
            f"<td>{''.join(boxes)}</td><td class='small'>{timings}</td></tr>")


def now_iso() -> str:
    """UTC timestamp for report metadata."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
