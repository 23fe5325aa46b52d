"""``negdiff quadrants``: does the Wasserstein neurons' negative-region harm live in one gate-by-up sign quadrant?

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.quadrants.config import QuadrantsConfig
from negdiff.runs import Command, Step, forward_to

__all__ = ["STEP", "QuadrantsConfig"]

STEP = Step("quadrants", QuadrantsConfig, "quadrants.json", upstream=("scan",), section="Gate-by-up sign quadrants",
            module="negdiff.experiments.quadrants.run", in_pipeline=False,
            command=Command(help="gated MLPs: zero one gate-by-up sign quadrant on the WN and on random neurons",
                            description="For SwiGLU/GeGLU models: the contribution act(gate) x up of the selected "
                            "neurons is zeroed in one sign quadrant at a time (e.g. gate < 0 and up > 0), on the scan's "
                            "WN and on layer-matched random sets, read out like the headline ablation.",
                            force="re-evaluate finished conditions",
                            inputs=(("--scan", "folder of a finished `negdiff scan` (its wn.json)"),)))

#: the experiment's own names (run_quadrants, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.quadrants.run")
