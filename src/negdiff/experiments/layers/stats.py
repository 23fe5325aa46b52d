"""Statistics of ``negdiff layers``: deltas to baseline per read-out, additivity, and where damage concentrates.

Every delta is paired (the same items or windows under baseline and the condition) and comes from
:class:`negdiff.contrasts.Contrasts`, built once per read-out subset (overall, BLiMP linguistics term,
TSE group, TSE task) so that every condition of a subset shares its resampling:

* **Perplexity** is exp(mean window NLL), so the condition/baseline ratio is exp(mean per-window NLL
  difference) exactly; the interval is a t-interval on those differences (n - 1 df), shown as Δppl
  through :func:`negdiff.contrasts.ppl_cell`. A few long windows would make a percentile bootstrap
  under-cover, which is why ``LayersConfig.ppl_window`` exists: cheap runs reach 10 windows.
* **Items** (accuracy, and the BLiMP / TSE ``margin`` that accuracy thresholds at zero): a paired
  bootstrap stratified by paradigm / TSE task, one index set per replicate shared by every condition.
* Below :data:`negdiff.bootstrap.MIN_UNITS` windows or items a read-out gets its point estimate and
  "n too small", never an interval.

Additivity (all groups vs the sum of the single groups) reuses the same pairing: per window for
perplexity (interaction_i = (all_i - base_i) - sum_g (g_i - base_i), then a t-interval), and the
shared-index replicates of :meth:`Contrasts.parts` for items (sums and differences of replicates of
conditions resampled together). The "most degraded phenomena" ranking picks the largest of many
unadjusted deltas: it is exploratory and says how many read-outs it chose from.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pandas as pd

from negdiff.bootstrap import Interval, from_draws, mean_t
from negdiff.contrasts import Contrasts, ppl_cell, readouts_of

#: Per task: the item column that splits it into read-outs, and the name of that kind of read-out.
SPLITS = {"blimp": (("linguistics_term", "term"),), "tse": (("group", "group"), ("task", "task"))}
#: Read-out kinds that name a phenomenon (ranked, exploratorily, by :func:`most_degraded`).
PHENOMENA = ("term", "task")
#: The measure a headline line, the figures and the ranking use per task (the rest are in deltas.parquet).
PRIMARY = {"perplexity": "nll"}


def readouts(task: str, items: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, name, row mask)`` of every read-out of a task: overall, then its splits (BLiMP terms, TSE
    groups and tasks)."""
    out = [("overall", "overall", np.ones(len(items), dtype=bool))]
    for column, kind in SPLITS.get(task, ()):
        if column in items:
            out += [(kind, str(v), (items[column] == v).to_numpy()) for v in sorted(items[column].unique())]
    return out


def _subset_seed(seed: int, *parts: str) -> int:
    """Each subset resampled with its own stable seed: subsets are independent, reruns identical."""
    return int(seed) * 7_919 + zlib.crc32("/".join(parts).encode()) % 1_000_003


def _subset(items: dict[str, dict[str, pd.DataFrame]], conds: list[str], task: str, ids: pd.Series,
            n_boot: int, seed: int) -> Contrasts:
    """A Contrasts over the items ``ids`` of one task, every condition restricted to them."""
    keep = set(ids)
    sub = {c: {task: items[c][task][items[c][task]["item_id"].isin(keep)]} for c in conds}
    return Contrasts(sub, {}, n_boot=n_boot, seed=seed)


def _ci(iv: Interval) -> tuple[float, float]:
    return iv.ci if iv.ci is not None else (float("nan"), float("nan"))


def _row(con: Contrasts, task: str, measure: str, cond: str) -> dict[str, Any]:
    """One delta: the condition against baseline on one measure of one subset."""
    iv = con.interval(task, measure, "baseline", cond)
    base, value = con.value("baseline", task, measure)["value"], con.value(cond, task, measure)["value"]
    out: dict[str, Any] = {"measure": measure, "n": iv.n, "units": iv.units, "base": base, "value": value,
                           "too_small": iv.ci is None, "method": iv.method, "p_greater": iv.p_greater,
                           "p_less": iv.p_less, "df": iv.df}
    if task == "perplexity":  # Δppl, its CI transformed from the per-window Δ mean-NLL t-interval
        cell = ppl_cell(iv, base)
        lo, hi = _ci(iv)
        out.update(diff=cell["diff"], ci_low=cell.get("ci_low", float("nan")), ci_high=cell.get("ci_high", float("nan")),
                   diff_nll=iv.estimate, diff_nll_ci_low=lo, diff_nll_ci_high=hi)
    else:
        lo, hi = _ci(iv)
        out.update(diff=iv.estimate, ci_low=lo, ci_high=hi)
    return out


def _cell(iv: Interval) -> dict[str, Any]:
    lo, hi = iv.ci if iv.ci is not None else (None, None)
    return {"diff": iv.estimate, "ci_low": lo, "ci_high": hi, "n": iv.n, "units": iv.units,
            "too_small": iv.ci is None, "interval": iv.to_dict()}


def _additivity(con: Contrasts, task: str, measure: str, singles: list[str], everything: str,
                seed: int) -> dict[str, Any]:
    """Sum of single-group deltas, the all-groups delta and the interaction, paired per window or replicate."""
    parts = {c: con.parts(task, measure, "baseline", c) for c in [*singles, everything]}
    est = {c: p["estimate"] for c, p in parts.items()}
    s_point = float(sum(est[s] for s in singles))
    if task == "perplexity":
        ud = {c: p["unit_diffs"] for c, p in parts.items()}
        s_units = sum(ud[s] for s in singles)
        method = "paired t on per-window mean-NLL differences, n - 1 df"
        cells = {"sum_of_singles": mean_t(s_units, "windows", method), "all_groups": mean_t(ud[everything], "windows", method),
                 "interaction": mean_t(ud[everything] - s_units, "windows",
                                       "t on per-window interactions (all_i - base_i) - sum_g (g_i - base_i), n - 1 df")}
        units = "Δ mean NLL per window (nats; additive in log perplexity)"
    else:
        dr = {c: p["draws"] for c, p in parts.items()}
        s_draws = sum(dr[s] for s in singles)
        n = parts[everything]["n"]
        method = f"paired bootstrap, replicates shared by every condition ({con.n_boot} replicates)"
        cells = {"sum_of_singles": from_draws(s_point, s_draws, n, "items", method, seed),
                 "all_groups": from_draws(est[everything], dr[everything], n, "items", method, seed),
                 "interaction": from_draws(est[everything] - s_point, dr[everything] - s_draws, n, "items", method, seed)}
        units = "accuracy (fraction; x100 = points)" if measure.startswith("acc") else f"{measure} (nats)"
    single = pd.Series({s: est[s] for s in singles})
    big = str(single.abs().idxmax())
    return {"units": units, **{k: _cell(v) for k, v in cells.items()},
            "largest_single": {"condition": big, "diff": float(single[big])}}


def delta_table(items: dict[str, dict[str, pd.DataFrame]], conditions: list[str], n_boot: int, seed: int,
                singles: list[str] | None = None, everything: str | None = None
                ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """One row per (condition, task, read-out subset, measure): baseline and condition values, the paired
    delta and its 95% CI (NaN with ``too_small`` below 10 units); and, when ``singles`` and ``everything``
    are given and present, the additivity of every subset and measure (see the module docstring).

    Perplexity rows: ``diff``/``ci_*`` in perplexity (Δppl), ``diff_nll*`` the per-window NLL interval.
    """
    rows, adds = [], []
    base = items["baseline"]
    additive = bool(singles) and everything is not None and all(c in items for c in [*singles, everything])
    for task, frame in base.items():
        present = [c for c in conditions if task in items[c]]
        for kind, name, mask in readouts(task, frame):
            ids = frame["item_id"][mask]
            con = _subset(items, ["baseline", *present], task, ids, n_boot, _subset_seed(seed, task, kind, name))
            for measure in readouts_of(task, frame):
                for cond in present:
                    rows.append({"condition": cond, "task": task, "kind": kind, "readout": name,
                                 **_row(con, task, measure, cond)})
                if additive and all(c in present for c in [*singles, everything]):
                    adds.append({"task": task, "kind": kind, "readout": name, "measure": measure,
                                 "exploratory": kind != "overall",
                                 **_additivity(con, task, measure, singles, everything, seed)})
            del con  # its replicates ([n_boot, conditions, strata] per measure) are not kept
    return pd.DataFrame(rows), adds


def primary(task: str) -> str:
    """The measure a task's headline uses: mean NLL (shown as Δppl) for perplexity, else accuracy."""
    return PRIMARY.get(task, "acc")


def most_degraded(deltas: pd.DataFrame, condition: str, top: int = 5, measure: str = "acc") -> dict[str, Any]:
    """The phenomena (BLiMP terms, TSE tasks) whose ``measure`` falls most under ``condition`` (falls only).

    Exploratory: the largest of many unadjusted deltas is biased away from zero and its CI does not cover
    at 95% once it was chosen for being the largest; the record says how many read-outs it chose from.
    """
    everything = deltas[(deltas.condition == condition) & deltas.kind.isin(PHENOMENA) & (deltas.measure == measure)]
    pool = everything[~everything.too_small]  # a read-out under 10 items is never ranked: its delta is noise
    rows = pool[pool["diff"] < 0].sort_values("diff", kind="stable").head(top)
    shown = [{"task": r.task, "readout": r.readout, "diff": float(r["diff"]),
              "ci_low": None if r.too_small else float(r.ci_low), "ci_high": None if r.too_small else float(r.ci_high),
              "base": float(r.base), "n": int(r.n), "too_small": bool(r.too_small)} for _, r in rows.iterrows()]
    return {"condition": condition, "measure": measure, "comparisons": int(len(pool)), "shown": len(shown),
            "excluded_too_small": int(len(everything) - len(pool)),
            "note": f"exploratory: {len(shown)} of {len(pool)} read-outs with >= 10 items, unadjusted"
                    + (f" ({len(everything) - len(pool)} smaller read-outs not ranked)" if len(everything) > len(pool) else ""),
            "rows": shown}


def group_profile(deltas: pd.DataFrame, groups: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task and measure (``task`` for the primary one, ``task:measure`` otherwise): the single-group
    deltas in depth order; with the primary measure also each group's worst phenomenon (exploratory)."""
    out: dict[str, list] = {}
    over = deltas[deltas.kind == "overall"]
    for (task, measure), rows in over.groupby(["task", "measure"], sort=False):
        rows = rows.set_index("condition")
        key = task if measure == primary(task) else f"{task}:{measure}"
        out[key] = []
        for g in groups:
            if g["single"] not in rows.index:
                continue
            r = rows.loc[g["single"]]
            entry = {"group": g["label"], "diff": float(r["diff"]), "n": int(r.n), "too_small": bool(r.too_small),
                     "ci_low": None if r.too_small else float(r.ci_low), "ci_high": None if r.too_small else float(r.ci_high)}
            if key == task and task != "perplexity":
                worst = most_degraded(deltas[deltas.task == task], g["single"], 1, measure)
                entry["worst"] = {"note": worst["note"], **(worst["rows"] or [{}])[0]} if worst["rows"] else None
            out[key].append(entry)
    return out


# ---------------------------------------------------------------------------------------------- summary
def fmt(task: str, measure: str, r: Any) -> str:
    """Δ [95% CI] of a delta row or additivity cell; "too small" without a CI below 10 units.

    Accuracy in points, perplexity deltas (measure ``nll``) in perplexity, anything else (margins,
    the additivity of perplexity in nats) as is.
    """
    if measure.startswith("acc"):
        scale, f = 100, "+.1f"
    else:
        scale, f = 1, "+.2f" if (task, measure) == ("perplexity", "nll") else "+.3f"
    d, lo, hi = r["diff"], r["ci_low"], r["ci_high"]
    if lo is None or hi is None or bool(np.isnan(lo)):
        return f"{scale * d:{f}} (n = {int(r['n'])}: too small)"
    return f"{scale * d:{f}} [{scale * lo:{f}}, {scale * hi:{f}}]"


def summary_lines(record: dict[str, Any], deltas: pd.DataFrame) -> list[str]:
    """Baseline, one line per single group, the cumulative curves, additivity and the worst phenomena."""
    heads = [t for t in ("perplexity", "blimp", "tse") if t in set(deltas.task)] or sorted(set(deltas.task))
    over = deltas[deltas.kind == "overall"]
    first = over[over.measure.isin([primary(t) for t in heads])].drop_duplicates("task").set_index("task")
    lines = [f"{len(record['groups'])} layer groups, {record['group_rule']}: "
             + ", ".join(f"{g['label']}" for g in record["groups"]),
             "baseline: " + "; ".join(f"{t} {first.loc[t, 'base']:.2f}" if t == "perplexity" else
                                      f"{t} {100 * first.loc[t, 'base']:.1f}%" for t in heads if t in first.index),
             "deltas vs baseline: perplexity (t on per-window NLL differences, n - 1 df); accuracy in points and "
             "margin in nats (95% paired stratified bootstrap); 'too small' = under 10 units, no CI:"]

    def row(cond: str) -> str:
        r = over[over.condition == cond]
        cells = []
        for t in heads:
            for m in (primary(t), "margin") if t in ("blimp", "tse") else (primary(t),):
                hit = r[(r.task == t) & (r.measure == m)]
                if len(hit):
                    cells.append(f"{t}{'' if m == primary(t) else ' ' + m} {fmt(t, m, hit.iloc[0])}")
        return "; ".join(cells)

    if (record.get("perplexity_windows") or {}).get("note"):
        lines.append("note: " + record["perplexity_windows"]["note"])
    for g in record["groups"]:
        lines.append(f"  {'only ' + g['label']:<24} {row(g['single'])}")
    for direction in ("bottom", "top"):
        for k, cond in enumerate(record["cumulative"][direction], 1):
            if k > 1:
                lines.append(f"  {f'{direction} {k} groups ({cond})':<24} {row(cond)}")
    for a in record["additivity"]:
        if a["kind"] == "overall" and a["measure"] in (primary(a["task"]), "margin"):
            t, m = a["task"], "nats" if a["task"] == "perplexity" else a["measure"]
            s, al, i = (fmt(t, m, a[k]) for k in ("sum_of_singles", "all_groups", "interaction"))
            lines.append(f"additivity {t}{' margin' if m == 'margin' else ''} ({a['units']}): sum of single "
                         f"groups {s} vs all groups {al}; interaction {i}")
    worst = record["most_degraded_all_groups"]
    lines.append(f"most degraded with all groups (accuracy, points; {worst['note']}): " + (", ".join(
        f"{w['task']} {w['readout']} {100 * w['diff']:+.1f}" for w in worst["rows"]) or "no phenomenon lost accuracy"))
    return lines
