"""Figures and the terminal summary of ``negdiff dynamics``, drawn from dynamics.parquet alone.

Training steps go on a log axis; step 0 has no logarithm, so it is drawn at half the first positive
step and labelled "0". A missing checkpoint is a dotted vertical line labelled "missing" at its step,
so a gap in a curve is never mistaken for a smooth stretch. Checkpoints without step numbers (hub
revisions that are not ``step<N>``) are drawn in the given order on a linear axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from negdiff.figures import plt, save

COLORS = {"baseline": "k", "cohort_neg": "tab:red", "reid_neg": "tab:orange", "random_neg": "tab:gray"}


def positions(table: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """x of every checkpoint (missing ones included) and whether the axis is logarithmic."""
    steps = pd.to_numeric(table.step, errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(steps).any() or len(steps) < 2:
        return np.arange(1, len(table) + 1, dtype=np.float64), False
    pos = steps[steps > 0]
    zero_x = pos.min() / 2 if len(pos) else 1.0
    return np.where(steps == 0, zero_x, steps), True


def _tick_label(v: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def setup_axis(ax, table: pd.DataFrame, x: np.ndarray, log: bool) -> None:
    """Log axis with a "0" tick for step 0 (or checkpoint labels on a linear axis); missing ones marked."""
    if log:
        ax.set_xscale("log")
        steps = pd.to_numeric(table.step).to_numpy(dtype=np.float64)
        if len(x) <= 12:  # few checkpoints: one tick each, but none crowding its neighbour (the last wins)
            ticks, labels = [], []
            for xi, s in zip(x, steps):
                if ticks and xi < 1.3 * ticks[-1]:
                    ticks.pop(), labels.pop()
                ticks.append(xi)
                labels.append(_tick_label(s))
        else:  # decades, and "0" for step 0 where no decade tick crowds it
            lo, hi = x.min(), x.max()
            ticks = [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                     if lo <= 10.0 ** k <= hi * 1.01]
            if (steps == 0).any():
                zero = x[steps == 0][0]
                ticks = [zero, *(t for t in ticks if t > 1.5 * zero)]
            labels = ["0" if t in x[steps == 0] else _tick_label(t) for t in ticks]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("training step (log; step 0 at half the first step)")
    else:
        ax.set_xticks(x, table.label, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("checkpoint")
    for xi in x[(table.status != "ok").to_numpy()]:
        ax.axvline(xi, color="0.55", ls=":", lw=1.2)
        ax.text(xi, 0.98, "missing", rotation=90, va="top", ha="right", fontsize=7, color="0.4",
                transform=ax.get_xaxis_transform())


def _line(ax, x, table: pd.DataFrame, col: str, **kw) -> None:
    """A column against x; a missing checkpoint leaves a gap in the line, not a bridge over it."""
    if col in table:
        ax.plot(x, _values(table, col), marker="o", ms=3.5, **{"ls": "-", **kw})


def _values(table: pd.DataFrame, col: str) -> np.ndarray:
    """A column as floats with NaN at missing checkpoints, so every curve breaks there."""
    v = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64)
    return np.where((table.status == "ok").to_numpy(), v, np.nan)


def _band(ax, x, table: pd.DataFrame, lo: str, hi: str, color: str) -> None:
    if lo in table and hi in table:
        ax.fill_between(x, _values(table, lo), _values(table, hi), color=color, alpha=0.15, lw=0)


def fig_wd(table: pd.DataFrame, record: dict, path: Path) -> Path:
    """WD of the fixed cohort (median, IQR) against all neurons (median, IQR, 90th percentile)."""
    x, log = positions(table)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _band(ax, x, table, "wd_all_q25", "wd_all_q75", "tab:gray")
    _band(ax, x, table, "wd_cohort_q25", "wd_cohort_q75", "tab:red")
    _line(ax, x, table, "wd_all_q50", color="tab:gray", label="all neurons: median (IQR band)")
    _line(ax, x, table, "wd_all_q90", color="tab:gray", ls="--", label="all neurons: 90th percentile")
    _line(ax, x, table, "wd_cohort_q50", color="tab:red", label=f"fixed cohort ({record['cohort']['n']} final WN): median")
    _line(ax, x, table, "wd_reid_q50", color="tab:orange", ls="--", label="WN re-identified per checkpoint: median")
    ax.set(yscale="log", ylabel="WD to N(0,1) (σ units, log)", title="Wasserstein distance over training")
    setup_axis(ax, table, x, log)
    ax.legend(fontsize=7)
    return save(fig, path)


def fig_overlap(table: pd.DataFrame, path: Path) -> Path:
    """Jaccard overlap of the re-identified WN with the final set and with the previous checkpoint's."""
    x, log = positions(table)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    _line(ax, x, table, "jaccard_final", color="tab:red", label="with the final WN (the cohort)")
    _line(ax, x, table, "jaccard_prev", color="tab:blue", label="with the previous checkpoint's WN")
    ax.set(ylim=(-0.03, 1.03), ylabel="Jaccard overlap", title="How stable is the WN set?")
    setup_axis(ax, table, x, log)
    ax.legend(fontsize=7)
    return save(fig, path)


def fig_weight_change(table: pd.DataFrame, path: Path) -> Path:
    """Median 1 - cos of input-projection rows since the previous checkpoint: cohort vs random vs all."""
    x, log = positions(table)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    _line(ax, x, table, "wchange_cohort_median", color="tab:red", label="fixed cohort")
    _line(ax, x, table, "wchange_random_median", color="tab:gray", label="random layer-matched")
    _line(ax, x, table, "wchange_all_median", color="tab:blue", ls="--", label="all neurons")
    ax.set(ylabel="median 1 - cos vs previous checkpoint", title="Weight change of the neurons' input rows")
    setup_axis(ax, table, x, log)
    ax.legend(fontsize=7)
    return save(fig, path)


def fig_ablation(table: pd.DataFrame, tasks: list[str], path: Path) -> Path:
    """Top: each condition's metric per checkpoint. Bottom: change vs baseline with 95% paired CIs."""
    x, log = positions(table)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.4), squeeze=False)
    names = {"perplexity": "perplexity", "blimp": "BLiMP accuracy", "tse": "TSE accuracy"}
    for j, task in enumerate(tasks):
        top, bottom = axes[0, j], axes[1, j]
        for g, color in COLORS.items():
            _line(top, x, table, f"{task}_{g}", color=color, label=g)
            col = f"d_{task}_{g}"
            if g == "baseline" or col not in table:
                continue
            scale = 1.0 if task == "perplexity" else 100.0  # accuracy changes in points
            d = scale * _values(table, col)
            err = np.abs(np.stack([d - scale * _values(table, f"{col}_lo"), scale * _values(table, f"{col}_hi") - d]))
            bottom.errorbar(x, d, yerr=np.nan_to_num(err), fmt="o-", ms=3.5, capsize=2, color=color, label=g)
        vals = table[f"{task}_baseline"].dropna()
        if task == "perplexity" and len(vals) and vals.max() > 10 * vals.min():
            top.set_yscale("log")
        if task != "perplexity":
            top.axhline(0.5, color="k", ls=":", lw=0.8)
        bottom.axhline(0, color="k", lw=0.6)
        top.set(title=names[task], ylabel=names[task])
        bottom.set(ylabel=f"change vs baseline ({'perplexity' if task == 'perplexity' else 'points'})")
        bottom.set_title("ablated - baseline, 95% paired CI (none: n too small or K = 1 set)", fontsize=8)
        for ax in (top, bottom):
            setup_axis(ax, table, x, log)
        top.legend(fontsize=6)
    fig.tight_layout()
    return save(fig, path)


def fig_wd_vs_tse(table: pd.DataFrame, corr: dict[str, Any] | None, path: Path) -> Path:
    """Cohort median WD against baseline TSE accuracy, one point per checkpoint, coloured by order."""
    ok = table[table.status == "ok"]
    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    sc = ax.scatter(ok.wd_cohort_q50, ok.tse_baseline, c=np.arange(len(ok)), cmap="viridis", s=28)
    for _, r in ok.iterrows():
        ax.annotate(str(r.label), (r.wd_cohort_q50, r.tse_baseline), fontsize=6, xytext=(3, 3), textcoords="offset points")
    title = "cohort WD vs TSE accuracy"
    if corr and not math.isnan(corr["rho"]):
        title += (f"\nSpearman rho {corr['rho']:.2f} over {corr['n']} checkpoints (descriptive: a time series, "
                  "not independent samples; no CI)")
    ax.set(xscale="log", xlabel="cohort median WD (σ units, log)", ylabel="TSE accuracy (baseline, fraction)")
    ax.set_title(title, fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range collide
    fig.colorbar(sc, ax=ax, label="checkpoint order")
    return save(fig, path)


def dynamics_figures(table: pd.DataFrame, record: dict[str, Any], folder: Path) -> list[Path]:
    """All figures of a dynamics run under ``folder``."""
    tasks = [t for t in record["config"]["tasks"] if f"{t}_baseline" in table]
    paths = [fig_wd(table, record, folder / "wd.png"), fig_overlap(table, folder / "overlap.png")]
    if "wchange_cohort_median" in table:
        paths.append(fig_weight_change(table, folder / "weight_change.png"))
    if tasks:
        paths.append(fig_ablation(table, tasks, folder / "ablation.png"))
    if "tse_baseline" in table:
        paths.append(fig_wd_vs_tse(table, record["correlations"].get("wd_cohort_median_vs_tse"), folder / "wd_vs_tse.png"))
    return paths


def _f(row: pd.Series, col: str, fmt: str, scale: float = 1.0) -> str:
    v = row.get(col)
    return "-" if v is None or pd.isna(v) else format(scale * float(v), fmt)


def summary_lines(table: pd.DataFrame, record: dict[str, Any]) -> list[str]:
    """One line per checkpoint, then the correlations, the cohort and the missing checkpoints."""
    lines = [f"{'checkpoint':<14}{'WD cohort':>10}{'WD all':>8}{'Jacc.fin':>9}{'dW coh/rnd':>12}"
             f"{'ppl':>9}{'BLiMP':>7}{'TSE':>7}{'dTSE coh':>9}{'dTSE rnd':>9}"]
    for _, r in table.iterrows():
        if r.status != "ok":
            lines.append(f"{str(r.label):<14}missing: {str(r.message)[:100]}")
            continue
        dw = f"{_f(r, 'wchange_cohort_median', '.3f')}/{_f(r, 'wchange_random_median', '.3f')}"
        lines.append(f"{str(r.label):<14}{_f(r, 'wd_cohort_q50', '.3f'):>10}{_f(r, 'wd_all_q50', '.3f'):>8}"
                     f"{_f(r, 'jaccard_final', '.2f'):>9}{dw:>12}{_f(r, 'perplexity_baseline', '.1f'):>9}"
                     f"{_f(r, 'blimp_baseline', '.1f', 100):>7}{_f(r, 'tse_baseline', '.1f', 100):>7}"
                     f"{_f(r, 'd_tse_cohort_neg', '+.1f', 100):>9}{_f(r, 'd_tse_random_neg', '+.1f', 100):>9}")
    for name, c in record["correlations"].items():
        lines.append(f"Spearman {name}: rho {c['rho']:.2f} over {c['n']} checkpoints ({c['note']})")
    lines.append(f"fixed cohort: {record['cohort']['n']} WN of {record['final']}; random controls: "
                 f"{len(record['random_controls'])} layer-matched sets, cohort excluded")
    if record["missing"]:
        lines.append(f"missing checkpoints ({len(record['missing'])}): {', '.join(record['missing'])}")
    return lines
