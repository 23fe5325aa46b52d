"""The scan's figures (WD by layer, WNs per layer, histograms, the two raw-sign sides, MD vs WD),
drawn from its neuron table, so they can be redrawn from a run folder alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from negdiff.figures import plt, save


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
    ax.set(yscale="log", xlabel="layer", ylabel="WD to N(0,1) (σ units, log)", title="Wasserstein distance per layer")
    return save(fig, path)


def wn_per_layer(table: pd.DataFrame, path: Path) -> Path:
    """How many WN each layer holds under the per-layer and the global selection."""
    counts = table.groupby("layer")[["is_wn", "is_wn_global"]].sum()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(counts)), 3.2))
    x = counts.index.to_numpy()
    ax.bar(x - 0.2, counts.is_wn, width=0.4, label="per layer (default)")
    ax.bar(x + 0.2, counts.is_wn_global, width=0.4, label="global")
    ax.set(xlabel="layer", ylabel="Wasserstein neurons (count)", title="Wasserstein neurons per layer, both scopes")
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
        ax.set(xlabel="pre-activation h", ylabel="tokens (log)")
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
    ax.set(xlabel="wd_pos_raw: W1 over h > 0 (σ units)", ylabel="wd_neg_raw: W1 over h < 0 (σ units)",
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
    ax.set(xscale="log", yscale="log", xlabel="WD to N(0,1) (σ units, log)", ylabel="mapping difficulty (ratio, log)", title=f"MD vs WD (Spearman {rho:.2f})")
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
