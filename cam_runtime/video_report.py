"""The report of a video run: report.json (meta, counts, class timeline) and a static report.html."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .outputs import strict_json, write_text_atomic
from .video_writer import Timeline

MAX_HTML_SEGMENTS = 500
"""Segments listed in the HTML table (all of them are in report.json)."""

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
.meta{color:#555;font-size:.9rem;margin-bottom:1rem}.err{color:#a00;font-weight:bold}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.3rem .5rem;font-size:.85rem;
text-align:left;vertical-align:top}th{background:#f0f0f0}img{max-width:160px;max-height:120px;display:block}
.bar{display:flex;height:28px;border:1px solid #bbb;margin:.4rem 0}.bar div{height:100%}
.sw{display:inline-block;width:.9rem;height:.9rem;vertical-align:middle;margin-right:.3rem}
"""


def class_colour(class_id: int) -> str:
    """A distinct CSS colour per class id (golden-angle hues)."""
    return f"hsl({(class_id * 137.508) % 360:.1f},65%,55%)"


def write_video_report(root: Path, meta: dict[str, Any], timeline: Timeline,
                       thumbs: dict[int, str] | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``root`` (atomically); ``thumbs``: segment start frame → URI."""
    data = {"report_version": 1, "kind": "video", "meta": meta, "timeline": timeline.to_dict()}
    json_path = write_text_atomic(root / "report.json", strict_json(data, indent=1) + "\n")
    html_path = write_text_atomic(root / "report.html", render_video_html(meta, timeline, thumbs or {}))
    return json_path, html_path


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_video_html(meta: dict[str, Any], timeline: Timeline, thumbs: dict[int, str]) -> str:
    """One offline page: run facts, a coloured top-1 timeline bar, per-class shares and the segments."""
    facts = " · ".join(f"{_esc(k)}: {_esc(meta[k])}" for k in ("source", "model", "method", "device", "created",
                                                               "status") if meta.get(k) is not None)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>cam-runtime video report: {_esc(meta.get('source', ''))}</title><style>{_CSS}</style>",
             "</head><body><h1>Class activation maps: video</h1>", f"<div class='meta'>{facts}</div>"]
    if meta.get("error"):
        parts.append(f"<p class='err'>{_esc(meta['error'])}</p>")
    links = [f"<a href='{quote(str(meta[k]))}'>{_esc(meta[k])}</a>" for k in ("video", "frames_jsonl")
             if meta.get(k)]
    counts = (f"explained frames: {_esc(meta.get('frames_explained', 0))} (last: {_esc(meta.get('last_frame'))})"
              f" · {_esc(meta.get('width'))}×{_esc(meta.get('height'))} at {_esc(meta.get('fps'))} fps")
    links.append("<a href='report.json'>report.json</a>")
    parts.append(f"<p>{counts}<br>Files: {' · '.join(links)}</p>")
    total = sum(s.end_s - s.start_s for s in timeline.segments)
    if timeline.segments and total > 0:
        parts.append("<h2>Top-1 class over time</h2><div class='bar'>")
        for s in timeline.segments:
            width = 100.0 * (s.end_s - s.start_s) / total
            parts.append(f"<div style='width:{width:.4f}%;background:{class_colour(s.class_id)}' "
                         f"title='{_esc(s.label)} {s.start_s:.2f}–{s.end_s:.2f} s'></div>")
        parts.append("</div>")
    parts.append("<h2>Classes</h2><table><tr><th>class</th><th>frames as top-1</th><th>share</th><th>seconds</th>"
                 "<th>segments</th></tr>")
    for row in timeline.classes():
        parts.append(f"<tr><td><span class='sw' style='background:{class_colour(row['class_id'])}'></span>"
                     f"{_esc(row['label'])} ({row['class_id']})</td><td>{row['frames']}</td>"
                     f"<td>{100 * row['share']:.1f}%</td><td>{row['seconds']:.2f}</td><td>{row['segments']}</td></tr>")
    parts.append("</table><h2>Segments (constant top-1)</h2><table><tr><th>#</th><th>class</th><th>frames</th>"
                 "<th>time (s)</th><th>mean p</th><th>first frame</th></tr>")
    for number, s in enumerate(timeline.segments[:MAX_HTML_SEGMENTS], start=1):
        thumb = thumbs.get(s.first_frame, "")
        image = f"<img src='{thumb}' alt='frame {s.first_frame}'>" if thumb else ""
        parts.append(f"<tr><td>{number}</td><td>{_esc(s.label)} ({s.class_id})</td><td>{s.first_frame}–"
                     f"{s.last_frame} ({s.frames})</td><td>{s.start_s:.2f}–{s.end_s:.2f}</td>"
                     f"<td>{s.probability_sum / max(1, s.frames):.3f}</td><td>{image}</td></tr>")
    parts.append("</table>")
    if len(timeline.segments) > MAX_HTML_SEGMENTS:
        parts.append(f"<p>… {len(timeline.segments) - MAX_HTML_SEGMENTS} more segments in report.json</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
