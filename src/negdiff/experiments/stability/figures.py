"""The stability step's figures: membership probabilities, replicate Jaccard, overlap by corpus and budget, and
the ablation on redrawn sets; drawn from the record and the probability table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from negdiff.figures import plt, save
from negdiff.neuronset import NeuronSet


def bootstrap_panel(record: dict[str, Any], probs: pd.DataFrame, sets: list[NeuronSet], reference: NeuronSet,
                    path: Path) -> Path:
    """(a) each neuron's probability of being a WN over replicates; (b) the replicates' Jaccard with the reference."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(0, 1, 21)
    axes[0].hist(probs.p_wn[probs.in_reference], bins=bins, color="tab:red", alpha=0.8, label="reference WN")
    axes[0].hist(probs.p_wn[~probs.in_reference & (probs.p_wn > 0)], bins=bins, color="tab:gray", alpha=0.7,
                 label="other neurons (WN in >= 1 replicate)")
    axes[0].set(xlabel="P(WN) over bootstrap replicates (fraction)", ylabel="neurons (count)",
                title="(a) membership probability")
    axes[0].legend()
    j = np.array([reference.jaccard(s) for s in sets])
    axes[1].hist(j, bins=20, color="tab:blue", alpha=0.8)
    axes[1].axvline(j.mean(), color="k", lw=0.8, ls="--", label=f"mean {j.mean():.3f}")
    axes[1].set(xlabel="Jaccard with the full-data WN set", ylabel="replicates (count)",
                title="(b) replicate WN sets vs the full-data set")
    axes[1].legend()
    fig.suptitle(record["resampling"], fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def overlap_panel(record: dict[str, Any], path: Path) -> Path:
    """Jaccard of each corpus's WN set with the reference, by token budget."""
    rows = pd.DataFrame(record["overlap"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for corpus, r in rows.groupby("corpus", sort=False):
        r = r.sort_values("tokens")
        ax.plot(r.tokens, r.jaccard_reference, "o-", ms=4, label=corpus)
    ax.set(xscale="log", xlabel="tokens read (log)", ylabel="Jaccard with the reference WN set", ylim=(-0.03, 1.03),
           title=f"WN set by corpus and budget (reference: {record['config']['corpus']}, "
                 f"{record['tokens_read'][record['config']['corpus']]:,} tokens)")
    ax.legend()
    fig.tight_layout()
    return save(fig, path)


def redraw_panel(record: dict[str, Any], path: Path) -> Path:
    """wn_neg's change to baseline on the reference set and on each redrawn set, with 95% CIs."""
    a = record["ablation"]
    names = list(a["delta"])
    fig, axes = plt.subplots(1, len(a["tasks"]), figsize=(3.6 * len(a["tasks"]), 3.4), squeeze=False)
    for ax, t in zip(axes[0], a["tasks"]):
        k = 1 if t == "perplexity" else 100
        cells = [a["delta"][n][t] for n in names]
        val = np.array([k * c["diff"] for c in cells])
        err = np.array([[k * (c["diff"] - c["ci_low"]), k * (c["ci_high"] - c["diff"])] if c.get("ci_low") is not None
                        else [0, 0] for c in cells]).T
        ax.bar(np.arange(len(names)), val, yerr=err, capsize=2,
               color=["tab:red" if n.endswith("reference") else "tab:gray" for n in names])
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(np.arange(len(names)), [n.removeprefix("wn_neg_") for n in names], rotation=30, ha="right")
        ax.set(title=t, ylabel="Δ perplexity vs baseline" if t == "perplexity" else "Δ accuracy (points)")
    fig.suptitle("wn_neg on the full-data WN set and on sets redrawn from bootstrap replicates; whiskers: 95% CI "
                 "(items or windows)", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def stability_figures(record: dict[str, Any], probs: pd.DataFrame, sets: list[NeuronSet], reference: NeuronSet,
                      folder: Path) -> list[Path]:
    """bootstrap.png, overlap.png and (with a redrawn ablation) redraws.png."""
    paths = [bootstrap_panel(record, probs, sets, reference, folder / "bootstrap.png"),
             overlap_panel(record, folder / "overlap.png")]
    if record.get("ablation"):
        paths.append(redraw_panel(record, folder / "redraws.png"))
    return paths
