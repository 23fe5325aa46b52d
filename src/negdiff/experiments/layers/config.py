"""What decides the layer-group step's numbers: :class:`LayersConfig`, whose fields are the flags of
``negdiff layers`` and the keys of its preset entry (torch-free, so the command line is built without the
machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import N_BOOT
from negdiff.bos import BOS_POLICIES
from negdiff.choices import SET_MODES
from negdiff.errors import NegdiffError
from negdiff.options import opt
from negdiff.runs import check_counts, check_perplexity_sizes


@dataclass
class LayersConfig:
    """Sizes and rules. Defaults: 22 conditions for a 30-layer model; one condition costs ~77 CPU-seconds on
    SmolLM2-135M (measured single-threaded: BLiMP 40, perplexity 25, TSE 12), so ~18 minutes on 2 free cores."""

    tasks: tuple[str, ...] = opt(("perplexity", "blimp", "tse"), "tasks or aliases")
    group_size: int | None = opt(None, "layers per group",
                                 shown="8 groups of consecutive layers, sizes differing by at most one")
    mode: str = opt("zero_negative", "the edit on the WN", choices=SET_MODES)
    blimp_limit: int | None = opt(10, "pairs per BLiMP paradigm (67 paradigms)", zero_all=True)
    tse_limit: int | None = opt(10, "pairs per TSE task (22 tasks)", zero_all=True)
    nongram_limit: int | None = opt(50, "items per non-grammatical benchmark, if any is asked for", zero_all=True)
    ppl_tokens: int | None = opt(6144, "perplexity: tokens in a seeded subset of WikiText-2 valid windows",
                                 zero_all=True)
    ppl_window: int = opt(512, "tokens per perplexity window (capped at the model's length; >= 10 windows give a CI)")
    n_boot: int = opt(N_BOOT, "bootstrap replicates")
    seed: int = opt(0, "subsampling and bootstrap seed")
    batch_tokens: int | None = opt(None, "padded tokens per forward pass", shown="256 on CPU, 16384 on CUDA")
    bos: str = opt("prefix", "BOS policy", choices=BOS_POLICIES)
    layer_cache_mb: int = opt(2048, "MiB of residual streams kept to skip the unedited lower layers of a condition "
                              "(0 = off; same results within 1e-5)")
    layer_cache_disk_mb: int = opt(4096, "MiB spilled under OUT/layer_cache_tmp_* beyond memory, deleted after")

    def __post_init__(self) -> None:
        if self.mode not in SET_MODES:  # mean needs per-neuron values a set lacks
            raise NegdiffError(f"--mode: unknown edit '{self.mode}'; choose one of {', '.join(SET_MODES)}")
        check_counts(self, (("--blimp-limit", "blimp_limit"), ("--tse-limit", "tse_limit"), ("--ppl-tokens", "ppl_tokens"),
                            ("--n-boot", "n_boot"), ("--nongram-limit", "nongram_limit"),
                            ("--batch-tokens", "batch_tokens"), ("--group-size", "group_size")))
        check_counts(self, (("--layer-cache-mb", "layer_cache_mb"), ("--layer-cache-disk-mb", "layer_cache_disk_mb")),
                     least=0)
        check_perplexity_sizes(self.ppl_tokens, self.ppl_window, need_interval=False)  # fewer windows: no CI

    def eval_config(self, task: str) -> Any:
        """The EvalConfig of one task: each task family its own subsample size, perplexity this run's window.

        Built here rather than through AblateConfig, which refuses fewer than 10 perplexity windows: a
        cheap layers run may have fewer, and then its perplexity deltas say "n too small" instead.
        """
        from negdiff.tasks.base import step_eval_config

        return step_eval_config(self, task)

    def expected_windows(self) -> int | None:
        """Perplexity windows the run asks for (fewer if the model's length caps the window; None = all)."""
        return None if self.ppl_tokens is None else self.ppl_tokens // self.ppl_window

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
