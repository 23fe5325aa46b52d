"""What decides a scan's numbers: :class:`ScanConfig`, whose fields are the flags of ``negdiff scan`` and the
keys of its preset entry (torch-free, so the command line is built without importing the machinery)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from negdiff.choices import CLI_CRITERIA, SCOPES, check_criterion, check_scope
from negdiff.errors import NegdiffError
from negdiff.options import opt
from negdiff.runs import check_counts, check_fraction


@dataclass
class ScanConfig:
    """Everything that decides a scan's numbers (hashed into the resume key)."""

    corpus: str = opt("wikitext2", "corpus: wikitext2, wikitext2-valid, ewt-dev, ewt-test, train-corpus, or a "
                      ".txt/.txt.gz/.jsonl path")
    tokens: int = opt(131_072, "token budget (whole windows)")
    window: int | None = opt(None, "tokens per window", shown="min(2048, the model's max length)")
    batch_windows: int = opt(1, "windows per forward pass (speed only)")
    md_pairs: int = opt(24_576, "mapping-difficulty pairs per layer")
    md_nearest_tokens: int = opt(0, "also the nearest-neighbour MD (most cosine-similar inputs) over this many "
                                 "tokens, column md_nearest (quadratic cost: a few thousand; 0 = off)")
    top_pairs: int = opt(10, "top-ratio pairs kept per neuron")
    fraction: float = opt(0.01, "fraction of neurons selected as WN")
    scope: str = opt("per_layer", "take the fraction in every layer or over the whole model", choices=SCOPES)
    criterion: str = opt("wd", "what ranks the neurons", choices=CLI_CRITERIA)
    seed: int = opt(0, "seed of the window order, the pairs and the random control set")
    check_corpus: str = opt("wikitext2-valid", "corpus of the held-out perplexity read-out")
    check_windows: int = opt(2, "held-out windows for the closing perplexity read-out (0 = skip)")
    checkpoint_every: int = 16  # windows (a checkpoint of a 30 x 1536 model is ~600 MB)

    def __post_init__(self) -> None:
        """Refuse counts and fractions that cannot work, naming the flag, before any model loads."""
        check_counts(self, (("--tokens", "tokens"), ("--batch-windows", "batch_windows"), ("--md-pairs", "md_pairs"),
                            ("--top-pairs", "top_pairs"), ("checkpoint_every", "checkpoint_every")))
        check_counts(self, (("--md-nearest-tokens", "md_nearest_tokens"), ("--check-windows", "check_windows")),
                     least=0)
        if self.window is not None:
            check_counts(self, (("--window", "window"),), least=2)
            if self.tokens < self.window:
                raise NegdiffError(f"--tokens {self.tokens} is smaller than one window of {self.window} tokens "
                                   "(--window); raise --tokens or shorten --window")
        check_fraction("--fraction", self.fraction)
        check_criterion(self.criterion)
        check_scope(self.scope)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The settings that decide the numbers (speed-only knobs left out of the resume key)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_windows", "checkpoint_every")}
