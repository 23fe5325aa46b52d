"""``report.html``: the answer first, the evidence next to it, the run's facts last; one self-contained file.

The first screen answers "does the paper hold on this model?": the model and its weights (4-bit stated),
the sizes, one line per claim (verdict badge, the deciding read-out in human units, n) and the forest plot
of every claim's interval against zero. Then one section per step with its numbers as real tables or
lists and its figures inline, each with a caption that says what to look at; then the run's facts. Pure
HTML and CSS (no script), readable at 1280 px without horizontal scrolling, and printable.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from pathlib import Path
from typing import Any

from negdiff.report.claims import STATE_STYLE, forest_rows, human, n_text
from negdiff.report.forest import forest_html

#: What to look at in each figure, by "step/stem" where two steps share a stem, else by stem (a stem not listed
#: gets its name).
CAPTIONS = {
    "wd_by_layer": "Wasserstein distance to N(0,1) by layer: the selected WN (top 1% per layer) against all neurons.",
    "wn_per_layer": "How many WN each layer holds (per-layer selection makes this flat; global selection would not).",
    "md_vs_wd": "Mapping difficulty against WD per neuron: the WN should sit at high WD; do they also reach high MD?",
    "preact_histograms": "Pre-activation histograms of a few WN (first windows): note the mass below zero.",
    "wd_neg_raw_vs_wd_pos_raw": "W1 in the raw negative region (h < 0) against the positive one, per neuron: "
                                "points above the diagonal carry more of their non-Gaussianity below zero.",
    "deltas": "Change against the baseline per condition, with 95% CIs: wn_neg against the random sets and the "
              "perplexity-matched set is the paper's comparison.",
    "blimp_paradigms": "BLiMP accuracy change by phenomenon (the 12 terms grouping the 67 paradigms), wn_neg against "
                       "its control, 95% CIs over items: which phenomena carry the damage.",
    "tse_tasks": "TSE accuracy change per task (points), wn_neg against its controls, 95% CIs over each task's items.",
    "dose_response": "Dose response: perplexity and BLiMP accuracy as the fraction of top-WD neurons negative-zeroed "
                     "grows, random neurons beside, 95% CIs: where do the curves part?",
    "negative_share": "Share of each neuron's top mapping-difficulty pairs with both pre-activations below zero, "
                      "per layer, WN against random neurons.",
    "pos_excess": "Excess surprisal per word by gold part of speech under each ablation, with 95% CIs.",
    "pos_share": "Which parts of speech carry the excess surprisal, against their share of the words.",
    "group_deltas": "Each layer group ablated alone: where in depth the damage sits.",
    "cumulative": "Groups ablated cumulatively from the bottom and from the top: does the damage add up?",
    "phenomenon_heatmap": "Accuracy change by BLiMP phenomenon and layer group.",
    "quadrant_deltas": "Gated MLPs: one sign quadrant of act(gate) x up zeroed at a time, on the WN (red) and on "
                       "random neurons (grey), 95% CIs: which quadrant carries the WN's negative-region harm?",
    "stability/bootstrap": "(a) Each neuron's probability of being a WN over the shard-bootstrap replicates (the reference "
                           "WN in red); (b) each replicate's WN set against the full-data set (Jaccard): the spread of "
                           "the replicates, not a confidence interval.",
    "stability/overlap": "The WN set of each corpus and token budget against the reference set (Jaccard): how much of "
                         "'the WN' depends on the corpus and the budget they were selected on?",
    "stability/redraws": "wn_neg on the reference WN set and on sets redrawn from bootstrap replicates, 95% CIs: does "
                         "the headline ablation depend on which set was drawn?",
    "dynamics/wd": "WD of the final checkpoint's WN cohort and of all neurons over training: when do the WN separate "
                   "from the rest?",
    "dynamics/overlap": "Each checkpoint's re-identified WN set against the final set (Jaccard): when does the set "
                        "settle?",
    "dynamics/ablation": "Top: the read-outs per checkpoint under each condition; bottom: change against the baseline "
                         "with 95% paired CIs: does the cohort's harm grow, and exceed random neurons', as the WN emerge?",
    "dynamics/weight_change": "How far the neurons' input weights turn between checkpoints (1 - cos), cohort against "
                              "random neurons: when do the WN's weights settle?",
    "dynamics/wd_vs_tse": "Cohort WD against TSE accuracy across checkpoints (descriptive: checkpoints are a time series, "
                          "not independent samples; no CI).",
}

CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d232b;
margin:0;background:#fff}main{max-width:1180px;margin:0 auto;padding:18px 22px 60px}
h1{font-size:23px;margin:4px 0 6px}h2{font-size:19px;margin:34px 0 8px;border-bottom:2px solid #e3e7ec;padding-bottom:3px}
h3{font-size:15px;margin:18px 0 6px}p{margin:6px 0}.facts{color:#3c4652;margin:0 0 10px}
.quant{background:#fff4d6;border:1px solid #e7c65a;padding:5px 9px;border-radius:4px;display:inline-block;margin:4px 0 8px}
table{border-collapse:collapse;width:100%;margin:8px 0 4px;font-size:12.5px}
th,td{border:1px solid #d9dee4;padding:4px 6px;vertical-align:top;text-align:left;overflow-wrap:anywhere}
th{background:#f3f5f8;font-weight:600}td.num{text-align:right;white-space:nowrap}td small{color:#56616d;white-space:normal}
.claims td:first-child{width:158px}.claims td:last-child{width:96px}
.badge{display:inline-block;font-size:11px;font-weight:700;letter-spacing:.02em;padding:2px 7px;border-radius:10px;
border:1.5px solid transparent;white-space:nowrap}
.b-holds{background:#1f7a3a;color:#fff}.b-opposite{background:#8e2a8e;color:#fff}
.b-nohold{background:#fff;color:#a23b2a;border-color:#a23b2a}
.b-inconclusive{background:#fff;color:#9a6a00;border:1.5px dashed #c48a00}
.b-unmatched{background:repeating-linear-gradient(45deg,#eceff2,#eceff2 4px,#fff 4px,#fff 8px);color:#4b5561;border-color:#8a949e}
.b-small{background:#eceff2;color:#5b6570;border-color:#c3c9cf}
.forest-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:6px 18px;margin:8px 0}
svg.forest{max-width:100%;height:auto;font:11px system-ui,sans-serif}
.ptitle{font-weight:600;font-size:12px}.tick{text-anchor:middle;fill:#56616d}.axis{text-anchor:middle;fill:#3c4652}
.rlabel{fill:#1d232b}.muted{fill:#8a949e}.grid{stroke:#edf0f3}.zero{stroke:#56616d;stroke-dasharray:4 3}
.ci{stroke-width:2.5}.pt{stroke:#fff;stroke-width:1}
.v-holds{stroke:#1f7a3a;fill:#1f7a3a}.v-opposite{stroke:#8e2a8e;fill:#8e2a8e}.v-nohold{stroke:#a23b2a;fill:#a23b2a}
.v-inconclusive{stroke:#c48a00;fill:#c48a00}.v-unmatched{stroke:#8a949e;fill:#8a949e}.v-small{stroke:#b8bec5;fill:#b8bec5}
.legend{font-size:12px;color:#3c4652}.legend span.badge{margin:0 4px 4px 0}
nav.toc{background:#f7f8fa;border:1px solid #e3e7ec;padding:6px 12px;border-radius:4px;margin:14px 0}
nav.toc a{margin-right:14px;white-space:nowrap}
ul.findings{padding-left:20px;margin:6px 0}ul.findings li{margin:2px 0}
figure{margin:10px 0 16px;break-inside:avoid}figure img{max-width:100%;height:auto;border:1px solid #eef0f3}
figure.wide{grid-column:1/-1}figcaption{font-size:12.5px;color:#3c4652;margin-top:3px}.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:6px 20px}
details{margin:6px 0}code{font-size:12px;background:#f3f5f8;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}
@media print{main{max-width:none;padding:0}h2{break-after:avoid}nav.toc{display:none}}
"""


def esc(text: Any) -> str:
    return html.escape(str(text))


def badge(verdict: str) -> str:
    css, label, meaning = STATE_STYLE.get(verdict, ("small", verdict.upper(), ""))
    return f'<span class="badge b-{css}" title="{esc(meaning)}">{esc(label)}</span>'


def figure(path: Path) -> str:
    """An inline PNG (the SVG beside it is for print and papers) with what to look at; wide ones span the row."""
    data = path.read_bytes()
    src = "data:image/png;base64," + base64.b64encode(data).decode()
    width, height = struct.unpack(">II", data[16:24]) if data[:8] == b"\x89PNG\r\n\x1a\n" else (1, 1)
    stem = re.sub(r"_L\d+$", "", path.stem)
    caption = CAPTIONS.get(f"{path.parent.parent.name}/{stem}") or CAPTIONS.get(stem) or path.stem.replace("_", " ")
    if path.stem.startswith("panel_L"):
        caption = (f"Neuron panel, layer {path.stem[7:]}: the top WN's pre-activation histogram with its most "
                   "differentiated token pairs marked; pairs on the negative side are what the paper reads.")
    wide = ' class="wide"' if width > 1.7 * height else ""
    return f'<figure{wide}><img alt="{esc(path.stem)}" src="{src}"><figcaption>{esc(caption)}</figcaption></figure>'


def figures(folder: Path) -> str:
    paths = sorted(folder.glob("*.png"))
    return f'<div class="figs">{"".join(figure(p) for p in paths)}</div>' if paths else ""


def findings(lines: list[str]) -> str:
    """Summary lines as HTML: a Markdown table as a table, a claim line ("- HOLDS: ...") with its verdict badge,
    other lines as a wrapped list where a label before a run of spaces is set in bold and columns collapse."""
    from negdiff.decide import STATES

    out, items, table = [], [], []

    def flush() -> None:
        if items:
            out.append(f'<ul class="findings">{"".join(items)}</ul>')
            items.clear()
        if table:
            out.append(md_table("\n".join(table)))
            table.clear()

    for line in [*lines, ""]:
        if line.startswith("|"):
            if items:
                flush()
            table.append(line)
            continue
        if table:
            flush()
        if not line.strip():
            continue
        head, _, rest = line.removeprefix("- ").partition(": ")
        if line.startswith("- ") and head.lower() in STATES:
            items.append(f"<li>{badge(head.lower())} {esc(rest)}</li>")
            continue
        parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        text = f"<b>{esc(parts[0])}</b> {esc(re.sub(r' {2,}', ' ', parts[1]))}" if len(parts) == 2 else esc(parts[0])
        items.append(f"<li>{text}</li>")
    flush()
    return "".join(out)


_CELL = re.compile(r"^(?P<value>[^()]+?)\s*\((?P<delta>.+)\)$")


#: More columns than this do not fit 1280 px with "value (diff [lo, hi])" cells: the table is split.
MAX_COLUMNS = 9


def md_table(md: str, numeric_from: int = 1, keep: int = 1) -> str:
    """A Markdown table as HTML; a cell "value (diff [lo, hi])" shows the difference on a second line. A table of
    more than MAX_COLUMNS columns becomes several, each repeating the first ``keep`` columns (never a page that
    scrolls sideways)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.strip().splitlines()
            if line.startswith("|") and not set(line.replace("|", "").strip()) <= {"-", " ", ":"}]
    if not rows:
        return ""
    if len(rows[0]) > MAX_COLUMNS:
        step = MAX_COLUMNS - keep
        parts = []
        for lo in range(keep, len(rows[0]), step):
            part = [r[:keep] + r[lo:lo + step] for r in rows]
            parts.append(md_table("\n".join("| " + " | ".join(r) + " |" for r in part), numeric_from, keep))
        return "".join(parts)
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = []
    for row in rows[1:]:
        cells = []
        for i, c in enumerate(row):
            m = _CELL.match(c)
            if i >= numeric_from and m:
                cells.append(f'<td class="num">{esc(m["value"])}<br><small>{esc(m["delta"])}</small></td>')
            else:
                cells.append(f'<td class="{"num" if i >= numeric_from else ""}">{esc(c)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def first_screen(parts: dict[str, Any]) -> str:
    """Model, weights, sizes, and the claims: badges, read-outs in human units, n, the forest plot."""
    rec = parts.get("ablate") or parts.get("scan") or {}
    model = rec.get("model", {})
    sites = model.get("sites", {})
    out = [f"<h1>Does the paper hold on {esc(model.get('name', 'this model'))}?</h1>",
           f'<p class="facts">{esc(model.get("architecture", "?"))}, {model.get("n_params", 0):,} parameters, '
           f"{sites.get('n_layers')} layers x {sites.get('neurons_per_layer')} {esc(sites.get('activation'))} neurons; "
           f"{esc(model.get('dtype'))} on {esc(model.get('device'))}.</p>"]
    if model.get("quantization"):
        out.append(f'<div class="quant"><b>Weights: {esc(model["quantization"])}.</b> Every number here is for these '
                   "weights, not the full-precision model.</div>")
    a = parts.get("ablate")
    if not a:
        why = (" Under ReLU they cannot be: zeroing the negative pre-activations is the identity (ReLU already outputs 0 "
               "there), so this model's evidence is the scan's WD structure and the pairs analysis."
               if str(sites.get("activation", "")).startswith("relu") else "")
        return "".join(out) + f"<p>No ablation in this run: the paper's claims were not tested.{why}</p>"
    cfg = a.get("config", {})
    sizes = [f"BLiMP {cfg.get('blimp_limit') or 'all'} pairs per paradigm", f"TSE {cfg.get('tse_limit') or 'all'} per task",
             f"non-grammatical {cfg.get('nongram_limit') or 'all'} items per benchmark",
             f"perplexity {cfg.get('ppl_tokens') or 'all'} tokens in windows of {cfg.get('ppl_window')}",
             f"{cfg.get('seeds')} random sets", f"WN = top {100 * cfg.get('fraction', 0):g}% by {cfg.get('criterion')} "
             f"({cfg.get('scope')})"]
    out.append(f'<p class="facts"><b>Sizes:</b> {esc("; ".join(sizes))}.</p>')
    proto = a.get("protocol", {})
    rows = "".join(f"<tr><td>{badge(c['verdict'])}</td><td>{esc(c['claim'])}<br><small>{esc(human(c))}</small></td>"
                   f'<td class="num">{esc(n_text(c))}</td></tr>' for c in a["claims"])
    out.append(f'<table class="claims"><thead><tr><th>verdict</th><th>claim, and the deciding read-out: estimate '
               f"[95% CI]</th><th>n</th></tr></thead><tbody>{rows}</tbody></table>")
    gate = (a.get("ppl_matched_check") or {}).get("gate")
    if gate:
        out.append(f"<p><b>Perplexity-matched control:</b> {esc(gate)}.</p>")
    if proto.get("note"):
        out.append(f"<p><b>Note:</b> {esc(proto['note'])}.</p>")
    out.append(forest_html(forest_rows(a["claims"])))
    seen = {c["verdict"] for c in a["claims"]}
    legend = " ".join(f"{badge(v)}{esc(STATE_STYLE[v][2])}." for v in STATE_STYLE if v in seen)
    out.append(f'<p class="legend">{legend}</p>')
    out.append(f"<p>{len(a['claims'])} claims, one family: Holm-adjusted one-sided p at alpha = {proto.get('alpha')}; "
               "intervals are 95% and unadjusted; the deciding read-outs, margins and verdict rules are fixed in "
               f"docs/protocol.md (version {esc(proto.get('version'))}) before any run.</p>")
    return "".join(out)


def ablate_section(a: dict[str, Any], folder: Path) -> str:
    from negdiff.experiments.ablate.stats import table_lines, table_markdown

    notes = [x for x in table_lines(a) if x.startswith(("Cells:", "ppl-matched control on the reported"))]
    dose = a.get("dose", {})
    if dose.get("rows"):
        dd = dose.get("ppl_doubles_at")
        notes.append(f"Dose response: perplexity doubles at p = {100 * dd:.2f}% per layer." if dd
                     else "Dose response: perplexity does not double within the sweep.")
    return (md_table(table_markdown(a), keep=2) + "".join(f"<p><small>{esc(n)}</small></p>" for n in notes)
            + figures(folder / "figures"))


def run_facts(parts: dict[str, Any]) -> str:
    m = parts.get("manifest")
    if not m:
        return ""
    rows = "".join(f'<tr><td>{esc(k)}</td><td>{esc(v.get("status"))}</td><td class="num">{v.get("seconds", 0):,.0f}</td></tr>'
                   for k, v in m.get("steps", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    data = "".join(f"<tr><td>{esc(k)}</td><td><code>{esc(v)}</code></td></tr>" for k, v in sorted(m.get("data", {}).items()))
    return (f'<h2 id="run">Run facts</h2><p>Command: <code>{esc(m.get("command"))}</code> (preset {esc(m.get("preset"))}, '
            f"seed {esc(m.get('seed'))}, device {esc(m.get('device'))})</p>"
            f'<table style="width:auto"><thead><tr><th>step</th><th>status</th><th>seconds</th></tr></thead><tbody>{rows}'
            f"</tbody></table><p>Versions: {esc(versions)}</p>"
            f"<details><summary>Data files and their sha256 ({len(m.get('data', {}))})</summary><table><tbody>{data}"
            "</tbody></table></details>")


def page(run: Path, parts: dict[str, Any], steps: list[Any]) -> str:
    """The whole report."""
    sections, toc = [], ['<a href="#claims">Claims</a>']
    for s in steps:
        if s.name not in parts:
            continue
        title = s.section or {"ablate": "Ablation: conditions and controls"}.get(s.name, s.name)
        toc.append(f'<a href="#{s.name}">{esc(title)}</a>')
        body = ablate_section(parts[s.name], s.folder(run)) if s.name == "ablate" else (
            findings(parts[s.name].get("summary_lines", [])) + figures(s.folder(run) / "figures"))
        sections.append(f'<h2 id="{s.name}">{esc(title)}</h2>{body}')
    if "manifest" in parts:
        toc.append('<a href="#run">Run facts</a>')
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>negdiff report</title><style>{CSS}</style></head><body><main>"
            f'<section id="claims">{first_screen(parts)}</section><nav class="toc">{" ".join(toc)}</nav>'
            + "".join(sections) + run_facts(parts) + "</main></body></html>\n")
