"""Bootstrap CIs, paired differences, exact McNemar and Holm against scipy and hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from negdiff.errors import NegdiffError
from negdiff.result_stats import (
    bootstrap_ci,
    bootstrap_draws,
    holm,
    mcnemar_exact,
    paired_bootstrap_diff,
    summarize,
    summarize_mean_of_groups,
)


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    covered = 0
    for rep in range(200):
        x = rng.exponential(2.0, size=80)  # skewed, true mean 2
        lo, hi = bootstrap_ci(x, n_boot=1000, seed=rep)
        covered += lo <= 2.0 <= hi
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_of_binary_data_covers_p():
    rng = np.random.default_rng(7)
    covered = sum(
        lo <= 0.7 <= hi
        for lo, hi in (bootstrap_ci(rng.random(150) < 0.7, seed=r) for r in range(200))
    )
    assert 0.90 <= covered / 200 <= 0.99


def test_exact_discrete_path_matches_resampling_in_distribution():
    x = np.r_[np.ones(60), np.zeros(40)]
    fast = bootstrap_draws(x, np.mean, n_boot=4000, seed=0)  # multinomial over {0, 1}
    rng = np.random.default_rng(1)
    slow = x[rng.integers(0, 100, size=(4000, 100))].mean(1)
    assert fast.mean() == pytest.approx(0.6, abs=0.005)
    assert fast.std() == pytest.approx(math.sqrt(0.6 * 0.4 / 100), rel=0.05)
    assert stats.ks_2samp(fast, slow).pvalue > 0.01
    # a non-mean statistic takes the resampling path
    med = bootstrap_draws(np.arange(11.0), np.median, n_boot=200, seed=0)
    assert set(np.unique(med)) <= set(np.arange(11.0))


def test_paired_diff_sign_and_ci():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 300)
    b = a + 0.5 + rng.normal(0, 0.1, 300)
    out = paired_bootstrap_diff(a, b, seed=3)
    assert out["diff"] == pytest.approx(np.mean(b - a))
    assert out["ci_low"] < 0.5 < out["ci_high"] and out["ci_high"] - out["ci_low"] < 0.05
    with pytest.raises(NegdiffError, match="differ in length"):
        paired_bootstrap_diff(a, b[:-1])


@pytest.mark.parametrize("b,c", [(0, 0), (5, 0), (3, 9), (20, 12), (1, 1), (40, 61)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    ca = np.r_[np.ones(b, bool), np.zeros(c, bool), np.ones(7, bool), np.zeros(4, bool)]
    cb = np.r_[np.zeros(b, bool), np.ones(c, bool), np.ones(7, bool), np.zeros(4, bool)]
    res = mcnemar_exact(ca, cb)
    assert (res.b, res.c) == (b, c)
    ref = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert res.pvalue == pytest.approx(ref, rel=1e-9)


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.03, 0.5 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06, 0.5 (monotone), input order kept
    np.testing.assert_allclose(holm([0.03, 0.01, 0.5, 0.02]), [0.06, 0.04, 0.5, 0.06])
    np.testing.assert_allclose(holm([0.4, 0.3]), [0.6, 0.6])
    assert holm([0.9, 0.8, 0.7]).max() == 1.0


def test_summarize_and_transform():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    m = summarize(x, seed=0)
    assert m["value"] == 2.5 and m["n"] == 4
    assert m["stderr"] == pytest.approx(np.std(x, ddof=1) / 2)
    e = summarize(x, seed=0, transform=math.exp)
    assert e["value"] == pytest.approx(math.exp(2.5))
    assert e["ci_low"] == pytest.approx(math.exp(m["ci_low"])) and e["ci_high"] == pytest.approx(math.exp(m["ci_high"]))
    assert e["stderr"] == pytest.approx(math.exp(2.5) * m["stderr"], rel=1e-4)  # delta method
    g = summarize_mean_of_groups([np.ones(10), np.zeros(30)])
    assert g["value"] == 0.5 and g["n"] == 2 and g["n_items"] == 40
    with pytest.raises(NegdiffError, match="empty"):
        summarize([])
