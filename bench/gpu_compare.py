"""Compare one side of the GPU check (bench/gpu_check.py) with the CPU fp32 reference, and print the table.

A *side* is a dict: ``scan`` (per-neuron ``wd``, ``md``, ``layer``, ``is_wn`` arrays and the held-out
perplexity ``check``), ``ablate`` / ``eval`` (``readouts``: name -> item-id hash and per-item columns;
the ablation's perplexity-matched m, set hashes and claim verdicts) and ``timing``.

fp32 sides are gated: every check below must hold or the comparison fails. The limits (class
:class:`Tolerances`) come from a measured floor: the embedded model run in float64 on the CPU differs from
its fp32 run by max |dWD| 2.5e-5 (median 9e-8), max |d log-prob| 6.5e-5 per BLiMP/TSE sentence (median
1.3e-5), max |d NLL| 3.7e-8 per 2048-token window and 6.5e-8 relative held-out perplexity
(``gpu_check.py --model default --device cpu --dtype float64 --phases scan,eval --sizes
'{"scan": {"tokens": 4096, "md_pairs": 1024, "check_windows": 1}, "eval": {"limit": 2, "max_tokens": 4096}}'``).
Two fp32 implementations (CPU, GPU: other reduction orders and kernels) each carry about that much
rounding, so the per-neuron and per-item limits are 12-15x the floor. Window NLL and perplexity average
thousands of tokens, so their floor is tiny; their limit (1e-5) is instead the per-token log-prob floor,
which a systematic per-token offset would have to exceed. Running bf16 instead moved them by 7.8e-4
(WD), 1.2e-2 (log-prob) and 6e-4 (window NLL) even on the 2-layer smoke model: over every limit. WN-set and accuracy
differences are allowed only at near-ties: a neuron may change sides only if its reference WD lies within
``wd_tie`` of its layer's cut, an item may flip only if its reference margin lies within ``flip_margin``
of 0. bf16 sides are reported, not gated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """fp32 agreement limits (see the module docstring for why these values)."""

    wd_abs: float = 3e-4  # max |dWD| over all neurons (WD values: ~0.01-1); floor 2.5e-5
    wd_tie: float = 6e-4  # a WN-set difference must lie this close to its layer's cut
    lp_abs: float = 1e-3  # max |d log-prob| of a scored sentence / continuation; floor 6.5e-5
    nll_abs: float = 1e-5  # max |d mean NLL| of a perplexity window (nats per token)
    ppl_rel: float = 1e-5  # max relative perplexity difference (held-out check, read-outs)
    flip_margin: float = 2e-3  # an accuracy flip needs a reference margin |lp_good - rival| below this

    def scaled(self, k: float) -> Tolerances:
        return Tolerances(**{f.name: getattr(self, f.name) * k for f in dataclasses.fields(self)})


def _check(checks: list[dict], name: str, value: float, limit: float) -> None:
    checks.append({"check": name, "value": float(value), "limit": float(limit), "pass": bool(value <= limit)})


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.abs(np.where(both_nan, 0.0, a - b))
    return float(np.nan_to_num(d, nan=np.inf).max()) if len(d) else 0.0


def wn_cut(wd: np.ndarray, layer: np.ndarray, is_wn: np.ndarray) -> np.ndarray:
    """Per neuron: its layer's cut between the WN and the rest (midpoint of the lowest WN and highest other WD)."""
    cut = np.full(len(wd), np.nan)
    for lay in np.unique(layer):
        rows = layer == lay
        inside, outside = wd[rows & is_wn], wd[rows & ~is_wn]
        if len(inside) and len(outside):
            cut[rows] = (inside.min() + outside.max()) / 2
    return cut


def compare_scan(ref: dict, side: dict, tol: Tolerances, checks: list[dict]) -> dict[str, Any]:
    """WD and MD of every neuron, the WN set (near-ties allowed), the held-out perplexities."""
    a, b = ref["wd"], side["wd"]
    d = np.abs(a - b)
    _check(checks, "scan: max |dWD|", _maxabs(a, b), tol.wd_abs)
    differ = ref["is_wn"] != side["is_wn"]
    far = differ & ~(np.abs(a - wn_cut(a, ref["layer"], ref["is_wn"])) <= tol.wd_tie)
    _check(checks, "scan: WN-set differences away from a near-tie", int(far.sum()), 0)
    union = (ref["is_wn"] | side["is_wn"]).sum()
    rel = []
    for key in ("baseline", "wn_neg", "random_neg"):
        if key in ref["check"] and key in side["check"]:
            rel.append(abs(side["check"][key] / ref["check"][key] - 1))
    if rel:
        _check(checks, "scan: held-out perplexity, max relative diff", max(rel), tol.ppl_rel)
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return {"wd_max_abs": float(d.max()), "wd_median_abs": float(np.median(d)), "wd_pearson": _corr(a, b),
            "wd_spearman": _corr(ra.astype(float), rb.astype(float)),
            "wn_jaccard": float((ref["is_wn"] & side["is_wn"]).sum() / max(union, 1)),
            "wn_n_ref": int(ref["is_wn"].sum()), "wn_differ": int(differ.sum()), "wn_differ_far": int(far.sum()),
            "md_pearson": _corr(ref["md"], side["md"]),
            "check_ppl": {k: [ref["check"].get(k), side["check"].get(k)] for k in ("baseline", "wn_neg", "random_neg")}}


def metric_of(cols: dict[str, np.ndarray]) -> tuple[str, float]:
    """A read-out's headline: perplexity from per-window NLL, else accuracy from ``correct``."""
    if "nll" in cols:
        return "ppl", float(math.exp(np.mean(cols["nll"])))
    if "correct" in cols:
        return "acc", float(np.mean(cols["correct"]))
    return "n/a", float("nan")


def margin_of(cols: dict[str, np.ndarray]) -> np.ndarray | None:
    """lp_good minus the rival a minimal pair is judged against (lp_bad_2 where present, as TSE does)."""
    if "lp_good" not in cols or "lp_bad" not in cols:
        return None
    rival = cols["lp_bad"]
    if "lp_bad_2" in cols:
        rival = np.where(np.isnan(cols["lp_bad_2"]), rival, cols["lp_bad_2"])
    return cols["lp_good"] - rival


def compare_readout(r: dict, s: dict, tol: Tolerances) -> dict[str, Any]:
    """One read-out's items: log-prob and NLL differences, the headline's change, and its flips."""
    if r["ids"] != s["ids"]:
        return {"same_items": False}
    rc, sc = r["cols"], s["cols"]
    lp_cols = [c for c in rc if c in sc and c != "nll" and not c.startswith("correct") and rc[c].dtype.kind == "f"]
    name, ref_value = metric_of(rc)
    _, side_value = metric_of(sc)
    out: dict[str, Any] = {"same_items": True, "metric": name, "ref": ref_value, "side": side_value,
                           "lp_max_abs": max((_maxabs(rc[c], sc[c]) for c in lp_cols), default=0.0),
                           "nll_max_abs": _maxabs(rc["nll"], sc["nll"]) if "nll" in rc else 0.0}
    out["delta"] = side_value - ref_value if name == "acc" else side_value / ref_value - 1
    if "correct" in rc:
        flips = rc["correct"] != sc["correct"]
        margin = margin_of(rc)
        far = flips if margin is None else flips & (np.abs(margin) > tol.flip_margin)
        out.update(flips=int(flips.sum()), flips_far=int(far.sum()))
    return out


def compare(ref: dict, side: dict, tol: Tolerances, gate: bool) -> dict[str, Any]:
    """Everything side and ref share; with ``gate`` the fp32 checks decide ``pass``."""
    checks: list[dict] = []
    out: dict[str, Any] = {"side": side["label"], "ref": ref["label"], "gate": gate}
    if "scan" in ref and "scan" in side:
        out["scan"] = compare_scan(ref["scan"], side["scan"], tol, checks)
    refs = {k: v for p in ("ablate", "eval") for k, v in ref.get(p, {}).get("readouts", {}).items()}
    sides = {k: v for p in ("ablate", "eval") for k, v in side.get(p, {}).get("readouts", {}).items()}
    ra, sa = ref.get("ablate", {}), side.get("ablate", {})
    moved = {k for k in ra.get("sets", {}) if ra["sets"][k] != sa.get("sets", {}).get(k)} if sa else set()
    rows = {}
    for name in sorted(set(refs) | set(sides)):
        if name not in refs or name not in sides:
            rows[name] = {"missing": "ref" if name not in refs else "side"}
            continue
        rows[name] = compare_readout(refs[name], sides[name], tol)
        if name.split("/")[2:3] and name.split("/")[2] in moved:
            rows[name]["set_differs"] = True
    out["readouts"] = rows
    _check(checks, "read-outs missing on one side or with other items",
           sum("missing" in r or not r.get("same_items", True) for r in rows.values()), 0)
    exact = [r for r in rows.values() if r.get("same_items") and not r.get("set_differs")]
    if exact:
        _check(checks, "read-outs: max |d log-prob| per item", max(r["lp_max_abs"] for r in exact), tol.lp_abs)
        _check(checks, "read-outs: max |d NLL| per window", max(r["nll_max_abs"] for r in exact), tol.nll_abs)
        ppl = [abs(r["delta"]) for r in exact if r["metric"] == "ppl"]
        if ppl:
            _check(checks, "read-outs: max relative perplexity diff", max(ppl), tol.ppl_rel)
        _check(checks, "read-outs: accuracy flips away from a near-tie", sum(r.get("flips_far", 0) for r in exact), 0)
        out["flips"] = sum(r.get("flips", 0) for r in exact)
        out["acc_max_abs_delta"] = max((abs(r["delta"]) for r in exact if r["metric"] == "acc"), default=0.0)
        lp = [(refs[n]["cols"][c], sides[n]["cols"][c]) for n, r in rows.items() if r in exact
              for c in refs[n]["cols"] if c.startswith("lp_") and c in sides[n]["cols"]]
        if lp:
            a, b = np.concatenate([x for x, _ in lp]), np.concatenate([y for _, y in lp])
            out["lp_pearson"], out["lp_median_abs"] = _corr(a, b), float(np.nanmedian(np.abs(a - b)))
    if ra and sa:
        claims = ra.get("claims", {})
        out["ablate"] = {"ppl_matched_m": [ra.get("ppl_matched_m"), sa.get("ppl_matched_m")],
                         "sets_differ": sorted(moved),
                         "claims_agree": sum(claims[k] == sa.get("claims", {}).get(k) for k in claims),
                         "claims": len(claims),
                         "verdicts": {k: [claims[k], sa.get("claims", {}).get(k)] for k in claims}}
    out["checks"] = checks
    out["pass"] = all(c["pass"] for c in checks)
    return out


# ------------------------------------------------------------------------------------------------ table
def _readout_matrix(comp: dict) -> list[str]:
    """Rows: conditions (and eval); columns: tasks; cells: acc change in points or perplexity change in %."""
    cells: dict[str, dict[str, str]] = {}
    tasks: list[str] = []
    for name, r in comp["readouts"].items():
        parts = name.split("/")
        row, task = ("eval", parts[1]) if parts[0] == "eval" else (("dose:" if parts[1] == "dose" else "") + parts[2], parts[3])
        if task not in tasks:
            tasks.append(task)
        if "missing" in r or not r.get("same_items"):
            cell = "missing" if "missing" in r else "items!"
        elif r["metric"] == "acc":
            cell = f"{100 * r['delta']:+.2f}pp f{r.get('flips', 0)}"
        else:
            cell = f"{100 * r['delta']:+.4f}%"
        cells.setdefault(row, {})[task] = cell + ("*" if r.get("set_differs") else "")
    lines = ["    " + f"{'condition':<22}" + "".join(f"{t:>18}" for t in tasks)]
    for row, vals in cells.items():
        lines.append("    " + f"{row:<22}" + "".join(f"{vals.get(t, ''):>18}" for t in tasks))
    lines.append("    (acc: change in points, fN = N items flipped; ppl: relative change; * = the side's set differs)")
    return lines


def table_lines(sides: list[dict], comparisons: list[dict]) -> list[str]:
    """Tokens/s per phase and side, then each comparison: gated checks (fp32) or reported differences."""
    lines = [f"{'side':<18}{'phase':<8}{'seconds':>9}{'tokens':>12}{'tok/s':>10}"]
    for s in sides:
        for phase, t in s["timing"].items():
            lines.append(f"{s['label']:<18}{phase:<8}{t['seconds']:>9.1f}{t['tokens']:>12,}{t['tokens_per_s']:>10,.0f}")
    for c in comparisons:
        verdict = ("PASS" if c["pass"] else "FAIL") if c["gate"] else "reported (bf16: not gated)"
        lines += ["", f"{c['side']} vs {c['ref']}: {verdict}"]
        for k in c["checks"]:
            ok = "ok" if k["pass"] else ("FAIL" if c["gate"] else "over")
            lines.append(f"  {k['check']:<52}{k['value']:>11.3g} <= {k['limit']:<9.3g}{ok}")
        if "scan" in c:
            s = c["scan"]
            lines.append(f"  WD pearson {s['wd_pearson']:.6f} spearman {s['wd_spearman']:.6f} median |d| "
                         f"{s['wd_median_abs']:.2g}; WN Jaccard {s['wn_jaccard']:.3f} ({s['wn_differ']} of "
                         f"{s['wn_n_ref']} differ, {s['wn_differ_far']} away from a tie); MD pearson {s['md_pearson']:.4f}")
        if "lp_pearson" in c:
            lines.append(f"  log-probs pearson {c['lp_pearson']:.8f}, median |d| {c['lp_median_abs']:.2g}; "
                         f"{c['flips']} accuracy flips, max |d acc| {100 * c['acc_max_abs_delta']:.2f} points")
        if "ablate" in c:
            a = c["ablate"]
            lines.append(f"  ablation: ppl-matched m {a['ppl_matched_m'][0]} vs {a['ppl_matched_m'][1]}; sets differ: "
                         f"{', '.join(a['sets_differ']) or 'none'}; verdicts agree {a['claims_agree']}/{a['claims']}")
            lines += [f"    {k}: {v[0]} vs {v[1]}" for k, v in a["verdicts"].items() if v[0] != v[1]]
        lines += _readout_matrix(c)
    return lines
