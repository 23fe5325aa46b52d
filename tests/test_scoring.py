"""The scoring engine against independent references: bigram tables, float64 recomputation, one-at-a-time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negdiff.errors import NegdiffError
from negdiff.scoring import (
    Request,
    ScoringConfig,
    continuation_logliks,
    encode_pair,
    encode_text,
    length_buckets,
    score,
    score_unbatched,
    sequence_logprobs,
    token_logprobs,
    window_nlls,
)

from _evalutil import (
    DATA,
    bigram_logprob,
    one_thread,  # noqa: F401  (autouse fixture)
    real_tokenizer,
    tiny_llama,
    toy_bigram,
)

SENTENCES = [
    "Who should Derek hug after shocking Richard?",
    "Who should Derek hug Richard after shocking?",
    "a",
    "The authors that the guards like have ever been popular, according to the many reports we read.",
    "Cats run.",
    "Many girls insulted themselves.",
    "Wayne doesn't ever complain about some bread that hasn't ever fallen, or about the cheese that has.",
    "This is it",
]


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_batched_equals_unbatched_and_is_batch_size_invariant(llama):
    tok = real_tokenizer()
    reqs = [encode_text(tok, t) for t in SENTENCES] + [
        encode_pair(tok, "Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"),
        encode_pair(tok, "Sarah was a much better surgeon than Maria", " always got the easier cases."),
    ]
    ref = [score_unbatched(llama, r) for r in reqs]
    runs = {b: score(llama, reqs, ScoringConfig(max_batch_tokens=b), greedy=True) for b in (1, 40, 100, 100_000)}
    for b, got in runs.items():
        for r, g, e in zip(reqs, got, ref, strict=True):
            assert g.n == len(r.target)
            np.testing.assert_allclose(g.logprobs, e.logprobs, atol=1e-4, rtol=0, err_msg=f"budget {b}")
            assert (g.greedy == e.greedy).all()
    for b in (40, 100, 100_000):  # the answer does not depend on who shares the batch
        for g, h in zip(runs[1], runs[b], strict=True):
            assert abs(g.total - h.total) < 1e-4
    assert all(s.total < 0 for s in runs[1])


def test_length_buckets_respect_the_budget_and_sort_by_length():
    lengths = [5, 17, 3, 17, 9, 1, 30, 2]
    batches = length_buckets(lengths, 34)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 34
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert batches[0] == [6]  # 30 tokens: alone (2 x 30 > 34)
    assert batches[1] == [1, 3]  # 17 + 17 = 34 fits exactly


def test_bigram_sentence_scores_by_hand():
    model, tok, p = toy_bigram()
    texts = ["the cat runs", "the cats run", "cats run"]
    got_sum = sequence_logprobs(model, tok, texts, "sum", ScoringConfig(max_batch_tokens=7))
    got_mean = sequence_logprobs(model, tok, texts, "mean")
    # "the cat runs" = log P(the|<s>) + log P(cat|the) + log P(runs|cat), worked out from the table
    assert got_sum[0] == pytest.approx(np.log(p[0, 2]) + np.log(p[2, 3]) + np.log(p[3, 5]), abs=1e-5)
    for text, s, m in zip(texts, got_sum, got_mean, strict=True):
        ref = bigram_logprob(p, tok, text)
        assert s == pytest.approx(ref.sum(), abs=1e-5)
        assert m == pytest.approx(ref.mean(), abs=1e-5)


def test_bos_policies():
    model, tok, p = toy_bigram()
    tok.add_bos = False  # a tokenizer that adds nothing (like SmolLM2's, Qwen's, Pythia's)
    prefix = token_logprobs(model, tok, ["the cat runs"], ScoringConfig(bos="prefix"))[0]
    default = token_logprobs(model, tok, ["the cat runs"], ScoringConfig(bos="tokenizer_default"))[0]
    assert prefix.n == 3 and default.n == 2  # the authors' convention leaves the first word unscored
    np.testing.assert_allclose(default.logprobs, bigram_logprob(p, tok, "the cat runs", first_scored=False), atol=1e-5)
    tok.add_bos = True  # a Llama-style tokenizer adds BOS itself: then every real token is scored
    default = token_logprobs(model, tok, ["the cat runs"], ScoringConfig(bos="tokenizer_default"))[0]
    np.testing.assert_allclose(default.logprobs, prefix.logprobs, atol=1e-6)
    with pytest.raises(NegdiffError, match="BOS policy"):
        ScoringConfig(bos="left")


def test_encode_pair_splits_the_harness_way():
    tok = real_tokenizer()
    ctx, cont = "Question: What is the capital of France?\nAnswer:", " Paris is big"
    r = encode_pair(tok, ctx, cont)
    whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
    assert r.context == tuple(whole[:n_ctx]) and r.target == tuple(whole[n_ctx:])  # no BOS before a context
    moved = encode_pair(tok, ctx + " ", cont.lstrip())  # a trailing space moves to the continuation
    assert moved == r
    old = encode_pair(tok, ctx, cont, bos="bos_token")  # negdiff's earlier prefix: the literal BOS first
    assert old.context == (tok.bos_token_id, *whole[:n_ctx]) and old.target == r.target


def test_continuation_loglik_matches_float64_recomputation(llama):
    tok = real_tokenizer()
    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " a city in Europe")]
    ll, greedy = continuation_logliks(llama, tok, pairs)
    for (ctx, cont), got in zip(pairs, ll, strict=True):
        ids = tok(ctx + cont, add_special_tokens=False)["input_ids"]  # harness: no BOS before a context
        n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(llama(torch.tensor([ids])).logits[0].double(), -1)
        ref = sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids)))
        assert got == pytest.approx(ref, abs=1e-4)
    assert greedy.dtype == bool


def test_window_nll_is_the_mean_cross_entropy(llama):
    gen = torch.Generator().manual_seed(1)
    windows = torch.randint(3, 49152, (3, 50), generator=gen)
    got = window_nlls(llama, windows, ScoringConfig(max_batch_tokens=60))
    with torch.no_grad():
        logits = llama(windows).logits.double()
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1),
                                            reduction="none").view(3, 49).mean(1)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def test_long_inputs_lose_context_on_the_left():
    model, tok, p = toy_bigram()
    model.config.max_position_embeddings = 3
    seen = []
    model.register_forward_pre_hook(lambda _m, args, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    got = score(model, [Request((0, 2, 3, 5, 2), (3,)), Request((0,), (2, 3))], ScoringConfig(max_batch_tokens=1))
    assert seen == [3, 2]  # 5 input tokens cut to the last 3; the short request is untouched
    assert got[0].logprobs[0] == pytest.approx(np.log(p[2, 3]), abs=1e-6)
    with pytest.raises(NegdiffError, match="exceeds the model's maximum length"):
        score(model, [Request((0,), (2, 3, 5, 2))])


def test_bfloat16_model_scores_in_float32():
    model = tiny_llama(vocab=97, max_len=64)
    reqs = [Request((1,), tuple(range(3, 3 + k))) for k in (4, 9, 13)]
    fp32 = score(model, reqs)
    bf16 = score(model.to(torch.bfloat16), reqs)
    for a, b in zip(fp32, bf16, strict=True):
        assert b.logprobs.dtype == np.float64 and np.isfinite(b.logprobs).all()
        assert abs(a.total - b.total) < 0.1 * abs(a.total)


def test_bad_requests_are_errors():
    model, tok, _ = toy_bigram()
    with pytest.raises(NegdiffError, match="no target tokens"):
        score(model, [Request((0,), ())])
    with pytest.raises(NegdiffError, match="reduction"):
        sequence_logprobs(model, tok, ["the cat"], "median")


@pytest.mark.slow
def test_embedded_model_batched_equals_unbatched():
    """The same check on the real 135M model (30 layers, 49,152-token vocabulary), 40 BLiMP sentences."""
    from negdiff.models import load_model
    from negdiff.tasks import TASKS, EvalConfig

    loaded = load_model("default")
    items = TASKS["blimp"].load(EvalConfig(data_root=str(DATA)))[::1700]
    reqs = [encode_text(loaded.tokenizer, it[k]) for it in items for k in ("sentence_good", "sentence_bad")]
    ref = [score_unbatched(loaded.model, r) for r in reqs]
    for budget in (1, 512, 4096):
        got = score(loaded.model, reqs, ScoringConfig(max_batch_tokens=budget))
        worst = max(float(np.abs(g.logprobs - e.logprobs).max()) for g, e in zip(got, ref, strict=True))
        assert worst < 1e-4, (budget, worst)
