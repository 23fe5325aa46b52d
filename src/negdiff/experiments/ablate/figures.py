"""The ablation's figures (deltas with CIs, per-paradigm and per-task deltas, the dose curve), drawn from
its record and per-item results, so they can be redrawn from a run folder alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from negdiff.figures import plt, save


def _acc_by(results: dict, names: list[str], task: str, by: str) -> pd.Series:
    """Mean per-group accuracy over the given conditions (seeds averaged)."""
    frames = [results[n]["items"][task].groupby(by)["correct"].mean() for n in names]
    return sum(frames) / len(frames)


def delta_bars(record: dict, path: Path) -> Path:
    """Change to baseline per condition and headline metric, with 95% paired bootstrap CIs."""
    metrics = [m for m in ("perplexity", "blimp", "tse", "nongrammatical_mean_error")
               if any(m in record["delta"].get(g, {}) for g in record["order"])]
    conds = [g for g in record["order"] if g != "baseline"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        cells = [record["delta"].get(g, {}).get(m) for g in conds]
        scale = 1 if m == "perplexity" else 100
        x = np.arange(len(conds))
        vals = np.array([scale * c["diff"] if c else np.nan for c in cells])
        err = np.array([[scale * (c["diff"] - c["ci_low"]), scale * (c["ci_high"] - c["diff"])]
                        if c and "ci_low" in c else [0, 0] for c in cells]).T  # no bar: n too small for a CI
        ax.bar(x, vals, yerr=err, capsize=3, color=["tab:red" if g.startswith("wn_neg") else "tab:gray" for g in conds])
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, conds, rotation=60, ha="right", fontsize=7)
        ax.set_title({"perplexity": "Δ perplexity", "nongrammatical_mean_error": "Δ non-gram. error (pts)"}.get(m, f"Δ {m} acc (pts)"),
                     fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def paradigm_deltas(record: dict, results: dict, path: Path) -> Path:
    """Per-paradigm BLiMP accuracy change of wn_neg against ppl_matched_neg (both vs baseline), sorted."""
    groups = record["groups"]
    base = _acc_by(results, ["baseline"], "blimp", "paradigm")
    wn = _acc_by(results, groups["wn_neg"], "blimp", "paradigm") - base
    ctrl = _acc_by(results, groups.get("ppl_matched_neg") or groups["random_neg"], "blimp", "paradigm") - base
    order = wn.sort_values().index
    fig, ax = plt.subplots(figsize=(7, 0.16 * len(order) + 1.2))
    y = np.arange(len(order))
    ax.barh(y - 0.2, 100 * wn[order], height=0.4, color="tab:red", label="wn_neg")
    ax.barh(y + 0.2, 100 * ctrl[order], height=0.4, color="tab:gray",
            label="ppl_matched_neg" if groups.get("ppl_matched_neg") else "random_neg")
    ax.set_yticks(y, order, fontsize=5)
    ax.axvline(0, color="k", lw=0.6)
    ax.set(xlabel="Δ accuracy vs baseline (points)", title="BLiMP paradigms")
    ax.legend(fontsize=7)
    return save(fig, path)


def tse_deltas(record: dict, results: dict, path: Path) -> Path:
    """Per-task TSE accuracy change of wn_neg, random_neg (seed mean) and ppl_matched_neg."""
    groups = record["groups"]
    base = _acc_by(results, ["baseline"], "tse", "task")
    names = [g for g in ("wn_neg", "random_neg", "ppl_matched_neg") if groups.get(g)]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(base))
    for i, g in enumerate(names):
        d = _acc_by(results, groups[g], "tse", "task") - base
        ax.bar(x + (i - 1) * 0.27, 100 * d[base.index], width=0.27, label=g)
    ax.set_xticks(x, base.index, rotation=70, ha="right", fontsize=6)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(ylabel="Δ accuracy (points)", title="TSE tasks")
    ax.legend(fontsize=7)
    return save(fig, path)


def dose_curve(record: dict, path: Path) -> Path:
    """Perplexity and BLiMP as the per-layer fraction of top-WD (vs random) neurons negative-zeroed grows."""
    rows = pd.DataFrame(record["dose"]["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    base = rows[rows.set == "baseline"]
    for name, color in (("top", "tab:red"), ("random", "tab:gray")):
        r = rows[rows.set == name].sort_values("p")
        axes[0].plot(100 * r.p, r.ppl, "o-", color=color, label=f"{name} WD" if name == "top" else "random")
        axes[1].plot(100 * r.p, 100 * r.blimp, "o-", color=color, label=name)
    if len(base):
        axes[0].axhline(2 * base.ppl.iloc[0], color="k", ls="--", lw=0.7, label="2 x baseline")
        axes[1].axhline(100 * base.blimp.iloc[0], color="k", ls="--", lw=0.7, label="baseline")
    axes[0].set(xscale="log", yscale="log", xlabel="% of neurons per layer", ylabel="perplexity")
    axes[1].set(xscale="log", xlabel="% of neurons per layer", ylabel="BLiMP acc % (subsample)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def ablation_figures(record: dict, results: dict, out: str | Path) -> list[Path]:
    """All figures of an ablation run, under ``out/figures``."""
    fig_dir = Path(out) / "figures"
    paths = [delta_bars(record, fig_dir / "deltas.png")]
    if "blimp" in results["baseline"]["items"]:
        paths.append(paradigm_deltas(record, results, fig_dir / "blimp_paradigms.png"))
    if "tse" in results["baseline"]["items"]:
        paths.append(tse_deltas(record, results, fig_dir / "tse_tasks.png"))
    if record["dose"]["rows"]:
        paths.append(dose_curve(record, fig_dir / "dose_response.png"))
    return paths
