"""The stability step's arithmetic: shard-bootstrap replicates of merged accumulators, WN selection on each,
membership probabilities and Jaccard summaries.

Why shards: :class:`~negdiff.stats.NeuronStats` accumulators merge exactly (pairwise moment formulas, summed
histograms), and merging an accumulator k times is the statistics of its data repeated k times. A bootstrap
replicate that draws the S contiguous shards of a corpus with replacement (multiplicities from a multinomial)
is therefore one merge per drawn shard: no token is read twice. The resampling unit is a contiguous block
of text, so the dependence between neighbouring tokens stays inside a unit (a token-level bootstrap would
overstate stability). What the replicate distribution shows is how much the WN set would move had another
corpus of the same kind and size been read; it is not an interval around a parameter.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from negdiff.neuronset import NeuronSet
from negdiff.select import select_wasserstein
from negdiff.stats import NeuronStats


def merged(shards: list[NeuronStats], counts: np.ndarray | None = None) -> NeuronStats:
    """One accumulator holding shard s ``counts[s]`` times (all once by default)."""
    out = NeuronStats.like(shards[0])
    for s, acc in enumerate(shards):
        for _ in range(1 if counts is None else int(counts[s])):
            out.merge(acc)
    return out


def table_of(layers: list[NeuronStats], criterion: str) -> pd.DataFrame:
    """The (layer, neuron, criterion) table a selection reads, from one accumulator per layer."""
    frames = [pd.DataFrame({"layer": i, "neuron": np.arange(acc.width),
                            criterion: acc.wd() if criterion == "wd" else acc.result()[criterion]})
              for i, acc in enumerate(layers)]
    return pd.concat(frames, ignore_index=True)


def select(layers: list[NeuronStats], fraction: float, criterion: str) -> tuple[NeuronSet, pd.DataFrame]:
    """The WN set (top ``fraction`` of each layer by ``criterion``) of merged accumulators, and their table."""
    table = table_of(layers, criterion)
    table[criterion] = table[criterion].fillna(-np.inf)  # a constant neuron (NaN spread) is never a WN
    return select_wasserstein(table, fraction, "per_layer", criterion), table


def multiplicities(n_shards: int, replicates: int, seed: int) -> np.ndarray:
    """``[replicates, n_shards]`` draw counts: each row a bootstrap sample of the shards (sums to n_shards)."""
    rng = np.random.default_rng([seed, 7331])
    return rng.multinomial(n_shards, np.full(n_shards, 1.0 / n_shards), size=replicates)


def replicate_summary(reference: NeuronSet, sets: list[NeuronSet], widths: dict[int, int]) -> dict[str, Any]:
    """Membership probabilities and Jaccard indices of the replicate WN sets.

    ``jaccard_reference``: each replicate's set against the full-data set; ``jaccard_pairs``: replicate b
    against b + 1 (independent draws: the overlap of two resampled analyses). Both are summarised by their
    mean (the expected Jaccard), its Monte-Carlo standard error, and the 2.5/97.5 percentiles of the
    replicate distribution.
    """
    b = len(sets)
    counts = Counter(pair for s in sets for pair in s)
    ref = set(reference)
    pairs = sorted(set(counts) | ref)
    probs = pd.DataFrame({"layer": [p[0] for p in pairs], "neuron": [p[1] for p in pairs],
                          "p_wn": [counts.get(p, 0) / b for p in pairs], "in_reference": [p in ref for p in pairs]})
    jr = np.array([reference.jaccard(s) for s in sets])
    jp = np.array([sets[i].jaccard(sets[i + 1]) for i in range(b - 1)])
    ref_p = probs[probs.in_reference].p_wn.to_numpy()
    return {
        "replicates": b, "n_wn": reference.size, "n_ever_wn": int((probs.p_wn > 0).sum()),
        "n_layers": len(widths),
        "reference_p_wn": {"mean": float(ref_p.mean()) if ref_p.size else None,
                           "share_ge_0.9": float((ref_p >= 0.9).mean()) if ref_p.size else None,
                           "share_lt_0.5": float((ref_p < 0.5).mean()) if ref_p.size else None},
        "jaccard_reference": _dist(jr), "jaccard_pairs": _dist(jp),
        "probabilities": probs.reset_index(drop=True),
    }


def _dist(x: np.ndarray) -> dict[str, Any]:
    if x.size == 0:
        return {"n": 0}
    return {"n": int(x.size), "mean": float(x.mean()), "mcse": float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else None,
            "q025": float(np.quantile(x, 0.025)), "q975": float(np.quantile(x, 0.975)), "min": float(x.min()),
            "max": float(x.max())}


def overlap_rows(sets: dict[tuple[str, int], NeuronSet], reference: tuple[str, int]) -> list[dict[str, Any]]:
    """Every (corpus, tokens) WN set against the reference set and against the reference corpus at the same
    budget (where that exists)."""
    ref_corpus = reference[0]
    rows = []
    for (corpus, tokens), s in sets.items():
        same = sets.get((ref_corpus, tokens))
        rows.append({"corpus": corpus, "tokens": tokens, "n_wn": s.size,
                     "jaccard_reference": s.jaccard(sets[reference]),
                     "jaccard_same_budget": None if same is None or corpus == ref_corpus else s.jaccard(same)})
    return rows
