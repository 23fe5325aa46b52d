"""What decides the pairs step's numbers: :class:`PairsConfig`, whose fields are the flags of ``negdiff pairs``
and the keys of its preset entry (torch-free, so the command line is built without importing the machinery)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from negdiff.choices import MWT_RULES
from negdiff.errors import NegdiffError
from negdiff.options import opt
from negdiff.runs import check_counts


@dataclass
class PairsConfig:
    """Everything that decides the numbers (hashed into the resume key, but the batch size and data folder)."""

    corpus: str = opt("ewt-test", "ewt-test, ewt-dev, a .conllu(.gz) file (gold tags), or any corpus `negdiff scan` "
                      "takes (no tags)")
    tokens: int = opt(32_768, "tokens streamed (whole windows; EWT test holds ~31.8k SmolLM2 tokens)")
    window: int | None = opt(None, "tokens per window", shown="min(2048, the model's max length)")
    md_pairs: int = opt(12_288, "random disjoint pairs per layer")
    top_pairs: int = opt(10, "top-ratio pairs kept per neuron")
    seeds: int = opt(1, "random control sets pooled: the scan's random.json plus seeds 1..N-1")
    panel_layers: tuple[int, ...] | None = opt(None, "layers whose top WN get a panel figure",
                                               shown="3 layers spread over depth")
    mwt: str = opt("chars", "multi-word tokens (see negdiff pos)", choices=tuple(MWT_RULES))
    n_boot: int = opt(1000, "bootstrap replicates (neurons resampled)")
    seed: int = opt(0, "seed of the document order, the pairs and the bootstrap")
    batch_windows: int = opt(1, "windows per forward pass (speed only)")
    data: str | None = None  # the datasets folder (None: $NEGDIFF_DATA; the command's --data sets that)

    def __post_init__(self) -> None:
        check_counts(self, (("--tokens", "tokens"), ("--md-pairs", "md_pairs"), ("--top-pairs", "top_pairs"),
                            ("--seeds", "seeds"), ("--n-boot", "n_boot"), ("--batch-windows", "batch_windows")))
        if self.window is not None and self.window < 2:
            raise NegdiffError(f"--window must be at least 2 tokens, got {self.window}")
        if self.mwt not in MWT_RULES:
            raise NegdiffError(f"--mwt: unknown rule '{self.mwt}'; choose one of {', '.join(MWT_RULES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in ("batch_windows", "data")}
