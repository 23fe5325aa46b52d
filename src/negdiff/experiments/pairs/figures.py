"""The pairs step's figures (neuron panels, the negative share by layer), drawn from its tables, so they
can be redrawn from a run folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from negdiff.figures import plt, save

COLORS = {"wn": "tab:red", "random": "tab:gray"}
SIGN_COLORS = {"both_negative": "tab:blue", "mixed": "tab:purple", "both_positive": "tab:orange"}


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
    ax.set(xlabel="pre-activation h", ylabel="tokens (log)", title="(b) pre-activations; top-pair values marked")
    ax.title.set_fontsize(9)
    ax = axes[2]
    rest, top = points[~points.is_top], points[points.is_top]
    ax.scatter(rest.d_norm, rest.e_norm, s=3, color="0.6", alpha=0.5, label="sampled pairs")
    ax.scatter(top.d_norm, top.e_norm, s=18, color="tab:red", label="top pairs")
    ax.set(xlabel="input distance / max (ratio)", ylabel="|output difference| / median (ratio)", title="(c) mapping difficulty terms")
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
        ax.set(xlabel="layer", ylabel="top pairs (%)", title=f"top MD pairs with {label} (95% CI over neurons)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def pairs_figures(record: dict[str, Any], table: pd.DataFrame, preacts: pd.DataFrame, points: pd.DataFrame,
                  folder: Path) -> list[Path]:
    """negative_share.png and one panel_L<layer>.png per panel neuron."""
    from negdiff.experiments.pairs.stats import per_layer_frame

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
