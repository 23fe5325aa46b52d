"""What decides the dynamics step's numbers: :class:`DynamicsConfig`, whose fields are the flags of
``negdiff dynamics`` (torch-free, so the command line is built without the machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import N_BOOT
from negdiff.choices import CLI_CRITERIA, SCOPES
from negdiff.errors import NegdiffError
from negdiff.experiments.ablate.config import MIN_CALIB_WINDOWS, AblateConfig
from negdiff.experiments.scan.config import ScanConfig
from negdiff.options import opt

#: The headline metric of each task dynamics follows.
TASK_METRIC = {"perplexity": "ppl", "blimp": "acc", "tse": "acc"}


@dataclass
class DynamicsConfig:
    """Sizes of the per-checkpoint scan and ablation (small: a checkpoint takes seconds for train-mini)."""

    corpus: str = opt("wikitext2", "scan corpus")
    tokens: int = opt(32_768, "scan tokens per checkpoint")
    window: int | None = opt(None, "scan window", shown="min(2048, the model's max length)")
    md_pairs: int = opt(1024, "mapping-difficulty pairs per layer (not used here: kept minimal)")
    fraction: float = opt(0.01, "fraction of neurons selected as WN")
    scope: str = opt("per_layer", "take the fraction in every layer or over the whole model", choices=SCOPES)
    criterion: str = opt("wd", "what ranks the neurons", choices=CLI_CRITERIA)
    tasks: tuple[str, ...] = opt(("perplexity", "blimp", "tse"), "a subset of perplexity,blimp,tse")
    blimp_limit: int | None = opt(20, "pairs per BLiMP paradigm", zero_all=True)
    tse_limit: int | None = opt(30, "pairs per TSE task", zero_all=True)
    ppl_tokens: int | None = opt(20_480, "perplexity tokens (>= 10 windows: the fewest an interval is given for)",
                                 zero_all=True)
    ppl_window: int = opt(2048, "tokens per perplexity window (capped at the model's length: train-mini's 256 "
                          "gives more windows)")
    seeds: int = opt(2, "random control sets (1 set gives no interval for random_neg)")
    seed: int = opt(0, "scan, subsample and bootstrap seed")
    n_boot: int = opt(N_BOOT, "bootstrap replicates")
    batch_tokens: int | None = opt(None, "padded tokens per forward pass", shown="256 on CPU, 16384 on CUDA")

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASK_METRIC]
        if bad or not self.tasks:
            raise NegdiffError(f"--tasks: dynamics scores {', '.join(TASK_METRIC)}; got {', '.join(bad) or 'none'}")
        if self.seeds < 1:
            raise NegdiffError(f"--seeds must be at least 1, got {self.seeds}")
        self.ablate_config()  # ablate's checks of the sizes (>= 10 perplexity windows, n_boot), before any model work

    def scan_config(self) -> ScanConfig:
        return ScanConfig(corpus=self.corpus, tokens=self.tokens, window=self.window, md_pairs=self.md_pairs,
                          top_pairs=1, fraction=self.fraction, scope=self.scope, criterion=self.criterion,
                          seed=self.seed, check_windows=0)

    def ablate_config(self) -> AblateConfig:
        return AblateConfig(tasks=self.tasks, criterion=self.criterion, scope=self.scope, fraction=self.fraction,
                            seeds=self.seeds, blimp_limit=self.blimp_limit, tse_limit=self.tse_limit,
                            ppl_tokens=self.ppl_tokens, ppl_window=self.ppl_window, seed=self.seed,
                            n_boot=self.n_boot, batch_tokens=self.batch_tokens, dose_fractions=(),
                            calib_tokens=MIN_CALIB_WINDOWS * self.ppl_window)  # no calibration here

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}
