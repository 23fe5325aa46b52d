"""``negdiff pairs``: the inputs a Wasserstein neuron sends far apart, and whether they sit on its negative side.

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.pairs.config import PairsConfig
from negdiff.runs import Command, Step, forward_to

__all__ = ["STEP", "PairsConfig"]

STEP = Step("pairs", PairsConfig, "pairs.json", upstream=("scan",),
            section="Negative differentiation: the top pairs of WN vs random neurons", module="negdiff.experiments.pairs.run",
            command=Command(help="top mapping-difficulty pairs of WN vs random neurons: sign region, gold POS",
                            force="redo a finished run",
                            inputs=(("--scan", "folder of a finished `negdiff scan` (wn.json, random.json)"),)))

#: the experiment's own names (run_pairs, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.pairs.run")
