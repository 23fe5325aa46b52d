"""Neuron selection: Wasserstein neurons, layer-matched random controls, lowest-WD sets.

All rules work on the scan's neuron table (one row per neuron with ``layer``, ``neuron`` and the
criterion column) and return a :class:`NeuronSet` that records the rule, so a result file says exactly
which neurons were touched and why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from negdiff.choices import CLI_CRITERIA, CRITERIA, check_criterion
from negdiff.errors import NegdiffError
from negdiff.neuronset import NeuronSet

__all__ = ["NeuronSet", "select_wasserstein", "select_lowest", "random_like", "check_criterion", "CRITERIA",
           "CLI_CRITERIA"]

def _check(table: pd.DataFrame, criterion: str, fraction: float) -> None:
    check_criterion(criterion)
    missing = {"layer", "neuron", criterion} - set(table.columns)
    if missing:
        raise NegdiffError(f"neuron table lacks column(s) {sorted(missing)}")
    if not 0 < fraction < 1:
        raise NegdiffError(f"fraction must be in (0, 1), got {fraction}")
    if table[criterion].isna().any():
        raise NegdiffError(f"neuron table has NaN in '{criterion}'")


def _above_percentile(values: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of values strictly above the (1 - fraction) percentile (the authors' rule; ties excluded)."""
    cut = np.percentile(values, 100.0 * (1.0 - fraction))
    return values > cut


def select_wasserstein(
    table: pd.DataFrame, fraction: float = 0.01, scope: str = "per_layer", criterion: str = "wd"
) -> NeuronSet:
    """Top ``fraction`` of neurons by ``criterion``: per layer (default, as the authors) or global.

    Per layer, a neuron is selected when its value is strictly above its layer's (100 - p)th percentile:
    16 of 1536 neurons per layer at p = 1%.
    """
    _check(table, criterion, fraction)
    if scope == "per_layer":
        mask = np.zeros(len(table), dtype=bool)
        for _, rows in table.groupby("layer").indices.items():
            mask[rows] = _above_percentile(table[criterion].to_numpy()[rows], fraction)
    elif scope == "global":
        mask = _above_percentile(table[criterion].to_numpy(), fraction)
    else:
        raise NegdiffError(f"unknown scope '{scope}'; use per_layer or global")
    chosen = table.loc[mask, ["layer", "neuron"]].to_numpy()
    rule = {"rule": "top_fraction", "criterion": criterion, "fraction": fraction, "scope": scope}
    return NeuronSet.from_pairs(map(tuple, chosen), rule)


def select_lowest(table: pd.DataFrame, fraction: float, criterion: str = "wd") -> NeuronSet:
    """The bottom ``fraction`` of every layer by ``criterion`` (the perplexity-matched control's pool).

    Each layer contributes ``round(fraction * width)`` neurons, the same share in every layer.
    """
    _check(table, criterion, fraction)
    pairs: list[tuple[int, int]] = []
    for layer, rows in table.groupby("layer"):
        k = int(round(fraction * len(rows)))
        order = rows.sort_values([criterion, "neuron"], kind="stable")
        pairs.extend((int(layer), int(n)) for n in order["neuron"].to_numpy()[:k])
    return NeuronSet.from_pairs(pairs, {"rule": "bottom_fraction", "criterion": criterion, "fraction": fraction})


def random_like(
    like: NeuronSet, widths: dict[int, int], seed: int, exclude: NeuronSet | None = None
) -> NeuronSet:
    """Layer-matched random neurons: per layer as many as ``like`` has, drawn without ``exclude``.

    Seeded (a torch Generator per call) so a control set can be rebuilt from its rule alone.
    """
    exclude = exclude if exclude is not None else like
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for layer, idx in like.neurons.items():
        pool = torch.arange(widths[layer])
        pool = pool[~torch.isin(pool, exclude.indices(layer))]
        if len(pool) < len(idx):
            raise NegdiffError(f"layer {layer}: only {len(pool)} neurons left to draw {len(idx)} random controls")
        out[layer] = pool[torch.randperm(len(pool), generator=gen)[: len(idx)]]
    rule = {"rule": "random_layer_matched", "seed": int(seed), "like": like.rule, "excludes": exclude.rule or "like"}
    return NeuronSet(out, rule)
