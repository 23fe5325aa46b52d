"""``negdiff pos``: where the excess surprisal of an ablation lands, by gold part of speech.

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.pos.config import DEFAULT_MAX_WORDS, PosConfig
from negdiff.runs import Command, Step, forward_to

__all__ = ["DEFAULT_MAX_WORDS", "STEP", "PosConfig"]

STEP = Step("pos", PosConfig, "pos.json", upstream=("scan", "ablate"), section="Where the excess surprisal lands (gold UPOS)",
            module="negdiff.experiments.pos.run",
            command=Command(help="excess surprisal of an ablation by gold part of speech (UD EWT)",
                            force="rescore every condition",
                            inputs=(("--scan", "folder of a finished `negdiff scan` (its wn.json)"),)))

#: the experiment's own names (run_pos, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.pos.run")
