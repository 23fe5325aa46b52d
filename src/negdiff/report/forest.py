"""The claims' forest plot as inline SVG: one panel per read-out (so one unit per axis), zero marked.

Why SVG written here rather than a matplotlib PNG: the first screen must stay sharp at any zoom and in
print, the verdict colours must be the badges' own (CSS classes), and the page stays self-contained text.
"""

from __future__ import annotations

import html
import math

from negdiff.report.claims import STATE_STYLE, Row

WIDTH, LABEL, RIGHT, ROW, TOP, BOTTOM = 540, 200, 16, 19, 22, 31


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    span = hi - lo
    raw = span / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def panel_svg(title: str, unit: str, rows: list[Row]) -> str:
    """One panel: a row per interval (point = estimate, bar = 95% CI), the dashed line at zero."""
    values = [0.0] + [v for r in rows for v in ([r.estimate] if r.estimate is not None else []) + list(r.ci or ())]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    plot = WIDTH - LABEL - RIGHT
    height = TOP + ROW * len(rows) + BOTTOM

    def x(v: float) -> float:
        return LABEL + (v - lo) / (hi - lo) * plot

    out = [f'<svg class="forest" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
           f'aria-label="{html.escape(title)}">',
           f'<text x="4" y="15" class="ptitle">{html.escape(title)}</text>']
    base = TOP + ROW * len(rows)
    for t in _ticks(lo, hi):
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP - 4}" x2="{x(t):.1f}" y2="{base}" class="grid"/>'
                   f'<text x="{x(t):.1f}" y="{base + 13}" class="tick">{_fmt(t)}</text>')
    out.append(f'<line x1="{x(0):.1f}" y1="{TOP - 6}" x2="{x(0):.1f}" y2="{base}" class="zero"/>')
    out.append(f'<text x="{LABEL + plot / 2:.1f}" y="{base + 27}" class="axis">{html.escape(unit)} (95% CI)</text>')
    for i, r in enumerate(rows):
        y = TOP + ROW * i + ROW / 2
        css = STATE_STYLE.get(r.verdict, ("small",))[0]
        out.append(f'<text x="4" y="{y + 4:.1f}" class="rlabel">{html.escape(r.claim)}</text>')
        if r.ci is not None:
            out.append(f'<line x1="{x(r.ci[0]):.1f}" y1="{y:.1f}" x2="{x(r.ci[1]):.1f}" y2="{y:.1f}" class="ci v-{css}"/>')
        if r.estimate is not None:
            out.append(f'<circle cx="{x(r.estimate):.1f}" cy="{y:.1f}" r="4.5" class="pt v-{css}">'
                       f'<title>{html.escape(r.claim)}: {r.estimate:+.4g} {html.escape(unit)}, n = {html.escape(r.n)}, '
                       f'{html.escape(r.verdict)}</title></circle>')
        else:
            out.append(f'<text x="{LABEL + 4}" y="{y + 4:.1f}" class="rlabel muted">no estimate ({html.escape(r.verdict)})</text>')
    out.append("</svg>")
    return "".join(out)


def forest_html(rows: list[Row]) -> str:
    """All panels, in the order the read-outs first appear."""
    panels: dict[str, list[Row]] = {}
    for r in rows:
        panels.setdefault(r.panel, []).append(r)
    return '<div class="forest-grid">' + "".join(
        f"<div>{panel_svg(title, rs[0].unit, rs)}</div>" for title, rs in panels.items()) + "</div>"
