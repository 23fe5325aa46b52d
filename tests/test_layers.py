"""negdiff layers: the group rule, the neurons of every condition, deltas and additivity by hand, an
end-to-end run on a tiny model recomputed from its per-condition tables, resume, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sstats

from negdiff import NegdiffError, load_model
from negdiff.cli import main
from negdiff.experiments import layers
from negdiff.experiments.layers import stats as layers_stats
from negdiff.neuronset import NeuronSet
from negdiff.services import conditions

from conftest import DATA

SHARED = DATA
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="staged data not beside the repo")


# ---------------------------------------------------------------------------------------------- groups
@pytest.mark.parametrize("n, sizes", [(30, [4, 4, 4, 4, 4, 4, 3, 3]), (32, [4] * 8), (12, [2, 2, 2, 2, 1, 1, 1, 1]),
                                      (5, [1] * 5), (8, [1] * 8), (1, [1])])
def test_default_group_rule(n, sizes):
    groups = layers.layer_groups(n)
    assert [len(g) for g in groups] == sizes
    assert [layer for g in groups for layer in g] == list(range(n))  # consecutive, each layer once, in order


def test_group_size_rule_and_bad_sizes():
    assert layers.layer_groups(30, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15],
                                          [16, 17, 18, 19], [20, 21, 22, 23], [24, 25, 26, 27], [28, 29]]
    assert layers.layer_groups(5, 5) == [[0, 1, 2, 3, 4]] and layers.layer_groups(5, 2) == [[0, 1], [2, 3], [4]]
    for bad in (0, -1, 31):
        with pytest.raises(NegdiffError, match=r"--group-size must be between 1 and the number of layers \(30\)"):
            layers.layer_groups(30, bad)
    assert "the last of 2" in layers.group_rule(30, 4) and "larger first" in layers.group_rule(30, None)


def test_conditions_hold_exactly_the_right_neurons():
    wn = NeuronSet({0: [3, 9], 1: [4], 2: [0, 7], 3: [5], 4: [1], 5: [2, 8]})
    groups = layers.layer_groups(6, 2)  # [[0, 1], [2, 3], [4, 5]]
    assert layers.plan_spans(3) == {"single": [(0, 0), (1, 1), (2, 2)], "bottom": [(0, 0), (0, 1), (0, 2)],
                                    "top": [(2, 2), (1, 2), (0, 2)]}
    conds = layers.build_conditions(wn, groups, ["perplexity"], "zero_negative")
    got = {c.name: sorted(c.neurons) for c in conds}
    assert got == {
        "baseline": [],
        "g1": [(0, 3), (0, 9), (1, 4)],
        "g2": [(2, 0), (2, 7), (3, 5)],
        "g3": [(4, 1), (5, 2), (5, 8)],
        "g1-2": [(0, 3), (0, 9), (1, 4), (2, 0), (2, 7), (3, 5)],
        "g1-3": [(0, 3), (0, 9), (1, 4), (2, 0), (2, 7), (3, 5), (4, 1), (5, 2), (5, 8)],
        "g2-3": [(2, 0), (2, 7), (3, 5), (4, 1), (5, 2), (5, 8)],
    }
    assert list(got) == ["baseline", "g1", "g2", "g3", "g1-2", "g1-3", "g2-3"]  # each range once
    assert all(c.mode == "zero_negative" and c.tasks == ["perplexity"] for c in conds)
    recs = layers.group_records(groups, wn)
    assert [(r["label"], r["single"], r["n_wn"]) for r in recs] == [("g1 (L0-1)", "g1", 3), ("g2 (L2-3)", "g2", 3),
                                                                    ("g3 (L4-5)", "g3", 3)]


# ---------------------------------------------------------------------------------------------- statistics
def _blimp(correct: list[int], terms: list[str], margin: list[float]) -> pd.DataFrame:
    n = len(correct)
    return pd.DataFrame({"item_id": [f"b{i}" for i in range(n)], "paradigm": [f"p_{t}" for t in terms],
                         "linguistics_term": terms, "correct": np.array(correct, dtype=bool),
                         "lp_good": np.array(margin, dtype=float) - 5.0, "lp_bad": np.full(n, -5.0)})


def _ppl(nll) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [f"w{i}" for i in range(len(nll))], "nll": np.asarray(nll, dtype=float)})


def _items(correct: list[int], terms: list[str], nll: list[float], margin: list[float] | None = None) -> dict:
    return {"blimp": _blimp(correct, terms, margin if margin is not None else [float(c) for c in correct]),
            "perplexity": _ppl(nll)}


def test_deltas_and_additivity_by_hand():
    """Small read-outs (< 10 units): point estimates by hand, and "n too small" instead of any interval."""
    terms = ["agr", "agr", "agr", "isl", "isl", "isl"]
    items = {"baseline": _items([1, 1, 1, 1, 1, 0], terms, [1.0, 2.0, 3.0]),
             "g1": _items([0, 1, 1, 1, 1, 0], terms, [1.5, 2.0, 3.0]),
             "g2": _items([1, 1, 1, 0, 1, 0], terms, [1.0, 2.5, 3.0]),
             "g1-2": _items([0, 0, 1, 0, 1, 0], terms, [1.5, 2.5, 3.5])}
    items["g2"]["blimp"] = items["g2"]["blimp"].iloc[::-1]  # another row order: pairing is by item_id
    deltas, adds = layers_stats.delta_table(items, ["g1", "g2", "g1-2"], n_boot=400, seed=3, singles=["g1", "g2"],
                                            everything="g1-2")
    d = deltas.set_index(["condition", "task", "readout", "measure"])
    assert d.loc[("g1", "blimp", "overall", "acc"), "diff"] == pytest.approx(4 / 6 - 5 / 6)
    assert d.loc[("g1-2", "blimp", "agr", "acc"), "diff"] == pytest.approx(1 / 3 - 1)
    assert d.loc[("g2", "blimp", "isl", "acc"), ["base", "value", "n"]].tolist() == pytest.approx([2 / 3, 1 / 3, 3])
    assert d.loc[("g1", "blimp", "overall", "margin"), "diff"] == pytest.approx(-1 / 6)  # margin = lp_good - lp_bad
    ppl = d.loc[("g1-2", "perplexity", "overall", "nll")]
    assert ppl["diff"] == pytest.approx(np.exp(2.5) - np.exp(2.0)) and ppl["diff_nll"] == pytest.approx(0.5)
    assert deltas.too_small.all() and deltas.ci_low.isna().all() and deltas.ci_high.isna().all()
    assert "n too small" in ppl["method"] and ppl["units"] == "windows" and ppl["n"] == 3
    add = {(a["task"], a["readout"], a["measure"]): a for a in adds}
    acc = add["blimp", "overall", "acc"]
    assert acc["sum_of_singles"]["diff"] == pytest.approx(-2 / 6) and acc["all_groups"]["diff"] == pytest.approx(-3 / 6)
    assert acc["interaction"]["diff"] == pytest.approx(-1 / 6) and acc["interaction"]["ci_low"] is None
    assert acc["largest_single"] == {"condition": "g1", "diff": pytest.approx(-1 / 6)}
    p = add["perplexity", "overall", "nll"]  # per window: (all_i - base_i) - sum_g (g_i - base_i)
    assert p["interaction"]["diff"] == pytest.approx(np.mean([0.0, 0.0, 0.5])) and p["interaction"]["too_small"]
    assert add["blimp", "agr", "acc"]["exploratory"] is True and add["blimp", "overall", "acc"]["exploratory"] is False
    small = layers_stats.most_degraded(deltas, "g1-2", 5)  # 3 items each: never ranked
    assert small["rows"] == [] and small["excluded_too_small"] == 2 and "2 smaller read-outs not ranked" in small["note"]
    big = deltas.assign(too_small=False)  # the same deltas as if each read-out had >= 10 items
    worst = layers_stats.most_degraded(big, "g1-2", 5)
    assert [(w["readout"], round(w["diff"], 6)) for w in worst["rows"]] == [("agr", round(-2 / 3, 6)),
                                                                           ("isl", round(-1 / 3, 6))]
    assert worst["comparisons"] == 2 and worst["note"] == "exploratory: 2 of 2 read-outs with >= 10 items, unadjusted"
    assert layers_stats.most_degraded(big, "g2", 5)["rows"][0]["readout"] == "isl"
    assert layers_stats.fmt("perplexity", "nll", ppl) == f"{np.exp(2.5) - np.exp(2.0):+.2f} (n = 3: too small)"


def test_perplexity_t_interval_by_hand_and_too_small():
    """>= 10 windows: Δppl from a t-interval on the per-window NLL differences (n - 1 df), by hand with
    scipy; 8 windows: the point estimate and "n too small", no interval."""
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.3, 12)
    diff = rng.normal(0.05, 0.04, 12)
    items = {"baseline": {"perplexity": _ppl(base)}, "g1": {"perplexity": _ppl(base + diff)}}
    row = layers_stats.delta_table(items, ["g1"], n_boot=1000, seed=0)[0].iloc[0]
    se = diff.std(ddof=1) / np.sqrt(12)
    q = sstats.t.ppf(0.975, 11)
    ppl0 = np.exp(base.mean())
    assert row.diff_nll == pytest.approx(diff.mean()) and row.df == 11 and not row.too_small
    assert [row.diff_nll_ci_low, row.diff_nll_ci_high] == pytest.approx([diff.mean() - q * se, diff.mean() + q * se])
    assert row["diff"] == pytest.approx(np.exp((base + diff).mean()) - ppl0)
    assert [row.ci_low, row.ci_high] == pytest.approx([ppl0 * np.expm1(diff.mean() - q * se),
                                                       ppl0 * np.expm1(diff.mean() + q * se)])
    assert row.p_greater == pytest.approx(sstats.t.sf(diff.mean() / se, 11))
    small = {k: {"perplexity": v["perplexity"].iloc[:8]} for k, v in items.items()}
    row8 = layers_stats.delta_table(small, ["g1"], n_boot=1000, seed=0)[0].iloc[0]
    assert row8.too_small and np.isnan(row8.ci_low) and row8.n == 8 and "n too small" in row8.method
    assert row8.diff_nll == pytest.approx(diff[:8].mean())


def test_item_readouts_get_bootstrap_cis_only_from_ten_items():
    """A term with 12 items gets a stratified paired bootstrap CI (acc and margin), one with 4 does not;
    the interaction's interval comes from the replicates every condition shares."""
    rng = np.random.default_rng(1)
    terms = ["agr"] * 12 + ["isl"] * 4
    m0 = rng.normal(1.0, 1.0, 16)
    conds = {"baseline": m0, "g1": m0 - rng.normal(0.3, 0.2, 16), "g2": m0 - rng.normal(0.2, 0.2, 16)}
    conds["g1-2"] = conds["g1"] + conds["g2"] - m0 - 0.1
    items = {c: {"blimp": _blimp((m > 0).astype(int).tolist(), terms, m.tolist())} for c, m in conds.items()}
    deltas, adds = layers_stats.delta_table(items, ["g1", "g2", "g1-2"], 2000, 5, ["g1", "g2"], "g1-2")
    d = deltas.set_index(["condition", "readout", "measure"])
    for measure in ("acc", "margin"):
        assert not d.loc[("g1", "agr", measure), "too_small"] and d.loc[("g1", "isl", measure), "too_small"]
        assert np.isnan(d.loc[("g1", "isl", measure), "ci_low"])
    r = d.loc[("g1", "agr", "margin")]
    assert r.ci_low < r["diff"] < r.ci_high and r["diff"] == pytest.approx((conds["g1"] - m0)[:12].mean())
    assert "stratified by paradigm" in r.method and r.units == "items"
    add = {(a["readout"], a["measure"]): a for a in adds}
    inter = add["overall", "margin"]["interaction"]
    assert inter["diff"] == pytest.approx(-0.1) and inter["ci_low"] == pytest.approx(-0.1)  # exact in every replicate
    assert inter["ci_high"] == pytest.approx(-0.1) and add["isl", "margin"]["interaction"]["too_small"]


def test_tse_readouts_split_by_group_and_task():
    tse = pd.DataFrame({"item_id": list("abcde"), "task": ["npi_a", "npi_b", "refl", "sva", "sva"],
                        "group": ["npi", "npi", "reflexives", "agreement", "agreement"], "correct": [1, 0, 1, 1, 0]})
    got = [(kind, name, mask.tolist()) for kind, name, mask in layers_stats.readouts("tse", tse)]
    assert got[0] == ("overall", "overall", [True] * 5)
    assert got[1:4] == [("group", "agreement", [False, False, False, True, True]),
                        ("group", "npi", [True, True, False, False, False]),
                        ("group", "reflexives", [False, False, True, False, False])]
    assert [name for kind, name, _ in got if kind == "task"] == ["npi_a", "npi_b", "refl", "sva"]
    assert [k for k, _, _ in layers_stats.readouts("perplexity", pd.DataFrame({"nll": [1.0]}))] == ["overall"]


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    NeuronSet({0: torch.tensor([1, 5, 7, 30]), 1: torch.tensor([2, 3, 40])}, {"rule": "test"}).to_json(d / "wn.json")
    return d


@needs_data
def test_run_layers_end_to_end_recomputed_and_resumed(tiny_model_dir, scan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    loaded = load_model(str(tiny_model_dir))
    cfg = layers.LayersConfig(tasks=("perplexity", "blimp"), blimp_limit=1, ppl_tokens=320, ppl_window=32,
                              n_boot=1000)  # TSE: below
    out = tmp_path / "out"
    rec = layers.run_layers(loaded, scan_dir, cfg, out)
    assert [g["layers"] for g in rec["groups"]] == [[0], [1]] and rec["cumulative"] == {"bottom": ["g1", "g1-2"],
                                                                                       "top": ["g2", "g1-2"]}
    for f in ("layers.json", "deltas.parquet", "figures/group_deltas.png", "figures/cumulative.png",
              "figures/phenomenon_heatmap.png", "conditions/g1/items_blimp.parquet", "conditions/g1-2/items_perplexity.parquet"):
        assert (out / f).is_file(), f
    assert sorted(NeuronSet.from_json(out / "sets" / "g2.json")) == [(1, 2), (1, 3), (1, 40)]
    assert NeuronSet.from_json(out / "sets" / "g1-2.json").size == 7
    assert rec["perplexity_windows"]["n_windows"] == 10 and rec["perplexity_windows"]["window"] == 32
    assert rec["config"]["ppl_window"] == 32 and rec["perplexity_windows"]["note"] is None
    # deltas recomputed from the per-condition tables alone
    deltas = pd.read_parquet(out / "deltas.parquet").set_index(["condition", "task", "kind", "readout", "measure"])
    tables = {c: {t: pd.read_parquet(out / "conditions" / c / f"items_{t}.parquet") for t in ("blimp", "perplexity")}
              for c in ("baseline", "g1", "g2", "g1-2")}
    for c in ("g1", "g2", "g1-2"):
        base, cond = tables["baseline"], tables[c]
        assert deltas.loc[(c, "blimp", "overall", "overall", "acc"), "diff"] == pytest.approx(
            cond["blimp"].correct.mean() - base["blimp"].correct.mean())
        term = base["blimp"].linguistics_term.iloc[0]
        assert deltas.loc[(c, "blimp", "term", term, "acc"), "diff"] == pytest.approx(
            cond["blimp"].correct[cond["blimp"].linguistics_term == term].mean()
            - base["blimp"].correct[base["blimp"].linguistics_term == term].mean())
        assert deltas.loc[(c, "blimp", "term", term, "acc"), "too_small"]  # 1 pair per paradigm: < 10 items
        p = deltas.loc[(c, "perplexity", "overall", "overall", "nll")]
        d = cond["perplexity"].nll.to_numpy() - base["perplexity"].nll.to_numpy()
        assert p["diff"] == pytest.approx(np.exp(cond["perplexity"].nll.mean()) - np.exp(base["perplexity"].nll.mean()))
        q = sstats.t.ppf(0.975, 9) * d.std(ddof=1) / np.sqrt(10)
        assert [p.diff_nll_ci_low, p.diff_nll_ci_high] == pytest.approx([d.mean() - q, d.mean() + q])
    assert len(deltas.loc["g1"].loc["blimp"].loc["term"]) == 2 * 13 and set(deltas.reset_index().task) == {"blimp", "perplexity"}
    assert not np.array_equal(tables["g1-2"]["perplexity"].nll, tables["baseline"]["perplexity"].nll)
    saved = json.loads((out / "layers.json").read_text())
    add = {(a["task"], a["readout"], a["measure"]): a for a in saved["additivity"]}
    assert add["perplexity", "overall", "nll"]["sum_of_singles"]["diff"] == pytest.approx(
        deltas.loc[("g1", "perplexity", "overall", "overall", "nll"), "diff_nll"]
        + deltas.loc[("g2", "perplexity", "overall", "overall", "nll"), "diff_nll"])
    assert any(line.startswith("additivity blimp") for line in rec["summary_lines"])
    assert "exploratory:" in saved["most_degraded_all_groups"]["note"]
    assert any("exploratory:" in line and "unadjusted" in line for line in rec["summary_lines"])

    calls = []
    monkeypatch.setattr(conditions, "evaluate", lambda *a, **k: calls.append(a) or {})
    again = layers.run_layers(loaded, scan_dir, cfg, out)  # every condition finished: nothing is re-evaluated
    assert calls == [] and again["summary_lines"] == rec["summary_lines"]


def test_cli_layers_bad_input(tiny_model_dir, scan_dir, tmp_path, capsys):
    args = ["layers", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    assert main([*args, "--scan", str(tmp_path / "nope")]) == 2
    assert "holds no wn.json" in capsys.readouterr().err
    assert main([*args, "--scan", str(scan_dir), "--group-size", "0"]) == 2  # refused by the config, before loading
    assert "--group-size must be at least 1, got 0" in capsys.readouterr().err
    assert main([*args, "--scan", str(scan_dir), "--group-size", "3"]) == 2  # needs the model's layer count
    assert "--group-size must be between 1 and the number of layers (2)" in capsys.readouterr().err
    assert main([*args, "--scan", str(scan_dir), "--blimp-limit", "-2"]) == 2
    assert "--blimp-limit must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_layers_on_the_embedded_model(tmp_path, monkeypatch):
    """Two groups of 15 layers on the real model: the four conditions run and WN ablation moves perplexity."""
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    loaded = load_model("default")
    gen = torch.Generator().manual_seed(0)
    NeuronSet({s.layer: torch.randperm(s.width, generator=gen)[:16] for s in loaded.sites}).to_json(tmp_path / "wn.json")
    cfg = layers.LayersConfig(tasks=("perplexity",), group_size=15, ppl_tokens=2560, ppl_window=256, n_boot=1000)
    rec = layers.run_layers(loaded, tmp_path, cfg, tmp_path / "out")
    assert [g["layers"] for g in rec["groups"]] == [list(range(15)), list(range(15, 30))]
    assert list(rec["conditions"]) == ["baseline", "g1", "g2", "g1-2"]
    d = pd.read_parquet(tmp_path / "out" / "deltas.parquet")
    ppl = d[(d.task == "perplexity") & (d.condition == "g1-2")].iloc[0]
    assert 5 < ppl.base < 50 and ppl["diff"] != 0
