"""Statistics of ``negdiff layers``: deltas to baseline per read-out, additivity, and where damage concentrates.

Every delta is paired (the same items under baseline and the condition) with a seeded bootstrap over
items, through :func:`negdiff.experiments.ablate_stats.paired_draws`. Because every condition's items
are aligned to the baseline's order and resampled with the same seed, the replicates of different
conditions share their resampling indices: a sum of single-group deltas, or the all-groups delta minus
that sum (the interaction), gets a valid CI by adding or subtracting replicates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from negdiff.experiments.ablate_stats import paired_draws
from negdiff.inference import percentile_ci

#: Per task: the item column that splits it into read-outs, and the name of that kind of read-out.
SPLITS = {"blimp": (("linguistics_term", "term"),), "tse": (("group", "group"), ("task", "task"))}


def readouts(task: str, items: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, name, row mask)`` of every read-out of a task: overall, then its splits (BLiMP terms, TSE
    groups and tasks)."""
    out = [("overall", "overall", np.ones(len(items), dtype=bool))]
    for column, kind in SPLITS.get(task, ()):
        if column in items:
            out += [(kind, str(v), (items[column] == v).to_numpy()) for v in sorted(items[column].unique())]
    return out


def _stat(task: str, frame: pd.DataFrame) -> float:
    return float(np.exp(frame.nll.mean())) if task == "perplexity" else float(frame.correct.mean())


def delta_table(items: dict[str, dict[str, pd.DataFrame]], conditions: list[str], n_boot: int,
                seed: int) -> tuple[pd.DataFrame, dict[tuple[str, str, str, str], np.ndarray]]:
    """One row per (condition, task, read-out): baseline and condition values, paired delta and 95% CI.

    Returns the table and the bootstrap replicates keyed by (condition, task, kind, read-out).
    """
    rows, draws = [], {}
    base = items["baseline"]
    for cond in conditions:
        for task, frame in base.items():
            other = items[cond][task]
            for kind, name, mask in readouts(task, frame):
                a = frame[mask]
                b = other[other.item_id.isin(a.item_id)]
                point, d = paired_draws(a, b, task, n_boot, seed)
                lo, hi = percentile_ci(d)
                draws[cond, task, kind, name] = d
                rows.append({"condition": cond, "task": task, "kind": kind, "readout": name, "n": len(a),
                             "base": _stat(task, a), "value": _stat(task, b), "diff": point, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows), draws


def _cell(point: float, d: np.ndarray) -> dict[str, float]:
    lo, hi = percentile_ci(d)
    return {"diff": float(point), "ci_low": lo, "ci_high": hi}


def additivity(deltas: pd.DataFrame, draws: dict, singles: list[str], everything: str) -> list[dict[str, Any]]:
    """Per read-out: the sum of the single-group deltas, the all-groups delta, and their difference.

    ``interaction`` = all-groups delta minus the sum of singles: about 0 when the groups' effects add up,
    negative (for accuracy) when ablating them together hurts more than the parts, positive when less.
    """
    out = []
    for (task, kind, name), rows in deltas.groupby(["task", "kind", "readout"], sort=False):
        by = rows.set_index("condition")["diff"]
        if everything not in by or any(s not in by for s in singles):
            continue
        s_draws = sum(draws[s, task, kind, name] for s in singles)
        a_draws = draws[everything, task, kind, name]
        s_point = float(sum(by[s] for s in singles))
        single = by[singles]
        out.append({"task": task, "kind": kind, "readout": name, "sum_of_singles": _cell(s_point, s_draws),
                    "all_groups": _cell(by[everything], a_draws),
                    "interaction": _cell(by[everything] - s_point, a_draws - s_draws),
                    "largest_single": {"condition": str(single.abs().idxmax()), "diff": float(single[single.abs().idxmax()])}})
    return out


def most_degraded(deltas: pd.DataFrame, condition: str, top: int = 5) -> list[dict[str, Any]]:
    """The phenomena (BLiMP terms, TSE tasks) whose accuracy falls most under ``condition`` (falls only)."""
    rows = deltas[(deltas.condition == condition) & deltas.kind.isin(["term", "task"]) & (deltas["diff"] < 0)]
    rows = rows.sort_values("diff", kind="stable")
    return [{"task": r.task, "readout": r.readout, "diff": r["diff"], "ci_low": r.ci_low, "ci_high": r.ci_high,
             "base": r.base, "n": int(r.n)} for _, r in rows.head(top).iterrows()]


def group_profile(deltas: pd.DataFrame, groups: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per headline read-out: the single-group deltas in depth order, and the worst phenomenon per group."""
    out: dict[str, list] = {}
    for task in deltas.task.unique():
        rows = deltas[(deltas.task == task) & (deltas.kind == "overall")].set_index("condition")
        out[task] = [{"group": g["label"], "diff": float(rows.loc[g["single"], "diff"]),
                      "ci_low": float(rows.loc[g["single"], "ci_low"]), "ci_high": float(rows.loc[g["single"], "ci_high"]),
                      "worst": (most_degraded(deltas[deltas.task == task], g["single"], 1) or [None])[0]}
                     for g in groups if g["single"] in rows.index]
    return out


# ---------------------------------------------------------------------------------------------- summary
def _fmt(task: str, d: float, lo: float, hi: float) -> str:
    if task == "perplexity":
        return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def summary_lines(record: dict[str, Any], deltas: pd.DataFrame) -> list[str]:
    """Baseline, one line per single group, the cumulative curves, additivity and the worst phenomena."""
    heads = [t for t in ("perplexity", "blimp", "tse") if t in set(deltas.task)] or sorted(set(deltas.task))
    over = deltas[deltas.kind == "overall"]
    first = over.drop_duplicates("task").set_index("task")
    lines = [f"{len(record['groups'])} layer groups, {record['group_rule']}: "
             + ", ".join(f"{g['label']}" for g in record["groups"]),
             "baseline: " + "; ".join(f"{t} {first.loc[t, 'base']:.2f}" if t == "perplexity" else
                                      f"{t} {100 * first.loc[t, 'base']:.1f}%" for t in heads),
             "deltas vs baseline (perplexity; accuracy in points), 95% paired bootstrap CI:"]

    def row(cond: str) -> str:
        r = over[over.condition == cond].set_index("task")
        return "; ".join(f"{t} {_fmt(t, r.loc[t, 'diff'], r.loc[t, 'ci_low'], r.loc[t, 'ci_high'])}" for t in heads
                         if t in r.index)

    for g in record["groups"]:
        lines.append(f"  {'only ' + g['label']:<24} {row(g['single'])}")
    for direction in ("bottom", "top"):
        for k, cond in enumerate(record["cumulative"][direction], 1):
            if k > 1:
                lines.append(f"  {f'{direction} {k} groups ({cond})':<24} {row(cond)}")
    for a in record["additivity"]:
        if a["kind"] == "overall":
            s, al, i = a["sum_of_singles"], a["all_groups"], a["interaction"]
            lines.append(f"additivity {a['task']}: sum of single groups {_fmt(a['task'], s['diff'], s['ci_low'], s['ci_high'])}"
                         f" vs all groups {_fmt(a['task'], al['diff'], al['ci_low'], al['ci_high'])}; interaction "
                         f"{_fmt(a['task'], i['diff'], i['ci_low'], i['ci_high'])}")
    worst = record["most_degraded_all_groups"]
    lines.append("most degraded with all groups (points): " + (", ".join(
        f"{w['task']} {w['readout']} {100 * w['diff']:+.1f}" for w in worst) or "no phenomenon lost accuracy"))
    return lines
