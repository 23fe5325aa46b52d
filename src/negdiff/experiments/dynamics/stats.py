"""The arithmetic of ``negdiff dynamics``: set overlap, weight change, WD quantiles, and the (descriptive) correlation.

Pure functions of tensors, tables and seeds, so each is checked by hand in the tests and every number
of dynamics.json can be recomputed from the per-checkpoint files alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as sstats

from negdiff.neuronset import NeuronSet

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def jaccard(a: NeuronSet, b: NeuronSet) -> float:
    """:meth:`NeuronSet.jaccard` (kept as a function for the dynamics tables)."""
    return a.jaccard(b)


def cos_dissimilarity(prev: torch.Tensor, cur: torch.Tensor) -> np.ndarray:
    """Per row (one neuron's input weights): 1 - cos(prev_row, cur_row), in float64.

    0 means the row kept its direction (whatever its length did), 1 orthogonal, 2 reversed. A row of
    zeros has no direction: NaN.
    """
    if prev.shape != cur.shape:
        raise ValueError(f"weight shapes differ between checkpoints: {tuple(prev.shape)} vs {tuple(cur.shape)}")
    a, b = prev.detach().cpu().double(), cur.detach().cpu().double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    cos = (a * b).sum(dim=1) / norms
    cos[norms == 0] = float("nan")
    return (1.0 - cos).numpy()


def weight_change_table(prev: list[torch.Tensor], cur: list[torch.Tensor]) -> pd.DataFrame:
    """One row per neuron: layer, neuron and the cosine dissimilarity of its input-projection row."""
    frames = []
    for layer, (a, b) in enumerate(zip(prev, cur)):
        d = cos_dissimilarity(a, b)
        frames.append(pd.DataFrame({"layer": layer, "neuron": np.arange(len(d)), "cos_dissim": d}))
    return pd.concat(frames, ignore_index=True)


def members(table: pd.DataFrame, neurons: NeuronSet) -> np.ndarray:
    """Boolean mask of the rows of a (layer, neuron) table that belong to ``neurons``."""
    keys = table.layer.to_numpy(np.int64) * (1 << 32) + table.neuron.to_numpy(np.int64)
    chosen = np.array([layer * (1 << 32) + n for layer, n in neurons], dtype=np.int64)
    return np.isin(keys, chosen)


def quantiles(values: np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_q10 ... {prefix}_q90`` (linear interpolation) and ``{prefix}_mean``; NaN when empty."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    out = {f"{prefix}_q{round(100 * q)}": float(np.quantile(v, q)) if len(v) else float("nan") for q in QUANTILES}
    out[f"{prefix}_mean"] = float(v.mean()) if len(v) else float("nan")
    return out


def wd_summary(table: pd.DataFrame, cohort: NeuronSet, reid: NeuronSet) -> dict[str, float]:
    """WD quantiles of all neurons, of the fixed cohort and of the re-identified set at one checkpoint,
    plus the cohort's median percentile rank among all neurons (100 = the highest WD)."""
    wd = table.wd.to_numpy(np.float64)
    in_cohort = members(table, cohort)
    pct = sstats.rankdata(wd, method="average") / len(wd) * 100.0
    return {**quantiles(wd, "wd_all"), **quantiles(wd[in_cohort], "wd_cohort"),
            **quantiles(wd[members(table, reid)], "wd_reid"),
            "cohort_rank_pct_median": float(np.median(pct[in_cohort])) if in_cohort.any() else float("nan")}


def change_summary(change: pd.DataFrame, cohort: NeuronSet, randoms: Sequence[NeuronSet]) -> dict[str, float]:
    """Median and mean cosine dissimilarity of the cohort, of the random controls (pooled) and of all."""
    d = change.cos_dissim.to_numpy(np.float64)
    rand = np.zeros(len(change), dtype=bool)
    for r in randoms:
        rand |= members(change, r)
    out: dict[str, float] = {}
    for name, mask in (("cohort", members(change, cohort)), ("random", rand), ("all", np.ones(len(d), bool))):
        v = d[mask & ~np.isnan(d)]
        out[f"wchange_{name}_median"] = float(np.median(v)) if len(v) else float("nan")
        out[f"wchange_{name}_mean"] = float(v.mean()) if len(v) else float("nan")
    return out


#: What a correlation over checkpoints is, said wherever one is shown.
DESCRIPTIVE = "descriptive: checkpoints are a time series, not independent samples; no CI"


def spearman_descriptive(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rho of paired values over checkpoints, as a description only.

    Checkpoints of one training run are a time series: neighbours share most of their weights and both
    WD and accuracy trend with the step, so rho is largely a statement that both moved monotonically.
    A bootstrap over checkpoints or spearmanr's p-value would treat them as independent draws and
    claim a precision the data do not have, so neither is given. Pairs with a NaN are dropped; fewer
    than 3 pairs, or a constant side: rho is NaN.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = ~(np.isnan(xa) | np.isnan(ya))
    xa, ya = xa[ok], ya[ok]
    out: dict[str, Any] = {"rho": float("nan"), "n": int(len(xa)), "kind": "descriptive", "note": DESCRIPTIVE}
    if len(xa) >= 3 and np.ptp(xa) > 0 and np.ptp(ya) > 0:
        out["rho"] = float(sstats.spearmanr(xa, ya).statistic)
    return out


def overlap_columns(rows: list[dict[str, Any]], sets: dict[str, NeuronSet], cohort: NeuronSet) -> None:
    """Fill ``jaccard_final`` (re-identified set vs the cohort) and ``jaccard_prev`` (vs the previous
    available checkpoint's set) into the table rows, in order; missing checkpoints get NaN and are skipped."""
    prev = None
    for row in rows:
        s = sets.get(row["label"])
        if s is None:
            row["jaccard_final"] = row["jaccard_prev"] = float("nan")
            continue
        row["jaccard_final"] = jaccard(s, cohort)
        row["jaccard_prev"] = float("nan") if prev is None else jaccard(s, prev)
        prev = s
