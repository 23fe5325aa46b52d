"""Small, pure statistics for evaluation results: bootstrap CIs, paired differences, exact tests.

Everything takes plain arrays and a seed, so a result file's CI can be recomputed from its per-item
table alone. The bootstrap of a mean over data with few distinct values (accuracies: 0/1; paired
differences of accuracies: -1/0/1) is drawn exactly from the multinomial over those values, which is
the same distribution as resampling items but costs O(n_boot) instead of O(n_boot x n): a 67,000-pair
BLiMP run gets its CI in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _stats

from negdiff.errors import NegdiffError

#: At most this many distinct values take the exact multinomial path for the mean.
_DISCRETE_MAX = 16
#: Resampled elements held in memory at once on the generic path.
_CHUNK_ELEMENTS = 4_000_000


def _as_array(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise NegdiffError(f"{name} is empty: nothing to bootstrap")
    if np.isnan(arr).any():
        raise NegdiffError(f"{name} contains NaN")
    return arr


def bootstrap_draws(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """``n_boot`` bootstrap replicates of ``stat`` over ``values`` (resampling items with replacement)."""
    x = _as_array(values)
    rng = np.random.default_rng(seed)
    n = x.size
    if stat is np.mean:
        uniq, counts = np.unique(x, return_counts=True)
        if uniq.size <= _DISCRETE_MAX:
            draws = rng.multinomial(n, counts / n, size=n_boot)  # [n_boot, k] counts per distinct value
            return draws @ uniq / n
    out = np.empty(n_boot, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // n)
    for s in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - s), n))
        sample = x[idx]
        if stat is np.mean:
            out[s:s + len(idx)] = sample.mean(axis=1)
        else:
            out[s:s + len(idx)] = [stat(row) for row in sample]
    return out


def percentile_ci(draws: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The percentile interval of bootstrap draws."""
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` CI of ``stat`` over items."""
    return percentile_ci(bootstrap_draws(values, stat, n_boot, seed), alpha)


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """CI of mean(b - a) over paired items (same item in two conditions), resampling items."""
    xa, xb = _as_array(a, "a"), _as_array(b, "b")
    if xa.shape != xb.shape:
        raise NegdiffError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    d = xb - xa
    lo, hi = bootstrap_ci(d, np.mean, n_boot, seed, alpha)
    return {"diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "n": int(d.size)}


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``b`` items right under A only, ``c`` right under B only."""

    b: int
    c: int
    pvalue: float

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemar:
    """Two-sided exact binomial test on the discordant pairs (p = 0.5); p = 1 when there are none."""
    ca, cb = np.asarray(correct_a, dtype=bool).ravel(), np.asarray(correct_b, dtype=bool).ravel()
    if ca.shape != cb.shape:
        raise NegdiffError(f"paired samples differ in length: {ca.size} vs {cb.size}")
    b = int((ca & ~cb).sum())
    c = int((~ca & cb).sum())
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(_stats.binom.cdf(min(b, c), n, 0.5)))
    return McNemar(b, c, p)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def summarize(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    transform: Callable[[float], float] | None = None,
) -> dict:
    """A metric record: mean, its standard error, a percentile bootstrap CI, and n.

    ``transform`` (monotone increasing, e.g. ``exp`` for perplexity from mean NLL) maps the value and
    the CI ends; the stderr goes through the delta method with a numerical derivative.
    """
    x = _as_array(values)
    mean = float(x.mean())
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
    lo, hi = bootstrap_ci(x, np.mean, n_boot, seed, alpha)
    if transform is not None:
        eps = 1e-6 * max(1.0, abs(mean))
        slope = (transform(mean + eps) - transform(mean - eps)) / (2 * eps)
        mean, se, lo, hi = transform(mean), abs(slope) * se, transform(lo), transform(hi)
    return {"value": float(mean), "stderr": float(se), "ci_low": float(lo), "ci_high": float(hi), "n": int(x.size)}


def summarize_mean_of_groups(
    groups: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """The unweighted mean of group means (e.g. mean over 22 TSE tasks), groups resampled independently.

    The stderr combines the groups' standard errors (independent groups); ``n`` counts the groups.
    """
    if not groups:
        raise NegdiffError("no groups to average")
    means = np.array([float(np.mean(g)) for g in groups])
    draws = np.mean([bootstrap_draws(g, np.mean, n_boot, seed + i) for i, g in enumerate(groups)], axis=0)
    ses = [np.std(g, ddof=1) / np.sqrt(len(g)) if len(g) > 1 else 0.0 for g in groups]
    se = float(np.sqrt(np.sum(np.square(ses))) / len(groups))
    lo, hi = percentile_ci(draws, alpha)
    return {"value": float(means.mean()), "stderr": se, "ci_low": lo, "ci_high": hi, "n": len(groups),
            "n_items": int(sum(len(g) for g in groups))}
