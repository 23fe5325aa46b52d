"""Statistics, verdicts and the table of the ablation experiment, computed from per-item results only.

Every difference is paired (the same items in both conditions) with a seeded bootstrap CI over items
(windows for perplexity); wn_neg is tested against each control with exact McNemar tests, Holm-corrected
across tasks. Verdicts are derived from those CIs by fixed rules, never written by hand: a claim
"holds" when the CI of the deciding difference lies entirely on the claimed side of zero, "does not
hold" when it lies entirely on the other side (or at zero), and is "inconclusive" otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from negdiff.inference import holm, mcnemar_exact, percentile_ci
from negdiff.results import write_json

NONGRAM = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "sciq", "lambada_openai", "boolq")


def _stat(task: str):
    """The headline statistic of a task's item rows: perplexity for windows, accuracy otherwise."""
    if task == "perplexity":
        return "nll", lambda v: float(np.exp(v.mean()))
    return "correct", lambda v: float(v.mean())


def _aligned(a: pd.DataFrame, b: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    merged = a[["item_id", column]].merge(b[["item_id", column]], on="item_id", suffixes=("_a", "_b"), validate="1:1")
    if len(merged) != len(a) or len(merged) != len(b):
        raise ValueError("conditions were scored on different items; cannot pair them")
    return merged[f"{column}_a"].to_numpy(dtype=float), merged[f"{column}_b"].to_numpy(dtype=float)


def paired_draws(items_a, items_b, task: str, n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """stat(b) - stat(a) and its bootstrap draws, resampling the paired items (same indices for both)."""
    column, stat = _stat(task)
    a, b = _aligned(items_a, items_b, column)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    draws = np.array([stat(b[i]) - stat(a[i]) for i in idx])
    return stat(b) - stat(a), draws


def _cell(point: float, draws: np.ndarray, n: int, alpha: float = 0.05) -> dict[str, Any]:
    lo, hi = percentile_ci(draws, alpha)
    return {"diff": point, "ci_low": lo, "ci_high": hi, "n": n}


def compare(items: dict[str, dict[str, pd.DataFrame]], a: list[str], b: list[str], task: str, n_boot: int,
            seed: int) -> tuple[float, np.ndarray, int]:
    """stat(mean over conditions b) - stat(mean over a): each side may be several seeds, averaged."""
    points, draws = [], []
    for ca in a:
        for cb in b:
            p, d = paired_draws(items[ca][task], items[cb][task], task, n_boot, seed)
            points.append(p)
            draws.append(d)
    return float(np.mean(points)), np.mean(draws, axis=0), len(items[b[0]][task])


def _mean_error(items, a: list[str], b: list[str], tasks: list[str], n_boot: int, seed: int):
    """Change in the mean error over ``tasks`` (error = 1 - acc), from b relative to a."""
    parts = [compare(items, a, b, t, n_boot, seed) for t in tasks]
    point = -float(np.mean([p for p, _, _ in parts]))
    return point, -np.mean([d for _, d, _ in parts], axis=0), sum(n for _, _, n in parts)


def verdict(cell: dict[str, Any], sign: int) -> str:
    """'holds' if the CI is entirely on the ``sign`` side of zero, 'does not hold' if entirely on the other."""
    lo, hi = cell["ci_low"] * sign, cell["ci_high"] * sign
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return "holds"
    if hi <= 0:
        return "does not hold"
    return "inconclusive"


def analyze(results: dict[str, dict], conditions: list, search: dict, dose: list[dict], cfg) -> dict[str, Any]:
    """Deltas to baseline, wn_neg-vs-control tests, verdicts and dose-response summary."""
    items = {name: res["items"] for name, res in results.items()}
    groups = {c.name: [c.name] for c in conditions if not c.name.startswith("random_neg_s")}
    groups["random_neg"] = [c.name for c in conditions if c.name.startswith("random_neg_s")]
    order = ["baseline", "wn_neg", "random_neg", "ppl_matched_neg", "wn_pos", "wn_zero", "wn_identity_pos", "wn_abs_neg"]
    order = [g for g in order if groups.get(g)]
    nb, sd = cfg.n_boot, cfg.seed
    value, delta = {}, {}
    for g in order:
        tasks = [t for t in items[groups[g][0]]]
        value[g] = {}
        for t in tasks:
            column, stat = _stat(t)
            per = [stat(items[c][t][column].to_numpy(dtype=float)) for c in groups[g]]
            value[g][t] = {"value": float(np.mean(per)), "n": len(items[groups[g][0]][t]),
                           **({"per_seed": per, "sd": float(np.std(per, ddof=1))} if len(per) > 1 else {})}
            if g != "baseline":
                delta.setdefault(g, {})[t] = _cell(*compare(items, ["baseline"], groups[g], t, nb, sd)[:2], value[g][t]["n"])
        ng = [t for t in NONGRAM if t in tasks]
        if ng:
            errs = [1 - value[g][t]["value"] for t in ng]
            value[g]["nongrammatical_mean_error"] = {"value": float(np.mean(errs)), "n": sum(value[g][t]["n"] for t in ng)}
            if g != "baseline":
                p, d, n = _mean_error(items, ["baseline"], groups[g], ng, nb, sd)
                delta[g]["nongrammatical_mean_error"] = _cell(p, d, n)
    tests = {}
    for control in ("random_neg", "ppl_matched_neg"):
        if not groups.get(control):
            continue
        rows = []
        for t in [t for t in items["wn_neg"] if t != "perplexity" and t in items[groups[control][0]]]:
            for c in groups[control]:
                a, b = _aligned(items["wn_neg"][t], items[c][t], "correct")
                m = mcnemar_exact(a.astype(bool), b.astype(bool))
                rows.append({"task": t, "control": c, "wn_right_only": m.b, "control_right_only": m.c, "p": m.pvalue, "n": len(a)})
        if rows:
            for c in groups[control]:
                sel = [r for r in rows if r["control"] == c]
                for r, adj in zip(sel, holm([r["p"] for r in sel])):
                    r["p_holm"] = float(adj)
        diffs = {t: _cell(*compare(items, groups[control], ["wn_neg"], t, nb, sd)[:2], len(items["wn_neg"][t]))
                 for t in items["wn_neg"] if t in items[groups[control][0]]}
        tests[control] = {"mcnemar": rows, "wn_minus_control": diffs}
    claims = _claims(delta, tests, items, groups, nb, sd)
    return {"format": "negdiff.ablation/1", "order": order, "groups": groups, "value": value, "delta": delta,
            "tests": tests, "claims": claims, "ppl_matched": {k: v for k, v in search.items() if k != "neurons"},
            "dose": {"rows": dose, "ppl_doubles_at": _doubling(dose)},
            "set_sizes": {c.name: c.neurons.size for c in conditions}}


def _claims(delta, tests, items, groups, nb: int, sd: int) -> list[dict[str, Any]]:
    """The paper's claims, each with the cell that decides it and the verdict that cell implies."""
    out = []

    def add(claim: str, cell: dict | None, sign: int, rule: str) -> None:
        out.append({"claim": claim, "verdict": verdict(cell, sign) if cell else "not run", "evidence": cell, "rule": rule})

    add("zeroing the WN's negative pre-activations raises perplexity", delta.get("wn_neg", {}).get("perplexity"), +1,
        "CI of ppl(wn_neg) - ppl(baseline) above 0")
    for control in ("random_neg", "ppl_matched_neg"):
        for task in ("blimp", "tse"):
            cell = tests.get(control, {}).get("wn_minus_control", {}).get(task)
            add(f"wn_neg hurts {task.upper()} more than {control}", cell, -1, f"CI of acc(wn_neg) - acc({control}) below 0")
    ng = [t for t in NONGRAM if t in items.get("wn_neg", {}) and t in items.get("ppl_matched_neg", {})]
    cell = None
    if ng:
        p, d, n = _mean_error(items, ["wn_neg"], ["ppl_matched_neg"], ng, nb, sd)
        cell = _cell(p, d, n)
    add("ppl_matched_neg hurts the non-grammatical suite more than wn_neg (double dissociation)", cell, +1,
        "CI of mean error(ppl_matched_neg) - mean error(wn_neg) above 0")
    for task in ("blimp", "tse"):
        c = None
        if "wn_abs_neg" in items and "wn_identity_pos" in items and task in items["wn_abs_neg"]:
            c = _cell(*compare(items, ["wn_identity_pos"], ["wn_abs_neg"], task, nb, sd)[:2], len(items["wn_abs_neg"][task]))
        add(f"the sign matters more than the magnitude ({task.upper()}: flipping negative outputs hurts more than "
            "making positive inputs linear)", c, -1, "CI of acc(wn_abs_neg) - acc(wn_identity_pos) below 0")
    return out


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


def _fmt(v: dict | None, d: dict | None, pct: bool) -> str:
    if v is None:
        return "-"
    scale = 100 if pct else 1
    text = f"{scale * v['value']:.1f}" if pct else f"{v['value']:.2f}"
    if "sd" in v:
        text += f" ± {scale * v['sd']:.1f}" if pct else f" ± {v['sd']:.2f}"
    if d is not None:
        text += f" ({scale * d['diff']:+.1f} [{scale * d['ci_low']:+.1f}, {scale * d['ci_high']:+.1f}])" if pct else \
            f" ({d['diff']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}])"
    return text


def table_markdown(record: dict[str, Any]) -> str:
    """The paper-style table: conditions x (perplexity, BLiMP, TSE, mean non-grammatical error, each task)."""
    cols = ["perplexity", "blimp", "tse", "nongrammatical_mean_error", *NONGRAM]
    cols = [c for c in cols if any(c in record["value"][g] for g in record["order"])]
    names = {"perplexity": "PPL", "blimp": "BLiMP acc %", "tse": "TSE acc %", "nongrammatical_mean_error": "non-gram. mean err %"}
    head = "| condition | n neurons | " + " | ".join(names.get(c, c + " acc %") for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for g in record["order"]:
        size = record["set_sizes"].get(g) or record["set_sizes"].get(record["groups"][g][0], 0)
        label = g if g != "ppl_matched_neg" else f"ppl_matched_neg (m = {100 * record['ppl_matched']['m']:.1f}%)"
        cells = [_fmt(record["value"][g].get(c), record["delta"].get(g, {}).get(c), c != "perplexity") for c in cols]
        lines.append(f"| {label} | {size} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: value (difference to baseline [95% paired bootstrap CI]); random_neg: mean ± sd over seeds.")
    return "\n".join(lines)


def table_lines(record: dict[str, Any]) -> list[str]:
    """The table and the verdicts, for the terminal."""
    out = [table_markdown(record), "", "Claims of the paper, on this model:"]
    for c in record["claims"]:
        e = c["evidence"]
        ci = f" (diff {e['diff']:+.4f}, 95% CI [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}], n={e['n']})" if e else ""
        out.append(f"- {c['verdict'].upper()}: {c['claim']}{ci}")
    dd = record["dose"]["ppl_doubles_at"]
    if record["dose"]["rows"]:
        out.append(f"Dose response: perplexity doubles at p = {100 * dd:.2f}% per layer" if dd else
                   "Dose response: perplexity does not double within the sweep")
    return out


def write_outputs(record: dict[str, Any], results: dict[str, dict], out: Path) -> None:
    """ablation.json, table.md and the figures (per-item tables were written per condition)."""
    from negdiff.figures import ablation_figures

    record["figures"] = [str(p.relative_to(out)) for p in ablation_figures(record, results, out)]
    write_json(out / "ablation.json", record)
    from negdiff.results import atomic_write_bytes

    atomic_write_bytes(out / "table.md", ("\n".join(table_lines(record)) + "\n").encode())
