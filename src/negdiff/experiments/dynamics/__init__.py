"""``negdiff dynamics``: Wasserstein neurons and the ablation's harm across training checkpoints.

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.dynamics.config import TASK_METRIC, DynamicsConfig
from negdiff.experiments.dynamics.spec import SHORTHANDS
from negdiff.runs import Command, Step, forward_to

__all__ = ["STEP", "TASK_METRIC", "DynamicsConfig"]

STEP = Step("dynamics", DynamicsConfig, "dynamics.json", upstream=(), section="Training dynamics",
            module="negdiff.experiments.dynamics.run", in_pipeline=False,
            command=Command(help="WN and the ablation's harm across training checkpoints (Pythia or train-mini)",
                            description="Scan and ablate every checkpoint; follow the final checkpoint's WN (fixed "
                            "cohort) and the re-identified WN over training.",
                            force="redo finished checkpoints", model="runtime",
                            inputs=(("--checkpoints", "HUB_ID@REV1,REV2,... (shorthands: "
                                     + ", ".join(f"@{k}" for k in SHORTHANDS) + "), a train-mini output folder, or a "
                                     "comma list / quoted glob of local checkpoint folders"),)))

#: the experiment's own names (run_dynamics, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.dynamics.run")
