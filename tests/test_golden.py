"""Golden numbers on the embedded model (SmolLM2-135M-Instruct, Q4_1 weights dequantized to float32, CPU).

A dozen pinned log-likelihoods and one pinned scan row: the refactors of the experiment layer, a new
torch or transformers, a change to the dequantizer or the BOS rule must leave them where they are (or the
change is a result to explain, and the pins move in the same commit with the reason). The log-likelihoods
are also recomputed here with a plain forward pass and a float64 log-softmax over the whole sequence, so a
pin that moved together with the scorer would still be caught.

Slow (loads the 135M model; about a minute on 2 cores):
``NEGDIFF_DATA=../shared/data python3 -m pytest -q -m slow tests/test_golden.py``
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DATA

pytestmark = pytest.mark.slow

#: (text, pinned sum of log-probs in nats under the default BOS policy, prefix = <|endoftext|>)
SENTENCES = (
    ("The keys to the cabinet are on the table.", -39.1066),
    ("The keys to the cabinet is on the table.", -43.8833),
    ("The authors that the guard likes laugh.", -65.1288),
    ("The authors that the guard likes laughs.", -63.5098),
    ("Many girls insulted themselves.", -41.0721),
    ("Many girls insulted herself.", -43.4039),
    ("Who should Derek hug after shocking Richard?", -65.444),
    ("Who should Derek hug Richard after shocking?", -67.2497),
)
#: (context, continuation, pinned log-likelihood of the continuation in nats)
CONTINUATIONS = (
    ("The capital of France is", " Paris", -0.2581),
    ("The capital of France is", " Berlin", -6.9207),
    ("Water freezes at zero degrees", " Celsius", -0.1321),
    ("Water freezes at zero degrees", " Fahrenheit", -2.7819),
)
#: the pinned scan row: layer 3's highest-WD neuron over 2 windows of 512 WikiText-2 tokens
SCAN_ROW = {"layer": 3, "neuron": 1329, "wd": 0.319489, "mean": -0.037893, "std": 0.619243, "frac_negative": 0.617188,
            "kurtosis": 4.960682}
#: nats; fp32 CPU kernels differ in summation order across thread counts and builds by far less than this
TOL = 2e-3


@pytest.fixture(scope="module")
def loaded():
    from negdiff import load_model

    return load_model("default")


def _reference_logprob(loaded, request) -> float:
    """Sum of log p(target token | everything before it): one plain forward, float64 log-softmax."""
    ids = [*request.context, *request.target]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    per_token = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return float(per_token[len(request.context) - 1:].sum())


def test_pinned_sentence_log_probs(loaded):
    from negdiff.scoring import ScoringConfig, encode_text, sequence_logprobs

    got = sequence_logprobs(loaded.model, loaded.tokenizer, [t for t, _ in SENTENCES], config=ScoringConfig())
    for (text, pinned), value in zip(SENTENCES, got):
        req = encode_text(loaded.tokenizer, text, "prefix")
        assert req.context == (0,), "the prefix policy puts <|endoftext|> (id 0) first on this tokenizer, not <|im_start|>"
        assert value == pytest.approx(_reference_logprob(loaded, req), abs=1e-3), text
        assert value == pytest.approx(pinned, abs=TOL), (text, value)
    # which member of each pair the model prefers is part of what is pinned: 3 of these 4 grammatical first
    assert [bool(got[i] > got[i + 1]) for i in range(0, 8, 2)] == [True, False, True, True]


def test_pinned_continuation_log_likelihoods(loaded):
    from negdiff.scoring import ScoringConfig, continuation_logliks, encode_pair

    ll, _ = continuation_logliks(loaded.model, loaded.tokenizer, [(c, x) for c, x, _ in CONTINUATIONS],
                                 config=ScoringConfig())
    for (c, x, pinned), value in zip(CONTINUATIONS, ll):
        req = encode_pair(loaded.tokenizer, c, x, "prefix")
        assert req.context[0] != 0, "no document-start token before a non-empty context (the harness's rule)"
        assert value == pytest.approx(_reference_logprob(loaded, req), abs=1e-3), (c, x)
        assert value == pytest.approx(pinned, abs=TOL), (c, x, value)


def test_pinned_scan_row(loaded, tmp_path, monkeypatch):
    from negdiff.experiments.scan import ScanConfig, run_scan

    monkeypatch.setenv("NEGDIFF_DATA", str(DATA))
    cfg = ScanConfig(tokens=1024, window=512, md_pairs=256, top_pairs=1, check_windows=0)
    run_scan(loaded, cfg, tmp_path / "scan")
    table = pd.read_parquet(tmp_path / "scan" / "neurons.parquet")
    layer = table[table.layer == SCAN_ROW["layer"]]
    row = layer.loc[layer.wd.idxmax()]
    assert int(row.neuron) == SCAN_ROW["neuron"]
    for key in ("wd", "mean", "std", "frac_negative", "kurtosis"):
        assert float(row[key]) == pytest.approx(SCAN_ROW[key], rel=1e-3, abs=1e-4), (key, float(row[key]))
    assert np.isfinite(table.wd).all() and len(table) == 30 * 1536
