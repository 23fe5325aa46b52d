"""One decision rule for a family of directional claims: Holm on one-sided p-values, equivalence, power.

Why a rule and not a CI glance: the paper makes several claims per model, each tested at 95% would
let one in three false "holds" through on a family of 8. negdiff fixes the family in advance (every
claim of the ablation, including those that could not be run: they enter with p = 1, so the family
size never shrinks after the fact), adjusts the claimed-direction one-sided p-values with Holm's
step-down procedure, and reads each claim into exactly one of these states:

* ``holds``: Holm-adjusted one-sided p <= alpha in the claimed direction;
* ``opposite``: the opposite-direction one-sided p, Bonferroni-adjusted over the family, <= alpha;
* ``does not hold``: the unadjusted 90% CI lies inside the declared equivalence margin (two one-sided
  tests at 5%: the effect is shown to be too small to matter);
* ``inconclusive``: none of these; the record then says what the 95% CI rules out on the claimed side and
  the minimum detectable effect at 80% power for this n at the claim's level (alpha / family size);
* ``borderline``: a bootstrap-based decision whose adjusted p lies within 2 Monte-Carlo standard errors
  of alpha (another bootstrap seed could flip it);
* ``control not matched``: the claim compares against the perplexity-matched control and that control is
  not matched on the reported windows (or its search failed);
* ``n too small``: fewer than 10 resampling units; no interval, no verdict.

A claim may be an intersection of halves (the double dissociation): it holds only when every half does,
its p-value is the largest of the halves' (intersection-union test: no further adjustment needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _stats

from negdiff.bootstrap import Interval

STATES = ("holds", "opposite", "does not hold", "inconclusive", "borderline", "control not matched", "n too small",
          "not run")
ALPHA = 0.05
POWER = 0.8


@dataclass
class Claim:
    """A directional claim: ``sign`` +1 says the deciding estimate is > 0, -1 that it is < 0."""

    id: str
    text: str
    sign: int
    readout: str
    interval: Interval | None = None
    margin: float | None = None
    unit: str = ""
    also: dict[str, Interval] = field(default_factory=dict)  # the other read-outs, reported beside
    gate: str | None = None  # why the claim cannot be decided (e.g. control not matched)
    halves: list[Claim] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _p_claimed(c: Claim) -> tuple[float | None, float]:
    """(one-sided p in the claimed direction, its Monte-Carlo SE)."""
    if c.halves:
        ps = [_p_claimed(h) for h in c.halves]
        if any(p is None for p, _ in ps):
            return None, 0.0
        worst = max(range(len(ps)), key=lambda i: ps[i][0])
        return ps[worst]
    iv = c.interval
    if iv is None or iv.too_small:
        return None, 0.0
    return (iv.p_greater if c.sign > 0 else iv.p_less), iv.mcse


def _p_opposite(c: Claim) -> float | None:
    if c.halves:
        ps = [_p_opposite(h) for h in c.halves]
        return None if any(p is None for p in ps) else max(ps)  # opposite only when every half is reversed
    iv = c.interval
    if iv is None or iv.too_small:
        return None
    return iv.p_less if c.sign > 0 else iv.p_greater


def _equivalent(c: Claim, ci: str = "ci90") -> bool:
    """TOST at 5%: the 90% CI inside +-margin. For an intersection claim, one half shown negligible suffices,
    so each half is tested at 2.5% (its 95% CI inside the margin; Bonferroni over the two halves)."""
    if c.halves:
        return any(_equivalent(h, "ci") for h in c.halves)
    iv = c.interval
    bounds = getattr(iv, ci, None) if iv is not None else None
    if iv is None or iv.too_small or c.margin is None or bounds is None:
        return False
    return -c.margin < bounds[0] and bounds[1] < c.margin


def mde(iv: Interval, level: float, power: float = POWER) -> float | None:
    """Smallest true effect a one-sided test at ``level`` detects with probability ``power`` at this SE."""
    if iv is None or iv.se is None or iv.too_small:
        return None
    if iv.df is not None:
        q = _stats.t.ppf(1 - level, iv.df) + _stats.t.ppf(power, iv.df)
    else:
        q = _stats.norm.ppf(1 - level) + _stats.norm.ppf(power)
    return float(q * iv.se)


def _ruled_out(c: Claim) -> str | None:
    iv = c.interval
    if iv is None or iv.ci is None:
        return None
    bound = iv.ci[1] if c.sign > 0 else iv.ci[0]
    if bound * c.sign <= 0:
        return f"any effect in the claimed direction (95% CI bound {bound:+.4g} {c.unit})".rstrip()
    side = "above" if c.sign > 0 else "below"
    return f"effects {side} {bound:+.4g} {c.unit} (95% CI bound on the claimed side)".rstrip()


def _holm_path(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm-adjusted p-values, each step's multiplier, and which claim's step sets each adjusted value (the
    running maximum can carry an earlier claim's p, and with it that claim's Monte-Carlo error)."""
    m = p.size
    order = np.argsort(p, kind="stable")
    steps = (m - np.arange(m)) * p[order]
    adj, src = np.empty(m), np.empty(m, dtype=int)
    best, who = -np.inf, -1
    for rank, i in enumerate(order):
        if steps[rank] > best:
            best, who = steps[rank], i
        adj[i], src[i] = min(best, 1.0), who
    mult = np.empty(m)
    mult[order] = m - np.arange(m)
    return adj, mult, src


def decide(claims: list[Claim], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Verdicts for a fixed family of claims (see the module docstring); one record per claim."""
    m = len(claims)
    raw = [_p_claimed(c) for c in claims]
    p = np.array([1.0 if (pv is None or c.gate) else pv for (pv, _), c in zip(raw, claims, strict=True)])
    adj, mult, src = _holm_path(p) if m else (np.array([]), np.array([]), np.array([], dtype=int))
    out = []
    for i, c in enumerate(claims):
        pv, _ = raw[i]
        j = int(src[i]) if m else i
        adj_mcse = raw[j][1] * mult[j] if m else 0.0  # the MC error of the step that sets this adjusted p
        p_opp = _p_opposite(c)
        opp_mcse = _opp_mcse(c) * m
        state = _state(c, pv, float(adj[i]), adj_mcse, p_opp, opp_mcse, m, alpha)
        rec: dict[str, Any] = {"id": c.id, "claim": c.text, "verdict": state, "readout": c.readout,
                               "direction": ("both halves" if c.halves else "> 0" if c.sign > 0 else "< 0"),
                               "unit": c.unit, "p_one_sided": pv,
                               "p_adjusted": None if pv is None or c.gate else float(adj[i]),
                               "p_opposite": p_opp, "alpha": alpha, "family_size": m, "margin": c.margin,
                               "adjustment": "Holm over the family (one-sided, claimed direction); opposite: "
                                             "Bonferroni over the family"}
        if c.interval is not None:
            iv = c.interval
            rec.update(estimate=iv.estimate, ci=list(iv.ci) if iv.ci else None, ci_note="95%, unadjusted",
                       ci90=list(iv.ci90) if iv.ci90 else None, n=iv.n, units=iv.units, method=iv.method,
                       mde=mde(iv, alpha / m), mde_level=alpha / m, n_boot=iv.n_boot, interval=iv.to_dict())
            rec["ruled_out"] = _ruled_out(c) if state in ("inconclusive", "borderline") else None
            if state == "holds" and c.margin is not None and iv.ci is not None and abs(iv.estimate) < c.margin:
                rec["note"] = "holds, but the estimate is inside the declared equivalence margin (small effect)"
        if c.halves:
            rec["halves"] = decide_halves(c.halves, alpha / m)
            rec["rule"] = ("intersection-union: holds only if every half holds, p = max over halves; opposite only "
                           "if every half is reversed; does not hold if one half's 95% CI lies inside its margin")
            if state in ("inconclusive", "borderline"):
                rec["ruled_out"] = "; ".join(f"{h['id']}: {h['ruled_out']}" for h in rec["halves"] if h.get("ruled_out"))
        if c.also:
            rec["also"] = {k: v.to_dict() for k, v in c.also.items()}
            rec["readouts_disagree_in_sign"] = any(
                c.interval is not None and np.sign(v.estimate) != np.sign(c.interval.estimate) and v.estimate != 0
                for v in c.also.values())
        if c.gate:
            rec["gate"] = c.gate
        rec.update(c.extra)
        out.append(rec)
    return out


def _opp_mcse(c: Claim) -> float:
    if c.halves:
        return max((_opp_mcse(h) for h in c.halves), default=0.0)
    return c.interval.mcse if c.interval is not None else 0.0


def decide_halves(halves: list[Claim], level: float) -> list[dict[str, Any]]:
    """Each half of an intersection claim, shown with its own estimate, CI and one-sided p."""
    recs = []
    for h in halves:
        pv, _ = _p_claimed(h)
        iv = h.interval
        recs.append({"id": h.id, "claim": h.text, "readout": h.readout, "p_one_sided": pv, "unit": h.unit,
                     "estimate": iv.estimate if iv else None, "ci": list(iv.ci) if iv and iv.ci else None,
                     "ci_note": "95%, unadjusted", "n": iv.n if iv else None, "mde": mde(iv, level) if iv else None,
                     "ruled_out": _ruled_out(h), "interval": iv.to_dict() if iv else None})
    return recs


def _state(c: Claim, p: float | None, p_adj: float, adj_mcse: float, p_opp: float | None, opp_mcse: float,
           m: int, alpha: float) -> str:
    if (c.interval is None and not c.halves) or any(h.interval is None for h in c.halves):
        return "not run"
    if c.gate:
        return "control not matched"
    if p is None:
        return "n too small"
    if adj_mcse > 0 and abs(p_adj - alpha) <= 2 * adj_mcse:
        return "borderline"
    if p_adj <= alpha:
        return "holds"
    if p_opp is not None:
        if opp_mcse > 0 and abs(min(1.0, p_opp * m) - alpha) <= 2 * opp_mcse:
            return "borderline"
        if min(1.0, p_opp * m) <= alpha:
            return "opposite"
    if _equivalent(c):
        return "does not hold"
    return "inconclusive"


def claim_lines(claims: list[dict[str, Any]]) -> list[str]:
    """One line per claim: verdict, deciding estimate with unadjusted CI, adjusted p, MDE, the other read-out."""
    out = []
    for c in claims:
        line = f"- {c['verdict'].upper()}: {c['claim']}"
        if c.get("estimate") is not None and c.get("ci"):
            line += (f" [{c['readout']}: {c['estimate']:+.4g} {c['unit']}, 95% CI (unadjusted) "
                     f"[{c['ci'][0]:+.4g}, {c['ci'][1]:+.4g}], n = {c['n']} {c['units']}")
            if c.get("p_adjusted") is not None:
                line += f", Holm p = {c['p_adjusted']:.3g}"
            if c.get("mde") is not None:
                line += f", MDE(80%) = {c['mde']:.3g}"
            line += "]"
        elif c.get("estimate") is not None:
            line += f" [{c['readout']}: {c['estimate']:+.4g} {c['unit']}, n = {c['n']} {c['units']}: n too small]"
        for h in c.get("halves", []):
            if h.get("ci"):
                line += (f"; {h['id']} ({h['readout']}): {h['estimate']:+.4g} {h['unit']}, 95% CI (unadjusted) "
                         f"[{h['ci'][0]:+.4g}, {h['ci'][1]:+.4g}], one-sided p = {h['p_one_sided']:.3g}, "
                         f"MDE(80%) = {h['mde']:.3g}")
        if c.get("p_adjusted") is not None and c.get("halves"):
            line += f"; Holm p = {c['p_adjusted']:.3g}"
        for name, a in (c.get("also") or {}).items():
            if a.get("ci"):
                line += (f"; {name}: {100 * a['estimate']:+.1f} pts, 95% CI (unadjusted) "
                         f"[{100 * a['ci'][0]:+.1f}, {100 * a['ci'][1]:+.1f}]")
        if c.get("readouts_disagree_in_sign"):
            line += " (read-outs disagree in sign)"
        if c.get("ruled_out"):
            line += f"; rules out {c['ruled_out']}"
        if c.get("gate"):
            line += f"; {c['gate']}"
        if c.get("note"):
            line += f"; {c['note']}"
        out.append(line)
    return out
