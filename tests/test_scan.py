"""The scan: pair planning, streamed WD/MD equal direct recomputation, outputs, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from negdiff import NegdiffError, capture, load_model
from negdiff.experiments.scan import ScanConfig, Streamer, plan_pairs, run_scan, stream
from negdiff.mapdiff import md_reference
from negdiff.stats import WD_KEYS, exact_wd_split

WINDOW = 32


def test_plan_pairs_disjoint_and_cross_window():
    plan = plan_pairs(n_windows=5, seq_len=40, n_pairs=30, seed=0)
    assert plan.shape == (32, 4)  # ceil(30 / 4) = 8 per window boundary
    ends = [tuple(r) for r in plan[:, :2]] + [tuple(r) for r in plan[:, 2:]]
    assert len(set(ends)) == len(ends)  # every token used at most once
    assert (plan[:, 2] == plan[:, 0] + 1).all()
    assert np.array_equal(plan, plan_pairs(5, 40, 30, seed=0))
    one = plan_pairs(1, 40, 30, seed=0)
    assert one.shape == (20, 4) and len({*one[:, 1], *one[:, 3]}) == 40


@pytest.fixture(scope="module")
def corpus(word_corpus):
    return word_corpus


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _cfg(corpus, **kw):
    base = dict(corpus=str(corpus), tokens=6 * WINDOW, window=WINDOW, md_pairs=40, top_pairs=3, fraction=0.05,
                check_corpus=str(corpus), check_windows=1, checkpoint_every=2)
    return ScanConfig(**{**base, **kw})


def _direct(loaded, windows):
    """All pre-activations and MLP inputs, captured directly (the naive, memory-hungry path)."""
    pre, mlp_in = {}, {}
    with capture(loaded.model, what=("pre", "mlp_in")) as tr:
        for w in windows:
            tr.forward(w[None])
            for layer in tr.pre:
                pre.setdefault(layer, []).append(tr.pre[layer][0].double())
                mlp_in.setdefault(layer, []).append(tr.mlp_in[layer][0].double())
    return {k: torch.stack(v) for k, v in pre.items()}, {k: torch.stack(v) for k, v in mlp_in.items()}


def test_scan_matches_direct_recomputation(loaded, corpus, tmp_path):
    from negdiff.data import corpus_documents, token_windows

    # 8 windows of 128 tokens, 448 MD pairs: enough pairs for the histogram median to be tight
    cfg = _cfg(corpus, window=128, tokens=8 * 128, md_pairs=448)
    record = run_scan(loaded, cfg, tmp_path / "scan")
    table = pd.read_parquet(tmp_path / "scan" / "neurons.parquet")
    windows = token_windows(loaded.tokenizer, corpus_documents(str(corpus))[0], 128, cfg.tokens)
    pre, mlp_in = _direct(loaded, windows)
    plan = plan_pairs(len(windows), 128, cfg.md_pairs, cfg.seed)
    assert len(plan) == 448
    for layer in pre:
        rows = table[table.layer == layer].sort_values("neuron")
        values = pre[layer].reshape(-1, pre[layer].shape[-1]).numpy()
        want = exact_wd_split(values)
        for key in WD_KEYS:  # every split, raw sign and mass-adjusted included (NaN: a side without values)
            assert np.array_equal(rows[key].isna().to_numpy(), np.isnan(want[key])), key
            ok = ~np.isnan(want[key])
            np.testing.assert_allclose(rows[key].to_numpy()[ok], want[key][ok], rtol=0.01, atol=1e-3, err_msg=key)
        np.testing.assert_allclose(rows.wd_below_mean + rows.wd_above_mean, rows.wd, rtol=1e-12)
        np.testing.assert_allclose(rows.wd_neg_raw + rows.wd_pos_raw, rows.wd, rtol=1e-9)
        p = rows.frac_negative.to_numpy()
        mass = np.nan_to_num(p * rows.wd_neg_raw_q) + np.nan_to_num((1 - p) * rows.wd_pos_raw_q)
        np.testing.assert_allclose(mass, rows.wd, rtol=1e-9)
        assert (rows.frac_offgrid >= 0).all()
        np.testing.assert_allclose(rows["mean"], values.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rows["std"], values.std(0), rtol=1e-5)
        np.testing.assert_allclose(rows.frac_negative, (values < 0).mean(0))
        # MD through the linear-map shortcut == MD from directly captured pre-activation differences
        xa = mlp_in[layer][plan[:, 0], plan[:, 1]]
        xb = mlp_in[layer][plan[:, 2], plan[:, 3]]
        ya, yb = pre[layer][plan[:, 0], plan[:, 1]], pre[layer][plan[:, 2], plan[:, 3]]
        d = (xa - xb).norm(dim=1).numpy()
        e = (ya - yb).abs().numpy()
        md_direct = ((e / np.median(e, axis=0)) / (d / d.max())[:, None]).mean(0)
        w, _ = loaded.sites[layer].proj_weight()
        np.testing.assert_allclose(md_reference(xa.numpy(), xb.numpy(), w.double().numpy()), md_direct, rtol=1e-6)
        np.testing.assert_allclose(rows.md, md_direct, rtol=0.02)  # streamed median from a histogram
    # strictly above each layer's 95th percentile of 48 neurons (sorted position 0.95 * 47 = 44.65): 45, 46, 47
    assert record["summary"]["n_wn"] == 2 * 3 and table.groupby("layer").is_wn.sum().tolist() == [3, 3]
    wn = json.loads((tmp_path / "scan" / "wn.json").read_text())
    assert wn["size"] == table.is_wn.sum() and wn["rule"]["scan"] == record["key"]
    pairs = pd.read_parquet(tmp_path / "scan" / "pairs.parquet")
    assert set(pairs.group) == {"wn", "random"} and (pairs["rank"] <= 3).all()
    top = pairs[(pairs.group == "wn")].iloc[0]
    assert windows[top.window_a, top.pos_a] == top.token_a
    for name in ("wd_by_layer", "wn_per_layer", "preact_histograms", "wd_neg_raw_vs_wd_pos_raw", "md_vs_wd"):
        assert (tmp_path / "scan" / "figures" / f"{name}.png").stat().st_size > 1000
    assert record["summary"]["check"]["baseline"] > 1
    _check_negative_region(record, table)


def _check_negative_region(record, table):
    """The raw-sign summary: shares recomputed from the table, CIs that bracket them, what was resampled."""
    neg = record["summary"]["negative_region"]
    assert neg["n_boot"] == 10_000 and neg["seed"] == 0 and "neurons" in neg["resampled"]
    raw = table.wd_neg_raw > table.wd_pos_raw
    groups = {"wn": table.is_wn, "all": np.ones(len(table), bool)}
    for name, mask in groups.items():
        for part, pmask in (("overall", True), ("early", table.layer < 1), ("late", table.layer >= 1)):
            s = neg[name][part]
            rows = mask & pmask
            assert s["n"] == rows.sum()
            assert s["share_neg_raw"] == pytest.approx(raw[rows].mean())
            lo, hi = s["share_neg_raw_ci"]
            assert lo <= s["share_neg_raw"] <= hi
            ratio = (table.wd_neg_raw_q / table.wd_pos_raw_q)[rows].dropna()
            assert s["median_q_ratio"] == pytest.approx(ratio.median())
            assert s["median_q_ratio_ci"][0] <= s["median_q_ratio"] <= s["median_q_ratio_ci"][1]
            below = (table.wd_below_mean > table.wd_above_mean)[rows].mean()
            assert s["share_below_mean"] == pytest.approx(below)
    assert neg["random"]["overall"]["n"] == table.is_wn.sum()  # layer-matched: as many as WN
    assert any("wd_neg_raw > wd_pos_raw" in line for line in record["summary_lines"])
    assert any("wd_below_mean > wd_above_mean" in line for line in record["summary_lines"])
    grid = record["summary"]["grid"]
    assert grid["n_offgrid"] == int((table.frac_offgrid > 1e-3).sum())
    assert {"n_scale_too_wide", "n_scale_too_narrow"} <= set(grid)


def test_removed_criterion_is_a_one_line_error(loaded, corpus, tmp_path):
    """--criterion wd_neg split W1 at the mean; it parses, then fails before any work with the new names."""
    with pytest.raises(NegdiffError, match="wd_neg_raw.*wd_below_mean") as err:
        run_scan(loaded, _cfg(corpus, criterion="wd_neg"), tmp_path / "o")
    assert "mean" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "scan" / ".scan_state.pt").exists()


def test_rerun_is_skipped_and_interrupted_scan_resumes(loaded, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(Streamer, "FLUSH_PAIRS", 5)  # pairs flushed inside hooks and at checkpoints alike
    cfg = _cfg(corpus)
    full = run_scan(loaded, cfg, tmp_path / "full")
    calls = {"n": 0}
    original = Streamer.start_batch

    def die_after_four(self, windows):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        original(self, windows)

    monkeypatch.setattr(Streamer, "start_batch", die_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_scan(loaded, cfg, tmp_path / "cut")
    assert (tmp_path / "cut" / ".scan_state.pt").is_file() and not (tmp_path / "cut" / "neurons.parquet").exists()
    monkeypatch.setattr(Streamer, "start_batch", original)
    resumed = run_scan(loaded, cfg, tmp_path / "cut")
    assert resumed["timing"]["resumed_from_window"] == 4
    a = pd.read_parquet(tmp_path / "full" / "neurons.parquet")
    b = pd.read_parquet(tmp_path / "cut" / "neurons.parquet")
    pd.testing.assert_frame_equal(a, b, rtol=1e-9)
    again = run_scan(loaded, cfg, tmp_path / "full")
    assert again["timing"] == full["timing"]  # served from scan.json, not recomputed


def test_bad_input_leaves_no_output(loaded, corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    with pytest.raises(NegdiffError, match="the corpus is empty"):
        run_scan(loaded, _cfg(empty), tmp_path / "o1")
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(NegdiffError, match="fewer than one window"):
        run_scan(loaded, _cfg(short), tmp_path / "o2")
    with pytest.raises(NegdiffError, match="unknown corpus 'no-such-corpus'"):
        run_scan(loaded, _cfg("no-such-corpus"), tmp_path / "o3")
    site = loaded.sites[1]
    handle = site.proj_module.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with pytest.raises(NegdiffError, match="NaN|non-finite"):
            run_scan(loaded, _cfg(corpus), tmp_path / "o4")
    finally:
        handle.remove()
    for name in ("o1", "o2", "o3"):
        assert not (tmp_path / name).exists()
    assert not (tmp_path / "o4" / "neurons.parquet").exists()


def test_stream_memory_does_not_hold_activations(loaded, corpus):
    from negdiff.data import corpus_documents, token_windows

    windows = token_windows(loaded.tokenizer, corpus_documents(str(corpus))[0], WINDOW, 4 * WINDOW)
    streamer = Streamer(loaded, plan_pairs(4, WINDOW, 16, 0), top_k=2)
    stream(loaded, windows, streamer, batch=2)
    assert all(s.result()["count"][0] == 4 * WINDOW for s in streamer.stats)
    assert streamer.held == {}  # the last window leaves nothing waiting


def test_nearest_neighbour_md_matches_an_independent_recomputation(loaded, corpus, tmp_path):
    """--md-nearest-tokens: MD over greedy disjoint most-cosine-similar input pairs, recomputed here by hand."""
    run_scan(loaded, _cfg(corpus, md_nearest_tokens=192, check_windows=0), tmp_path / "scan")
    table = pd.read_parquet(tmp_path / "scan" / "neurons.parquet")
    from negdiff.data import corpus_documents, token_windows

    windows = token_windows(loaded.tokenizer, corpus_documents(str(corpus))[0], WINDOW, 6 * WINDOW)
    _, mlp_in = _direct(loaded, windows)
    for layer in (0, 1):
        x = mlp_in[layer].reshape(-1, mlp_in[layer].shape[-1])[:192]
        xn = x / x.norm(dim=1, keepdim=True)
        sim = (xn @ xn.T).fill_diagonal_(-np.inf).numpy()
        cands = [(sim[i, j], i, j) for i in range(192) for j in np.argsort(-sim[i])[:4]]  # 4 nearest per token
        used, pairs = set(), []
        for _, i, j in sorted(cands, key=lambda c: -c[0]):  # greedy, most similar first, disjoint
            if i not in used and j not in used:
                used |= {i, j}
                pairs.append((i, j))
        a, b = (np.array(v) for v in zip(*pairs))
        w, _ = loaded.sites[layer].proj_weight()
        ref = md_reference(x[a].numpy(), x[b].numpy(), w.double().numpy())
        got = table[table.layer == layer].sort_values("neuron").md_nearest.to_numpy()
        np.testing.assert_allclose(got, ref, rtol=0.06)  # streamed median from a histogram, ~90 pairs
        assert np.corrcoef(got, ref)[0, 1] > 0.99
        assert len(pairs) > 60


def test_grid_health_counts_and_warns():
    """frac_offgrid > 1e-3, or a first-batch unit > 10x off the final std, is counted and warned in one line."""
    from negdiff.experiments.scan.stats import grid_health, grid_warning

    table = pd.DataFrame({"std": [1.0, 1.0, 1.0, 2.0], "frac_offgrid": [0.0, 5e-4, 2e-3, 0.0]})
    health = grid_health(table, np.array([1.0, 11.0, 0.5, 0.1]))
    assert (health["n_offgrid"], health["n_scale_too_wide"], health["n_scale_too_narrow"]) == (1, 1, 1)
    line = grid_warning(health)
    assert "\n" not in line and "1 neurons have frac_offgrid > 0.001" in line and "2 neurons" in line
    assert grid_warning(grid_health(table.assign(frac_offgrid=0.0), np.ones(4) * 2.0)) is None
