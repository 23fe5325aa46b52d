"""The gate-by-up quadrant step end to end on a tiny Llama: conditions, deltas recomputed from the per-item
tables, the 12-claim family, the figure, resume, and the refusals (ungated model, bad sizes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from negdiff import NegdiffError, load_model
from negdiff.cli import main
from negdiff.experiments import quadrants
from negdiff.experiments.quadrants import stats as qstats
from negdiff.gate_up import QUADRANTS
from negdiff.neuronset import NeuronSet
from negdiff.services import conditions
from negdiff.sites import resolve

from conftest import DATA, tiny_model

needs_data = pytest.mark.skipif(not (DATA / "blimp").is_dir(), reason="staged data not beside the repo")


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    NeuronSet({0: torch.tensor([1, 5, 7, 30]), 1: torch.tensor([2, 3, 40])}, {"rule": "test"}).to_json(d / "wn.json")
    return d


def test_names_and_groups():
    assert [qstats.short(m) for m in QUADRANTS] == ["gate_neg_up_pos", "gate_neg_up_neg", "gate_pos_up_pos", "gate_pos_up_neg"]
    assert qstats.words("gate_neg_up_pos") == "gate < 0, up > 0" and qstats.words("gate_pos_up_neg") == "gate > 0, up < 0"
    groups = qstats.groups_of(["baseline", "wn_gate_neg_up_pos", "random_gate_neg_up_pos_s0", "random_gate_neg_up_pos_s1"])
    assert groups == {"baseline": ["baseline"], "wn_gate_neg_up_pos": ["wn_gate_neg_up_pos"],
                      "random_gate_neg_up_pos": ["random_gate_neg_up_pos_s0", "random_gate_neg_up_pos_s1"]}


def test_ungated_model_refused_before_any_work(tmp_path):
    fake = SimpleNamespace(sites=resolve(tiny_model("gpt_neox")))
    with pytest.raises(NegdiffError, match="needs a gated MLP"):
        quadrants.run_quadrants(fake, tmp_path / "no-scan", quadrants.QuadrantsConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~1 min on 2 cores: 13 conditions; the hooks are checked in the default suite (test_gate_up.py)
@needs_data
def test_run_quadrants_end_to_end_recomputed_and_resumed(tiny_model_dir, scan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(DATA))
    loaded = load_model(str(tiny_model_dir))
    cfg = quadrants.QuadrantsConfig(tasks=("perplexity", "blimp"), seeds=2, blimp_limit=1, ppl_tokens=320,
                                    ppl_window=32, n_boot=1000)
    out = tmp_path / "out"
    rec = quadrants.run_quadrants(loaded, scan_dir, cfg, out)
    names = ["baseline"] + [f"{w}_{qstats.short(m)}{s}" for m in QUADRANTS for w, s in
                            (("wn", ""), ("random", "_s0"), ("random", "_s1"))]
    assert sorted(rec["seconds_per_condition"]) == sorted(names)
    for f in ("quadrants.json", "table.csv", "figures/quadrant_deltas.png", "figures/quadrant_deltas.svg",
              "conditions/wn_gate_neg_up_pos/items_blimp.parquet", "sets/random_gate_pos_up_neg_s1.json"):
        assert (out / f).is_file(), f
    assert NeuronSet.from_json(out / "sets" / "random_gate_neg_up_pos_s0.json").counts() == {0: 4, 1: 3}

    def items(name, task):
        return pd.read_parquet(out / "conditions" / name / f"items_{task}.parquet").set_index("item_id").sort_index()

    base_b, base_p = items("baseline", "blimp"), items("baseline", "perplexity")
    for m in QUADRANTS:
        q = qstats.short(m)
        wn_b, wn_p = items(f"wn_{q}", "blimp"), items(f"wn_{q}", "perplexity")
        d = rec["delta"][f"wn_{q}"]
        assert d["blimp"]["diff"] == pytest.approx(wn_b.correct.mean() - base_b.correct.mean())
        assert d["perplexity"]["diff"] == pytest.approx(np.exp(wn_p.nll.mean()) - np.exp(base_p.nll.mean()))
        assert not np.array_equal(wn_p.nll.to_numpy(), base_p.nll.to_numpy())  # the edit reached the scores
        rnd = [items(f"random_{q}_s{k}", "perplexity").nll.to_numpy() for k in range(2)]
        claim = next(c for c in rec["claims"] if c["id"] == f"{q}_ppl")
        assert claim["estimate"] == pytest.approx(wn_p.nll.mean() - np.mean([r.mean() for r in rnd]))
        rb = [items(f"random_{q}_s{k}", "blimp").correct.mean() for k in range(2)]
        assert rec["value"][f"random_{q}"]["blimp"]["per_set"] == pytest.approx(rb)
    assert len(rec["claims"]) == 12 and sum(c["verdict"] == "not run" for c in rec["claims"]) == 4  # no TSE asked
    assert {c["id"] for c in rec["claims"] if c["verdict"] == "not run"} == {f"{qstats.short(m)}_tse" for m in QUADRANTS}
    split = rec["negative_split"]["blimp"]
    a, b = ((t.lp_good - t.lp_bad) for t in (items("wn_gate_neg_up_pos", "blimp"), items("wn_gate_neg_up_neg", "blimp")))
    assert split["diff"] == pytest.approx(a.mean() - b.mean()) and split["contrast"].startswith("wn_gate_neg_up_pos - ")
    saved = json.loads((out / "quadrants.json").read_text())
    assert saved["step"] == "quadrants" and saved["protocol"]["version"] and saved["summary_lines"] == rec["summary_lines"]
    csv = pd.read_csv(out / "table.csv")
    assert len(csv) == 8 and csv.loc[0, "Δ BLiMP acc (pts) diff"] == pytest.approx(100 * rec["delta"]["wn_gate_neg_up_pos"]["blimp"]["diff"])

    calls = []
    monkeypatch.setattr(conditions, "evaluate", lambda *a, **k: calls.append(a) or {})
    again = quadrants.run_quadrants(loaded, scan_dir, cfg, out)  # every condition finished: nothing re-evaluated
    assert calls == [] and again["summary_lines"] == rec["summary_lines"]


def test_cli_quadrants_bad_input(tiny_model_dir, scan_dir, tmp_path, capsys):
    args = ["quadrants", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    assert main([*args, "--scan", str(tmp_path / "nope")]) == 2
    assert "holds no wn.json" in capsys.readouterr().err
    assert main([*args, "--scan", str(scan_dir), "--seeds", "0"]) == 2
    assert "--seeds must be at least 1, got 0" in capsys.readouterr().err
    assert main([*args, "--scan", str(scan_dir), "--ppl-tokens", "1024"]) == 2
    assert "perplexity intervals need >= 10" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_report_renders_the_steps_table_and_verdict_badges():
    from negdiff.report.page import findings

    html = findings(["| quadrant | Δ perplexity |", "|---|---|", "| gate < 0, up > 0: WN | +1.2 [+0.1, +2.3] |", "",
                     "Claims (12, one family):", "- HOLDS: zeroing gate > 0 on the WN [x]", "- NOT RUN: tse",
                     "label   value  with   columns"])
    assert html.count("<table>") == 1 and "<td class=\"num\">+1.2 [+0.1, +2.3]</td>" in html
    assert 'class="badge b-' in html and "NOT RUN" in html and "- HOLDS" not in html
    assert "<b>label</b> value with columns" in html


def test_wide_tables_split_repeating_their_label_columns():
    from negdiff.report.page import MAX_COLUMNS, md_table

    head = "| condition | n | " + " | ".join(f"c{i}" for i in range(12)) + " |"
    row = "| wn_neg | 480 | " + " | ".join(f"{i}.0 (+0.{i} [-1, +1])" for i in range(12)) + " |"
    html = md_table("\n".join([head, "|" + "---|" * 14, row]), keep=2)
    tables = html.split("</table>")[:-1]
    assert len(tables) == 2 and all(t.count("<th>") <= MAX_COLUMNS for t in tables)
    assert all("<th>condition</th><th>n</th>" in t and "wn_neg" in t for t in tables)
    assert "<th>c0</th>" in tables[0] and "<th>c11</th>" in tables[1] and html.count("<small>") == 12


def test_report_without_ablation_says_why_for_relu():
    """A run with no ablation says the claims were not tested, and for a ReLU model why they cannot be."""
    from negdiff.report.page import first_screen

    def scan(act: str) -> dict:
        return {"scan": {"model": {"name": "m", "sites": {"n_layers": 2, "neurons_per_layer": 8, "activation": act}}}}

    relu, gelu = first_screen(scan("relu")), first_screen(scan("gelu"))
    assert "not tested" in relu and "not tested" in gelu
    assert "identity" in relu and "identity" not in gelu
