"""evaluate(): results.json + per-item parquet, pairing across conditions, aggregates, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from negdiff.cli import main
from negdiff.errors import NegdiffError
from negdiff.evaluate import evaluate, write_results
from negdiff.hooks import intervene
from negdiff.neuronset import NeuronSet
from negdiff.tasks import EvalConfig

from _evalutil import (
    DATA,
    needs_data,
    one_thread,  # noqa: F401  (autouse fixture)
    real_tokenizer,
    tiny_llama,
)

EIGHT = ["arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "sciq", "lambada_openai", "boolq"]


@needs_data
def test_evaluate_writes_pairable_results_under_any_condition(tmp_path):
    tok, model = real_tokenizer(), tiny_llama(max_len=2048)
    cfg = EvalConfig(data_root=str(DATA), n_boot=200)
    base = evaluate((model, tok), "blimp,tse,nongrammatical", limit=1, config=cfg)
    neurons = NeuronSet({0: torch.arange(64), 1: torch.arange(0, 64, 2)})
    with intervene(model, neurons, "zero_negative"):
        ablated = evaluate((model, tok), ["blimp", "tse", "nongrammatical"], limit=1, config=cfg,
                           condition={"intervention": "zero_negative", "n_neurons": neurons.size})
    assert list(base["tasks"]) == ["blimp", "tse", *EIGHT]
    assert base["config"]["limit"] == 1 and base["config"]["scoring"]["bos"] == "prefix"
    b, a = base["items"], ablated["items"]
    assert len(b["blimp"]) == 67 and len(b["tse"]) == 22 and len(b["hellaswag"]) == 1
    for name in b:  # same items, same order: ready for paired tests
        assert b[name]["item_id"].tolist() == a[name]["item_id"].tolist()
        assert b[name]["item_id"].is_unique
    assert not np.allclose(b["blimp"]["lp_good"], a["blimp"]["lp_good"])  # the condition changed the model
    # the aggregate is the mean error over the eight benchmarks, recomputed from the item tables
    err = np.mean([1 - b[n]["correct"].mean() for n in EIGHT])
    agg = base["aggregates"]["nongrammatical_mean_error"]
    assert agg["value"] == pytest.approx(err) and agg["n"] == 8 and agg["ci_low"] <= err <= agg["ci_high"]
    norm = base["aggregates"]["nongrammatical_mean_error_norm"]
    assert norm["metrics"]["arc_easy"] == "acc_norm" and norm["metrics"]["boolq"] == "acc"

    path = write_results(tmp_path / "run", ablated)
    record = json.loads(path.read_text())
    assert record["condition"]["intervention"] == "zero_negative"
    assert record["tasks"]["blimp"]["version"] == "2" and record["tasks"]["blimp"]["n"] == 67
    for key in ("value", "stderr", "ci_low", "ci_high", "n"):
        assert key in record["tasks"]["tse"]["metrics"]["acc"]
    assert "torch" in record["versions"] and record["model"]["dtype"] == "float32"
    frame = pd.read_parquet(tmp_path / "run" / record["item_files"]["arc_easy"])
    assert frame["item_id"].tolist() == a["arc_easy"]["item_id"].tolist()
    np.testing.assert_allclose(np.stack(frame["ll"]), np.stack(a["arc_easy"]["ll"]))
    acc = record["tasks"]["blimp"]["metrics"]["acc"]["value"]
    assert acc == pytest.approx(pd.read_parquet(tmp_path / "run" / "items_blimp.parquet")["correct"].mean())


def test_evaluate_rejects_bad_input():
    with pytest.raises(NegdiffError, match="unknown task 'nope'"):
        evaluate((tiny_llama(vocab=97, max_len=32), None), ["nope"])
    with pytest.raises(NegdiffError, match="LoadedModel"):
        evaluate("gpt2", ["blimp"])


@needs_data
def test_cli_eval_with_and_without_neurons(tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_llama(max_len=512).save_pretrained(folder)
    real_tokenizer().save_pretrained(folder)
    NeuronSet({0: torch.arange(32)}, {"rule": "test"}).to_json(tmp_path / "wn.json")
    common = ["eval", str(folder), "--tasks", "blimp", "--blimp-limit", "1", "--data", str(DATA), "--n-boot", "100",
              "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "base")]) == 0
    assert main([*common, "--out", str(tmp_path / "abl"), "--neurons", str(tmp_path / "wn.json"),
                 "--mode", "zero_negative", "--bos", "tokenizer_default"]) == 0
    base = json.loads((tmp_path / "base" / "results.json").read_text())
    abl = json.loads((tmp_path / "abl" / "results.json").read_text())
    assert base["condition"]["intervention"] is None and abl["condition"]["intervention"] == "zero_negative"
    assert abl["condition"]["n_neurons"] == 32 and abl["config"]["scoring"]["bos"] == "tokenizer_default"
    assert base["model"]["source"] == "local" and base["tasks"]["blimp"]["n"] == 67 and base["threads"] == 1
    out = capsys.readouterr().out
    assert "blimp" in out and "acc" in out
    assert main(["eval", str(folder), "--tasks", "blimp,wat", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task 'wat'" in err[0]
    assert main(["eval", str(folder), "--tasks", "blimp", "--out", str(tmp_path / "y"),
                 "--neurons", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
