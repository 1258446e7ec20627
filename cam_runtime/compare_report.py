"""compare.html: the runs of several CAM methods on the same inputs side by side (one offline page, no script)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .outputs import OutputLayout, write_text_atomic
from .report import (
    Report,
    _esc,
    _href,
    legend_html,
    percent,
    random_weights_banner,
    short_sources,
    thumb_img,
)

COMPARE_FILE = "compare.html"
"""The comparison page's name in the output folder (each method's own outputs are in OUTPUT/<method>/)."""

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
.meta{color:#555;font-size:.9rem;margin-bottom:1rem}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:.4rem;vertical-align:top;text-align:left;font-size:.85rem}
th{background:#f0f0f0}td.num{text-align:right}img{max-width:160px;max-height:160px;display:block}
img.px{image-rendering:pixelated;max-width:none;max-height:none}
.failed{background:#fff1f1;color:#a00}.src{word-break:break-all;min-width:7rem;max-width:14rem}.small{color:#666;font-size:.75rem}
.fig{display:inline-block;margin:0 .3rem .3rem 0}
.banner{background:#fff3cd;border:2px solid #d39e00;color:#5c4400;padding:.6rem .8rem;margin:0 0 1rem;font-weight:600}
.legend{display:flex;align-items:center;gap:.4rem;font-size:.8rem;color:#444;margin:.4rem 0 1rem}
.legend img.scale{width:256px;height:12px;max-width:none;border:1px solid #999}
"""


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "–"


def method_timings(report: Report, wall_s: float) -> dict[str, Any]:
    """A method's run in numbers: images ok/failed, wall seconds, images per second and mean stage times (ms)."""
    summary = report.summary()
    fresh = [r for r in report.records if r["status"] == "ok" and not r.get("resumed")]
    stage = {key: _mean([float(r["timings_ms"][key]) for r in fresh if key in (r.get("timings_ms") or {})])
             for key in ("inference", "maps", "write")}
    return {"ok": summary["ok"], "failed": summary["failed"], "resumed": summary["resumed"],
            "wall_s": wall_s, "images_per_s": len(fresh) / wall_s if wall_s > 0 and fresh else None, **stage}


def render_compare(reports: Mapping[str, Report], wall_s: Mapping[str, float], root: OutputLayout,
                   page: Mapping[str, Any] | None = None) -> str:
    """The page: a per-method timing table, then one row per input and one column per method."""
    page = page or {}
    methods = list(reports)
    first = reports[methods[0]]
    sources = [str(r["source"]) for r in first.records]
    common, shorts = short_sources(sources)
    meta = first.meta
    info = " · ".join(f"{_esc(k)}: {_esc(meta[k])}" for k in ("model", "device", "created") if k in meta)
    if common:
        info += f" · inputs under: {_esc(common)}"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>cam-runtime method comparison: {_esc(meta.get('model', ''))}</title><style>{_CSS}</style>"
             f"</head><body><h1>CAM methods compared</h1>", random_weights_banner(page.get("weights")),
             f"<div class='meta'>{info}</div>", legend_html(str(page.get("colormap") or "jet")),
             "<h2>Timings</h2><table><thead><tr><th>method</th><th>ok</th><th>failed</th><th>wall s</th>"
             "<th>images/s</th><th>inference ms/image</th><th>maps ms/image</th><th>write ms/image</th>"
             "<th>report</th></tr></thead><tbody>"]
    for method in methods:
        t = method_timings(reports[method], wall_s.get(method, 0.0))
        report_link = f"{method}/report.html"
        link = (f"<a href='{_href(report_link)}'>report.html</a>" if root.path(report_link).is_file() else "")
        rate = f"{t['images_per_s']:.2f}" if t["images_per_s"] is not None else "–"
        parts.append(f"<tr><td>{_esc(method)}</td><td class='num'>{t['ok']}</td><td class='num'>{t['failed']}</td>"
                     f"<td class='num'>{t['wall_s']:.2f}</td><td class='num'>{rate}</td>"
                     f"<td class='num'>{_ms(t['inference'])}</td><td class='num'>{_ms(t['maps'])}</td>"
                     f"<td class='num'>{_ms(t['write'])}</td><td>{link}</td></tr>")
    parts.append("</tbody></table><h2>Overlays</h2><table><thead><tr><th>#</th><th>input</th><th>image</th>"
                 + "".join(f"<th>{_esc(m)}</th>" for m in methods) + "</tr></thead><tbody>")
    for index, source in enumerate(sources):
        row = [f"<tr><td>{index + 1}</td><td class='src' title='{_esc(source)}'>{_esc(shorts[index])}</td>",
               _input_cell(reports, methods, index)]
        row += [_method_cell(method, reports[method], index, root) for method in methods]
        parts.append("".join(row) + "</tr>")
    parts.append("</tbody></table></body></html>\n")
    return "".join(parts)


def _input_cell(reports: Mapping[str, Report], methods: list[str], index: int) -> str:
    for method in methods:
        record, thumbs = reports[method].records[index], reports[method].thumbs[index]
        if record["status"] == "ok" and thumbs.get("input"):
            return (f"<td>{thumb_img(thumbs['input'], 'input', record['width'], record['height'])}"
                    f"<div class='small'>{record['width']}×{record['height']}</div></td>")
    return "<td></td>"


def _method_cell(method: str, report: Report, index: int, root: OutputLayout) -> str:
    record, thumbs = report.records[index], report.thumbs[index]
    if record["status"] != "ok":
        return (f"<td class='failed'>{_esc(record.get('error_type') or 'error')}: "
                f"{_esc(record.get('error') or '')}</td>")
    figures = []
    overlay_thumbs = thumbs.get("overlays") or []
    for rank, target in enumerate(record["targets"]):
        thumb = overlay_thumbs[rank] if rank < len(overlay_thumbs) else ""
        name = target.get("overlay")
        inner = (thumb_img(thumb, f"{method} overlay {rank + 1}", record["width"], record["height"]) if thumb
                 else _esc(name or ""))
        if name and root.path(f"{method}/{name}").is_file():
            inner = f"<a href='{_href(f'{method}/{name}')}'>{inner}</a>"
        caption = f"{_esc(target['label'])} {percent(target['probability'])}"
        figures.append(f"<div class='fig'>{inner}<div class='small'>{caption}</div></div>")
    top = record["top_k"][0] if record.get("top_k") else None
    top_text = (f"<div>top-1: {_esc(top['label'])} ({top['class_id']}) {percent(top['probability'])}</div>"
                if top else "")
    return f"<td>{''.join(figures)}{top_text}</td>"


def write_compare(reports: Mapping[str, Report], wall_s: Mapping[str, float], output: Path,
                  page: Mapping[str, Any] | None = None) -> Path:
    """Write OUTPUT/compare.html atomically; returns its path."""
    root = OutputLayout(output)
    return write_text_atomic(root.path(COMPARE_FILE), render_compare(reports, wall_s, root, page))
