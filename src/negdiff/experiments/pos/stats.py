"""Statistics of ``negdiff pos``: excess surprisal by gold UPOS tag and tag group, with honest intervals.

Split from :mod:`negdiff.experiments.pos` (which re-exports every name here) so that the runner and the
arithmetic can be read, and tested, apart: everything below takes the per-word table and returns plain
dicts, so a result file can be recomputed from ``words.parquet`` alone.

Words are not independent: the words of one document share its topic, register and the model's
context, and an ablation's excess surprisal varies far more between documents than a word-level
bootstrap would assume. So every interval resamples **documents as clusters** (the ``doc`` column of
``words.parquet``): a replicate draws D documents with replacement and keeps all their words, and a
tag's mean excess is the ratio of its resampled excess total to its resampled word count. One set of
document draws is shared by every condition, tag and share, so the numbers of a replicate belong
together. A tag found in fewer than :data:`negdiff.bootstrap.MIN_UNITS` documents gets its point
estimate only ("n too small"). The random control averages K layer-matched sets; its intervals add
the between-set variance s^2/K (t reference, Welch-Satterthwaite df), and with K < 2 that variance
cannot be estimated, so the control gets no interval at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from negdiff.bootstrap import N_BOOT, Interval, from_draws, set_crossed
from negdiff.errors import NegdiffError

#: The words.parquet column naming each word's document: the resampling cluster.
CLUSTER = "doc"
#: Resampled document indices held in memory at once.
_CHUNK = 2_000_000

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


def cluster_counts(n_clusters: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks ``[k, n_clusters]`` of how often each cluster is drawn in each bootstrap replicate.

    Replicate b draws ``n_clusters`` clusters with replacement (row b of ``rng.integers(0, D, (k, D))``),
    in chunks of at most ``_CHUNK`` indices, from one generator seeded with ``seed``.
    """
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // max(n_clusters, 1))
    for s in range(0, n_boot, step):
        k = min(step, n_boot - s)
        idx = rng.integers(0, n_clusters, size=(k, n_clusters))
        flat = (idx + n_clusters * np.arange(k)[:, None]).ravel()
        yield np.bincount(flat, minlength=k * n_clusters).reshape(k, n_clusters)


def cluster_sums(totals: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, M]`` replicate sums of per-cluster totals ``[D, M]`` under the cluster bootstrap: every
    column is resampled with the same clusters, so ratios and differences of columns stay paired."""
    t = np.asarray(totals, dtype=np.float64)
    out = np.empty((n_boot, t.shape[1]))
    s = 0
    for counts in cluster_counts(t.shape[0], n_boot, seed):
        out[s:s + len(counts)] = counts @ t
        s += len(counts)
    return out


def per_cluster(cluster: np.ndarray, codes: np.ndarray, values: np.ndarray, n_clusters: int, n_labels: int) -> np.ndarray:
    """``[D, n_labels]`` totals of ``values`` per (cluster, label)."""
    return np.bincount(cluster * n_labels + codes, weights=values, minlength=n_clusters * n_labels).reshape(
        n_clusters, n_labels)


def _interval(point: float, draws: np.ndarray, n_docs: int, per_set: list[float] | None, n_boot: int,
              seed: int) -> Interval:
    """Cluster-bootstrap percentile interval, or set_crossed for a random control of several sets."""
    draws = draws[np.isfinite(draws)]  # a replicate that drew no word of a rare tag has no mean for it
    method = f"cluster bootstrap over documents ({n_boot} replicates, {draws.size} with the label)"
    if per_set is None:
        return from_draws(point, draws, n_docs, "documents", method, seed)
    var = float(draws.var(ddof=1)) if draws.size > 1 else float("nan")
    return set_crossed(point, var, n_docs, np.asarray(per_set, dtype=np.float64), "documents", method)


def _cell(iv: Interval) -> dict[str, Any]:
    lo, hi = iv.ci if iv.ci is not None else (None, None)
    return {"value": iv.estimate, "ci_low": lo, "ci_high": hi, "n": iv.n, "units": iv.units,
            "too_small": iv.ci is None, "method": iv.method, **({"between_sets": iv.extra} if iv.extra else {})}


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


def _columns(words: pd.DataFrame, labels: list[tuple[str, pd.Series, list[str]]], runs: list[str]
             ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Per-document totals: word counts ``[D, L]`` and each run's excess ``{run: [D, L]}`` over all labels
    (tags, then tag groups, then ``all``), and the label names."""
    if CLUSTER not in words:
        raise NegdiffError(f"the words table has no '{CLUSTER}' column: documents are the resampling unit")
    cluster = pd.factorize(words[CLUSTER])[0].astype(np.int64)
    d = int(cluster.max()) + 1 if len(cluster) else 0
    blocks = []
    for _, series, order in labels:
        blocks.append((pd.Categorical(series, categories=order).codes.astype(np.int64), len(order)))
    ones = np.ones(len(words))

    def totals(values: np.ndarray) -> np.ndarray:
        return np.concatenate([per_cluster(cluster, codes, values, d, k) for codes, k in blocks]
                              + [np.bincount(cluster, weights=values, minlength=d)[:, None]], axis=1)

    base = words.surprisal_baseline.to_numpy(dtype=np.float64)
    excess = {r: totals(words[f"surprisal_{r}"].to_numpy(dtype=np.float64) - base) for r in runs}
    names = np.array([f"{kind}:{lab}" for kind, _, order in labels for lab in order] + ["all:all"])
    return totals(ones), excess, names


def _condition(runs: list[str], is_random: bool, count: np.ndarray, excess: dict[str, np.ndarray],
               draws: dict[str, np.ndarray], names: np.ndarray, n_boot: int, seed: int) -> dict[str, dict]:
    """Per label: mean excess per word and share of the total excess, with their intervals."""
    tot_n, cnt_draws = count.sum(0), draws["__count__"]
    x = np.mean([excess[r] for r in runs], axis=0)
    xd = np.mean([draws[r] for r in runs], axis=0)
    docs = (count > 0).sum(0)
    out = {}
    for j, name in enumerate(names):
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_d, share_d = xd[:, j] / cnt_draws[:, j], xd[:, j] / xd[:, -1]
        mean = float(x[:, j].sum() / tot_n[j]) if tot_n[j] else float("nan")
        share = float(x[:, j].sum() / x[:, -1].sum())
        per_mean = [float(excess[r][:, j].sum() / tot_n[j]) for r in runs] if is_random else None
        per_share = [float(excess[r][:, j].sum() / excess[r][:, -1].sum()) for r in runs] if is_random else None
        out[name] = {"mean_excess": _cell(_interval(mean, mean_d, int(docs[j]), per_mean, n_boot, seed)),
                     "share_excess": _cell(_interval(share, share_d, int(docs[j]), per_share, n_boot, seed)),
                     "sum_excess": float(x[:, j].sum())}
    return out


def aggregate(words: pd.DataFrame, conditions: list[str], seed_runs: dict[str, list[str]], n_boot: int = N_BOOT,
              seed: int = 0) -> dict[str, Any]:
    """Excess surprisal (``surprisal_<cond> - surprisal_baseline`` per word) by tag and by tag group.

    Shares are of the signed total excess of the condition; ``share_tokens`` counts model subword tokens
    (what the paper tags), ``share_words`` gold words. ``seed_runs`` names the random-set conditions
    and their runs (K = len): their intervals carry the between-set variance, and each set's group split
    is listed. Intervals resample documents (see the module docstring), with one seed for everything.
    """
    order = tag_order(words.upos)
    groups = words.upos.map(tag_group)
    gorder = [g for g in GROUPS if (groups == g).any()]
    out: dict[str, Any] = {"tags": _shares(words.upos, order, words), "groups": _shares(groups, gorder, words),
                           "n_words": int(len(words)), "n_tokens": float(words.n_tokens.sum()), "conditions": {}}
    runs_of = {c: seed_runs.get(c, [c]) for c in conditions}
    runs = list(dict.fromkeys(r for c in conditions for r in runs_of[c]))
    count, excess, names = _columns(words, [("tag", words.upos, order), ("group", groups, gorder)], runs)
    out["resampling"] = {"unit": "documents", "column": CLUSTER, "n_documents": int(count.shape[0]), "n_boot": n_boot,
                         "seed": seed, "method": "cluster (document) bootstrap, one set of draws for every number"}
    cols = [count, *(excess[r] for r in runs)]
    flat = cluster_sums(np.concatenate(cols, axis=1), n_boot, seed) if count.shape[0] else np.empty((n_boot, 0))
    width = count.shape[1]
    draws = {"__count__": flat[:, :width], **{r: flat[:, (i + 1) * width:(i + 2) * width] for i, r in enumerate(runs)}}
    for cond in conditions:
        is_random = cond in seed_runs
        cells = _condition(runs_of[cond], is_random, count, excess, draws, names, n_boot, seed)
        tot = float(np.mean([excess[r][:, -1].sum() for r in runs_of[cond]]))
        res: dict[str, Any] = {
            "total_excess": float(tot), "mean_excess_per_word": cells["all:all"]["mean_excess"],
            "mean_excess_per_token": float(tot / words.n_tokens.sum()),
            "tags": {t: _tag_cell(cells[f"tag:{t}"], out["tags"][t]) for t in order},
            "groups": {g: _tag_cell(cells[f"group:{g}"], out["groups"][g]) for g in gorder}}
        if is_random:
            k = len(runs_of[cond])
            res["random_sets"] = {"k": k, "note": f"K = {k} random sets: between-set variance s^2/K in every interval"
                                  if k >= 2 else "K = 1 random set: the between-set variance cannot be estimated, "
                                  "so this control has no interval (n too small)"}
            res["seeds"] = {run: {g: {"share_excess": float(excess[run][:, len(order) + i].sum() / excess[run][:, -1].sum()),
                                      "mean_excess": float(excess[run][:, len(order) + i].sum() / count[:, len(order) + i].sum())}
                                  for i, g in enumerate(gorder)} for run in runs_of[cond]}
        out["conditions"][cond] = res
    return out


def _tag_cell(cell: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    share = cell["share_excess"]["value"]
    return {**cell, "excess_share_over_token_share": share / base["share_tokens"] if base["share_tokens"] else float("nan")}


def _ci(cell: dict[str, Any], scale: float = 1.0, fmt: str = "+.4f") -> str:
    if cell["ci_low"] is None:
        return f"(n = {cell['n']} {cell['units']}: too small, no CI)"
    return f"[{scale * cell['ci_low']:{fmt}}, {scale * cell['ci_high']:{fmt}}]"


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The closing lines: per condition, total excess and the scaffolding share against its token share."""
    res, a = record["results"], record["alignment"]
    rs = res.get("resampling", {})
    lines = [f"scored {a['words']:,} words ({a['subword_tokens']:,} tokens, {a['documents']} documents) of "
             f"{record['corpus']['name']}; {record['corpus']['tagger']}; surprisal in nats; 95% CIs resample "
             f"{rs.get('n_documents', '?')} documents as clusters ({rs.get('n_boot', '?')} replicates)"]
    sc = res["groups"].get("scaffolding")
    for cond, r in res["conditions"].items():
        m = r["mean_excess_per_word"]
        line = f"{cond:<16} excess {m['value']:+.4f} nats/word {_ci(m)}"
        if sc is not None:
            s = r["groups"]["scaffolding"]["share_excess"]
            line += (f"; scaffolding tags carry {100 * s['value']:.1f}% of it {_ci(s, 100, '.1f')} vs "
                     f"{100 * sc['share_tokens']:.1f}% of tokens ({100 * sc['share_words']:.1f}% of words)")
        lines.append(line)
        if "random_sets" in r:
            lines.append(f"{'':<16} {r['random_sets']['note']}")
    for cond, c in record["conditions"].items():
        if c.get("status") == "missing":
            lines.append(f"{cond:<16} not run: {c['message']}")
    return lines
