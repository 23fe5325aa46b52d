"""Statistics, verdicts and the table of the ablation experiment, computed from per-item results only.

Deltas and contrasts come from :class:`negdiff.contrasts.Contrasts` (windows: t-intervals on per-window
NLL differences; items: stratified paired bootstrap; random sets: between-set variance included). The
paper's claims form one family decided by :func:`negdiff.decide.decide` (Holm on one-sided p-values,
equivalence margins, minimum detectable effects). The deciding read-out of each claim, the margins and
the matching tolerance are declared in docs/protocol.md and in :data:`PROTOCOL` below, which is written
into ablation.json: change them only with a new protocol version, never after seeing a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from negdiff.bootstrap import N_BOOT
from negdiff.contrasts import NONGRAM, Contrasts, interval_cell, ppl_cell, readouts_of
from negdiff.decide import ALPHA, Claim, claim_lines, decide
from negdiff.runs import write_record

#: The declared protocol (docs/protocol.md): deciding read-outs, equivalence margins, matching tolerance.
PROTOCOL: dict[str, Any] = {
    "version": "2026-12-03",
    "alpha": ALPHA,
    "n_boot": N_BOOT,
    "family": "the 8 ablation claims below; Holm on one-sided p-values in the claimed direction",
    "deciding_readouts": {"perplexity": "mean NLL per window (nats)", "blimp": "margin lp_good - lp_bad (sum, nats)",
                          "tse": "margin lp_good - lp_rival (mean per token, nats)",
                          "nongrammatical": "mean error over the 8 benchmarks (accuracy, pooled as the paper)"},
    "equivalence_margins": {"nll": 0.01, "blimp_margin": 0.1, "tse_margin": 0.015, "acc": 0.01, "mean_error": 0.01},
    "ppl_matched_tolerance": 0.10,
}
MARGIN = PROTOCOL["equivalence_margins"]


def _groups(conditions: list) -> dict[str, list[str]]:
    groups = {c.name: [c.name] for c in conditions if not c.name.startswith("random_neg_s")}
    groups["random_neg"] = [c.name for c in conditions if c.name.startswith("random_neg_s")]
    return {k: v for k, v in groups.items() if v}


def match_check(con: Contrasts, search: dict[str, Any], tol: float) -> dict[str, Any]:
    """Is ppl_matched_neg matched to wn_neg on the *reported* windows? Mismatch = (Δppl_m - Δppl_wn) / Δppl_wn.

    Δppl_c / ppl_base = exp(mean NLL_c - mean NLL_base) - 1, so the mismatch does not depend on the base;
    its interval is a leave-one-window-out jackknife. The control counts as not matched when the search
    failed, when the interval lies entirely outside +-tol, or when fewer than 10 windows were reported.
    """
    def mismatch(m: np.ndarray) -> float:
        wn, pm = np.expm1(m[1] - m[0]), np.expm1(m[2] - m[0])
        return float((pm - wn) / wn) if wn != 0 else float("nan")

    iv = con.window_function("perplexity", ["baseline", "wn_neg", "ppl_matched_neg"], mismatch)
    wn = con.interval("perplexity", "nll", "baseline", "wn_neg")
    out: dict[str, Any] = {"mismatch": iv.to_dict(), "tolerance": tol, "search_matched": bool(search.get("matched")),
                           "wn_neg_delta_nll": wn.to_dict(),
                           "meaning": "matched = not shown to be unmatched: the mismatch CI is not entirely outside "
                                      "the tolerance (a wide CI passes; its width is reported)"}
    if not search.get("matched"):
        out["gate"] = f"the perplexity-matched search did not match: {search.get('reason', 'closest point outside tolerance')}"
    elif wn.ci is None or iv.ci is None:
        out["gate"] = ("matching cannot be checked: " + (iv.extra.get("reason") or wn.extra.get("reason") or
                                                         "fewer than 10 reported perplexity windows"))
    elif wn.ci[0] <= 0:
        out["gate"] = ("mismatch undefined: wn_neg's perplexity change on the reported windows is not distinguishable "
                       f"from 0 ({wn.estimate:+.4f} nats, 95% CI [{wn.ci[0]:+.4f}, {wn.ci[1]:+.4f}])")
    elif iv.ci[0] > tol or iv.ci[1] < -tol:
        out["gate"] = (f"on the reported windows the control does {100 * iv.estimate:+.0f}% "
                       f"[{100 * iv.ci[0]:+.0f}, {100 * iv.ci[1]:+.0f}] of wn_neg's perplexity damage, outside +-{100 * tol:.0f}%")
    return out


def analyze(results: dict[str, dict], conditions: list, search: dict, dose: list[dict], cfg) -> dict[str, Any]:
    """Values and deltas per condition, the claim family and its verdicts, and the dose-response summary."""
    items = {name: res["items"] for name, res in results.items()}
    groups = _groups(conditions)
    con = Contrasts(items, groups, n_boot=cfg.n_boot, seed=cfg.seed, sampled={"random_neg"})
    order = [g for g in ("baseline", "wn_neg", "random_neg", "ppl_matched_neg", "wn_pos", "wn_zero", "wn_identity_pos",
                         "wn_abs_neg") if g in groups]
    value: dict[str, dict] = {}
    delta: dict[str, dict] = {}
    base_ppl = con.value("baseline", "perplexity", "nll")["value"]
    for g in order:
        tasks = list(items[groups[g][0]])
        value[g] = {}
        for t in tasks:
            for r in readouts_of(t, items["baseline"][t]):
                key = t if r in ("nll", "acc") else f"{t}:{r}"
                value[g][key] = con.value(g, t, r)
                if g == "baseline":
                    continue
                iv = con.interval(t, r, "baseline", g)
                delta.setdefault(g, {})[key] = ppl_cell(iv, base_ppl) if t == "perplexity" else interval_cell(iv)
        ng = [t for t in NONGRAM if t in tasks]
        if ng:
            value[g]["nongrammatical_mean_error"] = {"value": float(np.mean([1 - value[g][t]["value"] for t in ng])),
                                                     "n": sum(value[g][t]["n"] for t in ng)}
            if g != "baseline":
                delta[g]["nongrammatical_mean_error"] = interval_cell(con.mean_error("baseline", g, ng))
    check = match_check(con, search, PROTOCOL["ppl_matched_tolerance"]) if "ppl_matched_neg" in groups else None
    claims = decide(build_claims(con, items, groups, check), PROTOCOL["alpha"])
    exploratory = {}
    for t in ("blimp", "tse"):
        if t in items.get("wn_neg", {}):
            rows = con.per_stratum(t, "margin", "baseline", "wn_neg")
            exploratory[t] = {"comparisons": len(rows), "note": "exploratory: unadjusted 95% CIs, one per stratum; "
                              "expect about 5% of them to exclude 0 by chance", "wn_neg_minus_baseline_margin": rows}
    protocol = {**PROTOCOL, "n_boot": cfg.n_boot, "seed": cfg.seed}
    if cfg.n_boot < N_BOOT:
        protocol["note"] = f"provisional: {cfg.n_boot} bootstrap replicates (< {N_BOOT}); decisions need {N_BOOT}"
    return {"format": "negdiff.ablation/2", "protocol": protocol, "order": order, "groups": groups, "value": value,
            "delta": delta, "claims": claims, "ppl_matched": {k: v for k, v in search.items() if k != "neurons"},
            "ppl_matched_check": check, "exploratory": exploratory,
            "dose": {"rows": dose, "ppl_doubles_at": _doubling(dose)},
            "set_sizes": {c.name: c.neurons.size for c in conditions}}


def build_claims(con: Contrasts, items: dict, groups: dict[str, list[str]], check: dict | None) -> list[Claim]:
    """The paper's claims as one fixed family of directional claims (see docs/protocol.md)."""
    def has(group: str, task: str) -> bool:
        return group in groups and all(task in items.get(c, {}) for c in groups[group])

    def iv(task: str, readout: str, a: str, b: str):
        return con.interval(task, readout, a, b) if has(a, task) and has(b, task) else None

    out = [Claim("ppl", "zeroing the WN's negative pre-activations raises perplexity", +1,
                 "perplexity: mean NLL per window, wn_neg - baseline", iv("perplexity", "nll", "baseline", "wn_neg"),
                 MARGIN["nll"], "nats")]
    gate = check.get("gate") if check else None
    for control in ("random_neg", "ppl_matched_neg"):
        for task in ("blimp", "tse"):
            out.append(Claim(f"{task}_vs_{control}", f"wn_neg hurts {task.upper()} more than {control}", -1,
                             f"{task}: margin change, wn_neg - {control}", iv(task, "margin", control, "wn_neg"),
                             MARGIN[f"{task}_margin"], "nats", also=_also(iv(task, "acc", control, "wn_neg")),
                             gate=gate if control == "ppl_matched_neg" else None,
                             extra={"matching": check} if control == "ppl_matched_neg" else {}))
    ng = [t for t in NONGRAM if has("wn_neg", t) and has("ppl_matched_neg", t)]
    syntax = Claim("dd_syntax", "syntax half: wn_neg hurts BLiMP more than ppl_matched_neg", -1,
                   "blimp: margin change, wn_neg - ppl_matched_neg", iv("blimp", "margin", "ppl_matched_neg", "wn_neg"),
                   MARGIN["blimp_margin"], "nats", also=_also(iv("blimp", "acc", "ppl_matched_neg", "wn_neg")))
    other = Claim("dd_nongram", "non-grammatical half: ppl_matched_neg raises the mean error more than wn_neg", +1,
                  "mean error over the 8 benchmarks, ppl_matched_neg - wn_neg",
                  con.mean_error("wn_neg", "ppl_matched_neg", ng) if ng else None, MARGIN["mean_error"], "error (fraction)")
    out.append(Claim("double_dissociation", "double dissociation: wn_neg hurts syntax more, ppl_matched_neg hurts the "
                     "non-grammatical suite more (both halves needed)", +1, "both halves (intersection-union)",
                     halves=[syntax, other], gate=gate,
                     extra={"matching": check}))
    for task in ("blimp", "tse"):
        out.append(Claim(f"sign_vs_magnitude_{task}", f"the sign matters more than the magnitude ({task.upper()}: "
                         "flipping negative outputs hurts more than making positive inputs linear)", -1,
                         f"{task}: margin change, wn_abs_neg - wn_identity_pos",
                         iv(task, "margin", "wn_identity_pos", "wn_abs_neg"), MARGIN[f"{task}_margin"], "nats",
                         also=_also(iv(task, "acc", "wn_identity_pos", "wn_abs_neg"))))
    return out


def _also(acc) -> dict:
    return {"acc": acc} if acc is not None else {}


def _doubling(dose: list[dict]) -> float | None:
    """The per-layer fraction p at which top-WD negative-zeroing doubles perplexity.

    Interpolated linearly in (log p, log ppl) between the last point below 2x baseline and the first at or
    above it; None when no point of the sweep reaches 2x.
    """
    base = [r["ppl"] for r in dose if r["set"] == "baseline"]
    top = sorted((r["p"], r["ppl"]) for r in dose if r["set"] == "top")
    if not base or not top:
        return None
    target = 2 * base[0]
    prev = None
    for p, ppl in top:
        if ppl >= target:
            if prev is None:
                return p
            (p0, y0), (p1, y1) = prev, (p, ppl)
            frac = (np.log(target) - np.log(y0)) / (np.log(y1) - np.log(y0))
            return float(np.exp(np.log(p0) + frac * (np.log(p1) - np.log(p0))))
        prev = (p, ppl)
    return None


def _fmt(v: dict | None, d: dict | None, kind: str) -> str:
    """value (Δ [CI]); perplexity shows Δppl with the CI transformed from the per-window NLL interval."""
    if v is None:
        return "-"
    pct = kind == "pct"
    scale = 100 if pct else 1
    text = f"{scale * v['value']:.1f}" if pct else f"{v['value']:.2f}" if kind == "ppl" else f"{v['value']:+.3f}"
    if "sd" in v:
        text += f" ± {scale * v['sd']:.1f}" if pct else f" ± {v['sd']:.2f}" if kind == "ppl" else f" ± {v['sd']:.3f}"
    if d is not None:
        f = (lambda x: f"{scale * x:+.1f}") if pct else (lambda x: f"{x:+.2f}") if kind == "ppl" else (lambda x: f"{x:+.3f}")
        ci = f" [{f(d['ci_low'])}, {f(d['ci_high'])}]" if "ci_low" in d else f" [n = {d['n']} {d.get('units', '')}: too small]"
        text += f" ({f(d['diff'])}{ci})"
    return text


COLUMNS = {"perplexity": ("PPL", "ppl"), "blimp:margin": ("BLiMP margin (nats)", "num"), "blimp": ("BLiMP acc %", "pct"),
           "tse:margin": ("TSE margin (nats/token)", "num"), "tse": ("TSE acc %", "pct"),
           "nongrammatical_mean_error": ("non-gram. mean err %", "pct")}


def _table_columns(record: dict[str, Any]) -> list[str]:
    cols = [*COLUMNS, *NONGRAM]
    return [c for c in cols if any(c in record["value"][g] for g in record["order"])]


def _row_label(record: dict[str, Any], g: str) -> tuple[str, int]:
    size = record["set_sizes"].get(g) or record["set_sizes"].get(record["groups"][g][0], 0)
    label = g if g != "ppl_matched_neg" else f"ppl_matched_neg (m = {100 * record['ppl_matched']['m']:.1f}%)"
    if g == "random_neg":
        label = f"random_neg ({len(record['groups'][g])} sets)"
    return label, size


def table_csv(record: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The rows and columns of :func:`table_markdown` with each cell split into value, sd (random sets),
    diff, ci_low, ci_high, in the unit its header names (percent for accuracies, Δppl for perplexity)."""
    cols = _table_columns(record)
    header = ["condition", "n_neurons"]
    for c in cols:
        name = COLUMNS.get(c, (c + " acc %",))[0]
        header += [f"{name} {part}" for part in ("value", "sd", "diff", "ci_low", "ci_high")]
    rows = []
    for g in record["order"]:
        label, size = _row_label(record, g)
        row: list[Any] = [label, size]
        for c in cols:
            v, d = record["value"][g].get(c), record["delta"].get(g, {}).get(c)
            scale = 100 if COLUMNS.get(c, ("", "pct"))[1] == "pct" else 1
            row += [None if v is None else scale * v["value"], scale * v["sd"] if v and "sd" in v else None]
            row += [None if not d or k not in d else scale * d[k] for k in ("diff", "ci_low", "ci_high")]
        rows.append(row)
    return header, rows


def table_markdown(record: dict[str, Any]) -> str:
    """The paper-style table: conditions x (perplexity, BLiMP/TSE margin and accuracy, mean error, each benchmark)."""
    cols = _table_columns(record)
    head = "| condition | n neurons | " + " | ".join(COLUMNS.get(c, (c + " acc %",))[0] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for g in record["order"]:
        label, size = _row_label(record, g)
        cells = [_fmt(record["value"][g].get(c), record["delta"].get(g, {}).get(c), COLUMNS.get(c, ("", "pct"))[1])
                 for c in cols]
        lines.append(f"| {label} | {size} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: value (difference to baseline [95% CI, unadjusted]). Perplexity: t-interval on per-window "
                 "NLL differences, shown as Δppl; items: stratified paired bootstrap; random_neg: mean ± sd over sets, "
                 "its CI includes the between-set variance.")
    return "\n".join(lines)


def table_lines(record: dict[str, Any]) -> list[str]:
    """The table and the verdicts, for the terminal."""
    out = [table_markdown(record), "", f"Claims of the paper, on this model ({len(record['claims'])} claims, one family, "
           f"Holm at alpha = {record['protocol']['alpha']}):", *claim_lines(record["claims"])]
    chk = record.get("ppl_matched_check")
    if chk:
        mm = chk["mismatch"]
        ci = f" [{100 * mm['ci'][0]:+.1f}, {100 * mm['ci'][1]:+.1f}]" if mm.get("ci") else " (n too small)"
        out.append(f"ppl-matched control on the reported windows: mismatch {100 * mm['estimate']:+.1f}%{ci} "
                   f"(tolerance +-{100 * chk['tolerance']:.0f}%){'; ' + chk['gate'] if chk.get('gate') else ''}")
    dd = record["dose"]["ppl_doubles_at"]
    if record["dose"]["rows"]:
        out.append(f"Dose response: perplexity doubles at p = {100 * dd:.2f}% per layer" if dd else
                   "Dose response: perplexity does not double within the sweep")
    return out


def write_outputs(record: dict[str, Any], results: dict[str, dict], out: Path) -> None:
    """ablation.json, table.md (with table.csv, its numbers) and the figures (per-item tables were written per
    condition)."""
    from negdiff.experiments.ablate.figures import ablation_figures

    record["figures"] = [str(p.relative_to(out)) for p in ablation_figures(record, results, out)]
    record["summary_lines"] = table_lines(record)  # what `negdiff ablate` prints
    write_record(out / "ablation.json", record, "ablate", record.get("seconds_total"))
    from negdiff.results import atomic_write_bytes

    atomic_write_bytes(out / "table.md", ("\n".join(table_lines(record)) + "\n").encode())
    from negdiff.results import write_csv

    write_csv(out / "table.csv", *table_csv(record))
