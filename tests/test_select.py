"""Selection rules: per-layer / global top fraction, ties, lowest fraction, random controls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from negdiff import NegdiffError
from negdiff.select import random_like, select_lowest, select_wasserstein


def _table(n_layers=3, width=1536, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(layer, i, rng.gamma(2.0, 0.05) * (1 + layer)) for layer in range(n_layers) for i in range(width)]
    return pd.DataFrame(rows, columns=["layer", "neuron", "wd"])


def test_per_layer_top_one_percent_is_16_of_1536():
    table = _table()
    ns = select_wasserstein(table, 0.01)
    assert ns.counts() == {0: 16, 1: 16, 2: 16}
    for layer, idx in ns.neurons.items():
        rows = table[table.layer == layer]
        top16 = set(rows.nlargest(16, "wd").neuron)
        assert set(idx.tolist()) == top16
    assert ns.rule == {"rule": "top_fraction", "criterion": "wd", "fraction": 0.01, "scope": "per_layer"}


def test_global_scope_favours_high_layers():
    table = _table()
    ns = select_wasserstein(table, 0.01, scope="global")
    assert ns.size == len(table) - int((table.wd <= np.percentile(table.wd, 99)).sum())
    assert ns.counts().get(2, 0) > ns.counts().get(0, 0)


def test_ties_at_the_cut_are_excluded():
    # 100 neurons, values 0..89 plus ten tied at the top: the 90th percentile is the tie value -> none strictly above
    table = pd.DataFrame({"layer": 0, "neuron": range(100), "wd": list(range(90)) + [100.0] * 10})
    assert select_wasserstein(table, 0.05).size == 0
    table.loc[99, "wd"] = 101.0
    assert select_wasserstein(table, 0.05).names() == ["L0.N99"]


def test_lowest_fraction():
    table = _table(n_layers=2, width=200)
    ns = select_lowest(table, 0.25)
    assert ns.counts() == {0: 50, 1: 50}
    for layer, idx in ns.neurons.items():
        rows = table[table.layer == layer]
        assert set(idx.tolist()) == set(rows.nsmallest(50, "wd").neuron)


def test_random_controls_are_layer_matched_seeded_and_exclude_wn():
    table = _table()
    wn = select_wasserstein(table, 0.01)
    widths = {0: 1536, 1: 1536, 2: 1536}
    a, b, c = random_like(wn, widths, 0), random_like(wn, widths, 0), random_like(wn, widths, 1)
    assert a.counts() == wn.counts()
    assert a.names() == b.names() and a.names() != c.names()
    assert a.difference(wn).size == a.size  # no WN among the controls
    assert a.rule["seed"] == 0


def test_bad_arguments():
    table = _table(n_layers=1, width=10)
    with pytest.raises(NegdiffError, match="unknown selection criterion 'foo'"):
        select_wasserstein(table, 0.1, criterion="foo")
    with pytest.raises(NegdiffError, match="fraction must be in"):
        select_wasserstein(table, 1.5)
    with pytest.raises(NegdiffError, match="unknown scope"):
        select_wasserstein(table, 0.1, scope="model")


def test_raw_sign_and_below_mean_criteria():
    """wd_neg_raw ranks by W1 over h < 0, wd_below_mean by W1 below the mean (the old wd_neg values)."""
    table = _table(n_layers=1, width=200)
    rng = np.random.default_rng(1)
    table["wd_neg_raw"], table["wd_below_mean"] = rng.random(200), rng.random(200)
    for crit in ("wd_neg_raw", "wd_below_mean"):
        ns = select_wasserstein(table, 0.05, criterion=crit)
        assert set(ns.indices(0).tolist()) == set(table.nlargest(10, crit).neuron) and ns.rule["criterion"] == crit


def test_removed_wd_neg_criterion_explains_itself():
    table = _table(n_layers=1, width=10).assign(wd_neg=1.0)
    for call in (lambda: select_wasserstein(table, 0.1, criterion="wd_neg"),
                 lambda: select_lowest(table, 0.1, criterion="wd_neg")):
        with pytest.raises(NegdiffError, match=r"'wd_neg' was removed: it split W1 at the neuron's mean") as err:
            call()
        assert "wd_neg_raw" in str(err.value) and "wd_below_mean" in str(err.value) and "\n" not in str(err.value)


def test_criterion_options_accept_the_removed_name_so_the_error_explains_it():
    """argparse must not reject 'wd_neg' with a bare 'invalid choice': scan, ablate and dynamics parse it and
    the NegdiffError (exit 2, one line) says what replaced it."""
    from negdiff.cli import build_parser
    from negdiff.select import CRITERIA

    parser = build_parser()
    for argv in (["scan", "m", "--out", "o"], ["ablate", "m", "--scan", "s", "--out", "o"],
                 ["dynamics", "--checkpoints", "c", "--out", "o"]):
        for crit in (*CRITERIA, "wd_neg"):
            assert parser.parse_args([*argv, "--criterion", crit]).criterion == crit
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--criterion", "wd_pos"])


def test_scan_cli_wd_neg_is_one_line_exit_2(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, NEGDIFF_PROGRESS="0")
    out = subprocess.run([sys.executable, "-m", "negdiff", "scan", str(tiny_model_dir), "--out", str(tmp_path / "o"),
                          "--criterion", "wd_neg"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("negdiff: error")]
    assert len(lines) == 1 and "wd_neg_raw" in lines[0] and "wd_below_mean" in lines[0]
