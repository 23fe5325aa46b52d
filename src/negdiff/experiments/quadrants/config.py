"""What decides the quadrant step's numbers: :class:`QuadrantsConfig`, whose fields are the flags of
``negdiff quadrants`` (torch-free, so the command line is built without the machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import N_BOOT
from negdiff.bos import BOS_POLICIES
from negdiff.options import opt
from negdiff.runs import check_counts, check_n_boot, check_perplexity_sizes


@dataclass
class QuadrantsConfig:
    """Sizes of the quadrant run. Defaults: 1 + 4 x (1 + 5) = 25 conditions on perplexity, BLiMP and TSE; 83-111 s
    each on SmolLM2-135M with 2 free threads (measured), so ~40 minutes."""

    tasks: tuple[str, ...] = opt(("perplexity", "blimp", "tse"), "tasks or aliases")
    seeds: int = opt(5, "random layer-matched sets per quadrant (the same sets in every quadrant; paper.md: >= 5)")
    blimp_limit: int | None = opt(20, "pairs per BLiMP paradigm (67 paradigms)", zero_all=True)
    tse_limit: int | None = opt(20, "pairs per TSE task (22 tasks)", zero_all=True)
    ppl_tokens: int | None = opt(8192, "perplexity: tokens in a seeded subset of WikiText-2 valid windows",
                                 zero_all=True)
    ppl_window: int = opt(512, "tokens per perplexity window (>= 10 windows give an interval)")
    n_boot: int = opt(N_BOOT, "bootstrap replicates")
    seed: int = opt(0, "subsampling and bootstrap seed")
    batch_tokens: int | None = opt(None, "padded tokens per forward pass", shown="256 on CPU, 16384 on CUDA")
    bos: str = opt("prefix", "BOS policy", choices=BOS_POLICIES)

    def __post_init__(self) -> None:
        """Refuse sizes whose statistics would mean nothing, before any model work."""
        check_counts(self, (("--seeds", "seeds"), ("--blimp-limit", "blimp_limit"), ("--tse-limit", "tse_limit"),
                            ("--ppl-tokens", "ppl_tokens"), ("--n-boot", "n_boot"), ("--batch-tokens", "batch_tokens")))
        check_perplexity_sizes(self.ppl_tokens, self.ppl_window)
        check_n_boot(self.n_boot)

    def eval_config(self, task: str) -> Any:
        """The EvalConfig of one task: each task family its own subsample size."""
        from negdiff.tasks.base import step_eval_config

        return step_eval_config(self, task)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
