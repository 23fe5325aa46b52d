"""Read-outs of per-item result tables, and paired contrasts between conditions with honest intervals.

Every evaluation writes one row per item (per window for perplexity), keyed by ``item_id``, so any two
conditions scored on the same items can be paired. This module turns those rows into read-outs and
contrasts of conditions:

* **Read-outs.** ``acc`` (0/1), and the continuous ``margin`` that accuracy thresholds at zero, so a
  paired change uses every item, not only the few % that flip: BLiMP lp_good - lp_bad (sum log-prob),
  TSE lp_good - lp_rival (mean log-prob per token; the rival is the authors' pairing), multiple choice
  gold log-likelihood minus the best distractor's on the raw (``margin``, the basis of acc) and the
  per-character (``margin_norm``, the basis of acc_norm) scale, LAMBADA the target's log-likelihood.
  Perplexity: the per-window mean NLL.
* **Contrasts** ``b - a`` where each side is a *group* of conditions (one condition, or the K random
  sets whose results are averaged). Items: a stratified paired bootstrap (paradigms / TSE tasks as
  strata; one index set per replicate for every condition). Windows: a t-interval on the per-window
  differences. When either side is a group of random sets, the between-set variance s^2 / K is added
  and the reference is t with Welch-Satterthwaite degrees of freedom (:func:`negdiff.bootstrap.set_crossed`).
* The **mean error over benchmarks** resamples each benchmark independently (its own seed) and averages.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pandas as pd

from negdiff.bootstrap import (
    MIN_UNITS,
    N_BOOT,
    Interval,
    from_draws,
    jackknife_t,
    mean_t,
    pooled,
    set_crossed,
    stratum_labels,
    stratum_mean_draws,
    too_small,
)
from negdiff.errors import NegdiffError

NONGRAM = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "sciq", "lambada_openai", "boolq")
#: The column that stratifies a task's items (resampled within each value).
STRATA = {"blimp": "paradigm", "tse": "task"}


def readouts_of(task: str, frame: pd.DataFrame) -> list[str]:
    """The read-outs a task's item table supports (the first is the task's headline)."""
    if task == "perplexity":
        return ["nll"]
    if task in ("blimp", "tse"):
        return ["margin", "acc"]
    if task == "lambada_openai":
        return ["acc", "target_ll"]
    out = ["acc", "margin"]
    if "n_chars" in frame:
        out += ["acc_norm", "margin_norm"]
    return out


def _mc_margin(frame: pd.DataFrame, norm: bool) -> np.ndarray:
    out = np.empty(len(frame))
    for i, (ll, label) in enumerate(zip(frame["ll"], frame["label"], strict=True)):
        ll = np.asarray(ll, dtype=np.float64)
        if norm:
            ll = ll / np.asarray(frame["n_chars"].iloc[i], dtype=np.float64)
        others = np.delete(ll, int(label))
        out[i] = ll[int(label)] - others.max()
    return out


def readout_values(task: str, frame: pd.DataFrame, readout: str) -> np.ndarray:
    """One float per item (per window) of ``readout``."""
    if readout == "nll":
        return frame["nll"].to_numpy(dtype=np.float64)
    if readout == "acc":
        return frame["correct"].to_numpy(dtype=np.float64)
    if readout == "acc_norm":
        return frame["correct_norm"].to_numpy(dtype=np.float64)
    if readout == "target_ll":
        return frame["ll"].to_numpy(dtype=np.float64)
    if readout == "margin" and task == "blimp":
        return (frame["lp_good"] - frame["lp_bad"]).to_numpy(dtype=np.float64)
    if readout == "margin" and task == "tse":
        bad2 = frame["lp_bad_2"].to_numpy(dtype=np.float64) if "lp_bad_2" in frame else np.full(len(frame), np.nan)
        rival = np.where(np.isnan(bad2), frame["lp_bad"].to_numpy(dtype=np.float64), bad2)
        return frame["lp_good"].to_numpy(dtype=np.float64) - rival
    if readout in ("margin", "margin_norm"):
        return _mc_margin(frame, readout == "margin_norm")
    raise NegdiffError(f"task {task} has no read-out '{readout}'")


def _seed(seed: int, *parts: str) -> int:
    """A stable seed per (run seed, task, read-out): tasks resampled independently, reproducibly."""
    return int(seed) * 1_000_003 + zlib.crc32("/".join(parts).encode()) % 1_000_003


class Contrasts:
    """Paired contrasts between groups of conditions over their per-item tables (see the module docstring).

    ``items[condition][task]`` is an item table; ``groups[name]`` lists the conditions averaged under a
    name (``random_neg`` -> its K sets). Bootstrap replicates are computed once per (task, read-out).
    """

    def __init__(self, items: dict[str, dict[str, pd.DataFrame]], groups: dict[str, list[str]],
                 n_boot: int = N_BOOT, seed: int = 0, reference: str = "baseline",
                 sampled: frozenset[str] | set[str] = frozenset()) -> None:
        self.items, self.groups, self.n_boot, self.seed = items, groups, n_boot, seed
        self.reference = reference
        #: groups that are samples of random sets: their between-set variance belongs in every interval, so a
        #: sample of one set gives no interval at all (not an item-only one that treats the set as fixed)
        self.sampled = frozenset(sampled)
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    # ---------------------------------------------------------------------------------------- matrices
    def _matrix(self, task: str, readout: str) -> dict[str, Any]:
        key = (task, readout)
        if key in self._cache:
            return self._cache[key]
        ref = self.items[self.reference][task]
        conds = [c for c, per in self.items.items() if task in per]
        order = ref["item_id"].to_numpy()
        rows = []
        kept = []
        for c in conds:
            frame = self.items[c][task]
            if not frame["item_id"].is_unique or not ref["item_id"].is_unique:
                raise NegdiffError(f"{c} or {self.reference} repeats a {task} item id; cannot pair them")
            if len(frame) != len(ref) or set(frame["item_id"]) != set(order):
                continue  # scored on other items (e.g. controls on a subset): served by a restricted view
            kept.append(c)
            frame = frame.set_index("item_id").loc[order].reset_index()
            rows.append(readout_values(task, frame, readout))
        conds = kept
        values = np.stack(rows)
        column = STRATA.get(task)
        strata = ref[column].to_numpy() if column and column in ref else None
        out: dict[str, Any] = {"conds": conds, "values": values, "strata": strata, "n": values.shape[1]}
        if task != "perplexity":
            draws, point, sizes = stratum_mean_draws(values, strata, self.n_boot, _seed(self.seed, task, readout))
            out.update(draws=draws, point=point, sizes=sizes, pooled_draws=pooled(draws, sizes), pooled=pooled(point, sizes))
        self._cache[key] = out
        return out

    def _route(self, task: str, groups: list[str]) -> Contrasts:
        """This object, or a view restricted to the items every condition of ``groups`` was scored on.

        Conditions may run on a subset of the reference's items (the ablation's sign/magnitude controls
        at the middle preset); a contrast involving them pairs every condition on that common subset.
        """
        names = [n for g in groups for n in self.groups.get(g, [g])]
        ref_ids = set(self.items[self.reference][task]["item_id"])
        sets = [set(self.items[n][task]["item_id"]) for n in names if task in self.items.get(n, {})]
        if len(sets) < len(names) or all(s_ == ref_ids for s_ in sets):
            return self  # a missing condition raises in _members, as before
        common = frozenset(set.intersection(ref_ids, *sets))
        key = ("view", task, common)
        if key not in self._cache:
            items = {c: {task: per[task][per[task]["item_id"].isin(common)].reset_index(drop=True)}
                     for c, per in self.items.items() if task in per and common <= set(per[task]["item_id"])}
            self._cache[key] = Contrasts(items, self.groups, self.n_boot, self.seed, self.reference, self.sampled)
        return self._cache[key]

    def _members(self, group: str, mat: dict[str, Any]) -> list[int]:
        names = self.groups.get(group, [group])
        missing = [n for n in names if n not in mat["conds"]]
        if missing or not names:
            raise NegdiffError(f"group {group} has no results for this task ({', '.join(missing) or 'empty'})")
        return [mat["conds"].index(n) for n in names]

    def value(self, group: str, task: str, readout: str) -> dict[str, Any]:
        """The group's mean read-out (and, for several sets, each set's and their sd)."""
        if (view := self._route(task, [group])) is not self:
            return view.value(group, task, readout)
        mat = self._matrix(task, readout)
        idx = self._members(group, mat)
        per = [float(mat["values"][i].mean()) for i in idx]
        if task == "perplexity":
            per = [float(np.exp(v)) for v in per]
        out: dict[str, Any] = {"value": float(np.mean(per)), "n": int(mat["n"])}
        if len(per) > 1:
            out.update(per_set=per, sd=float(np.std(per, ddof=1)))
        return out

    # ---------------------------------------------------------------------------------------- contrasts
    def parts(self, task: str, readout: str, a: str, b: str) -> dict[str, Any]:
        """b - a: point estimate, item-level replicates (or per-unit differences) and per-set estimates."""
        if (view := self._route(task, [a, b])) is not self:
            return view.parts(task, readout, a, b)
        mat = self._matrix(task, readout)
        ia, ib = self._members(a, mat), self._members(b, mat)
        many = len(ia) > 1 or len(ib) > 1 or a in self.sampled or b in self.sampled
        if (len(ia) > 1 or a in self.sampled) and (len(ib) > 1 or b in self.sampled):
            raise NegdiffError("a contrast between two groups of random sets is not defined")
        sets = ia if (len(ia) > 1 or a in self.sampled) else ib
        if task == "perplexity":
            v = mat["values"]
            diffs = v[ib].mean(0) - v[ia].mean(0)
            per_set = [float((v[j] - v[i]).mean()) for i in ia for j in ib] if many else None
            noise = float(np.mean([(v[k] - v[sets].mean(0)).var(ddof=1) / mat["n"] for k in sets])) if many else 0.0
            return {"estimate": float(diffs.mean()), "unit_diffs": diffs, "per_set": per_set, "n": mat["n"],
                    "set_noise": noise}
        pd_, pt = mat["pooled_draws"], mat["pooled"]
        draws = pd_[:, ib].mean(1) - pd_[:, ia].mean(1)
        per_set = [float(pt[j] - pt[i]) for i in ia for j in ib] if many else None
        noise = float(np.mean([(pd_[:, k] - pd_[:, sets].mean(1)).var(ddof=1) for k in sets])) if many else 0.0
        return {"estimate": float(pt[ib].mean() - pt[ia].mean()), "draws": draws, "per_set": per_set, "n": mat["n"],
                "set_noise": noise}

    def interval(self, task: str, readout: str, a: str, b: str) -> Interval:
        """The interval of b - a for one task and read-out."""
        return self._finish(self.parts(task, readout, a, b), task)

    def _finish(self, p: dict[str, Any], task: str, units: str | None = None) -> Interval:
        units = units or ("windows" if task == "perplexity" else "items")
        if "unit_diffs" in p:
            d = p["unit_diffs"]
            if p["per_set"] is None:
                return mean_t(d, units, "paired t on per-window mean-NLL differences, n - 1 df")
            item_var = float(d.var(ddof=1) / d.size) if d.size > 1 else float("nan")
            return set_crossed(p["estimate"], item_var, p["n"], np.array(p["per_set"]), units,
                               "per-window paired differences", p["set_noise"])
        strat = f"stratified by {STRATA[task]}, " if task in STRATA else ""
        method = f"paired percentile bootstrap over {units} ({strat}{self.n_boot} replicates, shared indices)"
        if p["per_set"] is None:
            return from_draws(p["estimate"], p["draws"], p["n"], units, method, self.seed)
        return set_crossed(p["estimate"], float(p["draws"].var(ddof=1)), p["n"], np.array(p["per_set"]), units,
                           f"item bootstrap ({strat}{self.n_boot} replicates, shared indices)", p["set_noise"])

    def mean_error(self, a: str, b: str, tasks: list[str]) -> Interval:
        """Change (b - a) of the mean error (1 - acc) over ``tasks``, each benchmark resampled on its own."""
        parts = [self.parts(t, "acc", a, b) for t in tasks]
        small = [t for t, p in zip(tasks, parts, strict=True) if p["n"] < MIN_UNITS]
        if small:
            est = -float(np.mean([p["estimate"] for p in parts]))
            return too_small(est, min(p["n"] for p in parts), "items per benchmark",
                             f"mean error: {', '.join(small)} below {MIN_UNITS} items")
        est = -float(np.mean([p["estimate"] for p in parts]))
        draws = -np.mean([p["draws"] for p in parts], axis=0)
        n = sum(p["n"] for p in parts)
        if parts[0]["per_set"] is None:
            method = (f"paired percentile bootstrap, each of {len(tasks)} benchmarks resampled independently "
                      f"({self.n_boot} replicates)")
            return from_draws(est, draws, n, "items", method, self.seed)
        per_set = -np.mean([p["per_set"] for p in parts], axis=0)
        noise = float(np.sum([p["set_noise"] for p in parts])) / len(parts) ** 2  # independent benchmarks
        return set_crossed(est, float(draws.var(ddof=1)), n, per_set, "items",
                           f"item bootstrap, each of {len(tasks)} benchmarks independently ({self.n_boot} replicates)",
                           noise)

    def per_stratum(self, task: str, readout: str, a: str, b: str) -> list[dict[str, Any]]:
        """b - a within each stratum (paradigm / task): exploratory, unadjusted percentile CIs."""
        if (view := self._route(task, [a, b])) is not self:
            return view.per_stratum(task, readout, a, b)
        mat = self._matrix(task, readout)
        if mat["strata"] is None:
            return []
        ia, ib = self._members(a, mat), self._members(b, mat)
        labels = stratum_labels(mat["strata"])
        dr = mat["draws"][:, ib].mean(1) - mat["draws"][:, ia].mean(1)
        pt = mat["point"][ib].mean(0) - mat["point"][ia].mean(0)
        out = []
        for h, name in enumerate(labels):
            iv = from_draws(float(pt[h]), dr[:, h], int(mat["sizes"][h]), "items", "percentile bootstrap within the stratum",
                            self.seed)
            out.append({"stratum": str(name), "estimate": iv.estimate, "ci": list(iv.ci) if iv.ci else None, "n": iv.n})
        return out

    def window_function(self, task: str, conds: list[str], stat) -> Interval:
        """Jackknife interval (over windows) of ``stat(mean NLL of each condition)``."""
        if (view := self._route(task, conds)) is not self:
            return view.window_function(task, conds, stat)
        mat = self._matrix(task, "nll")
        cols = np.stack([mat["values"][self._members(c, mat)].mean(0) for c in conds], axis=1)
        return jackknife_t(cols, stat, "windows")


def ppl_cell(iv: Interval, base_ppl: float) -> dict[str, Any]:
    """A Δ mean-NLL interval shown as a perplexity difference and ratio (ppl_b / ppl_a = exp(Δ NLL) exactly)."""
    out: dict[str, Any] = {"diff_nll": iv.to_dict(), "diff": base_ppl * float(np.expm1(iv.estimate)),
                           "ratio": float(np.exp(iv.estimate)), "n": iv.n, "units": iv.units}
    if iv.ci is not None:
        out.update(ci_low=base_ppl * float(np.expm1(iv.ci[0])), ci_high=base_ppl * float(np.expm1(iv.ci[1])))
    return out


def interval_cell(iv: Interval) -> dict[str, Any]:
    """An interval as a table cell: the estimate as ``diff``, its CI as ``ci_low``/``ci_high`` (absent: n too small)."""
    out = {"diff": iv.estimate, "n": iv.n, "units": iv.units, "method": iv.method, "interval": iv.to_dict()}
    if iv.ci is not None:
        out.update(ci_low=iv.ci[0], ci_high=iv.ci[1])
    return out
