"""dynamics: SPEC parsing, the overlap / weight-change / correlation math by hand, and a run over three
tiny train-mini checkpoints (table, figures, resume, a missing checkpoint, offline hub, bad SPEC)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats as sstats
from scipy.spatial import distance

from negdiff import NegdiffError
from negdiff.cli import main
from negdiff.experiments.dynamics import run as dynamics
from negdiff.experiments.dynamics.figures import positions
from negdiff.experiments.dynamics.spec import Checkpoint, parse_spec
from negdiff.experiments.dynamics.stats import (
    DESCRIPTIVE,
    change_summary,
    cos_dissimilarity,
    jaccard,
    spearman_descriptive,
    wd_summary,
)
from negdiff.experiments.train_mini import TrainConfig, train
from negdiff.neuronset import NeuronSet

from conftest import DATA

SHARED = str(DATA)


# ---------------------------------------------------------------------------------------------- SPEC
def _fake_ckpt(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_hub_spec_sorted_and_shorthand():
    ck = parse_spec("EleutherAI/pythia-160m@step512,step0,step64")
    assert [c.step for c in ck] == [0, 64, 512] and [c.revision for c in ck] == ["step0", "step64", "step512"]
    assert ck[0].name == "EleutherAI/pythia-160m@step0" and ck[0].spec == "EleutherAI/pythia-160m"
    log = parse_spec("EleutherAI/pythia-160m@pythia-log")
    assert len(log) == 20 and log[0].revision == "step0" and log[-1].revision == "step143000"
    assert [c.step for c in log] == sorted(c.step for c in log)
    assert len(parse_spec("EleutherAI/pythia-70m@pythia-all")) == 154
    assert Checkpoint("step1000", 1000, "EleutherAI/pythia-160m", "step1000").tokens_seen() == 1000 * 2_097_152
    custom = parse_spec("org/model@main,v2")  # no step numbers: the given order is kept
    assert [c.label for c in custom] == ["main", "v2"] and custom[0].step is None


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("@step0", "HUB_ID@REV"), ("EleutherAI/pythia-160m@", "no revisions"),
    ("EleutherAI/pythia-160m@pythia-foo", "known: pythia-log"), ("a b@step1", "HUB_ID@REV"),
])
def test_bad_specs(spec, message):
    with pytest.raises(NegdiffError, match=message):
        parse_spec(spec)


def test_local_spec_folder_glob_list(tmp_path):
    run = tmp_path / "run"
    for s in (0, 16, 2):
        _fake_ckpt(run / f"step{s}")
    (run / "tokenizer").mkdir()
    assert [c.label for c in parse_spec(str(run))] == ["step0", "step2", "step16"]
    assert [c.label for c in parse_spec(str(run / "step1*") + "/")] == ["step16"]
    listed = parse_spec(f"{run}/step16,{run}/step0,{run}/step8")  # step8 does not exist: kept, sorted
    assert [c.step for c in listed] == [0, 8, 16]
    _fake_ckpt(tmp_path / "other" / "step0")
    assert [c.label for c in parse_spec(f"{run}/step0,{tmp_path}/other/step0")] == ["step0", "step0_1"]
    with pytest.raises(NegdiffError, match="no folder matches"):
        parse_spec(str(tmp_path / "nothing*"))
    with pytest.raises(NegdiffError, match="step<N>"):
        parse_spec(str(run / "tokenizer"))


# ---------------------------------------------------------------------------------------------- math
def test_jaccard_by_hand():
    a = NeuronSet.from_pairs([(0, 1), (0, 2), (1, 3)])
    b = NeuronSet.from_pairs([(0, 2), (1, 3), (1, 4), (2, 0)])
    assert jaccard(a, b) == pytest.approx(2 / 5)
    assert jaccard(a, a) == 1.0
    assert jaccard(a, NeuronSet.from_pairs([(1, 1), (0, 3)])) == 0.0  # same indices, other layers
    assert np.isnan(jaccard(NeuronSet.empty(), NeuronSet.empty()))


def test_cos_dissimilarity_by_hand_and_against_scipy():
    prev = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    cur = torch.tensor([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0], [4.0, 3.0], [1.0, 0.0]])
    d = cos_dissimilarity(prev, cur)
    assert d[:4] == pytest.approx([1.0, 0.0, 2.0, 1 - 24 / 25], abs=1e-12)
    assert np.isnan(d[4])  # a zero row has no direction
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 9, generator=gen), torch.randn(6, 9, generator=gen)
    ref = [distance.cosine(a[i].double().numpy(), b[i].double().numpy()) for i in range(6)]
    assert cos_dissimilarity(a, b) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError):
        cos_dissimilarity(a, b[:, :4])


def test_wd_and_change_summaries():
    table = pd.DataFrame({"layer": [0] * 4 + [1] * 4, "neuron": list(range(4)) * 2,
                          "wd": [0.1, 0.2, 0.9, 0.3, 0.15, 0.8, 0.25, 0.05]})
    cohort = NeuronSet.from_pairs([(0, 2), (1, 1)])
    s = wd_summary(table, cohort, NeuronSet.from_pairs([(0, 2), (1, 2)]))
    assert s["wd_cohort_q50"] == pytest.approx(0.85) and s["wd_reid_q50"] == pytest.approx(0.575)
    assert s["wd_all_q50"] == pytest.approx(np.median(table.wd))
    assert s["wd_all_q10"] == pytest.approx(np.quantile(table.wd, 0.1))
    assert s["cohort_rank_pct_median"] == pytest.approx((8 + 7) / 2 / 8 * 100)  # the two highest of 8
    change = table.assign(cos_dissim=np.arange(8) / 10.0).drop(columns="wd")
    c = change_summary(change, cohort, [NeuronSet.from_pairs([(0, 0), (1, 3)]), NeuronSet.from_pairs([(0, 1), (1, 0)])])
    assert c["wchange_cohort_median"] == pytest.approx((0.2 + 0.5) / 2)
    assert c["wchange_random_median"] == pytest.approx(np.median([0.0, 0.7, 0.1, 0.4]))
    assert c["wchange_all_mean"] == pytest.approx(0.35)


def test_spearman_is_descriptive():
    """Checkpoints are a time series: rho only, labelled descriptive, with no CI or p-value posing as inference."""
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5, 0.4, 0.7, 0.9, 0.8, 1.0]
    r = spearman_descriptive(x, y)
    assert r["rho"] == pytest.approx(sstats.spearmanr(x, y).statistic) and r["n"] == 6
    assert r["kind"] == "descriptive" and r["note"] == DESCRIPTIVE and "time series" in r["note"]
    assert not {"ci_low", "ci_high", "p_value", "n_boot"} & set(r)
    assert spearman_descriptive(x, x)["rho"] == pytest.approx(1.0)
    assert np.isnan(spearman_descriptive([1.0, 2.0], [3.0, 4.0])["rho"])
    assert spearman_descriptive([1.0, 2.0, np.nan, 4.0], [1.0, 3.0, 2.0, 5.0])["n"] == 3


def test_step_positions():
    x, log = positions(pd.DataFrame({"step": [0, 16, 32]}))
    assert log and list(x) == [8.0, 16.0, 32.0]
    x, log = positions(pd.DataFrame({"step": [None, 5]}))
    assert not log and list(x) == [1.0, 2.0]


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A small data folder: three BLiMP paradigms and the TSE file linked, 5 TSE pairs per task and the
    first 20k characters of WikiText-2 (perplexity and the scan), so each condition takes a moment."""
    root = tmp_path_factory.mktemp("data")
    (root / "blimp").mkdir()
    for name in ("anaphor_number_agreement", "determiner_noun_agreement_1", "regular_plural_subject_verb_agreement_1"):
        (root / "blimp" / f"{name}.jsonl.gz").symlink_to(f"{SHARED}/blimp/{name}.jsonl.gz")
    (root / "tse").mkdir()
    kept: dict[str, int] = {}
    with gzip.open(f"{SHARED}/tse/marvin_linzen_2018.jsonl.gz", "rt") as src, \
            gzip.open(root / "tse" / "marvin_linzen_2018.jsonl.gz", "wt") as dst:
        for line in src:
            task = json.loads(line)["task"]
            if kept.get(task, 0) < 5:
                kept[task] = kept.get(task, 0) + 1
                dst.write(line)
    (root / "wikitext2_raw").mkdir()
    for name in ("wiki.test.raw.gz", "wiki.valid.raw.gz"):
        with gzip.open(f"{SHARED}/wikitext2_raw/{name}", "rt") as src:
            text = src.read(20_000)
        with gzip.open(root / "wikitext2_raw" / name, "wt") as dst:
            dst.write(text)
    return root


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Three checkpoints (steps 0, 20, 40) of a 2-layer Llama trained on templated sentences."""
    rng = np.random.default_rng(1)
    words = "the a cat cats dog dogs sees see runs run is are big small red".split()
    text = "\n\n".join(" ".join(rng.choice(words, 40)) + "." for _ in range(300))
    corpus = tmp_path_factory.mktemp("corpus") / "c.txt"
    corpus.write_text(text)
    out = tmp_path_factory.mktemp("mini") / "run"
    cfg = TrainConfig(corpus=str(corpus), vocab=300, tokenizer_chars=100_000, d_model=32, layers=2, heads=4,
                      ffn=64, seq_len=256, batch=4, steps=40, warmup=4, save="0,20,final", val_windows=2)
    train(cfg, out)
    return out


ARGS = ["--tokens", "2048", "--blimp-limit", "1", "--tse-limit", "2", "--ppl-tokens", "640", "--ppl-window", "64",
        "--seeds", "1", "--n-boot", "1000", "--threads", "1"]


@pytest.fixture(scope="module")
def dyn(mini, data_root, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NEGDIFF_DATA", str(data_root))
    out = tmp_path_factory.mktemp("dyn")
    try:
        assert main(["dynamics", "--checkpoints", str(mini), "--out", str(out), *ARGS]) == 0
    finally:
        mp.undo()
    return out


def test_dynamics_table_and_figures(dyn, mini):
    table = pd.read_parquet(dyn / "dynamics.parquet")
    assert list(table.label) == ["step0", "step20", "step40"] and (table.status == "ok").all()
    assert list(table.tokens_seen) == [0, 20 * 4 * 256, 40 * 4 * 256]
    for name in ("wd.png", "overlap.png", "weight_change.png", "ablation.png", "wd_vs_tse.png"):
        assert (dyn / "figures" / name).stat().st_size > 5000, name
    rec = json.loads((dyn / "dynamics.json").read_text())
    assert rec["final"].endswith("step40") and rec["missing"] == []
    final = table.iloc[-1]
    assert final.jaccard_final == 1.0 and final.reid_equals_cohort
    assert final.d_tse_reid_neg == final.d_tse_cohort_neg
    assert np.isnan(table.jaccard_prev.iloc[0]) and np.isnan(table.wchange_cohort_median.iloc[0])
    # Every number recomputed from the per-checkpoint files.
    cohort = NeuronSet.from_json(dyn / "cohort.json")
    assert cohort.size == 2 * 1  # 1% of 64 per layer: the one neuron above the 99th percentile
    neurons = pd.read_parquet(dyn / "checkpoints" / "step20" / "scan" / "neurons.parquet")
    in_cohort = [(int(a), int(b)) in cohort for a, b in zip(neurons.layer, neurons.neuron)]
    assert table.wd_cohort_q50.iloc[1] == pytest.approx(np.median(neurons.wd[in_cohort]))
    assert table.wd_all_q90.iloc[1] == pytest.approx(np.quantile(neurons.wd, 0.9))
    w0, w20 = (load_file(mini / f"step{s}" / "model.safetensors") for s in (0, 20))
    dis = [distance.cosine(w0[f"model.layers.{layer}.mlp.gate_proj.weight"][n].double().numpy(),
                           w20[f"model.layers.{layer}.mlp.gate_proj.weight"][n].double().numpy()) for layer, n in cohort]
    assert table.wchange_cohort_median.iloc[1] == pytest.approx(np.median(dis), abs=1e-9)
    base = json.loads((dyn / "checkpoints" / "step20" / "ablate" / "conditions" / "baseline" / "results.json").read_text())
    assert table.blimp_baseline.iloc[1] == base["tasks"]["blimp"]["metrics"]["acc"]["value"]
    assert table.perplexity_baseline.iloc[1] == base["tasks"]["perplexity"]["metrics"]["ppl"]["value"]
    c = rec["correlations"]["wd_cohort_median_vs_tse"]
    if not np.isnan(c["rho"]):
        assert c["rho"] == pytest.approx(sstats.spearmanr(table.wd_cohort_q50, table.tse_baseline).statistic)
    assert c["kind"] == "descriptive" and "ci_low" not in c and rec["correlations_note"] == DESCRIPTIVE
    assert any(line.startswith("Spearman") and DESCRIPTIVE in line for line in rec["summary_lines"])
    # deltas: perplexity from a t-interval on 10 per-window NLL differences, shown as Δppl
    items = {c: pd.read_parquet(dyn / "checkpoints" / "step20" / "ablate" / "conditions" / c / "items_perplexity.parquet")
             for c in ("baseline", "cohort_neg")}
    d = items["cohort_neg"].nll.to_numpy() - items["baseline"].nll.to_numpy()
    row = table.iloc[1]
    assert row.d_perplexity_cohort_neg_n == 10 == len(d) and row.d_perplexity_cohort_neg_units == "windows"
    ppl0 = np.exp(items["baseline"].nll.mean())
    hi = d.mean() + sstats.t.ppf(0.975, 9) * d.std(ddof=1) / np.sqrt(10)
    assert row.d_perplexity_cohort_neg == pytest.approx(ppl0 * np.expm1(d.mean()))
    assert row.d_perplexity_cohort_neg_hi == pytest.approx(ppl0 * np.expm1(hi))
    # one random set: its between-set variance cannot be estimated, so no interval (n too small)
    assert np.isnan(row.d_tse_random_neg_lo) and "K = 1" in row.d_tse_random_neg_method
    assert np.isfinite(row.d_tse_random_neg)


def test_resume_and_missing_checkpoint(dyn, mini, data_root, monkeypatch, capsys):
    """A rerun reuses every finished checkpoint; a missing folder is recorded and drawn, never dropped."""
    monkeypatch.setenv("NEGDIFF_DATA", str(data_root))

    def no_work(*args, **kwargs):
        raise AssertionError("a finished checkpoint was processed again")

    monkeypatch.setattr(dynamics, "_process", no_work)
    spec = f"{mini}/step0,{mini}/step20,{mini}/step30,{mini}/step40"
    assert main(["dynamics", "--checkpoints", spec, "--out", str(dyn), *ARGS]) == 0
    assert "missing checkpoints (1)" in capsys.readouterr().out
    table = pd.read_parquet(dyn / "dynamics.parquet")
    assert list(table.status) == ["ok", "ok", "missing", "ok"] and "folder not found" in table.message.iloc[2]
    assert np.isnan(table.wd_cohort_q50.iloc[2])
    rec = json.loads((dyn / "dynamics.json").read_text())
    assert rec["missing"] == [f"{mini}/step30"] and rec["checkpoints"][2]["status"] == "missing"
    assert table.jaccard_prev.iloc[3] == table.jaccard_prev.iloc[3]  # step40 compared with step20: a number


def test_all_missing_offline_hub_names_revisions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = "EleutherAI/pythia-negdiff-test@step0,step512"
    assert main(["dynamics", "--checkpoints", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 checkpoints" in err and "@step0" in err and "@step512" in err
    with pytest.raises(NegdiffError, match="folder not found"):
        dynamics.run_dynamics(parse_spec(f"{tmp_path}/step1,{tmp_path}/step2"), dynamics.DynamicsConfig(), tmp_path)


def test_bad_spec_and_options_exit_2(tmp_path, capsys):
    for spec in ("EleutherAI/pythia-160m@", "EleutherAI/pythia-160m@pythia-foo", str(tmp_path / "none*")):
        assert main(["dynamics", "--checkpoints", spec, "--out", str(tmp_path / "o")]) == 2
        assert "--checkpoints" in capsys.readouterr().err
    assert main(["dynamics", "--checkpoints", "x/y@step1", "--tasks", "arc_easy", "--out", str(tmp_path)]) == 2
    assert "--tasks" in capsys.readouterr().err
    assert main(["dynamics", "--checkpoints", "x/y@step1", "--ppl-tokens", "16384", "--out", str(tmp_path)]) == 2
    assert "perplexity intervals need >= 10" in capsys.readouterr().err
