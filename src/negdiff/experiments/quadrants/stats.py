"""Statistics, verdicts and the table of the quadrant step, from per-item results only.

Every quadrant is run on the scan's WN and on K layer-matched random sets (the same K sets in every
quadrant). The question per quadrant is the ablation's: does zeroing that quadrant on the WN hurt more than
zeroing it on random neurons? Deciding read-outs and margins are the ablation's (docs/protocol.md): mean NLL
per window for perplexity, the BLiMP and TSE margins for syntax. The 4 quadrants x 3 read-outs form one
family of 12 directional claims, decided by :func:`negdiff.decide.decide` (Holm on one-sided p). Which
of the two negative-gate quadrants carries more of the WN's damage is reported beside, exploratory
(unadjusted, two-sided), because no direction was claimed in advance.
"""

from __future__ import annotations

from typing import Any

from negdiff.bootstrap import N_BOOT
from negdiff.contrasts import Contrasts, interval_cell, ppl_cell, readouts_of
from negdiff.decide import ALPHA, Claim, claim_lines, decide
from negdiff.gate_up import QUADRANTS

#: The declared protocol, written into quadrants.json; change only with a new version, never after a result.
PROTOCOL: dict[str, Any] = {
    "version": "2026-12-03",
    "alpha": ALPHA,
    "n_boot": N_BOOT,
    "family": "12 claims: for each of the 4 gate-by-up quadrants, zeroing it on the WN hurts more than zeroing it on "
              "the random sets (perplexity NLL, BLiMP margin, TSE margin); Holm on one-sided p-values",
    "deciding_readouts": {"perplexity": "mean NLL per window (nats)", "blimp": "margin lp_good - lp_bad (sum, nats)",
                          "tse": "margin lp_good - lp_rival (mean per token, nats)"},
    "equivalence_margins": {"nll": 0.01, "blimp_margin": 0.1, "tse_margin": 0.015},
}
MARGIN = PROTOCOL["equivalence_margins"]
#: the two quadrants that together are zero_negative (act(0) = 0)
NEGATIVE = ("gate_neg_up_pos", "gate_neg_up_neg")


def short(mode: str) -> str:
    """``zero_gate_neg_up_pos`` -> ``gate_neg_up_pos`` (condition names)."""
    return mode.removeprefix("zero_")


def words(q: str) -> str:
    """``gate_neg_up_pos`` -> ``gate < 0, up > 0``."""
    g, u = q.split("_up_")
    return f"gate {'<' if g.endswith('neg') else '>'} 0, up {'<' if u == 'neg' else '>'} 0"


def groups_of(names: list[str]) -> dict[str, list[str]]:
    """``random_<q>`` averages its K sets; every other condition is its own group."""
    groups: dict[str, list[str]] = {}
    for n in names:
        head = n.rsplit("_s", 1)[0] if n.startswith("random_") else n
        groups.setdefault(head, []).append(n)
    return groups


def build_claims(con: Contrasts, tasks: list[str]) -> list[Claim]:
    """The fixed family: per quadrant, WN minus random on the three deciding read-outs (missing ones enter as
    not run, so the family's size never depends on what ran)."""
    out = []
    for mode in QUADRANTS:
        q = short(mode)
        wn, rnd = f"wn_{q}", f"random_{q}"

        def iv(task: str, readout: str, wn: str = wn, rnd: str = rnd):
            return con.interval(task, readout, rnd, wn) if task in tasks else None

        out.append(Claim(f"{q}_ppl", f"zeroing {words(q)} on the WN raises perplexity more than on random neurons", +1,
                         f"perplexity: mean NLL per window, {wn} - {rnd}", iv("perplexity", "nll"), MARGIN["nll"], "nats"))
        for task in ("blimp", "tse"):
            acc = iv(task, "acc")
            out.append(Claim(f"{q}_{task}", f"zeroing {words(q)} on the WN hurts {task.upper()} more than on random "
                             "neurons", -1, f"{task}: margin change, {wn} - {rnd}", iv(task, "margin"),
                             MARGIN[f"{task}_margin"], "nats", also={"acc": acc} if acc is not None else {}))
    return out


def analyze(items: dict[str, dict], cfg: Any, tasks: list[str]) -> dict[str, Any]:
    """Values and deltas to baseline per group, the claim family and its verdicts, the negative-quadrant split."""
    groups = groups_of(list(items))
    con = Contrasts(items, groups, n_boot=cfg.n_boot, seed=cfg.seed, sampled={g for g in groups if g.startswith("random_")})
    base_ppl = con.value("baseline", "perplexity", "nll")["value"] if "perplexity" in tasks else None
    value: dict[str, dict] = {}
    delta: dict[str, dict] = {}
    for g in groups:
        value[g] = {}
        for t in tasks:
            for r in readouts_of(t, items["baseline"][t]):
                key = t if r in ("nll", "acc") else f"{t}:{r}"
                value[g][key] = con.value(g, t, r)
                if g != "baseline":
                    iv = con.interval(t, r, "baseline", g)
                    delta.setdefault(g, {})[key] = ppl_cell(iv, base_ppl) if t == "perplexity" else interval_cell(iv)
    split = {}
    a, b = (f"wn_{q}" for q in NEGATIVE)
    for t in tasks:
        readout = "nll" if t == "perplexity" else "margin"
        iv = con.interval(t, readout, b, a)
        split[t] = {"readout": readout, "contrast": f"{a} - {b}", **interval_cell(iv)}
    protocol = {**PROTOCOL, "n_boot": cfg.n_boot, "seed": cfg.seed}
    return {"protocol": protocol, "groups": groups, "value": value, "delta": delta,
            "claims": decide(build_claims(con, tasks), PROTOCOL["alpha"]),
            "negative_split": {"note": "exploratory, unadjusted 95% CI, two-sided: which gate < 0 quadrant's zeroing "
                                       "changes the read-out more on the WN (no direction was declared)", **split}}


def _cell_text(d: dict | None, scale: float, fmt: str) -> str:
    if not d:
        return "-"
    ci = f" [{d['ci_low'] * scale:{fmt}}, {d['ci_high'] * scale:{fmt}}]" if d.get("ci_low") is not None else " (n too small)"
    return f"{d['diff'] * scale:{fmt}}{ci}"


COLUMNS = (("perplexity", "Δ perplexity", 1, "+.3f"), ("blimp", "Δ BLiMP acc (pts)", 100, "+.1f"),
           ("blimp:margin", "Δ BLiMP margin (nats)", 1, "+.3f"), ("tse", "Δ TSE acc (pts)", 100, "+.1f"),
           ("tse:margin", "Δ TSE margin (nats/token)", 1, "+.4f"))


def _columns(record: dict[str, Any]) -> list[tuple]:
    """The table's columns that some condition has a delta for."""
    return [c for c in COLUMNS if any(c[0] in d for d in record["delta"].values())]


def table_rows(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Quadrant x (WN, random) rows of deltas to baseline [95% CI]: the table of the step."""
    cols = _columns(record)
    header = ["quadrant", "neurons", *(c[1] for c in cols)]
    rows = []
    for mode in QUADRANTS:
        q = short(mode)
        for g in (f"wn_{q}", f"random_{q}"):
            if g not in record["delta"]:
                continue
            label = f"{words(q)}: " + ("WN" if g.startswith("wn") else f"random ({len(record['groups'][g])} sets)")
            rows.append([label, str(record["set_sizes"].get(record["groups"][g][0], "")),
                         *(_cell_text(record["delta"][g].get(c[0]), c[2], c[3]) for c in cols)])
    return header, rows


def table_csv(record: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The table's numbers, one column each (diff, ci_low, ci_high in the unit its header names)."""
    cols = _columns(record)
    header = ["quadrant", "set", "n_sets", "n_neurons"] + [f"{c[1]} {k}" for c in cols for k in ("diff", "ci_low", "ci_high")]
    rows: list[list[Any]] = []
    for mode in QUADRANTS:
        q = short(mode)
        for g in (f"wn_{q}", f"random_{q}"):
            if g in record["delta"]:
                row: list[Any] = [q, g.split("_", 1)[0], len(record["groups"][g]), record["set_sizes"][record["groups"][g][0]]]
                for key, _, scale, _ in cols:
                    d = record["delta"][g].get(key) or {}
                    row += [None if d.get(k) is None else scale * d[k] for k in ("diff", "ci_low", "ci_high")]
                rows.append(row)
    return header, rows


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The table (Markdown), the verdicts and the exploratory split, for the terminal and the report."""
    header, rows = table_rows(record)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "Cells: change to baseline [95% CI, unadjusted]: perplexity from a t-interval on per-window NLL "
            "differences; items: stratified paired bootstrap; random rows average their sets and include the "
            "between-set variance.", "",
            f"Claims ({len(record['claims'])}, one family, Holm at alpha = {record['protocol']['alpha']}):",
            *claim_lines(record["claims"])]
    sp = record["negative_split"]
    for t in ("perplexity", "blimp", "tse"):
        if t in sp:
            c = sp[t]
            ci = f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]" if c.get("ci_low") is not None else "(n too small)"
            out.append(f"Exploratory: {t} {c['readout']} {c['contrast']}: {c['diff']:+.4g} {ci}, n = {c['n']} {c['units']}")
    return out
