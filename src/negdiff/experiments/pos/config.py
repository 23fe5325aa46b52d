"""What decides the part-of-speech step's numbers: :class:`PosConfig`, whose fields are the flags of
``negdiff pos`` and the keys of its preset entry (torch-free, so the command line is built without the
machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.bootstrap import N_BOOT
from negdiff.bos import BOS_POLICIES
from negdiff.choices import MWT_RULES
from negdiff.errors import NegdiffError
from negdiff.options import opt
from negdiff.runs import check_counts

#: Words scored by default: whole documents until this many words (the quick run's size).
DEFAULT_MAX_WORDS = 12_000


@dataclass
class PosConfig:
    """Everything that decides the numbers (the scoring-relevant part is hashed into the resume key)."""

    corpus: str = opt("ewt-test", "ewt-test, ewt-dev, a .conllu(.gz) file, or a text file (.txt/.txt.gz/.jsonl) "
                      "tagged with spaCy en_core_web_sm")
    seeds: int = opt(5, "random layer-matched control sets, averaged (paper.md: >= 5; their spread is in the CIs)")
    limit_docs: int | None = opt(None, "only the first N documents", shown="all")
    max_words: int | None = opt(DEFAULT_MAX_WORDS, "whole documents until N words are reached", zero_all=True)
    sample: str = opt("seeded", "which whole documents the limits keep: a seeded random choice (all genres) or "
                      "the first", choices=("seeded", "first"))
    max_seq_tokens: int = opt(1024, "longest scored sequence; longer documents are cut at sentence boundaries")
    bos: str = opt("prefix", "BOS policy", choices=BOS_POLICIES)
    mwt: str = opt("chars", "multi-word tokens (don't = do + n't): align each word by characters, split the "
                   "token's surprisal equally, or give it to the first word", choices=tuple(MWT_RULES))
    batch_tokens: int | None = opt(None, "padded tokens per forward pass", shown="256 on CPU, 16384 on CUDA")
    n_boot: int = opt(N_BOOT, "bootstrap replicates over documents")
    seed: int = opt(0, "seed of the document sample and the bootstrap")
    sets: str | None = opt(None, "a `negdiff ablate` output folder (or its sets/) holding ppl_matched_neg.json",
                           shown="none: no perplexity-matched condition")
    extra: tuple[str, ...] = opt((), "more conditions from --sets, by name (e.g. wn_pos)")
    data: str | None = None  # the datasets folder (None: $NEGDIFF_DATA; the command's --data sets that)

    def __post_init__(self) -> None:
        if self.sample not in ("seeded", "first"):
            raise NegdiffError(f"--sample: unknown choice '{self.sample}'; use seeded or first")
        if self.mwt not in MWT_RULES:
            raise NegdiffError(f"--mwt: unknown rule '{self.mwt}'; choose one of {', '.join(MWT_RULES)}")
        check_counts(self, (("--seeds", "seeds"), ("--max-seq-tokens", "max_seq_tokens"), ("--limit-docs", "limit_docs"),
                            ("--max-words", "max_words"), ("--n-boot", "n_boot"), ("--batch-tokens", "batch_tokens")))
        if self.bos not in BOS_POLICIES:
            raise NegdiffError(f"--bos: unknown policy '{self.bos}'; choose one of {', '.join(BOS_POLICIES)}")

    def scoring(self) -> Any:
        """The scorer's settings (a :class:`negdiff.scoring.ScoringConfig`)."""
        from negdiff.scoring import ScoringConfig

        return ScoringConfig(bos=self.bos, max_batch_tokens=self.batch_tokens)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "extra": list(self.extra)}
