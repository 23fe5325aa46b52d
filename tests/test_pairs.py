"""negdiff pairs: sign classes, negative-share aggregation against hand computation, the tagged stream,
an end-to-end run on a tiny model checked against an independent forward pass, resume, and the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from negdiff import capture, load_model
from negdiff.cli import main
from negdiff.data import read_conllu
from negdiff.experiments.pairs import run as pairs
from negdiff.experiments.pairs import stats as pairs_stats
from negdiff.experiments.scan import pairs_table
from negdiff.mapdiff import MDAccumulator
from negdiff.neuronset import NeuronSet

from conftest import DATA

SHARED = DATA
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason="staged data not beside the repo")
UPOS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT", "SCONJ",
        "SYM", "VERB", "X"}


# ---------------------------------------------------------------------------------------------- sign classes
def test_sign_class_rule():
    got = pairs_stats.sign_class([-1.0, -2.0, 1.0, 0.0, -0.5, 2.0], [-3.0, 1.0, 2.0, -1.0, 0.0, 3.0])
    assert got.tolist() == ["both_negative", "mixed", "both_positive", "mixed", "mixed", "both_positive"]


def test_sign_classes_of_a_synthetic_neuron_through_the_md_top_pairs():
    """y = x0 - 1: three pairs with known input distances and outputs, ranked by e/d, classed by sign."""
    x_a = torch.tensor([[0.2, 0.0], [0.5, 0.0], [2.0, 0.0], [0.0, 0.0]])
    x_b = torch.tensor([[0.6, 0.0], [1.5, 0.1], [3.0, 0.3], [0.1, 1.0]])
    acc = MDAccumulator(1, top_k=3)
    acc.add(x_a, x_b, torch.tensor([[1.0, 0.0]]), torch.tensor([-1.0]), meta={"pair_id": torch.arange(4)})
    plan = np.array([[0, 2 * k, 0, 2 * k + 1] for k in range(4)])
    windows = torch.arange(8).view(1, 8)
    tok = SimpleNamespace(decode=lambda ids: "".join(f"t{i}" for i in ids))
    table = pairs_table(SimpleNamespace(plan=plan, md=[acc]), tok, windows, {"wn": NeuronSet({0: [0]})})
    # e/d: pair 0 -> 1, pair 1 -> 1/sqrt(1.01), pair 2 -> 1/sqrt(1.09), pair 3 -> 0.1/sqrt(1.01): not kept
    assert table.pair_id.tolist() == [0, 1, 2]
    np.testing.assert_allclose(table[["y_a", "y_b"]].to_numpy(), [[-0.8, -0.4], [-0.5, 0.5], [1.0, 2.0]], atol=1e-6)
    assert table.sign_class.tolist() == ["both_negative", "mixed", "both_positive"]
    assert pairs_stats.sign_class(table.y_a, table.y_b).tolist() == table.sign_class.tolist()
    assert table.text_a.tolist() == ["t0", "t2", "t4"] and table.text_b.tolist() == ["t1", "t3", "t5"]


# ---------------------------------------------------------------------------------------------- aggregation
def _synthetic_pairs(seed: int = 0, n_layers: int = 4, per_layer: int = 6, k: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for group, p_neg in (("wn", 0.5), ("random", 0.2)):
        for layer in range(n_layers):
            for neuron in range(per_layer):
                for rank in range(k):
                    u = rng.random()
                    ya, yb = (-1.0 - u, -0.1) if u < p_neg else ((-1.0, 0.5) if u < 0.8 else (0.3, 2.0))
                    rows.append({"group": group, "layer": layer, "neuron": 100 * layer + neuron, "rank": rank + 1,
                                 "y_a": ya, "y_b": yb})
    t = pd.DataFrame(rows)
    t["sign_class"] = pairs_stats.sign_class(t.y_a, t.y_b)
    return t


def test_negative_shares_recomputed_by_hand():
    t = _synthetic_pairs()
    res = pairs_stats.shares(t, n_layers=4, n_boot=300, seed=1)
    for group in ("wn", "random"):
        for layer in range(4):
            rows = t[(t.group == group) & (t.layer == layer)]
            both = np.mean([a < 0 and b < 0 for a, b in zip(rows.y_a, rows.y_b)])
            anyneg = np.mean([min(a, b) < 0 for a, b in zip(rows.y_a, rows.y_b)])
            cell = res["per_layer"][layer][group]
            assert cell["both_negative"]["value"] == pytest.approx(both)
            assert cell["any_negative"]["value"] == pytest.approx(anyneg)
            assert cell["n_neurons"] == 6 and cell["n_pairs"] == 60
        for half, layers in (("early", [0, 1]), ("late", [2, 3]), ("all", [0, 1, 2, 3])):
            rows = t[(t.group == group) & t.layer.isin(layers)]
            cell = res["depth"][half][group]["both_negative"]
            assert cell["value"] == pytest.approx(float((rows.sign_class == "both_negative").mean()))
            assert cell["ci_low"] <= cell["value"] <= cell["ci_high"]
    d = res["depth"]["all"]
    diff = d["wn_minus_random"]["both_negative"]
    assert diff["value"] == pytest.approx(d["wn"]["both_negative"]["value"] - d["random"]["both_negative"]["value"])
    assert diff["ci_low"] > 0  # 50% vs 20% by construction, 24 neurons each
    assert res["halves"] == {"early": "layers 0..1", "late": "layers 2..3"}
    frame = pairs_stats.per_layer_frame(res["per_layer"])
    assert len(frame) == 4 * 3 * 3 and set(frame.group) == {"wn", "random", "wn_minus_random"}


def test_ratio_draws_equal_a_naive_stratified_loop():
    k = np.array([3, 0, 5, 1, 2, 7, 4], dtype=float)
    n = np.array([10, 10, 10, 9, 10, 10, 8], dtype=float)
    strata = np.array([2, 2, 0, 0, 0, 5, 5])
    got = pairs_stats.ratio_draws(k, n, strata, n_boot=50, seed=4)
    rng = np.random.default_rng(4)
    idx = {s: np.flatnonzero(strata == s)[rng.integers(0, (strata == s).sum(), size=(50, (strata == s).sum()))]
           for s in (0, 2, 5)}  # strata in sorted order, as ratio_draws draws them
    for b in range(50):
        num = sum(k[i].sum() for i in (idx[s][b] for s in (0, 2, 5)))
        den = sum(n[i].sum() for i in (idx[s][b] for s in (0, 2, 5)))
        assert got[b] == pytest.approx(num / den)
    assert np.unique(got).size > 10


def test_frequent_pairs_are_unordered_and_counted():
    t = pd.DataFrame({"group": ["wn"] * 4 + ["random"],
                      "show_a": ["the", "of", "the", "a", "x"], "show_b": ["of", "the", "in", "b", "y"],
                      "upos_a": ["DET", "ADP", "DET", None, "NOUN"], "upos_b": ["ADP", "DET", "ADP", "DET", "NOUN"]})
    f = pairs_stats.frequent(t, top=2)
    assert f["wn"]["token_pairs"][0] == {"pair": "of | the", "count": 2, "share": 0.5}
    assert f["wn"]["tag_pairs"] == [{"pair": "ADP | DET", "count": 3, "share": 1.0}]  # the untagged pair is left out
    assert f["random"]["tag_pairs"][0]["pair"] == "NOUN | NOUN"


# ---------------------------------------------------------------------------------------------- the stream
CONLLU = """# newdoc id = a
# sent_id = a-1
# text = The cat doesn't sit on the mat.
1	The	the	DET	_	_	_	_	_	_
2	cat	cat	NOUN	_	_	_	_	_	_
3-4	doesn't	_	_	_	_	_	_	_	_
3	does	do	AUX	_	_	_	_	_	_
4	n't	not	PART	_	_	_	_	_	_
5	sit	sit	VERB	_	_	_	_	_	_
6	on	on	ADP	_	_	_	_	_	_
7	the	the	DET	_	_	_	_	_	_
8	mat	mat	NOUN	_	_	_	_	_	SpaceAfter=No
9	.	.	PUNCT	_	_	_	_	_	_

# newdoc id = b
# sent_id = b-1
# text = Anna read 3 books.
1	Anna	Anna	PROPN	_	_	_	_	_	_
2	read	read	VERB	_	_	_	_	_	_
3	3	3	NUM	_	_	_	_	_	_
4	books	book	NOUN	_	_	_	_	_	SpaceAfter=No
5	.	.	PUNCT	_	_	_	_	_	_
"""


@pytest.fixture(scope="module")
def conllu_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ewt") / "mini.conllu"
    path.write_text(CONLLU)
    return path


def test_tagged_stream_keeps_documents_whole_and_maps_tokens_to_gold_words(real_tokenizer, conllu_file):
    sents = read_conllu(conllu_file)
    seed = next(s for s in range(20) if np.random.default_rng(s).permutation(2)[0] == 1)  # document b first
    ids, owner, starts, ordered = pairs.tagged_stream(real_tokenizer, sents, 10**6, seed, "chars")
    units = pairs.unit_table(ordered, "chars")
    assert [s.sent_id for s in ordered] == ["b-1", "a-1"] and starts[0] == 0 and len(starts) == 2
    got = [(real_tokenizer.decode([i]), None if o < 0 else (units.form[o], units.upos[o])) for i, o in zip(ids, owner)]
    sep = ("\n\n", None)
    assert got == [("Anna", ("Anna", "PROPN")), (" read", ("read", "VERB")), (" ", ("3", "NUM")), ("3", ("3", "NUM")),
                   (" books", ("books", "NOUN")), (".", (".", "PUNCT")), sep,
                   ("The", ("The", "DET")), (" cat", ("cat", "NOUN")), (" doesn", ("does", "AUX")),
                   ("'t", ("n't", "PART")), (" sit", ("sit", "VERB")), (" on", ("on", "ADP")), (" the", ("the", "DET")),
                   (" mat", ("mat", "NOUN")), (".", (".", "PUNCT")), sep]
    assert starts[1] == 7
    _, _, starts, _ = pairs.tagged_stream(real_tokenizer, sents, 3, seed, "chars")  # stops after the first document
    assert starts == [0]
    assert pairs.word_context(units, 10, before=3, after=1) == "does n't sit [[on]] the"
    assert pairs.word_context(units, 4, before=3, after=1) == "read 3 books [[.]]"  # never crosses a sentence
    assert pairs.word_context(units, -1) is None
    assert pairs.show(" the") == "the" and pairs.show("\n\n") == repr("\n\n")


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    NeuronSet({0: torch.tensor([1, 5, 7]), 1: torch.tensor([2, 3, 40])}, {"rule": "test"}).to_json(d / "wn.json")
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"layer": np.repeat([0, 1], 48), "neuron": np.tile(np.arange(48), 2), "wd": rng.random(96)})
    table.loc[(table.layer == 0) & (table.neuron == 5), "wd"] = 9.0  # the top WN of layer 0
    table.loc[(table.layer == 1) & (table.neuron == 40), "wd"] = 8.0
    table["wd_rank_in_layer"] = table.groupby("layer").wd.rank(ascending=False).astype(int)
    table.to_parquet(d / "neurons.parquet")
    return d


@needs_data
def test_run_pairs_end_to_end_independent_preacts_and_resume(loaded, scan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    out = tmp_path / "out"
    cfg = pairs.PairsConfig(tokens=1024, window=128, md_pairs=350, seeds=2, n_boot=100)
    rec = pairs.run_pairs(loaded, scan_dir, cfg, out)
    for f in ("pairs.json", "pairs.parquet", "panel_preacts.parquet", "panel_points.parquet",
              "figures/negative_share.png", "figures/panel_L0.png", "figures/panel_L1.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 500, f
    t = pd.read_parquet(out / "pairs.parquet")
    assert rec["sets"] == {"wn": 6, "random": t[t.group == "random"].groupby(["layer", "neuron"]).ngroups,
                           "random_rule": rec["sets"]["random_rule"]}
    assert 6 < rec["sets"]["random"] <= 12 and rec["stream"]["tokens"] == 1024 and rec["stream"]["windows"] == 8
    assert t.groupby(["group", "layer", "neuron"]).size().eq(10).all()
    assert rec["panels"] == [{"layer": 0, "neuron": 5, "wd": 9.0}, {"layer": 1, "neuron": 40, "wd": 8.0}]
    assert t.is_panel.sum() == 20 and set(t.upos_a.dropna()) <= UPOS and t.upos_a.notna().mean() > 0.9
    # every pre-activation of the table, recomputed with an independent forward pass of its window
    stream_windows = pairs.load_stream(loaded, cfg).windows
    for side in ("a", "b"):
        for w in sorted(set(t[f"window_{side}"])):
            rows = t[t[f"window_{side}"] == w]
            ids = stream_windows[w].numpy()
            assert (ids[rows[f"pos_{side}"].to_numpy()] == rows[f"token_{side}"].to_numpy()).all()
            with capture(loaded.model, sites=loaded.sites) as trace:
                trace.forward(stream_windows[w][None])
            for layer in (0, 1):
                r = rows[rows.layer == layer]
                pos, neuron = torch.tensor(r[f"pos_{side}"].to_numpy()), torch.tensor(r.neuron.to_numpy())
                ref = trace.pre[layer][0, pos, neuron].double().numpy()
                np.testing.assert_allclose(r[f"y_{side}"].to_numpy(), ref, atol=2e-5, rtol=1e-4)
    # pairs.json numbers recomputed from pairs.parquet
    saved = json.loads((out / "pairs.json").read_text())
    for group in ("wn", "random"):
        g = t[t.group == group]
        assert saved["results"]["depth"]["all"][group]["both_negative"]["value"] == pytest.approx(
            float(((g.y_a < 0) & (g.y_b < 0)).mean()))
        assert saved["results"]["depth"]["early"][group]["any_negative"]["value"] == pytest.approx(
            float((np.minimum(g.y_a, g.y_b)[g.layer == 0] < 0).mean()))
    pts = pd.read_parquet(out / "panel_points.parquet")
    assert pts.groupby("layer").is_top.sum().tolist() == [10, 10] and (pts.d_norm <= 1 + 1e-12).all()
    top = t[t.is_panel].sort_values(["layer", "rank"])
    merged = top.merge(pts, on=["layer", "neuron", "pair_id"], suffixes=("", "_pt"))
    np.testing.assert_allclose(merged.e_norm_pt, merged.e_norm, rtol=1e-4)  # the same MD terms, two routes
    assert any("both negative" in line for line in rec["summary_lines"])

    def boom(*a, **k):
        raise AssertionError("streamed again")

    monkeypatch.setattr(pairs, "stream", boom)
    again = pairs.run_pairs(loaded, scan_dir, cfg, out)
    assert again["key"] == rec["key"] and again["summary_lines"] == rec["summary_lines"]
    with pytest.raises(AssertionError, match="streamed again"):  # a changed setting is a new run
        pairs.run_pairs(loaded, scan_dir, pairs.PairsConfig(tokens=1024, window=128, md_pairs=300, n_boot=100), out)


def test_panel_layers_default_and_checks():
    wn = NeuronSet({0: [1], 5: [2, 3], 15: [4], 25: [9], 29: [7]})
    assert pairs.panel_neurons(wn, None, None, 30) == {5: 2, 15: 4, 25: 9}
    assert pairs.panel_neurons(wn, None, (29, 3), 30) == {29: 7}  # a layer without WN gets no panel
    with pytest.raises(Exception, match="--panel-layers: layer 30 is out of range 0..29"):
        pairs.panel_neurons(wn, None, (30,), 30)


def test_cli_pairs_bad_input(tiny_model_dir, scan_dir, tmp_path, capsys):
    assert main(["pairs", str(tiny_model_dir), "--scan", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no wn.json" in capsys.readouterr().err
    assert main(["pairs", str(tiny_model_dir), "--scan", str(scan_dir), "--out", str(tmp_path / "o"),
                 "--panel-layers", "0,7"]) == 2
    assert "--panel-layers: layer 7 is out of range 0..1" in capsys.readouterr().err
    assert main(["pairs", str(tiny_model_dir), "--scan", str(scan_dir), "--out", str(tmp_path / "o"),
                 "--tokens", "0"]) == 2
    assert "--tokens must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_pairs_on_the_embedded_model(tmp_path, monkeypatch):
    """The real model on 2 windows of EWT: tags found for nearly every token, shares and panels sane."""
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    loaded = load_model("default")
    gen = torch.Generator().manual_seed(0)
    NeuronSet({s.layer: torch.randperm(s.width, generator=gen)[:4] for s in loaded.sites}).to_json(tmp_path / "scan" / "wn.json")
    rec = pairs.run_pairs(loaded, tmp_path / "scan", pairs.PairsConfig(tokens=4096, md_pairs=1024, n_boot=200),
                          tmp_path / "out")
    t = pd.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert rec["stream"]["share_tokens_with_word"] > 0.95 and len(t) == 2 * 120 * 10
    assert set(t.upos_a.dropna()) <= UPOS and [p["layer"] for p in rec["panels"]] == [5, 15, 25]
    for part in ("all", "early", "late"):
        for g in ("wn", "random"):
            assert 0 <= rec["results"]["depth"][part][g]["any_negative"]["value"] <= 1


def test_no_interval_from_fewer_than_ten_neurons():
    from negdiff.experiments.pairs.stats import MEASURES, share_block

    def counts(k: int) -> pd.DataFrame:
        rows = [{"group": g, "layer": i % 2, "neuron": i, "n": 10, **{m: (i + j) % 7 for j, m in enumerate(MEASURES)}}
                for g in ("wn", "random") for i in range(k)]
        return pd.DataFrame(rows)

    small, big = share_block(counts(9), 1000, 0), share_block(counts(10), 1000, 0)
    for m in MEASURES:
        assert small["wn"][m]["too_small"] and np.isnan(small["wn"][m]["ci_low"]) and small["wn"][m]["n_neurons"] == 9
        assert small["wn_minus_random"][m]["too_small"]
        assert np.isfinite(big["wn"][m]["ci_low"]) and "too_small" not in big["wn"][m]
