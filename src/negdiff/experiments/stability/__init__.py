"""``negdiff stability``: how stable is the WN set under resampling, across corpora and token budgets?

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.stability.config import StabilityConfig
from negdiff.runs import Command, Step, forward_to

__all__ = ["STEP", "StabilityConfig"]

STEP = Step("stability", StabilityConfig, "stability.json", upstream=(), section="Stability of the WN set",
            module="negdiff.experiments.stability.run", in_pipeline=False,
            command=Command(help="WN set stability: shard bootstrap, corpora, token budgets, and the ablation redrawn",
                            description="Streams the corpus into mergeable per-shard accumulators; bootstrap replicates "
                            "resample the shards, so each neuron gets a probability of being a WN; the WN set is also "
                            "compared across corpora and token budgets, and the headline ablation is rerun on WN sets "
                            "redrawn from replicates.",
                            force="redo the scans and the redrawn ablation"))

#: the experiment's own names (run_stability, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.stability.run")
