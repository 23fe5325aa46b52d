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


def save(fig, path: Path) -> Path:
    """Write a figure atomically and close it."""
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path
