"""The figures' shared style: matplotlib on the Agg backend and an atomic PNG writer.

Why only this here: each step draws its own figures in its package (``experiments/<step>/figures.py``),
because a figure reads the step's analysis tables; what they share (backend, DPI, atomic writes) lives
below every step so no step imports another.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from negdiff.results import atomic_write_with  # noqa: E402

#: One look for every figure: readable tick labels at print size, light grid, no top/right frame.
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 7, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5,
         "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 110, "savefig.dpi": 110}
plt.rcParams.update(STYLE)

#: scatter collections with more points than this are embedded as pixels in the SVG (a 46k-neuron scatter as
#: vector paths would be megabytes); axes, text and lines stay vector
RASTER_POINTS = 2000


def save(fig, path: Path) -> Path:
    """Write a figure atomically as PNG (the report's) and SVG beside it (for print and papers), and close it."""
    for ax in fig.axes:
        for coll in ax.collections:
            if len(getattr(coll, "get_offsets", lambda: [])()) > RASTER_POINTS:
                coll.set_rasterized(True)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    atomic_write_with(path.with_suffix(".svg"), lambda tmp: fig.savefig(tmp, format="svg", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path
