"""The quadrant step's figure: change to baseline per quadrant, WN beside random, with 95% CIs, drawn from
its record alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from negdiff.figures import plt, save
from negdiff.gate_up import QUADRANTS

PANELS = (("perplexity", "perplexity", "Δ perplexity vs baseline", 1), ("blimp", "BLiMP accuracy", "Δ accuracy (points)", 100),
          ("tse", "TSE accuracy", "Δ accuracy (points)", 100))


def quadrant_deltas(record: dict[str, Any], path: Path) -> Path:
    """One panel per read-out: the 4 quadrants on the x axis, WN (red) and random (grey) bars with 95% CIs."""
    qs = [m.removeprefix("zero_") for m in QUADRANTS]
    panels = [p for p in PANELS if any(p[0] in record["delta"].get(f"wn_{q}", {}) for q in qs)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    x = np.arange(len(qs))
    for ax, (key, title, ylabel, scale) in zip(axes[0], panels):
        for k, (who, color) in enumerate((("wn", "tab:red"), ("random", "tab:gray"))):
            cells = [record["delta"].get(f"{who}_{q}", {}).get(key) for q in qs]
            val = np.array([scale * c["diff"] if c else np.nan for c in cells])
            err = np.array([[scale * (c["diff"] - c["ci_low"]), scale * (c["ci_high"] - c["diff"])]
                            if c and c.get("ci_low") is not None else [0, 0] for c in cells]).T
            ax.bar(x + (k - 0.5) * 0.38, val, 0.38, yerr=err, capsize=2, color=color,
                   label="WN" if who == "wn" else "random (sets inside the CI)")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, [record["modes"][q].replace(", ", "\n") for q in qs], fontsize=7)
        ax.set(title=title, ylabel=ylabel)
        if key == "perplexity" and np.nanmax(np.abs(ax.get_ylim())) > 20:  # the gate > 0 quadrants dwarf the rest
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_ylabel(ylabel + " (symlog)")
        ax.legend()
    fig.suptitle("zeroing one gate-by-up sign quadrant of act(gate) x up; whiskers: 95% CI (none: n < 10)", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def quadrant_figures(record: dict[str, Any], folder: Path) -> list[Path]:
    """quadrant_deltas.png."""
    return [quadrant_deltas(record, folder / "quadrant_deltas.png")]
