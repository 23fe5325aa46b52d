"""What decides the dynamics step's numbers: :class:`DynamicsConfig`, whose fields are the flags of
``negdiff dynamics`` (torch-free, so the command line is built without the machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import MIN_UNITS, N_BOOT
from negdiff.choices import CLI_CRITERIA, SCOPES, check_criterion, check_scope
from negdiff.errors import NegdiffError
from negdiff.experiments.scan.config import ScanConfig
from negdiff.options import opt
from negdiff.runs import check_counts, check_fraction

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
        """Refuse sizes whose statistics would mean nothing (as ablate and scan would), before any model work."""
        bad = [t for t in self.tasks if t not in TASK_METRIC]
        if bad or not self.tasks:
            raise NegdiffError(f"--tasks: dynamics scores {', '.join(TASK_METRIC)}; got {', '.join(bad) or 'none'}")
        check_counts(self, (("--seeds", "seeds"), ("--tokens", "tokens"), ("--md-pairs", "md_pairs"),
                            ("--blimp-limit", "blimp_limit"), ("--tse-limit", "tse_limit"), ("--ppl-tokens", "ppl_tokens"),
                            ("--n-boot", "n_boot"), ("--batch-tokens", "batch_tokens")))
        check_fraction("--fraction", self.fraction)
        check_criterion(self.criterion)
        check_scope(self.scope)
        if self.ppl_window < 16:
            raise NegdiffError(f"--ppl-window must be >= 16 tokens, got {self.ppl_window}")
        if self.ppl_tokens is not None and self.ppl_tokens // self.ppl_window < MIN_UNITS:
            raise NegdiffError(f"--ppl-tokens {self.ppl_tokens} gives {self.ppl_tokens // self.ppl_window} windows of "
                               f"{self.ppl_window}; perplexity intervals need >= {MIN_UNITS}: raise --ppl-tokens to "
                               f"{MIN_UNITS * self.ppl_window} or shorten --ppl-window")
        if self.n_boot < 1000:
            raise NegdiffError(f"--n-boot must be >= 1000 (decisions use >= {N_BOOT}), got {self.n_boot}")
        self.scan_config()  # the scan's own checks of its settings

    def scan_config(self) -> ScanConfig:
        """The per-checkpoint scan's config (the scan is the one step dynamics builds on: pyproject's contracts)."""
        return ScanConfig(corpus=self.corpus, tokens=self.tokens, window=self.window, md_pairs=self.md_pairs,
                          top_pairs=1, fraction=self.fraction, scope=self.scope, criterion=self.criterion,
                          seed=self.seed, check_windows=0)

    def eval_config(self, task: str) -> Any:
        """The EvalConfig of one task of the per-checkpoint ablation (ablate's rule: each family its own size)."""
        from negdiff.scoring import ScoringConfig
        from negdiff.tasks.base import EvalConfig, family_limit

        return EvalConfig(scoring=ScoringConfig(bos="prefix", max_batch_tokens=self.batch_tokens),
                          limit=family_limit(task, self.blimp_limit, self.tse_limit, None), seed=self.seed,
                          n_boot=min(self.n_boot, 1000), ppl_window=self.ppl_window,
                          max_tokens=self.ppl_tokens if task == "perplexity" else None)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}
