"""What decides the stability step's numbers: :class:`StabilityConfig`, whose fields are the flags of
``negdiff stability`` (torch-free, so the command line is built without the machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import MIN_UNITS, N_BOOT
from negdiff.bos import BOS_POLICIES
from negdiff.errors import NegdiffError
from negdiff.options import opt
from negdiff.runs import check_counts, check_fraction, check_n_boot, check_perplexity_sizes

#: criteria the per-shard accumulators can rank by (mapping difficulty needs pairs a shard scan does not draw)
STAT_CRITERIA = ("wd", "wd_neg_raw", "wd_below_mean", "kurtosis")


@dataclass
class StabilityConfig:
    """Sizes of the stability run (defaults: ~20 min on SmolLM2-135M with 2 threads)."""

    corpus: str = opt("wikitext2", "the corpus that is sharded and bootstrapped (also the reference WN set)")
    tokens: int = opt(262_144, "tokens of that corpus (whole windows; fewer if the corpus holds fewer)")
    budgets: tuple[int, ...] = opt((16_384, 65_536, 262_144), "token budgets at which each corpus's WN set is taken")
    compare: tuple[str, ...] = opt(("ewt-dev", "train-corpus"), "other corpora whose WN sets are compared")
    compare_tokens: int = opt(65_536, "largest budget read from each compared corpus")
    window: int | None = opt(None, "tokens per window", shown="min(2048, the model's max length), as the scan")
    shards: int = opt(16, "contiguous shards of the bootstrapped corpus (>= 10: the resampling units)")
    replicates: int = opt(50, "shard-bootstrap replicates")
    fraction: float = opt(0.01, "fraction of each layer selected as WN")
    criterion: str = opt("wd", "what ranks the neurons", choices=STAT_CRITERIA)
    bins_per_octave: int = opt(32, "histogram resolution of the per-shard accumulators (memory: shards x this)")
    redraws: int = opt(3, "WN sets redrawn from replicates on which the headline ablation (wn_neg) is rerun (0 = "
                       "skip); fewer than 10 give a range, not an interval")
    tasks: tuple[str, ...] = opt(("perplexity", "blimp", "tse"), "tasks of the redrawn ablation")
    blimp_limit: int | None = opt(20, "pairs per BLiMP paradigm in the redrawn ablation", zero_all=True)
    tse_limit: int | None = opt(20, "pairs per TSE task in the redrawn ablation", zero_all=True)
    ppl_tokens: int | None = opt(8192, "perplexity tokens in the redrawn ablation", zero_all=True)
    ppl_window: int = opt(512, "tokens per perplexity window in the redrawn ablation")
    n_boot: int = opt(N_BOOT, "bootstrap replicates of the ablation's item intervals")
    seed: int = opt(0, "seed of the replicates and the subsamples")
    batch_windows: int = opt(1, "windows per forward pass of the scans (speed only)")
    batch_tokens: int | None = opt(None, "padded tokens per forward pass of the ablation", shown="256 on CPU")
    bos: str = opt("prefix", "BOS policy of the ablation's scoring", choices=BOS_POLICIES)

    def __post_init__(self) -> None:
        """Refuse settings whose statistics would mean nothing, before any model loads."""
        check_counts(self, (("--tokens", "tokens"), ("--compare-tokens", "compare_tokens"), ("--shards", "shards"),
                            ("--replicates", "replicates"), ("--bins-per-octave", "bins_per_octave"),
                            ("--blimp-limit", "blimp_limit"), ("--tse-limit", "tse_limit"), ("--ppl-tokens", "ppl_tokens"),
                            ("--n-boot", "n_boot"), ("--batch-windows", "batch_windows"), ("--batch-tokens", "batch_tokens")))
        check_counts(self, (("--redraws", "redraws"),), least=0)
        if self.shards < MIN_UNITS:
            raise NegdiffError(f"--shards must be >= {MIN_UNITS} (the bootstrap resamples shards), got {self.shards}")
        if self.replicates < 20:
            raise NegdiffError(f"--replicates must be >= 20 for membership probabilities, got {self.replicates}")
        if self.redraws > self.replicates:
            raise NegdiffError(f"--redraws {self.redraws} exceeds --replicates {self.replicates}")
        if not self.budgets or list(self.budgets) != sorted(set(self.budgets)) or self.budgets[0] < 1:
            raise NegdiffError(f"--budgets must be positive and strictly increasing, got {list(self.budgets)}")
        if self.criterion not in STAT_CRITERIA:
            raise NegdiffError(f"--criterion {self.criterion}: the stability scan ranks by {', '.join(STAT_CRITERIA)} "
                               "(mapping difficulty needs the scan's token pairs)")
        if self.bins_per_octave & (self.bins_per_octave - 1):
            raise NegdiffError(f"--bins-per-octave must be a power of two, got {self.bins_per_octave}")
        if self.window is not None:
            check_counts(self, (("--window", "window"),), least=2)
        check_fraction("--fraction", self.fraction)
        check_perplexity_sizes(self.ppl_tokens, self.ppl_window)
        check_n_boot(self.n_boot)

    def eval_config(self, task: str) -> Any:
        """The EvalConfig of one task of the redrawn ablation."""
        from negdiff.tasks.base import step_eval_config

        return step_eval_config(self, task)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
