"""What decides the dynamics step's numbers: :class:`DynamicsConfig`, whose fields are the flags of
``negdiff dynamics`` (torch-free, so the command line is built without the machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import N_BOOT
from negdiff.choices import CLI_CRITERIA, SCOPES, check_criterion, check_scope
from negdiff.errors import NegdiffError
from negdiff.experiments.scan.config import ScanConfig
from negdiff.options import opt
from negdiff.runs import check_counts, check_fraction, check_n_boot, check_perplexity_sizes

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
        check_perplexity_sizes(self.ppl_tokens, self.ppl_window)
        check_n_boot(self.n_boot)
        self.scan_config()  # the scan's own checks of its settings

    def scan_config(self) -> ScanConfig:
        """The per-checkpoint scan's config (the scan is the one step dynamics builds on: pyproject's contracts)."""
        return ScanConfig(corpus=self.corpus, tokens=self.tokens, window=self.window, md_pairs=self.md_pairs,
                          top_pairs=1, fraction=self.fraction, scope=self.scope, criterion=self.criterion,
                          seed=self.seed, check_windows=0)

    def eval_config(self, task: str) -> Any:
        """The EvalConfig of one task of the per-checkpoint ablation (ablate's rule: each family its own size;
        the BOS policy is the default, prefix)."""
        from negdiff.tasks.base import step_eval_config

        return step_eval_config(self, task)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}
