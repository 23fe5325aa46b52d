"""The layer-group step's figures (group deltas, cumulative curves, the phenomenon heatmap), drawn from its
record and delta table, so they can be redrawn from a run folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from negdiff.figures import plt, save

HEADLINES = (("perplexity", "overall", "nll", "perplexity (t-interval over windows)", 1),
             ("blimp", "overall", "acc", "BLiMP accuracy (items resampled)", 100), ("tse", "overall", "acc", "TSE accuracy (items resampled)", 100))
#: The y axis of each headline panel: the change to baseline in the read-out's own unit.
UNITS = {"perplexity": "Δ perplexity vs baseline", "blimp": "Δ accuracy (points)", "tse": "Δ accuracy (points)"}
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
        ax.set_ylabel(UNITS[task])
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
        ax.set(xlabel="groups ablated (k)", ylabel=UNITS[task], title=label)
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
