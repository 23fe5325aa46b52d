"""Ablation: perplexity-matched search, verdict rules, isolation of conditions, resume, end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import negdiff.experiments.ablate.run as ablate
from negdiff import load_model
from negdiff.errors import NegdiffError
from negdiff.experiments.ablate import AblateConfig, Condition, match_perplexity, run_ablate, run_condition
from negdiff.experiments.ablate.stats import _doubling, table_csv, table_markdown
from negdiff.experiments.scan import ScanConfig, run_scan
from negdiff.neuronset import NeuronSet
from negdiff.services import conditions

from conftest import DATA

SHARED = DATA
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="staged data not beside the repo")


def test_ppl_matched_search_meets_tolerance(monkeypatch):
    table = pd.DataFrame({"layer": np.repeat([0, 1], 200), "neuron": np.tile(np.arange(200), 2),
                          "wd": np.random.default_rng(0).random(400)})
    # synthetic, monotone response: each zeroed neuron adds 0.01 to perplexity
    monkeypatch.setattr(ablate, "calib_ppl", lambda loaded, w, neurons, cfg: 10.0 + 0.01 * neurons.size)
    res = match_perplexity(None, table, target_increase=1.37, base_ppl=10.0, windows=None, cfg=AblateConfig())
    assert res["matched"] and abs(res["increase"] - 1.37) <= 0.02 * 1.37
    assert res["neurons"].size == round(res["m"] * 200) * 2
    assert [t["m"] for t in res["trace"][:4]] == [0.01, 0.02, 0.04, 0.08]  # bracketing doubles m
    unreachable = match_perplexity(None, table, target_increase=100.0, base_ppl=10.0, windows=None, cfg=AblateConfig())
    assert not unreachable["matched"] and unreachable["m"] == 0.95
    nothing = match_perplexity(None, table, target_increase=-0.5, base_ppl=10.0, windows=None, cfg=AblateConfig())
    assert not nothing["matched"] and nothing["trace"] == [] and "did not raise" in nothing["reason"]


def test_sizes_without_enough_units_are_refused_before_any_work():
    with pytest.raises(NegdiffError, match="perplexity intervals need >= 10"):
        AblateConfig(ppl_tokens=16_384)  # 8 windows of 2048
    with pytest.raises(NegdiffError, match="needs >= 8"):
        AblateConfig(calib_tokens=4096)
    assert AblateConfig(ppl_tokens=5120, ppl_window=512, calib_tokens=4096).ppl_window == 512


def test_doubling_interpolates_in_log_space():
    rows = [{"set": "baseline", "p": 0, "ppl": 10.0}, {"set": "top", "p": 0.01, "ppl": 15.0},
            {"set": "top", "p": 0.04, "ppl": 30.0}]
    expected = np.exp(np.log(0.01) + (np.log(20) - np.log(15)) / (np.log(30) - np.log(15)) * np.log(4))
    assert _doubling(rows) == pytest.approx(expected)
    assert _doubling(rows[:2]) is None


def test_table_csv_holds_the_markdown_table_numbers(tmp_path):
    """Every number of table.md, recovered from table.csv at the Markdown's rounding; empty where '-'."""
    import re

    from negdiff.results import write_csv

    record = {
        "order": ["baseline", "wn_neg", "random_neg", "ppl_matched_neg"],
        "set_sizes": {"wn_neg": 480, "random_neg_s0": 480, "ppl_matched_neg": 5640},
        "groups": {"baseline": ["baseline"], "wn_neg": ["wn_neg"], "random_neg": ["random_neg_s0", "random_neg_s1"],
                   "ppl_matched_neg": ["ppl_matched_neg"]},
        "ppl_matched": {"m": 0.122},
        "value": {"baseline": {"perplexity": {"value": 30.4021}, "blimp": {"value": 0.78134}},
                  "wn_neg": {"perplexity": {"value": 34.8}, "blimp": {"value": 0.76119}},
                  "random_neg": {"perplexity": {"value": 30.68, "sd": 0.13}, "blimp": {"value": 0.777, "sd": 0.005}},
                  "ppl_matched_neg": {"perplexity": {"value": 34.7}}},
        "delta": {"wn_neg": {"perplexity": {"diff": 4.41, "ci_low": 3.58, "ci_high": 5.25},
                             "blimp": {"diff": -0.02015, "ci_low": -0.034, "ci_high": -0.007}},
                  "random_neg": {"blimp": {"diff": -0.004, "ci_low": -0.01, "ci_high": 0.002}},
                  "ppl_matched_neg": {"perplexity": {"diff": 4.3, "n": 3, "units": "windows"}}},
    }
    header, rows = table_csv(record)
    assert header[:2] == ["condition", "n_neurons"] and header[2:7] == [f"PPL {p}" for p in
                                                                       ("value", "sd", "diff", "ci_low", "ci_high")]
    frame = pd.read_csv(write_csv(tmp_path / "t.csv", header, rows))
    md = table_markdown(record).splitlines()
    for i, line in enumerate(md[2:6]):
        cells = [c.strip() for c in line.strip("| ").split(" | ")]
        assert cells[0] == frame.loc[i, "condition"] and int(cells[1]) == frame.loc[i, "n_neurons"]
        for cell, col in zip(cells[2:], ("PPL", "BLiMP acc %"), strict=True):
            numbers = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell)]
            got = [frame.loc[i, f"{col} {p}"] for p in ("value", "sd", "diff", "ci_low", "ci_high")]
            present = [v for v in got if not np.isnan(v)]
            digits = 2 if col == "PPL" else 1
            assert [round(v, digits) for v in present] == pytest.approx(numbers, abs=1e-9), (cell, got)
    assert np.isnan(frame.loc[0, "PPL diff"]) and np.isnan(frame.loc[3, "BLiMP acc % value"])  # '-' is empty
    assert frame.loc[1, "BLiMP acc % value"] == pytest.approx(76.119)  # percent, unrounded


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    import os

    os.environ["NEGDIFF_DATA"] = str(SHARED)
    loaded = load_model(str(tiny_model_dir))
    root = tmp_path_factory.mktemp("ablate")
    rng = np.random.default_rng(0)
    words = ["the", "a", "of", "cat", "dog", "sat", "ran", "on", "mat", "and", "was", "is"]
    corpus = root / "c.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(words, 80)) for _ in range(40)))
    run_scan(loaded, ScanConfig(corpus=str(corpus), tokens=1024, window=128, md_pairs=200, fraction=0.05,
                                check_windows=0), root / "scan")
    cfg = AblateConfig(tasks=("perplexity", "blimp", "tse", "arc_easy", "piqa"), fraction=0.05, seeds=2,
                       blimp_limit=1, tse_limit=1, nongram_limit=6, ppl_tokens=384, ppl_window=32, calib_tokens=256,
                       dose_fractions=(0.05, 0.2), dose_blimp_limit=1, dose_ppl_tokens=256, n_boot=1000,
                       match_tol=0.2)
    record = run_ablate(loaded, root / "scan", cfg, root / "out")
    return loaded, cfg, root, record


@needs_data
def test_end_to_end_outputs(tiny_run):
    loaded, cfg, root, record = tiny_run
    out = root / "out"
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["order"][:3] == ["baseline", "wn_neg", "random_neg"]
    assert saved["set_sizes"]["wn_neg"] == saved["set_sizes"]["random_neg_s0"] == 6
    assert saved["value"]["baseline"]["blimp"]["n"] == 67 and saved["value"]["baseline"]["tse"]["n"] == 22
    assert "sd" in saved["value"]["random_neg"]["blimp"]  # spread across the two seeds
    from negdiff.decide import STATES

    assert {c["verdict"] for c in saved["claims"]} <= set(STATES)
    assert len(saved["claims"]) == 8 and saved["protocol"]["family"].startswith("the 8")
    for c in saved["claims"]:  # the fields a reviewer needs, per claim
        assert {"verdict", "p_adjusted", "readout", "claim"} <= set(c)
        if c["id"] != "double_dissociation":
            assert {"estimate", "ci", "n", "mde"} <= set(c)
    ppl = next(c for c in saved["claims"] if c["id"] == "ppl")
    assert ppl["n"] == 12 and ppl["units"] == "windows"  # 384 tokens / 32-token windows
    assert "mismatch" in saved["ppl_matched_check"]
    for c in saved["claims"]:  # every claim against the matched control carries the matching check
        assert ("matching" in c) == ("ppl_matched" in c["id"] or c["id"] == "double_dissociation")
    assert "wn_pos" in saved["value"] and "arc_easy" not in saved["value"]["wn_pos"]  # controls: syntax only
    table = (out / "table.md").read_text()
    assert "| wn_neg | 6 |" in table and "ppl_matched_neg (m = " in table
    csv = pd.read_csv(out / "table.csv")  # the same rows as table.md, numbers split into columns
    md_rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:len(saved["order"]) + 2]]
    assert csv["condition"].tolist() == md_rows and csv.loc[1, "n_neurons"] == 6
    assert csv.loc[1, "BLiMP acc % value"] == pytest.approx(100 * saved["value"]["wn_neg"]["blimp"]["value"])
    for name in ("deltas", "blimp_paradigms", "tse_tasks", "dose_response"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    items = pd.read_parquet(out / "conditions" / "wn_neg" / "items_blimp.parquet")
    assert len(items) == 67 and items.item_id.is_unique
    assert NeuronSet.from_json(out / "sets" / "wn_neg.json").size == 6


@needs_data
def test_conditions_do_not_share_hook_state_and_resume(tiny_run, monkeypatch):
    loaded, cfg, root, record = tiny_run
    out = root / "out"
    first = pd.read_parquet(out / "conditions" / "baseline" / "items_blimp.parquet")
    fresh = run_condition(loaded, Condition("baseline", NeuronSet.empty(), tasks=["blimp"]), cfg, root / "again", "k", True)
    assert np.array_equal(fresh["items"]["blimp"].lp_good.to_numpy(), first.lp_good.to_numpy())
    calls = []
    monkeypatch.setattr(conditions, "evaluate", lambda *a, **k: calls.append(a) or {})
    again = run_ablate(loaded, root / "scan", cfg, out)  # everything finished: nothing is re-evaluated
    assert calls == [] and again["claims"] == json.loads((out / "ablation.json").read_text())["claims"]
