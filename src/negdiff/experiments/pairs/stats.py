"""Statistics of ``negdiff pairs``: where a neuron's most differentiated input pairs lie, by sign and depth.

The unit of inference is the *neuron*, not the pair: a neuron contributes its top-k pairs, and those
pairs share the neuron's quirks, so shares are ratio estimates (pairs in a sign class / pairs) over the
neurons of a set, with a bootstrap that resamples neurons. Resampling is stratified by layer, because
the WN set and its random control both hold a fixed number of neurons per layer by construction;
stratifying keeps that design in every replicate. Everything here takes the pair table and returns
plain dicts, so ``pairs.json`` can be recomputed from ``pairs.parquet`` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from negdiff.bootstrap import MIN_UNITS
from negdiff.result_stats import percentile_ci

#: Sign classes of a pair of pre-activations (a value of exactly 0 is neither side: "mixed").
SIGN_CLASSES = ("both_negative", "mixed", "both_positive")
#: Shares reported per set: the paper's negative region, the looser "at least one negative", and the contrast.
MEASURES = ("both_negative", "any_negative", "both_positive")
GROUPS = ("wn", "random")


def sign_class(y_a, y_b) -> np.ndarray:
    """``both_negative`` when both values are < 0, ``both_positive`` when both are > 0, else ``mixed``."""
    a, b = np.asarray(y_a, dtype=np.float64), np.asarray(y_b, dtype=np.float64)
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    return np.where(hi < 0, "both_negative", np.where(lo > 0, "both_positive", "mixed"))


def depth_half(layers, n_layers: int) -> np.ndarray:
    """``early`` for the first half of the layers (layer < n/2), ``late`` for the rest."""
    return np.where(np.asarray(layers) < n_layers / 2, "early", "late")


def neuron_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, layer, neuron): its number of top pairs and how many fall in each measure."""
    cls = pairs["sign_class"]
    low = np.minimum(pairs["y_a"].to_numpy(dtype=np.float64), pairs["y_b"].to_numpy(dtype=np.float64))
    frame = pairs[["group", "layer", "neuron"]].assign(
        n=1, both_negative=(cls == "both_negative").astype(int), both_positive=(cls == "both_positive").astype(int),
        any_negative=(low < 0).astype(int))
    return frame.groupby(["group", "layer", "neuron"], as_index=False, sort=True).sum()


def ratio_draws(k: np.ndarray, n: np.ndarray, strata: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of ``sum(k) / sum(n)``, resampling neurons with replacement within each stratum."""
    k, n, strata = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64), np.asarray(strata)
    rng = np.random.default_rng(seed)
    num, den = np.zeros(n_boot), np.zeros(n_boot)
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        idx = rows[rng.integers(0, len(rows), size=(n_boot, len(rows)))]
        num += k[idx].sum(axis=1)
        den += n[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _cell(value: float, draws: np.ndarray, n_units: int, **extra: Any) -> dict[str, Any]:
    """A share and its percentile CI over neurons; no CI (NaN, ``too_small``) from fewer than 10 neurons."""
    if n_units < MIN_UNITS or not np.isfinite(draws).any():
        return {"value": float(value), "ci_low": float("nan"), "ci_high": float("nan"), "n_neurons": int(n_units),
                "too_small": n_units < MIN_UNITS, **extra}
    lo, hi = percentile_ci(draws[np.isfinite(draws)])
    return {"value": float(value), "ci_low": lo, "ci_high": hi, "n_neurons": int(n_units), **extra}


def share_block(counts: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """For the neurons in ``counts``: each measure's share per group, and WN minus random, with CIs.

    The two groups are resampled independently (different seeds), so the difference's CI is that of two
    independent estimates.
    """
    out: dict[str, Any] = {}
    draws: dict[tuple[str, str], np.ndarray] = {}
    for gi, group in enumerate(GROUPS):
        c = counts[counts.group == group]
        if c.empty:
            continue
        out[group] = {"n_neurons": int(len(c)), "n_pairs": int(c.n.sum())}
        for measure in MEASURES:
            d = ratio_draws(c[measure], c.n, c.layer, n_boot, seed + 7919 * gi)
            draws[group, measure] = d
            out[group][measure] = _cell(c[measure].sum() / c.n.sum(), d, len(c))
    if all(g in out for g in GROUPS):
        n = min(out[g]["n_neurons"] for g in GROUPS)
        out["wn_minus_random"] = {m: _cell(out["wn"][m]["value"] - out["random"][m]["value"],
                                           draws["wn", m] - draws["random", m], n) for m in MEASURES}
    return out


def shares(pairs: pd.DataFrame, n_layers: int, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Shares per layer and over depth (all layers, early half, late half), WN vs random."""
    counts = neuron_counts(pairs)
    half = depth_half(counts.layer, n_layers)
    depth = {"all": share_block(counts, n_boot, seed),
             "early": share_block(counts[half == "early"], n_boot, seed),
             "late": share_block(counts[half == "late"], n_boot, seed)}
    per_layer = {int(layer): share_block(c, n_boot, seed + int(layer)) for layer, c in counts.groupby("layer")}
    return {"depth": depth, "per_layer": per_layer,
            "halves": {"early": f"layers 0..{int(np.ceil(n_layers / 2)) - 1}",
                       "late": f"layers {int(np.ceil(n_layers / 2))}..{n_layers - 1}"}}


def per_layer_frame(per_layer: dict[int, dict]) -> pd.DataFrame:
    """The per-layer block as a long table: layer, group, measure, value, ci_low, ci_high."""
    rows = [{"layer": layer, "group": g, "measure": m, **{k: block[g][m][k] for k in ("value", "ci_low", "ci_high")}}
            for layer, block in per_layer.items() for g in (*GROUPS, "wn_minus_random") if g in block for m in MEASURES]
    return pd.DataFrame(rows)


def _unordered(a: pd.Series, b: pd.Series) -> pd.Series:
    """'x | y' with the two sides sorted, so (the, of) and (of, the) count as one pair."""
    return pd.Series([" | ".join(sorted((x, y))) for x, y in zip(a, b)], index=a.index, dtype=object)


def frequent(pairs: pd.DataFrame, top: int = 10) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The most frequent unordered token pairs and gold-tag pairs of each group, with counts and shares.

    Tag pairs count only pairs whose two tokens both map to a tagged word (``upos_a``/``upos_b`` set).
    """
    out: dict[str, dict[str, list]] = {}
    for group in GROUPS:
        p = pairs[pairs.group == group]
        if p.empty:
            continue
        res = {}
        toks = _unordered(p.show_a.astype(str), p.show_b.astype(str))
        res["token_pairs"] = _top(toks, top)
        if "upos_a" in p and p.upos_a.notna().any():
            tagged = p[p.upos_a.notna() & p.upos_b.notna()]
            res["tag_pairs"] = _top(_unordered(tagged.upos_a.astype(str), tagged.upos_b.astype(str)), top)
            res["tags"] = _top(pd.concat([tagged.upos_a, tagged.upos_b]).astype(str), top)
        out[group] = res
    return out


def _top(values: pd.Series, top: int) -> list[dict[str, Any]]:
    counts = values.value_counts()
    return [{"pair": str(k), "count": int(v), "share": float(v / len(values))} for k, v in counts.head(top).items()]


# ---------------------------------------------------------------------------------------------- summary
def _ci(cell: dict, sign: str = "") -> str:
    if not np.isfinite(cell["ci_low"]):
        return f" (n = {cell.get('n_neurons', '?')} neurons: too small for an interval)"
    return f" [{100 * cell['ci_low']:{sign}.1f}, {100 * cell['ci_high']:{sign}.1f}]"


def _pct(cell: dict) -> str:
    return f"{100 * cell['value']:.1f}%{_ci(cell)}"


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The closing lines: corpus, the negative share WN vs random (all, early, late), frequent pairs."""
    s, res = record["stream"], record["results"]
    tags = (f"{100 * s['share_tokens_with_word']:.0f}% of tokens mapped to a word with {record['corpus']['tagger']}"
            if record["corpus"].get("tagger") else "no tags")
    lines = [f"{s['tokens']:,} tokens of {record['corpus']['name']} ({s['documents']} documents, {tags}); "
             f"{s['md_pairs_per_layer']:,} random pairs per layer; top {record['config']['top_pairs']} per neuron; "
             f"{record['sets']['wn']} WN vs {record['sets']['random']} random neurons"]
    for label, key in (("both negative", "both_negative"), ("at least one negative", "any_negative")):
        for part in ("all", "early", "late"):
            b = res["depth"][part]
            if "wn" not in b or "random" not in b:
                continue
            d = b["wn_minus_random"][key]
            lines.append(f"{label:<22} {part:<5} WN {_pct(b['wn'][key])} vs random {_pct(b['random'][key])}; "
                         f"diff {100 * d['value']:+.1f} pts{_ci(d, '+')}")
    for group in GROUPS:
        f = res["frequent"].get(group, {})
        for what in ("token_pairs", "tag_pairs"):
            if f.get(what):
                top = ", ".join(f"{r['pair']} ({r['count']})" for r in f[what][:5])
                lines.append(f"{group:<6} top {what.replace('_', ' ')}: {top}")
    scan = res.get("scan_corpus")
    if scan and "wn_minus_random" in scan["all"]:
        a = scan["all"]
        lines.append(f"scan corpus ({scan['corpus']}) both negative: WN {_pct(a['wn']['both_negative'])} vs random "
                     f"{_pct(a['random']['both_negative'])}")
    return lines
