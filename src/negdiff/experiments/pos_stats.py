"""Statistics of ``negdiff pos``: excess surprisal by gold UPOS tag and tag group, with bootstrap CIs.

Split from :mod:`negdiff.experiments.pos` (which re-exports every name here) so that the runner and the
arithmetic can be read, and tested, apart: everything below takes the per-word table and returns plain
dicts, so a result file can be recomputed from ``words.parquet`` alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from negdiff.inference import percentile_ci, summarize

#: The issue's split of UPOS tags: function words and punctuation vs content words (the rest: "other").
SCAFFOLDING = ("ADP", "DET", "AUX", "CCONJ", "SCONJ", "PRON", "PART", "PUNCT")
CONTENT = ("NOUN", "VERB", "ADJ", "ADV", "PROPN", "NUM")
GROUPS = ("scaffolding", "content", "other")


def tag_group(tag: str) -> str:
    """scaffolding, content or other (INTJ, SYM, X and anything a tagger invents)."""
    return "scaffolding" if tag in SCAFFOLDING else "content" if tag in CONTENT else "other"


def tag_order(tags) -> list[str]:
    """Scaffolding tags, then content tags, in the issue's order; other tags last, alphabetically."""
    present = set(tags)
    known = [t for t in (*SCAFFOLDING, *CONTENT) if t in present]
    return known + sorted(present - set(known))


def share_draws(codes: np.ndarray, values: np.ndarray, n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_groups]`` bootstrap replicates of each group's share of the total of ``values``.

    Words are resampled jointly (one draw of all words per replicate), so the shares of a replicate
    add up to one, as the point estimate's do.
    """
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty((n_boot, n_groups), dtype=np.float64)
    step = max(1, 4_000_000 // max(n, 1))
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        idx = rng.integers(0, n, size=(b, n))
        flat = (codes[idx] + n_groups * np.arange(b)[:, None]).ravel()
        sums = np.bincount(flat, weights=values[idx].ravel(), minlength=b * n_groups).reshape(b, n_groups)
        out[s:s + b] = sums / sums.sum(axis=1, keepdims=True)
    return out


def _shares(labels: pd.Series, order: list[str], words: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per label: words, subword tokens, their shares, and the baseline surprisal per word."""
    out = {}
    for lab in order:
        m = (labels == lab).to_numpy()
        out[lab] = {"n_words": int(m.sum()), "share_words": float(m.mean()),
                    "n_tokens": float(words.n_tokens[m].sum()),
                    "share_tokens": float(words.n_tokens[m].sum() / words.n_tokens.sum()),
                    "baseline_surprisal": float(words.surprisal_baseline[m].mean()) if m.any() else float("nan")}
    return out


def _excess_by(labels: pd.Series, order: list[str], excess: np.ndarray, base: dict, n_boot: int,
               seed: int) -> dict[str, dict[str, Any]]:
    """Per label: mean excess per word (bootstrap CI over its words), summed excess, share of the total."""
    codes = pd.Categorical(labels, categories=order).codes.astype(np.int64)
    draws = share_draws(codes, excess, len(order), n_boot, seed)
    total = excess.sum()
    out = {}
    for i, lab in enumerate(order):
        x = excess[codes == i]
        share = float(x.sum() / total)
        lo, hi = percentile_ci(draws[:, i])
        out[lab] = {"mean_excess": summarize(x, n_boot, seed + 1 + i), "sum_excess": float(x.sum()),
                    "share_excess": {"value": share, "ci_low": lo, "ci_high": hi},
                    "excess_share_over_token_share": share / base[lab]["share_tokens"] if base[lab]["share_tokens"] else float("nan")}
    return out


def aggregate(words: pd.DataFrame, conditions: list[str], seed_runs: dict[str, list[str]], n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Excess surprisal (``surprisal_<cond> - surprisal_baseline`` per word) by tag and by tag group.

    Shares are of the signed total excess of the condition; ``share_tokens`` counts model subword tokens
    (what the paper tags), ``share_words`` gold words. ``seed_runs`` adds each random seed's group split.
    """
    order = tag_order(words.upos)
    groups = words.upos.map(tag_group)
    gorder = [g for g in GROUPS if (groups == g).any()]
    out: dict[str, Any] = {"tags": _shares(words.upos, order, words), "groups": _shares(groups, gorder, words),
                           "n_words": int(len(words)), "n_tokens": float(words.n_tokens.sum()), "conditions": {}}
    for cond in conditions:
        excess = (words[f"surprisal_{cond}"] - words.surprisal_baseline).to_numpy(dtype=np.float64)
        res = {"total_excess": float(excess.sum()), "mean_excess_per_word": summarize(excess, n_boot, seed),
               "mean_excess_per_token": float(excess.sum() / words.n_tokens.sum()),
               "tags": _excess_by(words.upos, order, excess, out["tags"], n_boot, seed),
               "groups": _excess_by(groups, gorder, excess, out["groups"], n_boot, seed)}
        seeds = {}
        for run in seed_runs.get(cond, []):
            x = (words[f"surprisal_{run}"] - words.surprisal_baseline).to_numpy(dtype=np.float64)
            seeds[run] = {g: {"share_excess": float(x[(groups == g).to_numpy()].sum() / x.sum()),
                              "mean_excess": float(x[(groups == g).to_numpy()].mean())} for g in gorder}
        if seeds:
            res["seeds"] = seeds
        out["conditions"][cond] = res
    return out


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The closing lines: per condition, total excess and the scaffolding share against its token share."""
    res, a = record["results"], record["alignment"]
    lines = [f"scored {a['words']:,} words ({a['subword_tokens']:,} tokens, {a['documents']} documents) of "
             f"{record['corpus']['name']}; {record['corpus']['tagger']}; surprisal in nats"]
    sc = res["groups"].get("scaffolding")
    for cond, r in res["conditions"].items():
        m = r["mean_excess_per_word"]
        line = f"{cond:<16} excess {m['value']:+.4f} nats/word [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]"
        if sc is not None:
            s = r["groups"]["scaffolding"]["share_excess"]
            line += (f"; scaffolding tags carry {100 * s['value']:.1f}% of it [{100 * s['ci_low']:.1f}, "
                     f"{100 * s['ci_high']:.1f}] vs {100 * sc['share_tokens']:.1f}% of tokens "
                     f"({100 * sc['share_words']:.1f}% of words)")
        lines.append(line)
    for cond, c in record["conditions"].items():
        if c.get("status") == "missing":
            lines.append(f"{cond:<16} not run: {c['message']}")
    return lines
