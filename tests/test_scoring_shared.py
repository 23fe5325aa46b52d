"""Shared-context (KV cache) multiple-choice scoring against the one-at-a-time reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negdiff import NeuronSet, intervene
from negdiff.scoring import Request, ScoringConfig, continuation_logliks, score, score_unbatched
from negdiff.scoring_shared import context_groups, score_shared

from _evalutil import one_thread, real_tokenizer, tiny_llama  # noqa: F401  (one_thread: autouse fixture)
from conftest import ARCHS, VOCAB, tiny_model


def mc_requests(seed: int = 0, vocab: int = VOCAB) -> list[Request]:
    """Items of 2-4 answers of 1-7 tokens after contexts of 1-20 tokens, some contexts repeated, plus loners."""
    rng = np.random.default_rng(seed)
    reqs = []
    for n_ctx, n_ans in [(12, 4), (1, 2), (20, 3), (5, 4), (12, 2), (3, 1)]:
        ctx = tuple(int(t) for t in rng.integers(3, vocab, n_ctx))
        for _ in range(n_ans):
            reqs.append(Request(ctx, tuple(int(t) for t in rng.integers(3, vocab, int(rng.integers(1, 8))))))
    reqs.append(Request((1, 5), (7,)))  # an exact duplicate of nothing, alone
    return reqs


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_context_equals_unbatched_reference(arch):
    model = tiny_model(arch)
    reqs = mc_requests()
    ref = [score_unbatched(model, r) for r in reqs]
    for budget in (1, 16, 100_000):
        got = score_shared(model, reqs, ScoringConfig(max_batch_tokens=budget), greedy=True)
        for r, g, e in zip(reqs, got, ref, strict=True):
            assert g.n == len(r.target)
            np.testing.assert_allclose(g.logprobs, e.logprobs, atol=1e-4, rtol=0, err_msg=f"{arch} budget {budget}")
            assert (g.greedy == e.greedy).all()


def test_context_groups_take_shared_fitting_contexts_only():
    reqs = [Request((1, 2), (3,)), Request((1, 2), (4, 5)), Request((9,), (3,)), Request((1, 2, 3), (4,) * 9),
            Request((1, 2, 3), (4,))]
    groups, rest = context_groups(reqs, max_len=None)
    assert groups == [[0, 1], [3, 4]] and rest == [2]
    groups, rest = context_groups(reqs, max_len=10)  # 3 + 9 - 1 = 11 inputs do not fit: plain engine
    assert groups == [[0, 1]] and rest == [2, 3, 4]


def test_shared_context_applies_interventions_like_the_plain_engine():
    model = tiny_model("llama")
    reqs = mc_requests(seed=1)
    neurons = NeuronSet({0: torch.arange(0, 48, 2), 1: torch.arange(10)})
    base = score(model, reqs)
    with intervene(model, neurons, "zero_negative"):
        plain = score(model, reqs)
        shared = score_shared(model, reqs)
    moved = 0.0
    for p, s, b in zip(plain, shared, base, strict=True):
        np.testing.assert_allclose(s.logprobs, p.logprobs, atol=1e-4, rtol=0)
        moved = max(moved, float(np.abs(p.logprobs - b.logprobs).max()))
    assert moved > 1e-3  # the intervention changed the scores, so the agreement above means something


def test_continuation_logliks_same_with_and_without_sharing():
    tok, model = real_tokenizer(), tiny_llama()
    ctx = "Question: Which gas do plants take in?\nAnswer:"
    pairs = [(ctx, " carbon dioxide"), (ctx, " oxygen"), (ctx, " nitrogen gas from the air"),
             ("Sarah was a much better surgeon than", " Maria"), ("Sarah was a much better surgeon than", " Sarah")]
    on, g_on = continuation_logliks(model, tok, pairs, ScoringConfig(share_context=True))
    off, g_off = continuation_logliks(model, tok, pairs, ScoringConfig(share_context=False))
    np.testing.assert_allclose(on, off, atol=1e-4, rtol=0)
    assert (g_on == g_off).all()
    assert ScoringConfig().to_dict()["share_context"] is True  # recorded with every result
