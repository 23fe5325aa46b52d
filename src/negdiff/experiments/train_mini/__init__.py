"""``negdiff train-mini``: train a small causal LM from scratch, saving log-spaced checkpoints for ``dynamics``.

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.train_mini.config import ARCHS, TrainConfig, save_steps
from negdiff.runs import Command, Step, forward_to

__all__ = ["ARCHS", "STEP", "TrainConfig", "save_steps"]

STEP = Step("train-mini", TrainConfig, "train.json", upstream=(), section=None,
            module="negdiff.experiments.train_mini.run", in_pipeline=False,
            command=Command(help="train a small LM from scratch with log-spaced checkpoints (for dynamics)",
                            description="Train a Llama-style (SiLU) or GPT-NeoX-style (GELU) model of a few million "
                            "parameters on a local corpus; checkpoints are Hugging Face folders DIR/step{N}/.",
                            force="replace a finished or different run in --out", model="threads",
                            out="output folder (checkpoints DIR/step{N}/, train.json)"))

#: the experiment's own names (train, lr_at, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.train_mini.run")
