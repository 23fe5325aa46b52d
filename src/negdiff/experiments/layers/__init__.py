"""``negdiff layers``: which depth of Wasserstein neurons carries the syntax damage, and whether it adds up.

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.layers.config import LayersConfig
from negdiff.runs import Command, Step, forward_to

__all__ = ["STEP", "LayersConfig"]

STEP = Step("layers", LayersConfig, "layers.json", upstream=("scan",), section="Layer groups",
            module="negdiff.experiments.layers.run",
            command=Command(help="WN negative-zeroed one layer group at a time and cumulatively: syntax by depth",
                            force="re-evaluate finished conditions",
                            inputs=(("--scan", "folder of a finished `negdiff scan` (its wn.json)"),)))

#: the experiment's own names (run_layers, layer_groups, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.layers.run")
