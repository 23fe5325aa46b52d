"""Figures (matplotlib, Agg backend), each written atomically as a PNG under ``<run>/figures/``.

Figures are drawn from the tables a run writes, so a report can be rebuilt from a run folder alone.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from negdiff.results import atomic_write_with  # noqa: E402


def save(fig, path: Path) -> Path:
    """Write a figure atomically and close it."""
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def wd_by_layer(table: pd.DataFrame, path: Path) -> Path:
    """Distribution of WD per layer (box plot, log scale) with each layer's WN cut marked."""
    layers = sorted(table.layer.unique())
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layers)), 3.5))
    data = [table.wd[table.layer == layer].clip(lower=1e-4).to_numpy() for layer in layers]
    ax.boxplot(data, positions=layers, widths=0.6, showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
    if "is_wn" in table:
        cut = [table.wd[(table.layer == layer) & table.is_wn].min() for layer in layers]
        ax.plot(layers, cut, "r_", markersize=10, label="WN cut (per layer)")
        ax.legend(loc="upper left", fontsize=8)
    ax.set(yscale="log", xlabel="layer", ylabel="WD to N(0,1)", title="Wasserstein distance per layer")
    return save(fig, path)


def wn_per_layer(table: pd.DataFrame, path: Path) -> Path:
    """How many WN each layer holds under the per-layer and the global selection."""
    counts = table.groupby("layer")[["is_wn", "is_wn_global"]].sum()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(counts)), 3.2))
    x = counts.index.to_numpy()
    ax.bar(x - 0.2, counts.is_wn, width=0.4, label="per layer (default)")
    ax.bar(x + 0.2, counts.is_wn_global, width=0.4, label="global")
    ax.set(xlabel="layer", ylabel="WN", title="Wasserstein neurons per layer, both scopes")
    ax.legend(fontsize=8)
    return save(fig, path)


def histograms(samples: dict[str, np.ndarray], path: Path) -> Path:
    """Pre-activation histograms: the top-WD neuron of a few layers beside a median-WD neuron."""
    names = list(samples)
    cols = 2
    rows = max(1, (len(names) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        v = samples[name]
        ax.hist(v, bins=120, color="tab:red" if "top" in name else "tab:gray", alpha=0.8)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("pre-activation histograms (first windows)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def wd_sides(table: pd.DataFrame, path: Path) -> Path:
    """wd_neg_raw against wd_pos_raw: how much of each neuron's W1 lies in the raw negative region h < 0
    (z < z0 = -mean/std) versus h > 0, WN highlighted. Not the split at the mean (wd_below_mean)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    rest = table[~table.is_wn]
    ax.scatter(rest.wd_pos_raw, rest.wd_neg_raw, s=2, alpha=0.3, color="tab:gray", label="all neurons")
    wn = table[table.is_wn]
    ax.scatter(wn.wd_pos_raw, wn.wd_neg_raw, s=8, color="tab:red", label="WN")
    hi = float(max(table.wd_pos_raw.max(), table.wd_neg_raw.max()))
    ax.plot([0, hi], [0, hi], "k--", lw=0.7)
    ax.set(xlabel="wd_pos_raw (W1 over h > 0)", ylabel="wd_neg_raw (W1 over h < 0)",
           title="W1 in the raw negative vs positive region")
    ax.legend(fontsize=8)
    return save(fig, path)


def md_vs_wd(table: pd.DataFrame, path: Path) -> Path:
    """Mapping difficulty against WD (log-log), WN highlighted."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ok = table[(table.md > 0) & (table.wd > 0)]
    ax.scatter(ok.wd[~ok.is_wn], ok.md[~ok.is_wn], s=2, alpha=0.3, color="tab:gray", label="all neurons")
    ax.scatter(ok.wd[ok.is_wn], ok.md[ok.is_wn], s=8, color="tab:red", label="WN")
    rho = ok[["wd", "md"]].corr(method="spearman").iloc[0, 1] if len(ok) > 2 else float("nan")
    ax.set(xscale="log", yscale="log", xlabel="WD", ylabel="mapping difficulty", title=f"MD vs WD (Spearman {rho:.2f})")
    ax.legend(fontsize=8)
    return save(fig, path)


def scan_figures(table: pd.DataFrame, samples: dict[str, np.ndarray], out: str | Path) -> list[Path]:
    """All figures of a scan, under ``out/figures``."""
    fig_dir = Path(out) / "figures"
    return [
        wd_by_layer(table, fig_dir / "wd_by_layer.png"),
        wn_per_layer(table, fig_dir / "wn_per_layer.png"),
        histograms(samples, fig_dir / "preact_histograms.png"),
        wd_sides(table, fig_dir / "wd_neg_raw_vs_wd_pos_raw.png"),
        md_vs_wd(table, fig_dir / "md_vs_wd.png"),
    ]


# ------------------------------------------------------------------------------------------------ ablation
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
