"""The WN-stability step: shard merges against accumulating the data itself, the bootstrap summaries by hand,
and a tiny end-to-end run whose reference set is recomputed with one plain accumulator."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from negdiff import load_model
from negdiff.cli import main
from negdiff.data import corpus_documents, token_windows
from negdiff.experiments import stability
from negdiff.experiments.stability import stats as sstats
from negdiff.hooks import capture
from negdiff.neuronset import NeuronSet
from negdiff.stats import NeuronStats

from conftest import DATA

needs_data = pytest.mark.skipif(not (DATA / "blimp").is_dir(), reason="staged data not beside the repo")


def _acc(base: NeuronStats, *chunks: torch.Tensor) -> NeuronStats:
    out = NeuronStats.like(base)
    for c in chunks:
        out.add(c)
    return out


def test_merging_a_shard_k_times_is_reading_its_data_k_times():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 6, generator=gen) * 2 + 1, torch.randn(200, 6, generator=gen).exp()
    base = NeuronStats(6, bins_per_octave=16)
    base.calibrate(a[:64])
    shards = [_acc(base, a), _acc(base, b)]
    got = sstats.merged(shards, np.array([2, 1])).result()
    want = _acc(base, a, a, b).result()
    for k in ("count", "mean", "std", "skew", "kurtosis", "wd", "wd_neg_raw", "frac_negative"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)
    once = sstats.merged(shards).result()
    np.testing.assert_allclose(once["wd"], _acc(base, a, b).result()["wd"], rtol=1e-9)
    assert not np.allclose(once["mean"], got["mean"])  # the multiplicity changed the statistics
    np.testing.assert_allclose(sstats.merged(shards).wd(), once["wd"], rtol=1e-12)  # wd() is result()["wd"]


def test_multiplicities_are_seeded_bootstrap_draws():
    m = sstats.multiplicities(12, 50, seed=3)
    assert m.shape == (50, 12) and (m.sum(1) == 12).all() and (m >= 0).all()
    assert np.array_equal(m, sstats.multiplicities(12, 50, seed=3)) and not np.array_equal(m, sstats.multiplicities(12, 50, 4))
    assert 0.2 < (m == 0).mean() < 0.5  # about (1 - 1/12)^12 = 0.35 of shards left out per replicate


def test_replicate_summary_by_hand():
    ref = NeuronSet.from_pairs([(0, 1), (0, 2)])
    sets = [NeuronSet.from_pairs([(0, 1), (0, 2)]), NeuronSet.from_pairs([(0, 1), (1, 3)])]
    s = sstats.replicate_summary(ref, sets, {0: 8, 1: 8})
    p = s["probabilities"].set_index(["layer", "neuron"]).p_wn
    assert p[(0, 1)] == 1.0 and p[(0, 2)] == 0.5 and p[(1, 3)] == 0.5 and len(p) == 3
    assert s["jaccard_reference"]["mean"] == pytest.approx((1 + 1 / 3) / 2)
    assert s["jaccard_pairs"]["mean"] == pytest.approx(1 / 3) and s["n_ever_wn"] == 3
    assert s["reference_p_wn"] == {"mean": 0.75, "share_ge_0.9": 0.5, "share_lt_0.5": 0.0}


@pytest.mark.slow  # ~1 min on 2 cores; the merge and bootstrap arithmetic are checked in the default suite above
@needs_data
def test_run_stability_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(DATA))
    loaded = load_model(str(tiny_model_dir))
    cfg = stability.StabilityConfig(tokens=32 * 40, budgets=(320, 1280), window=32, shards=10, replicates=20,
                                    compare=("ewt-dev",), compare_tokens=640, fraction=0.05, redraws=2,
                                    tasks=("perplexity", "blimp"), blimp_limit=1, ppl_tokens=320, ppl_window=32,
                                    n_boot=1000)
    out = tmp_path / "out"
    rec = stability.run_stability(loaded, cfg, out)
    for f in ("stability.json", "probabilities.parquet", "overlap.csv", "sets/reference.json", "figures/bootstrap.png",
              "figures/overlap.png", "figures/redraws.png", "conditions/wn_neg_redraw_1/items_blimp.parquet"):
        assert (out / f).is_file(), f

    # the reference set, recomputed with one plain accumulator per layer over every window
    windows = token_windows(loaded.tokenizer, corpus_documents("wikitext2")[0], 32, 1280)
    accs = {}

    def fn(kind, layer, t):
        if kind == "pre":
            x = t.reshape(-1, t.shape[-1])
            if layer not in accs:
                accs[layer] = NeuronStats(x.shape[1], bins_per_octave=32)
                accs[layer].calibrate(x)
            else:
                accs[layer].add(x)

    with torch.inference_mode(), capture(loaded.model, what=("pre",), fn=fn, keep=False, sites=loaded.sites) as tr:
        tr.forward(windows[:1])  # calibration only, as the step
        for w in range(len(windows)):
            tr.forward(windows[w:w + 1])
    want, _ = sstats.select([accs[i] for i in sorted(accs)], 0.05, "wd")
    ref = NeuronSet.from_json(out / "sets" / "reference.json")
    assert sorted(ref) == sorted(want) and ref.size == 2 * 3  # 5% of 48 per layer: strictly above the 95th pct

    assert rec["tokens_read"] == {"wikitext2": 1280, "ewt-dev": 640}
    ov = {(r["corpus"], r["tokens"]): r for r in rec["overlap"]}
    assert set(ov) == {("wikitext2", 320), ("wikitext2", 1280), ("ewt-dev", 320), ("ewt-dev", 640)}
    assert ov[("wikitext2", 1280)]["jaccard_reference"] == 1.0 and ov[("wikitext2", 1280)]["jaccard_same_budget"] is None
    assert ov[("ewt-dev", 320)]["jaccard_same_budget"] is not None
    b = rec["bootstrap"]
    assert b["replicates"] == 20 and 0 <= b["jaccard_reference"]["mean"] <= 1 and b["n_wn"] == 6
    probs = pd.read_parquet(out / "probabilities.parquet")
    assert probs.in_reference.sum() == 6 and (probs.p_wn <= 1).all()
    a = rec["ablation"]
    base = pd.read_parquet(out / "conditions" / "baseline" / "items_blimp.parquet").correct.mean()
    r0 = pd.read_parquet(out / "conditions" / "wn_neg_redraw_0" / "items_blimp.parquet").correct.mean()
    assert a["delta"]["wn_neg_redraw_0"]["blimp"]["diff"] == pytest.approx(r0 - base)
    assert a["spread"]["blimp"]["n_redraws"] == 2 and "no interval" in a["spread"]["blimp"]["note"]
    saved = json.loads((out / "stability.json").read_text())
    assert saved["step"] == "stability" and saved["summary_lines"] == rec["summary_lines"]
    again = stability.run_stability(loaded, cfg, out)  # finished with the same key: reused
    assert again["summary_lines"] == rec["summary_lines"]


def test_cli_stability_bad_input(tiny_model_dir, tmp_path, capsys):
    args = ["stability", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    assert main([*args, "--shards", "5"]) == 2
    assert "--shards must be >= 10" in capsys.readouterr().err
    assert main([*args, "--budgets", "65536,16384"]) == 2
    assert "strictly increasing" in capsys.readouterr().err
    assert main([*args, "--replicates", "10"]) == 2
    assert not (tmp_path / "o").exists()
