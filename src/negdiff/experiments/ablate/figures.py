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
        ax.set_title({"perplexity": "perplexity", "nongrammatical_mean_error": "non-grammatical benchmarks"}.get(
            m, f"{m.upper() if m == 'tse' else 'BLiMP'} accuracy"))
        ax.set_ylabel({"perplexity": "Δ perplexity vs baseline", "nongrammatical_mean_error":
                       "Δ mean error (points)"}.get(m, "Δ accuracy (points)"))
    fig.suptitle("change to baseline per condition; whiskers: 95% CI (items or windows resampled, random sets "
                 "inside; none: n < 10)", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def _item_diffs(results: dict, names: list[str], task: str) -> pd.Series:
    """Per item: correct under the conditions (their sets averaged) minus correct under the baseline."""
    base = results["baseline"]["items"][task].set_index("item_id")["correct"].astype(float)
    cond = sum(results[n]["items"][task].set_index("item_id")["correct"].astype(float) for n in names) / len(names)
    return (cond - base).dropna()


def paradigm_deltas(record: dict, results: dict, path: Path) -> Path:
    """BLiMP accuracy change by phenomenon (the linguistics terms that group the 67 paradigms), with CIs.

    67 paradigm rows were unreadable; the 12 phenomena are what the paper discusses. Each point is the mean
    paired item difference (condition - baseline, points) with a 95% normal interval over the items (random
    sets averaged per item first, so their spread is not in this figure's interval; the table's is)."""
    groups = record["groups"]
    terms = results["baseline"]["items"]["blimp"].set_index("item_id")["linguistics_term"]
    control = "ppl_matched_neg" if groups.get("ppl_matched_neg") else "random_neg"
    series = {g: _item_diffs(results, groups[g], "blimp") for g in ("wn_neg", control) if groups.get(g)}
    stats = {g: d.groupby(terms.reindex(d.index)).agg(["mean", "std", "count"]) for g, d in series.items()}
    order = stats["wn_neg"]["mean"].sort_values().index
    fig, ax = plt.subplots(figsize=(7, 0.36 * len(order) + 1.3))
    y = np.arange(len(order))
    for k, (g, color) in enumerate(((g, c) for g, c in (("wn_neg", "tab:red"), (control, "tab:gray")) if g in stats)):
        st = stats[g].reindex(order)
        half = 1.96 * st["std"].fillna(0) / np.sqrt(st["count"])
        ax.errorbar(100 * st["mean"], y + (0.15 if k else -0.15), xerr=100 * half, fmt="o", ms=4, color=color,
                    capsize=2, label=g)
    n = stats["wn_neg"]["count"].reindex(order)
    ax.set_yticks(y, [f"{t} (n={int(c)})" for t, c in zip(order, n)], fontsize=8)
    ax.axvline(0, color="k", lw=0.6)
    ax.set(xlabel="Δ accuracy vs baseline (points; 95% CI over items)", title="BLiMP by phenomenon")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def tse_deltas(record: dict, results: dict, path: Path) -> Path:
    """Per-task TSE accuracy change of wn_neg, random_neg (seed mean) and ppl_matched_neg, each bar with a 95%
    normal interval over the task's items (random sets averaged per item first; no whisker under 10 items)."""
    groups = record["groups"]
    base = _acc_by(results, ["baseline"], "tse", "task")
    tasks = results["baseline"]["items"]["tse"].set_index("item_id")["task"]
    names = [g for g in ("wn_neg", "random_neg", "ppl_matched_neg") if groups.get(g)]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(base))
    for i, g in enumerate(names):
        d = _item_diffs(results, groups[g], "tse")
        st = d.groupby(tasks.reindex(d.index)).agg(["mean", "std", "count"]).reindex(base.index)
        half = np.where(st["count"] >= 10, 1.96 * st["std"].fillna(0) / np.sqrt(st["count"]), 0.0)
        ax.bar(x + (i - 1) * 0.27, 100 * st["mean"], width=0.27, yerr=100 * half, capsize=1.5, label=g,
               error_kw={"lw": 0.7})
    ax.set_xticks(x, base.index, rotation=70, ha="right", fontsize=6)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(ylabel="Δ accuracy vs baseline (points)",
           title="TSE tasks (whiskers: 95% CI over the task's items; none under 10 items)")
    ax.legend()
    return save(fig, path)


def dose_curve(record: dict, path: Path) -> Path:
    """Perplexity and BLiMP as the per-layer fraction of top-WD (vs random) neurons negative-zeroed grows, with the
    95% CI of each point (windows / items of that condition resampled; older records without CIs: points only)."""
    rows = pd.DataFrame(record["dose"]["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    base = rows[rows.set == "baseline"]

    def err(r: pd.DataFrame, key: str, scale: float) -> np.ndarray | None:
        if f"{key}_ci" not in r or r[f"{key}_ci"].isna().any():
            return None
        ci = np.array([c if c and c[0] is not None else [v, v] for c, v in zip(r[f"{key}_ci"], r[key])], dtype=float)
        return scale * np.abs(ci.T - r[key].to_numpy())

    for name, color in (("top", "tab:red"), ("random", "tab:gray")):
        r = rows[rows.set == name].sort_values("p")
        axes[0].errorbar(100 * r.p, r.ppl, yerr=err(r, "ppl", 1), fmt="o-", color=color, capsize=2,
                         label=f"{name} WD" if name == "top" else "random")
        axes[1].errorbar(100 * r.p, 100 * r.blimp, yerr=err(r, "blimp", 100), fmt="o-", color=color, capsize=2, label=name)
    if len(base):
        axes[0].axhline(2 * base.ppl.iloc[0], color="k", ls="--", lw=0.7, label="2 x baseline")
        axes[1].axhline(100 * base.blimp.iloc[0], color="k", ls="--", lw=0.7, label="baseline")
    axes[0].set(xscale="log", yscale="log", xlabel="% of neurons per layer", ylabel="perplexity (log; 95% CI over windows)")
    axes[1].set(xscale="log", xlabel="% of neurons per layer", ylabel="BLiMP accuracy (%; 95% CI over items)")
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
