"""negdiff pos: aggregation against independent recomputation, conditions, outputs, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from negdiff import NegdiffError, intervene, load_model
from negdiff.bootstrap import stratum_mean_draws
from negdiff.experiments.pos import run as pos
from negdiff.neuronset import NeuronSet
from negdiff.scoring import encode_text, score_unbatched

from conftest import DATA

CONLLU = """# newdoc id = a
# sent_id = a-1
# text = The cat doesn't sit on the mat.
1\tThe\tthe\tDET\t_\t_\t_\t_\t_\t_
2\tcat\tcat\tNOUN\t_\t_\t_\t_\t_\t_
3-4\tdoesn't\t_\t_\t_\t_\t_\t_\t_\t_
3\tdoes\tdo\tAUX\t_\t_\t_\t_\t_\t_
4\tn't\tnot\tPART\t_\t_\t_\t_\t_\t_
5\tsit\tsit\tVERB\t_\t_\t_\t_\t_\t_
6\ton\ton\tADP\t_\t_\t_\t_\t_\t_
7\tthe\tthe\tDET\t_\t_\t_\t_\t_\t_
8\tmat\tmat\tNOUN\t_\t_\t_\t_\t_\tSpaceAfter=No
9\t.\t.\tPUNCT\t_\t_\t_\t_\t_\t_

# sent_id = a-2
# text = Wow, it is big!
1\tWow\twow\tINTJ\t_\t_\t_\t_\t_\tSpaceAfter=No
2\t,\t,\tPUNCT\t_\t_\t_\t_\t_\t_
3\tit\tit\tPRON\t_\t_\t_\t_\t_\t_
4\tis\tbe\tAUX\t_\t_\t_\t_\t_\t_
5\tbig\tbig\tADJ\t_\t_\t_\t_\t_\tSpaceAfter=No
6\t!\t!\tPUNCT\t_\t_\t_\t_\t_\t_

# newdoc id = b
# sent_id = b-1
# text = Anna quickly read 3 books and a poem.
1\tAnna\tAnna\tPROPN\t_\t_\t_\t_\t_\t_
2\tquickly\tquickly\tADV\t_\t_\t_\t_\t_\t_
3\tread\tread\tVERB\t_\t_\t_\t_\t_\t_
4\t3\t3\tNUM\t_\t_\t_\t_\t_\t_
5\tbooks\tbook\tNOUN\t_\t_\t_\t_\t_\t_
6\tand\tand\tCCONJ\t_\t_\t_\t_\t_\t_
7\ta\ta\tDET\t_\t_\t_\t_\t_\t_
8\tpoem\tpoem\tNOUN\t_\t_\t_\t_\t_\tSpaceAfter=No
9\t.\t.\tPUNCT\t_\t_\t_\t_\t_\t_
"""
SHARED = DATA
DOC_TEXTS = ["The cat doesn't sit on the mat. Wow, it is big!", "Anna quickly read 3 books and a poem."]


# ---------------------------------------------------------------------------------------------- aggregation
def _words(n: int = 600, seed: int = 0, docs: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tags = np.array(["NOUN", "DET", "PUNCT", "VERB", "AUX", "X", "INTJ", "ADP"])
    upos = rng.choice(tags, n)
    base = rng.gamma(2.0, 2.0, n)
    shift = np.where(np.isin(upos, pos.SCAFFOLDING), 0.8, 0.1)
    return pd.DataFrame({"doc": np.sort(rng.integers(0, docs, n)), "upos": upos,
                         "n_tokens": rng.integers(0, 4, n).astype(float), "surprisal_baseline": base,
                         "surprisal_a": base + shift + rng.normal(0, 0.5, n)})


def test_aggregate_hand_worked():
    w = pd.DataFrame({"doc": [0, 0, 1, 1], "upos": ["DET", "DET", "NOUN", "INTJ"], "n_tokens": [1.0, 1.0, 2.0, 1.0],
                      "surprisal_baseline": [1.0, 2.0, 3.0, 4.0], "surprisal_a": [2.0, 3.0, 5.0, 4.0]})
    res = pos.aggregate(w, ["a"], {}, n_boot=50)
    assert list(res["tags"]) == ["DET", "NOUN", "INTJ"]
    assert res["tags"]["DET"] == {"n_words": 2, "share_words": 0.5, "n_tokens": 2.0, "share_tokens": 0.4,
                                  "baseline_surprisal": 1.5}
    a = res["conditions"]["a"]
    assert a["total_excess"] == 4.0 and a["mean_excess_per_word"]["value"] == 1.0 and a["mean_excess_per_token"] == 0.8
    assert a["tags"]["DET"]["share_excess"]["value"] == 0.5 and a["tags"]["DET"]["excess_share_over_token_share"] == 1.25
    assert a["tags"]["NOUN"]["mean_excess"]["value"] == 2.0 and a["tags"]["INTJ"]["sum_excess"] == 0.0
    assert {g: v["share_excess"]["value"] for g, v in a["groups"].items()} == {"scaffolding": 0.5, "content": 0.5,
                                                                            "other": 0.0}
    # two documents: every interval is "n too small" (< 10 documents), point estimates only
    m = a["mean_excess_per_word"]
    assert m["ci_low"] is None and m["too_small"] and m["n"] == 2 and m["units"] == "documents"
    assert a["tags"]["DET"]["mean_excess"]["n"] == 1 and res["resampling"]["n_documents"] == 2
    with pytest.raises(NegdiffError, match="no 'doc' column"):
        pos.aggregate(w.drop(columns="doc"), ["a"], {}, n_boot=50)


def test_aggregate_matches_pandas_groupby():
    w = _words()
    res = pos.aggregate(w, ["a"], {}, n_boot=400, seed=3)
    ex = w.surprisal_a - w.surprisal_baseline
    by = pd.DataFrame({"upos": w.upos, "ex": ex, "tok": w.n_tokens, "doc": w.doc}).groupby("upos")
    assert list(res["tags"]) == ["ADP", "DET", "AUX", "PUNCT", "NOUN", "VERB", "INTJ", "X"]
    a = res["conditions"]["a"]
    for tag, g in by:
        t, c = res["tags"][tag], a["tags"][tag]
        assert t["n_words"] == len(g) and t["share_words"] == pytest.approx(len(g) / len(w))
        assert t["share_tokens"] == pytest.approx(g.tok.sum() / w.n_tokens.sum())
        assert c["mean_excess"]["value"] == pytest.approx(g.ex.mean(), abs=1e-12)
        assert c["mean_excess"]["n"] == g.doc.nunique()  # documents holding the tag: its resampling units
        assert c["share_excess"]["value"] == pytest.approx(g.ex.sum() / ex.sum())
        lo, hi = c["mean_excess"]["ci_low"], c["mean_excess"]["ci_high"]
        assert lo < g.ex.mean() < hi
        s = c["share_excess"]
        assert s["ci_low"] < s["value"] < s["ci_high"]
    sc = w.upos.isin(pos.SCAFFOLDING)
    assert a["groups"]["scaffolding"]["share_excess"]["value"] == pytest.approx(ex[sc].sum() / ex.sum())
    assert res["groups"]["other"]["n_words"] == int(w.upos.isin(["X", "INTJ"]).sum())
    assert a["groups"]["scaffolding"]["share_excess"]["value"] > res["groups"]["scaffolding"]["share_tokens"]


def test_cluster_bootstrap_by_hand():
    """Replicate b keeps every word of the documents row b of rng.integers(0, D, (B, D)) drew, with
    multiplicity: the CI of the mean excess and of a share equal a naive recomputation."""
    w = _words(150, seed=2, docs=12)
    d = int(w.doc.max()) + 1
    res = pos.aggregate(w, ["a"], {}, n_boot=60, seed=9)
    idx = np.random.default_rng(9).integers(0, d, size=(60, d))
    means, shares = [], []
    for row in idx:
        rs = pd.concat([w[w.doc == k] for k in row])
        ex = rs.surprisal_a - rs.surprisal_baseline
        means.append(ex.mean())
        shares.append(ex[rs.upos.isin(pos.SCAFFOLDING)].sum() / ex.sum())
    a = res["conditions"]["a"]
    assert [a["mean_excess_per_word"]["ci_low"], a["mean_excess_per_word"]["ci_high"]] == pytest.approx(
        np.quantile(means, [0.025, 0.975]).tolist())
    s = a["groups"]["scaffolding"]["share_excess"]
    assert [s["ci_low"], s["ci_high"]] == pytest.approx(np.quantile(shares, [0.025, 0.975]).tolist())
    assert a["mean_excess_per_word"]["n"] == d and "cluster bootstrap over documents" in s["method"]


def test_cluster_ci_is_wider_than_a_word_level_one_when_documents_differ():
    """All the variance between documents (each document one excess): a word-level bootstrap thinks it has
    30 x more units than it does; resampling documents gives the honest, wider interval."""
    rng = np.random.default_rng(4)
    docs, per = 20, 30
    effect = np.repeat(rng.normal(0.5, 1.0, docs), per)
    base = rng.gamma(2.0, 2.0, docs * per)
    w = pd.DataFrame({"doc": np.repeat(np.arange(docs), per), "upos": rng.choice(["NOUN", "DET"], docs * per),
                      "n_tokens": 1.0, "surprisal_baseline": base,
                      "surprisal_a": base + effect + rng.normal(0, 0.01, docs * per)})
    m = pos.aggregate(w, ["a"], {}, n_boot=4000, seed=0)["conditions"]["a"]["mean_excess_per_word"]
    ex = (w.surprisal_a - w.surprisal_baseline).to_numpy()
    draws, _, _ = stratum_mean_draws(ex, None, 4000, 0)  # the word-level bootstrap
    word_lo, word_hi = np.quantile(draws[:, 0, 0], [0.025, 0.975])
    assert (m["ci_high"] - m["ci_low"]) > 3 * (word_hi - word_lo)
    doc_means = ex.reshape(docs, per).mean(1)
    assert (m["ci_high"] - m["ci_low"]) == pytest.approx(2 * 1.96 * doc_means.std(ddof=0) / np.sqrt(docs), rel=0.15)


def test_random_control_carries_between_set_variance():
    """K = 3 sets: the interval adds s^2_between / K to the document variance (t, Welch-Satterthwaite df);
    K = 1 set: no interval, and the record says why."""
    w = _words(900, seed=5, docs=40)
    rng = np.random.default_rng(6)
    for k, bump in enumerate((0.0, 0.3, 0.6)):
        w[f"surprisal_r{k}"] = w.surprisal_baseline + bump + rng.normal(0, 0.2, len(w))
    w["surprisal_rnd"] = w[["surprisal_r0", "surprisal_r1", "surprisal_r2"]].mean(axis=1)
    res = pos.aggregate(w, ["rnd"], {"rnd": ["r0", "r1", "r2"]}, n_boot=2000, seed=1)["conditions"]["rnd"]
    m = res["mean_excess_per_word"]
    per_set = [float((w[f"surprisal_r{k}"] - w.surprisal_baseline).mean()) for k in range(3)]
    extra = m["between_sets"]
    assert extra["k_sets"] == 3 and extra["per_set"] == pytest.approx(per_set)
    assert extra["var_between_sets_over_k"] == pytest.approx(np.var(per_set, ddof=1) / 3)
    se = np.sqrt(extra["var_items"] + extra["var_between_sets_over_k"])
    assert m["ci_high"] - m["value"] > 1.96 * se  # t with few df: wider than the normal
    assert m["value"] == pytest.approx(np.mean(per_set)) and res["random_sets"]["k"] == 3
    one = pos.aggregate(w, ["r0"], {"r0": ["r0"]}, n_boot=200, seed=1)["conditions"]["r0"]
    assert one["mean_excess_per_word"]["ci_low"] is None and one["mean_excess_per_word"]["too_small"]
    assert "cannot be estimated" in one["random_sets"]["note"] and one["random_sets"]["k"] == 1


def test_tag_groups():
    assert [pos.tag_group(t) for t in ("DET", "PUNCT", "PROPN", "NUM", "SYM", "FOO")] == \
        ["scaffolding", "scaffolding", "content", "content", "other", "other"]
    assert pos.tag_order(["X", "NOUN", "PRON", "ADP", "SYM"]) == ["ADP", "PRON", "NOUN", "SYM", "X"]


# ---------------------------------------------------------------------------------------------- conditions
@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture
def scan_dir(tmp_path):
    d = tmp_path / "scan"
    d.mkdir()
    NeuronSet({0: torch.tensor([1, 5, 7, 30]), 1: torch.tensor([2, 3, 40])}, {"rule": "test"}).to_json(d / "wn.json")
    return d


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "mini.conllu"
    path.write_text(CONLLU)
    return path


def test_build_conditions(loaded, scan_dir, tmp_path):
    conds, missing = pos.build_conditions(loaded, scan_dir, pos.PosConfig())
    assert [c.name for c in conds] == ["baseline", "wn_neg", "random_neg"]
    wn = conds[1].runs[0][1]
    rand = [s for _, s in conds[2].runs]
    assert [r for r, _ in conds[2].runs] == [f"random_neg_s{k}" for k in range(5)]  # paper.md: >= 5 sets
    for r in rand:
        assert r.counts() == wn.counts() and r.difference(wn).size == r.size  # layer-matched, WN excluded
    assert "negdiff ablate" in missing["ppl_matched_neg"]["message"]
    sets = tmp_path / "ablate" / "sets"
    sets.mkdir(parents=True)
    wn.to_json(sets / "ppl_matched_neg.json")
    wn.to_json(sets / "wn_pos.json")
    wn.to_json(sets / "odd.json")
    conds, missing = pos.build_conditions(loaded, scan_dir, pos.PosConfig(sets=str(sets.parent), extra=("wn_pos",)))
    assert [(c.name, c.mode) for c in conds][3:] == [("ppl_matched_neg", "zero_negative"), ("wn_pos", "zero_positive")]
    assert not missing
    with pytest.raises(NegdiffError, match="cannot tell which edit set 'odd'"):
        pos.build_conditions(loaded, scan_dir, pos.PosConfig(sets=str(sets), extra=("odd",)))
    with pytest.raises(NegdiffError, match="no set file nope.json"):
        pos.build_conditions(loaded, scan_dir, pos.PosConfig(sets=str(sets), extra=("nope",)))
    with pytest.raises(NegdiffError, match="holds no wn.json"):
        pos.build_conditions(loaded, tmp_path, pos.PosConfig())
    with pytest.raises(NegdiffError, match="--sets: folder not found"):
        pos.build_conditions(loaded, scan_dir, pos.PosConfig(sets=str(tmp_path / "nothing")))
    with pytest.raises(NegdiffError, match="--seeds must be at least 1"):
        pos.PosConfig(seeds=0)


# ---------------------------------------------------------------------------------------------- end to end
def _ref_doc_surprisal(loaded, text: str) -> float:
    """The scorer's unbatched float64 reference: total surprisal of a document, prefix BOS."""
    return float(-score_unbatched(loaded.model, encode_text(loaded.tokenizer, text)).logprobs.sum())


def test_run_pos_outputs_and_independent_totals(loaded, scan_dir, corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = pos.PosConfig(corpus=str(corpus), n_boot=100)
    rec = pos.run_pos(loaded, scan_dir, cfg, out)
    for f in ("pos.json", "words.parquet", "figures/pos_excess.png", "figures/pos_share.png", "surprisal/wn_neg.npz"):
        assert (out / f).is_file(), f
    w = pd.read_parquet(out / "words.parquet")
    assert len(w) == 24 and w.is_mwt.sum() == 2 and w.scored.all()
    assert w.upos.tolist()[:5] == ["DET", "NOUN", "AUX", "PART", "VERB"]
    wn = NeuronSet.from_json(scan_dir / "wn.json")
    for d, text in enumerate(DOC_TEXTS):  # mass conservation against the unbatched scorer, per document
        assert w.surprisal_baseline[w.doc == d].sum() == pytest.approx(_ref_doc_surprisal(loaded, text), rel=1e-5)
        with intervene(loaded.model, wn, "zero_negative"):
            ref = _ref_doc_surprisal(loaded, text)
        assert w.surprisal_wn_neg[w.doc == d].sum() == pytest.approx(ref, rel=1e-5)
    seeds = w[[f"surprisal_random_neg_s{k}" for k in range(5)]].mean(axis=1)
    np.testing.assert_allclose(w.surprisal_random_neg, seeds)
    assert not np.allclose(w.surprisal_wn_neg, w.surprisal_baseline)
    # pos.json numbers recomputed from words.parquet
    saved = json.loads((out / "pos.json").read_text())
    assert saved["conditions"]["ppl_matched_neg"]["status"] == "missing"
    assert saved["alignment"]["words"] == 24 and saved["units"].startswith("nats")
    ex = w.surprisal_wn_neg - w.surprisal_baseline
    res = saved["results"]["conditions"]["wn_neg"]
    assert res["tags"]["DET"]["mean_excess"]["value"] == pytest.approx(ex[w.upos == "DET"].mean(), rel=1e-9, abs=1e-12)
    sc = w.upos.isin(pos.SCAFFOLDING)
    assert res["groups"]["scaffolding"]["share_excess"]["value"] == pytest.approx(ex[sc].sum() / ex.sum(), rel=1e-9)
    assert saved["results"]["groups"]["scaffolding"]["share_tokens"] == pytest.approx(
        w.n_tokens[sc].sum() / w.n_tokens.sum())
    assert any(line.startswith("wn_neg") and "scaffolding tags carry" in line for line in rec["summary_lines"])
    assert res["mean_excess_per_word"]["too_small"] and "too small" in rec["summary_lines"][1]  # 2 documents
    assert saved["random_control"]["k"] == 5 and saved["format"] == "negdiff.pos/2"

    # resume: nothing is rescored when the key matches ...
    def boom(*a, **k):
        raise AssertionError("rescored a finished condition")

    monkeypatch.setattr(pos, "score_run", boom)
    again = pos.run_pos(loaded, scan_dir, cfg, out)
    assert all(t["reused"] for t in again["timing"].values())
    assert json.dumps(again["results"]) == json.dumps(rec["results"])  # (NaN-safe: a 1-word tag has no stderr)
    # ... and a change that alters the scored tokens (BOS policy) invalidates the cache
    with pytest.raises(AssertionError, match="rescored"):
        pos.run_pos(loaded, scan_dir, pos.PosConfig(corpus=str(corpus), bos="tokenizer_default"), out)


def test_cli_pos(tiny_model_dir, scan_dir, corpus, tmp_path, capsys):
    from negdiff.cli import build_parser

    parser = build_parser()
    out = tmp_path / "cli"
    args = parser.parse_args(["pos", str(tiny_model_dir), "--scan", str(scan_dir), "--corpus", str(corpus),
                              "--out", str(out), "--seeds", "1", "--limit-docs", "1", "--n-boot", "50",
                              "--mwt", "split"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "random_neg" in text and "wrote" in text
    w = pd.read_parquet(out / "words.parquet")
    assert w.doc.unique().tolist() == [0] and w.loc[w.is_mwt, "weight"].tolist() == [0.5, 0.5]
    assert json.loads((out / "pos.json").read_text())["config"]["mwt"] == "split"


@pytest.mark.slow
def test_pos_on_the_embedded_model(tmp_path, monkeypatch):
    """The real model on two EWT documents: runs, conserves surprisal, and an ablation moves it."""
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    loaded = load_model("default")
    gen = torch.Generator().manual_seed(0)
    wn = NeuronSet({s.layer: torch.randperm(s.width, generator=gen)[:16] for s in loaded.sites})
    wn.to_json(tmp_path / "scan" / "wn.json")
    rec = pos.run_pos(loaded, tmp_path / "scan", pos.PosConfig(limit_docs=2, seeds=1, n_boot=200), tmp_path / "out")
    w = pd.read_parquet(tmp_path / "out" / "words.parquet")
    assert rec["alignment"]["words"] == len(w) > 20 and np.isfinite(w.filter(like="surprisal_").to_numpy()).all()
    assert 1.0 < w.surprisal_baseline.sum() / rec["alignment"]["subword_tokens"] < 8.0  # nats per token
    assert (w.surprisal_wn_neg != w.surprisal_baseline).any()
