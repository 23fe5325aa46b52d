"""What decides the ablation's numbers: :class:`AblateConfig`, whose fields are the flags of ``negdiff ablate``
and the keys of its preset entry (torch-free, so the command line is built without importing the machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import N_BOOT
from negdiff.bos import BOS_POLICIES
from negdiff.choices import CLI_CRITERIA, SCOPES, check_criterion, check_scope
from negdiff.errors import NegdiffError
from negdiff.options import opt
from negdiff.runs import check_counts, check_fraction, check_n_boot, check_perplexity_sizes

#: The perplexity-matched search runs on at least this many calibration windows.
MIN_CALIB_WINDOWS = 8
#: The sign/magnitude controls (they may run on fewer BLiMP/TSE items than the headline conditions).
CONTROLS = ("wn_pos", "wn_zero", "wn_identity_pos", "wn_abs_neg")

BATCH_SHOWN = "256 on CPU, 16384 on CUDA"


@dataclass
class AblateConfig:
    """Sizes and rules of the ablation (defaults: the quick 2-core run; --full for the paper's sizes)."""

    tasks: tuple[str, ...] = opt(("perplexity", "blimp", "tse", "nongrammatical"), "tasks or aliases")
    criterion: str = opt("wd", "what ranks the neurons (as the scan's)", choices=CLI_CRITERIA)
    scope: str = opt("per_layer", "take the fraction in every layer or over the whole model", choices=SCOPES)
    fraction: float = opt(0.01, "fraction of neurons selected as WN")
    seeds: int = opt(5, "random layer-matched control sets (paper.md: >= 5; their spread is inside every interval)")
    blimp_limit: int | None = opt(40, "pairs per BLiMP paradigm (67 paradigms)", zero_all=True)
    tse_limit: int | None = opt(100, "pairs per TSE task (22 tasks)", zero_all=True)
    control_blimp_limit: int | None = opt(None, "pairs per paradigm for the sign/magnitude controls",
                                          shown="as --blimp-limit")
    control_tse_limit: int | None = opt(None, "pairs per TSE task for the sign/magnitude controls",
                                        shown="as --tse-limit")
    nongram_limit: int | None = opt(50, "items per non-grammatical benchmark", zero_all=True)
    ppl_tokens: int | None = opt(20_480, "reported perplexity: tokens in a seeded subset of WikiText-2 valid "
                                 "windows (>= 10 windows)", zero_all=True)
    ppl_window: int = opt(2048, "tokens per perplexity window, reported and calibration (capped at the model's "
                          "length)")
    calib_corpus: str = opt("wikitext2", "corpus of the perplexity-matched search (disjoint from the reported "
                            "windows)")
    calib_tokens: int = opt(16_384, "tokens of the perplexity-matched search (>= 8 windows)")
    match_tol: float = opt(0.02, "relative tolerance of the perplexity match")
    controls_on_nongram: bool = opt(False, "score the sign/magnitude controls on the 8 benchmarks too (slow)")
    dose_fractions: tuple[float, ...] = opt((0.0025, 0.005, 0.01, 0.02, 0.05), "WN fractions of the "
                                            "dose-response sweep (empty: no sweep; see --no-dose)")
    dose_blimp_limit: int | None = opt(5, "pairs per BLiMP paradigm in the dose-response sweep", zero_all=True)
    dose_ppl_tokens: int | None = opt(8192, "perplexity tokens in the dose-response sweep", zero_all=True)
    seed: int = opt(0, "subsampling and bootstrap seed")
    n_boot: int = opt(N_BOOT, "bootstrap replicates")
    batch_tokens: int | None = opt(None, "padded tokens per forward pass", shown=BATCH_SHOWN)
    bos: str = opt("prefix", "BOS policy", choices=BOS_POLICIES)

    def __post_init__(self) -> None:
        """Refuse sizes whose statistics would mean nothing, and removed criteria, before any model work."""
        check_criterion(self.criterion)
        check_counts(self, (("--seeds", "seeds"), ("--blimp-limit", "blimp_limit"), ("--tse-limit", "tse_limit"),
                            ("--control-blimp-limit", "control_blimp_limit"), ("--control-tse-limit", "control_tse_limit"),
                            ("--nongram-limit", "nongram_limit"), ("--ppl-tokens", "ppl_tokens"),
                            ("--ppl-window", "ppl_window"), ("--calib-tokens", "calib_tokens"),
                            ("--dose-blimp-limit", "dose_blimp_limit"), ("--dose-ppl-tokens", "dose_ppl_tokens"),
                            ("--n-boot", "n_boot"), ("--batch-tokens", "batch_tokens")))
        check_fraction("--fraction", self.fraction)
        for p in self.dose_fractions:
            check_fraction("--dose-fractions", p)
        check_scope(self.scope)
        if not self.match_tol > 0:
            raise NegdiffError(f"--match-tol must be > 0, got {self.match_tol}")
        check_perplexity_sizes(self.ppl_tokens, self.ppl_window)
        if self.calib_tokens // self.ppl_window < MIN_CALIB_WINDOWS:
            raise NegdiffError(f"--calib-tokens {self.calib_tokens} gives {self.calib_tokens // self.ppl_window} "
                               f"windows of {self.ppl_window}; the perplexity-matched search needs >= {MIN_CALIB_WINDOWS}")
        check_n_boot(self.n_boot)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def full(self) -> AblateConfig:
        """The paper-size run (``--full``): every item of every task, the controls on the benchmarks too."""
        return dataclasses.replace(self, blimp_limit=None, tse_limit=None, nongram_limit=None, ppl_tokens=None,
                                   calib_tokens=16_384, dose_blimp_limit=50, dose_ppl_tokens=None,
                                   controls_on_nongram=True)
