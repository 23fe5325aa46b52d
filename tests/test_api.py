"""The Python API as a notebook uses it: LoadedModel everywhere a model goes, neuron sets from plain data,
results that record the ``intervene`` block they ran in, the harness's fields, and the CLI's defaults."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import negdiff
from negdiff import NegdiffError, NeuronSet, capture, intervene
from negdiff.cli.eval import EvalOptions, eval_config
from negdiff.evaluate import evaluate, higher_is_better, write_results
from negdiff.hooks import Intervention, active_interventions, condition_of, hook_count
from negdiff.models import from_model
from negdiff.tasks import EvalConfig

from _evalutil import one_thread, real_tokenizer, tiny_llama  # noqa: F401  (autouse fixture)
from conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_capture_and_intervene_take_the_loaded_model(token_batch):
    model = tiny_model("llama")
    lm = from_model(model)
    ids, _ = token_batch
    with capture(lm, layers=[1]) as via_lm:
        via_lm.forward(ids)
    with capture(model, layers=[1]) as via_model:
        via_model.forward(ids)
    assert via_lm.model is model and torch.equal(via_lm.pre[1], via_model.pre[1])
    # the same edit named three ways: a NeuronSet on the bare model, a dict and pairs on the LoadedModel
    ref_set = NeuronSet({0: torch.tensor([1, 4, 9]), 1: torch.tensor([0])})
    with intervene(model, ref_set):
        ref = _logits(model, ids)
    for spelled in ({0: [9, 4, 1], 1: range(1)}, [(0, 1), (1, 0), (0, 4), (0, 9)], ["L0.N1", "L0.N4", "L0.N9", "L1.N0"]):
        with intervene(lm, spelled) as used:
            assert used.names() == ref_set.names()
            assert torch.equal(_logits(model, ids), ref)
    assert not torch.equal(_logits(model, ids), ref) and hook_count(model) == 0
    with pytest.raises(NegdiffError, match="expected a torch model or the LoadedModel"), capture("gpt2"):
        pass


def test_neuron_sets_from_plain_data():
    assert NeuronSet.from_mapping({3: np.array([7, 5, 5]), 0: torch.tensor([2])}).names() == ["L0.N2", "L3.N5", "L3.N7"]
    assert NeuronSet.from_pairs([(3, 7), (0, 2), (3, 5)]).names() == ["L0.N2", "L3.N5", "L3.N7"]
    assert list(NeuronSet.from_pairs([(1, 2), (0, 3)])) == [(0, 3), (1, 2)]  # iterating gives the pairs back
    ns = NeuronSet({1: [4]}, {"rule": "x"})
    assert NeuronSet.coerce(ns) is ns
    assert NeuronSet.coerce(ns.to_dict()).names() == ["L1.N4"]  # the JSON form (with "neurons") is read as such
    with pytest.raises(NegdiffError, match="bad neuron mapping at layer 0"):
        NeuronSet.from_mapping({0: [1.5]})
    with pytest.raises(NegdiffError, match=r"bad neuron \(0, 'x'\)"):
        NeuronSet.from_pairs([(0, "x")])
    with pytest.raises(NegdiffError, match="cannot read a neuron set from int"):
        NeuronSet.coerce(3)


def test_active_interventions_live_exactly_as_long_as_their_block():
    model = tiny_model("gpt2")
    assert active_interventions(model) == [] and condition_of([]) == {"intervention": None}
    with intervene(model, {0: [1, 2]}, "zero_negative"):
        with intervene(from_model(model), [(2, 5)], "zero"):
            stack = active_interventions(model)
            assert [(iv.mode, iv.neurons.names()) for iv in stack] == [("zero_negative", ["L0.N1", "L0.N2"]),
                                                                       ("zero", ["L2.N5"])]
            cond = condition_of(stack)
            assert cond["intervention"] == "zero_negative+zero" and cond["n_neurons"] == 3
        assert [iv.mode for iv in active_interventions(model)] == ["zero_negative"]
    assert active_interventions(model) == []
    with pytest.raises(RuntimeError), intervene(model, {1: [0]}):
        raise RuntimeError("boom")
    assert active_interventions(model) == []
    assert Intervention("zero", NeuronSet({2: [3, 1]}, {"rule": "r"})).describe() == {
        "intervention": "zero", "n_neurons": 2, "neurons_per_layer": {"2": 2}, "rule": {"rule": "r"}}


def test_evaluate_records_the_intervention_it_runs_under(tmp_path, word_corpus):
    tok, model = real_tokenizer(), tiny_llama(max_len=64)
    lm = from_model(model, tok, spec="tiny")
    cfg = EvalConfig(ppl_corpus=str(word_corpus), ppl_window=32, n_boot=50)
    base = evaluate(lm, "perplexity", config=cfg)
    wn = {0: list(range(0, 64, 2)), 1: [3, 5]}
    with intervene(lm, wn, "zero_negative"):
        ablated = evaluate(lm, "perplexity", config=cfg)
        declared = evaluate(lm, "perplexity", config=cfg, condition={"intervention": "mine"})
    after = evaluate(lm, "perplexity", config=cfg)
    assert base["condition"]["intervention"] is None and after["condition"]["intervention"] is None
    assert ablated["condition"]["intervention"] == "zero_negative" and ablated["condition"]["n_neurons"] == 34
    assert ablated["condition"]["neurons_per_layer"] == {"0": 32, "1": 2}
    assert declared["condition"] == {"intervention": "mine"}  # a caller's own record is kept as given
    b, a = base["tasks"]["perplexity"]["metrics"]["ppl"]["value"], ablated["tasks"]["perplexity"]["metrics"]["ppl"]["value"]
    assert b != a and after["tasks"]["perplexity"]["metrics"]["ppl"]["value"] == b
    # the harness's fields: windows offered vs scored, recounted from the tokenized corpus
    n_tokens = len(tok("\n\n".join(word_corpus.read_text().split("\n\n"))).input_ids)
    windows = ablated["tasks"]["perplexity"]["config"]["n_windows_total"]
    assert n_tokens // 32 - 1 <= windows <= n_tokens // 32 + 1
    assert ablated["n-samples"]["perplexity"] == {"original": windows, "effective": windows}
    assert ablated["higher_is_better"]["perplexity"] == {"ppl": False, "nll": False} and ablated["n-shot"] == {"perplexity": 0}
    record = json.loads(write_results(tmp_path, ablated).read_text())
    when = datetime.datetime.fromisoformat(record["date"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 600
    assert record["negdiff_version"] == negdiff.__version__ == "0.1.0"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert record["git_hash"] is None if not head else record["git_hash"].startswith(head)


def test_higher_is_better_names_every_direction():
    assert [higher_is_better(m) for m in ("acc", "acc_norm", "acc/field/morphology", "acc_strict", "acc_task_mean")] \
        == [True] * 5
    assert [higher_is_better(m) for m in ("ppl", "nll", "nongrammatical_mean_error", "nongrammatical_mean_error_norm")] \
        == [False] * 4


def test_the_api_and_the_cli_score_with_the_same_defaults():
    """``negdiff eval`` with no flags and ``evaluate()`` with no config: one BOS policy, one set of settings."""
    from negdiff.cli import build_parser
    from negdiff.options import config_from_args

    args = build_parser().parse_args(["eval", "m", "--tasks", "blimp", "--out", "x"])
    assert eval_config(config_from_args(EvalOptions, args)) == EvalConfig()
    assert EvalConfig().scoring.bos == EvalOptions().bos == "prefix"
    assert eval_config(EvalOptions(bos="bos_token")).scoring.bos == "bos_token"  # and the flag does reach it
