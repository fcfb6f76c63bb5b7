"""The HTML report of a run: self-contained, inline SVG drawn here (no plotting dependency).

`summarize(events, fault_windows)` (pure) turns a history into per-second throughput by
completion type and per-operation latencies; `render_html(...)` (pure) draws them with fault
windows shaded and lists the verdict's anomalies; `write_report(path, history, verdict,
summary)` is the file shell.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from semel.chaos.history import INVOKE, Event, read_history

COLORS = {"ok": "#2a9d4b", "info": "#e69f00", "fail": "#d1495b"}
FAMILY_COLORS = {"kill": "#d1495b", "pause": "#7b68ee", "partition": "#e69f00", "latency": "#3a86ff",
                 "reset": "#8d6e63", "rolling": "#2a9d8f", "hijack": "#6d597a", "client-pause": "#b5838d"}
WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 960, 260, 56, 16, 14, 30
MAX_POINTS = 6000


def summarize(events: Sequence[Event]) -> dict[str, Any]:
    """Throughput per second by completion type, and (time_s, latency_ms, type, f) per op."""
    open_invokes: dict[int, Event] = {}
    per_second: dict[str, dict[int, int]] = {"ok": {}, "info": {}, "fail": {}}
    latencies: list[tuple[float, float, str, str]] = []
    end_s = 0.0
    for ev in events:
        t = ev.time_ns / 1e9
        end_s = max(end_s, t)
        if ev.type == INVOKE:
            open_invokes[ev.process] = ev
            continue
        inv = open_invokes.pop(ev.process, None)
        bucket = per_second[ev.type]
        bucket[int(t)] = bucket.get(int(t), 0) + 1
        if inv is not None:
            latencies.append((inv.time_ns / 1e9, (ev.time_ns - inv.time_ns) / 1e6, ev.type, ev.f))
    return {"per_second": per_second, "latencies": latencies, "end_s": end_s, "open": len(open_invokes)}


def _scale(lo: float, hi: float, out_lo: float, out_hi: float, log: bool = False) -> Any:
    if log:
        lo, hi = math.log10(max(lo, 1e-3)), math.log10(max(hi, 1e-3))
    span = (hi - lo) or 1.0

    def f(v: float) -> float:
        if log:
            v = math.log10(max(v, 1e-3))
        return out_lo + (v - lo) / span * (out_hi - out_lo)

    return f


def _frame(x_max: float, y_ticks: Iterable[tuple[float, str]], ys: Any, title: str,
           windows: Sequence[Mapping[str, Any]], xs: Any) -> list[str]:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
             f'<text x="{PAD_L}" y="11" font-weight="bold">{html.escape(title)}</text>']
    for i, w in enumerate(windows):
        x1, x2 = xs(w["start_s"]), xs(w["stop_s"] if w["stop_s"] is not None else x_max)
        color = FAMILY_COLORS.get(w["family"], "#999")
        parts.append(f'<rect x="{x1:.1f}" y="{PAD_T}" width="{max(1.0, x2 - x1):.1f}" '
                     f'height="{HEIGHT - PAD_T - PAD_B}" fill="{color}" fill-opacity="0.13">'
                     f'<title>{html.escape(w["label"])}</title></rect>'
                     f'<text x="{x1 + 2:.1f}" y="{PAD_T + 10 + 11 * (i % 3)}" font-size="9" fill="{color}">'
                     f'{html.escape(w["family"])}</text>')
    parts.append(f'<line x1="{PAD_L}" y1="{HEIGHT - PAD_B}" x2="{WIDTH - PAD_R}" y2="{HEIGHT - PAD_B}" stroke="#333"/>')
    parts.append(f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{HEIGHT - PAD_B}" stroke="#333"/>')
    for value, label in y_ticks:
        y = ys(value)
        parts.append(f'<line x1="{PAD_L - 3}" y1="{y:.1f}" x2="{WIDTH - PAD_R}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{PAD_L - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    step = max(1, int(x_max / 10) or 1)
    for s in range(0, int(x_max) + 1, step):
        x = xs(s)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - PAD_B + 14}" text-anchor="middle">{s}s</text>')
    return parts


def throughput_svg(summary: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]) -> str:
    x_max = max(1.0, float(summary["end_s"]))
    per = summary["per_second"]
    y_max = max([1] + [v for series in per.values() for v in series.values()])
    xs = _scale(0, x_max, PAD_L, WIDTH - PAD_R)
    ys = _scale(0, y_max * 1.1, HEIGHT - PAD_B, PAD_T)
    ticks = [(y_max * i / 4, f"{y_max * i / 4:.0f}") for i in range(5)]
    parts = _frame(x_max, ticks, ys, "completions per second (ok / info / fail)", windows, xs)
    for kind in ("ok", "info", "fail"):
        series = per[kind]
        pts = " ".join(f"{xs(s + 0.5):.1f},{ys(series.get(s, 0)):.1f}" for s in range(int(x_max) + 1))
        parts.append(f'<polyline fill="none" stroke="{COLORS[kind]}" stroke-width="1.5" points="{pts}"/>')
    parts.append("</svg>")
    return "".join(parts)


def latency_svg(summary: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]) -> str:
    x_max = max(1.0, float(summary["end_s"]))
    lats = summary["latencies"]
    if len(lats) > MAX_POINTS:  # keep the plot small: every k-th point, but every non-ok one
        k = len(lats) // MAX_POINTS + 1
        lats = [p for i, p in enumerate(lats) if p[2] != "ok" or i % k == 0]
    y_max = max([10.0] + [p[1] for p in lats])
    xs = _scale(0, x_max, PAD_L, WIDTH - PAD_R)
    ys = _scale(1, y_max * 1.2, HEIGHT - PAD_B, PAD_T, log=True)
    ticks = [(v, f"{v:g}") for v in (1, 10, 100, 1000, 10000, 100000) if v <= y_max * 1.2]
    parts = _frame(x_max, ticks, ys, "operation latency, ms (log scale; by invoke time)", windows, xs)
    for t, ms, kind, f in lats:
        parts.append(f'<circle cx="{xs(t):.1f}" cy="{ys(max(ms, 1.0)):.1f}" r="1.6" '
                     f'fill="{COLORS.get(kind, "#999")}" fill-opacity="0.6"/>')
    parts.append("</svg>")
    return "".join(parts)


def fault_windows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for a in summary.get("faults", []):
        f = a["fault"]
        brokers = f" -> brokers {a['brokers']}" if a.get("brokers") else ""
        out.append({"start_s": a["started_s"], "stop_s": a["stopped_s"], "family": f["family"],
                    "label": f"{a['describe']}{brokers} ({a['started_s']:.1f}-{(a['stopped_s'] or 0):.1f} s)"})
    return out


def render_html(events: Sequence[Event], verdict: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    s = summarize(events)
    windows = fault_windows(summary)
    cfg = summary.get("config", {})
    valid = bool(verdict.get("valid"))
    anomalies = verdict.get("anomalies", {})
    counts = verdict.get("counts", {})
    rows = "".join(f"<tr><td>{html.escape(w['label'])}</td></tr>" for w in windows) or "<tr><td>none</td></tr>"
    anomaly_html = ""
    for name, examples in sorted(anomalies.items()):
        anomaly_html += (f"<h3>{html.escape(name)} ({counts.get(name, len(examples))})</h3><pre>"
                         + html.escape(json.dumps(examples[:5], indent=1, sort_keys=True)) + "</pre>")
    stats = html.escape(json.dumps(verdict.get("stats", {}), indent=1, sort_keys=True))
    final = html.escape(json.dumps(summary.get("final_read", {}), indent=1, sort_keys=True, default=str))
    problems = ""
    if summary.get("unexpected_exits") or summary.get("heal_error"):
        problems = ('<h2 class="bad">Cluster problems</h2><pre>' + html.escape(json.dumps(
            {"unexpected_exits": summary.get("unexpected_exits"), "heal_error": summary.get("heal_error")},
            indent=1, default=str)) + "</pre>")
    legend = " ".join(f'<span style="color:{c}">&#9632; {html.escape(k)}</span>' for k, c in FAMILY_COLORS.items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>semel chaos run, seed {cfg.get('seed')}</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1000px}} pre{{background:#f5f5f5;padding:6px;
overflow-x:auto;font-size:11px}} .bad{{color:#d1495b}} .good{{color:#2a9d4b}} td{{font-size:12px}}</style>
</head><body>
<h1>semel chaos run: <span class="{'good' if valid else 'bad'}">{'VALID' if valid else 'INVALID'}</span></h1>
<p>seed <b>{cfg.get('seed')}</b>, workload <b>{html.escape(str(cfg.get('workload')))}</b>,
{cfg.get('brokers')} brokers, {cfg.get('duration_s')} s, nemesis {html.escape(','.join(cfg.get('families', [])))};
{len(events)} events, {s['open']} operations never completed.</p>
<p>Replay: <code>semel chaos run --seed {cfg.get('seed')} --duration-s {cfg.get('duration_s')}
--nemesis {html.escape(','.join(cfg.get('families', [])) or 'none')} --workload {html.escape(str(cfg.get('workload')))}
--brokers {cfg.get('brokers')}</code></p>
<p>Fault windows: {legend}</p>
{throughput_svg(s, windows)}
{latency_svg(s, windows)}
<h2>Anomalies</h2>{anomaly_html or '<p>none</p>'}
{problems}
<h2>Faults as applied</h2><table>{rows}</table>
<h2>Checker statistics</h2><pre>{stats}</pre>
<h2>Final read</h2><pre>{final}</pre>
</body></html>
"""


def write_report(path: str | Path, history: str | Path, verdict: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    events = read_history(history)
    Path(path).write_text(render_html(events, verdict, summary), encoding="utf-8")
