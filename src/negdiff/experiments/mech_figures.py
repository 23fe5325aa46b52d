"""Figures of the mechanism analyses (``negdiff pairs`` and ``negdiff layers``), drawn from their tables.

Each function takes what the run writes (JSON record, parquet tables) and returns the PNG paths, so a
figure can be redrawn from a run folder alone. Written atomically through :func:`negdiff.figures.save`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from negdiff.figures import plt, save

COLORS = {"wn": "tab:red", "random": "tab:gray"}
SIGN_COLORS = {"both_negative": "tab:blue", "mixed": "tab:purple", "both_positive": "tab:orange"}


# ---------------------------------------------------------------------------------------------- pairs
def _tag(t) -> str:
    return f"/{t}" if isinstance(t, str) else ""


def _pair_line(r) -> str:
    return (f"{int(r['rank']):>2} {r['show_a'][:12]:>12}{_tag(r.get('upos_a'))} {r['y_a']:+6.2f} | "
            f"{r['show_b'][:12]}{_tag(r.get('upos_b'))} {r['y_b']:+6.2f}  {r['sign_class'].replace('_', ' ')}")


def neuron_panel(rows: pd.DataFrame, preacts: np.ndarray, points: pd.DataFrame, title: str, path: Path) -> Path:
    """The paper's neuron panel: (a) top pairs as text, (b) pre-activation histogram with the pair values
    marked, (c) normalized input distance vs normalized output distance, top pairs highlighted."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1.0, 1, 1]})
    ax = axes[0]
    ax.axis("off")
    rows = rows.sort_values("rank")
    text = "\n".join(_pair_line(r) for _, r in rows.iterrows())
    ax.text(0, 1, text, family="monospace", fontsize=8, va="top", transform=ax.transAxes)
    ax.set_title("(a) top pairs: token/gold UPOS, pre-activation", fontsize=9, loc="left")
    ax = axes[1]
    ax.hist(preacts, bins=100, color="0.6")
    ax.set_yscale("log")
    ax.axvline(0, color="k", lw=0.6)
    for _, r in rows.iterrows():
        for y in (r["y_a"], r["y_b"]):
            ax.axvline(y, color=SIGN_COLORS[r["sign_class"]], lw=0.8, alpha=0.7)
    ax.set(xlabel="pre-activation", ylabel="tokens", title="(b) pre-activations; top-pair values marked")
    ax.title.set_fontsize(9)
    ax = axes[2]
    rest, top = points[~points.is_top], points[points.is_top]
    ax.scatter(rest.d_norm, rest.e_norm, s=3, color="0.6", alpha=0.5, label="sampled pairs")
    ax.scatter(top.d_norm, top.e_norm, s=18, color="tab:red", label="top pairs")
    ax.set(xlabel="input distance / max", ylabel="|output difference| / median", title="(c) mapping difficulty terms")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def negative_share(per_layer: pd.DataFrame, path: Path) -> Path:
    """Share of top pairs in the negative region per layer (and 'at least one negative'), WN vs random."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharex=True)
    for ax, measure, label in ((axes[0], "both_negative", "both values < 0"),
                               (axes[1], "any_negative", "at least one value < 0")):
        for group in ("wn", "random"):
            r = per_layer[(per_layer.group == group) & (per_layer.measure == measure)].sort_values("layer")
            ax.plot(r.layer, 100 * r.value, "o-", ms=3, color=COLORS[group], label=group)
            ax.fill_between(r.layer, 100 * r.ci_low, 100 * r.ci_high, color=COLORS[group], alpha=0.2)
        ax.set(xlabel="layer", ylabel="% of top pairs", title=f"top MD pairs with {label} (95% CI over neurons)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def pairs_figures(record: dict[str, Any], table: pd.DataFrame, preacts: pd.DataFrame, points: pd.DataFrame,
                  folder: Path) -> list[Path]:
    """negative_share.png and one panel_L<layer>.png per panel neuron."""
    from negdiff.experiments.pairs_stats import per_layer_frame

    paths = [negative_share(per_layer_frame(record["results"]["per_layer"]), folder / "negative_share.png")]
    for p in record["panels"]:
        layer, n = p["layer"], p["neuron"]
        rows = table[(table.group == "wn") & (table.layer == layer) & (table.neuron == n)]
        pre = preacts.value[(preacts.layer == layer) & (preacts.neuron == n)].to_numpy()
        pts = points[(points.layer == layer) & (points.neuron == n)]
        wd = f", WD {p['wd']:.3f}" if p.get("wd") is not None else ""
        title = f"L{layer}.N{n}: the top Wasserstein neuron of layer {layer}{wd} ({record['corpus']['name']})"
        paths.append(neuron_panel(rows, pre, pts, title, folder / f"panel_L{layer}.png"))
    return paths


# ---------------------------------------------------------------------------------------------- layers
HEADLINES = (("perplexity", "overall", "nll", "Δ perplexity (t, windows)", 1),
             ("blimp", "overall", "acc", "Δ BLiMP acc (pts)", 100), ("tse", "overall", "acc", "Δ TSE acc (pts)", 100))
#: Said under every layers figure: a bar or point without a whisker had too few units for an interval.
NO_CI = "no whisker/band: n too small (< 10 windows or items), point estimate only"


def _cells(deltas: pd.DataFrame, task: str, readout: str, measure: str, conds: list[str]) -> pd.DataFrame:
    d = deltas[(deltas.task == task) & (deltas.readout == readout) & (deltas.measure == measure)].set_index("condition")
    return d.reindex(conds)


def group_deltas(record: dict[str, Any], deltas: pd.DataFrame, path: Path) -> Path:
    """Per-group (one group ablated at a time) deltas to baseline with 95% paired CIs (none when n is too small)."""
    groups = record["groups"]
    conds = [g["single"] for g in groups]
    heads = [h for h in HEADLINES if (deltas.task == h[0]).any()]
    fig, axes = plt.subplots(1, len(heads), figsize=(3.8 * len(heads), 3.3), squeeze=False)
    x = np.arange(len(conds))
    for ax, (task, readout, measure, label, scale) in zip(axes[0], heads):
        c = _cells(deltas, task, readout, measure, conds)
        err = np.nan_to_num(np.abs(np.stack([c["diff"] - c.ci_low, c.ci_high - c["diff"]])) * scale)
        ax.bar(x, scale * c["diff"], yerr=err, capsize=3, color="tab:red")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, [g["label"] for g in groups], rotation=45, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"WN zero_negative in one layer group at a time ({NO_CI})", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def cumulative_curves(record: dict[str, Any], deltas: pd.DataFrame, path: Path) -> Path:
    """Deltas as groups are added from the bottom (1..k) and from the top (n-k+1..n), with CIs."""
    heads = [h for h in HEADLINES if (deltas.task == h[0]).any()]
    fig, axes = plt.subplots(1, len(heads), figsize=(3.8 * len(heads), 3.3), squeeze=False)
    for ax, (task, readout, measure, label, scale) in zip(axes[0], heads):
        for direction, color in (("bottom", "tab:blue"), ("top", "tab:green")):
            conds = record["cumulative"][direction]
            c = _cells(deltas, task, readout, measure, conds)
            k = np.arange(1, len(conds) + 1)
            ax.plot(k, scale * c["diff"], "o-", ms=3, color=color, label=f"from the {direction}")
            ax.fill_between(k, scale * c.ci_low, scale * c.ci_high, color=color, alpha=0.2)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(k)
        ax.set(xlabel="groups ablated (k)", title=label)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.suptitle(f"WN zero_negative in groups 1..k (bottom) and n-k+1..n (top) ({NO_CI})", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def phenomenon_heatmap(record: dict[str, Any], deltas: pd.DataFrame, path: Path) -> Path:
    """Accuracy change (points) per phenomenon (BLiMP term, TSE group) x single layer group."""
    groups = record["groups"]
    conds = [g["single"] for g in groups]
    acc = deltas[deltas.measure == "acc"]
    rows = acc[acc.condition.isin(conds) & (
        ((acc.task == "blimp") & (acc.kind == "term")) | ((acc.task == "tse") & (acc.kind == "group")))]
    if rows.empty:
        rows = acc[acc.condition.isin(conds)]
    labels = list(dict.fromkeys(f"{t}: {r}" for t, r in zip(rows.task, rows.readout)))
    grid = np.full((len(labels), len(conds)), np.nan)
    for _, r in rows.iterrows():
        grid[labels.index(f"{r.task}: {r.readout}"), conds.index(r.condition)] = 100 * r["diff"]
    fig, ax = plt.subplots(figsize=(1.0 * len(conds) + 3.5, 0.32 * len(labels) + 1.5))
    lim = (np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 0.0) or 1.0
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.0f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(conds)), [g["label"] for g in groups], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="Δ accuracy (points)")
    ax.set_title("phenomenon x layer group (WN zero_negative in that group only)\n"
                 f"descriptive: {grid.size} unadjusted cells, no CIs shown", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def layers_figures(record: dict[str, Any], deltas: pd.DataFrame, folder: Path) -> list[Path]:
    """group_deltas.png, cumulative.png and phenomenon_heatmap.png."""
    paths = [group_deltas(record, deltas, folder / "group_deltas.png"),
             cumulative_curves(record, deltas, folder / "cumulative.png")]
    if (deltas.measure == "acc").any():
        paths.append(phenomenon_heatmap(record, deltas, folder / "phenomenon_heatmap.png"))
    return paths
