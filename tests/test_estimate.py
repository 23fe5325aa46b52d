"""The run-time estimator: token counts per step from the preset's sizes (hand-worked against the tables)."""

from __future__ import annotations

import pytest

from negdiff import estimate as E
from negdiff.reproduce import PRESETS, step_configs


def test_readout_tokens_follow_the_measured_tables():
    assert E.blimp_tokens(20) == pytest.approx(67 * 20 * 14.3)
    assert E.tse_tokens(30) == pytest.approx(22 * 30 * 8.0)
    assert E.blimp_tokens(None) == E.BLIMP_FULL and E.tse_tokens(None) == E.TSE_FULL
    assert 14.3 > E._per_pair(E.BLIMP_PER_PAIR, 25) > 13.8  # interpolated between the 20 and 30 rows
    assert E.tse_tokens(10_000) == E.TSE_FULL  # more pairs than the benchmark has


def test_ablate_estimate_counts_every_condition():
    cfgs = step_configs({"ablate": dict(PRESETS["quick"]["ablate"])}, seed=0)
    a = E.counted("ablate", cfgs["ablate"])
    tree = 1 / E.TREE_RATE  # minimal pairs and benchmark items run through the prefix tree
    head = 5120 + (E.blimp_tokens(20) + E.tse_tokens(30) + E.nongram_tokens(20)) * tree
    ctrl = (E.blimp_tokens(20) + E.tse_tokens(30)) * tree
    dose = 5 * (2048 + E.blimp_tokens(2) * tree)
    want = 8 * head + 4 * ctrl + 7 * 4096 + dose
    assert E.step_tokens("ablate", a, 30) == pytest.approx(want)
    secs = E.estimate(step_configs({"ablate": dict(PRESETS["quick"]["ablate"])}, 0), 30, tok_s=1000.0)
    assert secs["total"] == pytest.approx(want / 1000.0)


def test_standard_preset_runs_controls_on_subsets():
    a = E.counted("ablate", step_configs({"ablate": dict(PRESETS["standard"]["ablate"])}, seed=0)["ablate"])
    assert a.blimp_limit is None and a.control_blimp == 40 and a.control_tse == 100
    full = E.estimate(step_configs(PRESETS["standard"], 0), 30, 700.0)
    quick = E.estimate(step_configs(PRESETS["quick"], 0), 30, 700.0)
    assert full["ablate"] > 10 * quick["ablate"]
