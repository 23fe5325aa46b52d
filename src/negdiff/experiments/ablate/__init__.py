"""The paper's headline experiment: sign-specific ablation of Wasserstein neurons against controls.

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.ablate.config import CONTROLS, MIN_CALIB_WINDOWS, AblateConfig
from negdiff.runs import Command, Step, forward_to

__all__ = ["CONTROLS", "MIN_CALIB_WINDOWS", "STEP", "AblateConfig"]

STEP = Step("ablate", AblateConfig, "ablation.json", upstream=("scan",), section=None,
            module="negdiff.experiments.ablate.run",
            command=Command(help="sign-specific ablation of Wasserstein neurons vs controls, with statistics",
                            force="redo finished conditions", inputs=(("--scan", "folder of a finished `negdiff scan`"),),
                            switches=(("--full", "paper-size run: every item of every task (GPU advised)"),
                                      ("--no-dose", "skip the dose-response sweep"))))

#: the experiment's own names (run_ablate, run_condition, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.ablate.run")
