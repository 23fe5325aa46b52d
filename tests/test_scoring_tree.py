"""The prefix-tree engine against the one-at-a-time reference, a hand-worked trie, and deliberate bugs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from negdiff import NeuronSet, intervene
from negdiff.hooks import MODES
from negdiff.scoring import (
    Request,
    ScoringConfig,
    continuation_logliks,
    counting,
    score,
    score_unbatched,
    token_logprobs,
)
from negdiff.scoring.prefix_tree import build_plan, chunk_sequences, score_tree

from _evalutil import one_thread, real_tokenizer, tiny_llama  # noqa: F401  (one_thread: autouse fixture)
from conftest import REGISTRY_ARCHS, VOCAB, tiny_model

ALL_ARCHS = REGISTRY_ARCHS  # one tiny config per registry row


def templated(seed: int = 0, n: int = 60, vocab: int = VOCAB) -> list[Request]:
    """Sentences sharing frames (like minimal pairs), a duplicate, a one-token sentence, a longer context."""
    rng = np.random.default_rng(seed)
    frames = [tuple(int(t) for t in rng.integers(3, vocab, int(rng.integers(1, 6)))) for _ in range(4)]
    reqs = []
    for _ in range(n):
        f = frames[int(rng.integers(len(frames)))]
        tail = tuple(int(t) for t in rng.integers(3, 12, int(rng.integers(1, 6))))
        reqs.append(Request((1,), f + tail))
    reqs += [reqs[3], Request((1,), (5,)), Request((1, 5), (7, 8)), Request((1,), (5, 7, 8))]
    return reqs


def assert_matches(got, ref, tol=1e-4, greedy=True, msg=""):
    for g, e in zip(got, ref, strict=True):
        assert g.n == e.n, msg
        np.testing.assert_allclose(g.logprobs, e.logprobs, atol=tol, rtol=0, err_msg=msg)
        if greedy:
            assert (g.greedy == e.greedy).all(), msg


def max_diff(got, ref) -> float:
    return max(float(np.abs(g.logprobs - e.logprobs).max()) for g, e in zip(got, ref, strict=True))


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_tree_equals_unbatched_reference_at_every_budget_and_chunking(arch, monkeypatch):
    model = tiny_model(arch)
    reqs = templated()
    ref = [score_unbatched(model, r) for r in reqs]
    for budget in (1, 7, 100_000):
        assert_matches(score_tree(model, reqs, ScoringConfig(max_batch_tokens=budget), greedy=True), ref,
                       msg=f"{arch} budget {budget}")
    monkeypatch.setattr("negdiff.scoring.prefix_tree.capacity_tokens", lambda *a: 9)  # many chunks
    assert_matches(score_tree(model, reqs, ScoringConfig(max_batch_tokens=16), greedy=True), ref, msg=f"{arch} chunks")


def test_hand_worked_trie():
    # inputs (all but the last token): (1,2,3) (1,2,4) (1,5): trie nodes [1] [1,2] [1,2,3] [1,2,4] [1,5]
    seqs = sorted([(1, 2, 3, 9), (1, 2, 4, 9), (1, 5, 6)])
    plan = build_plan(seqs)
    assert plan.n_nodes == 5
    assert plan.token.tolist() == [1, 2, 3, 4, 5] and plan.depth.tolist() == [0, 1, 2, 2, 1]
    assert [s.tolist() for s in plan.segments] == [[0], [1], [2], [3], [4]]  # [1] and [1,2] branch
    assert plan.seg_level.tolist() == [0, 1, 2, 2, 1]
    assert plan.stored.tolist() == [True, True, False, False, False]
    # edges: (0,2) (1,3) (2,9) (1,4) (3,9) (0,5) (4,6): 7 distinct, (0,2) shared by the first two
    assert len(plan.edge_node) == 7
    assert plan.seq_edges[0].tolist()[0] == plan.seq_edges[1].tolist()[0]
    # a chain: (1,2,3) and (1,2,3,4) share inputs [1] [1,2]; one segment of 3 nodes
    chain = build_plan(sorted([(1, 2, 3), (1, 2, 3, 4)]))
    assert chain.n_nodes == 3 and [s.tolist() for s in chain.segments] == [[0, 1, 2]]


def test_token_counts_are_the_trie_nodes():
    model = tiny_model("llama")
    reqs = [Request((1,), (2, 3, 9)), Request((1,), (2, 4, 9)), Request((1,), (5, 6)), Request((1,), (5, 6))]
    with counting() as c:
        score_tree(model, reqs, ScoringConfig(max_batch_tokens=100))
    assert c["real"] == 5  # the hand-worked trie above
    with counting() as c:
        score(model, reqs, ScoringConfig(max_batch_tokens=100))
    assert c["real"] == 3 + 3 + 2 + 2


def test_chunks_cover_every_sequence_once_within_capacity():
    seqs = sorted({tuple(int(t) for t in np.random.default_rng(i).integers(1, 6, 1 + i % 7)) for i in range(200)})
    seqs = [s for s in seqs if len(s) > 1]
    chunks = chunk_sequences(seqs, 12)
    assert [j for r in chunks for j in r] == list(range(len(seqs)))
    for r in chunks:
        if len(r) > 1:
            assert build_plan([seqs[j] for j in r]).n_nodes <= 12


@pytest.mark.parametrize("mode", sorted(MODES))
def test_tree_applies_every_intervention_mode_like_the_plain_engine(mode):
    model = tiny_model("llama")
    reqs = templated(seed=1)
    neurons = NeuronSet({0: torch.arange(0, 48, 2), 1: torch.arange(10)})
    values = {0: torch.full((24,), 0.3), 1: torch.full((10,), -0.2)} if mode == "mean" else None
    base = score(model, reqs)
    with intervene(model, neurons, mode, values=values):
        plain = score(model, reqs, greedy=True)
        tree = score_tree(model, reqs, ScoringConfig(max_batch_tokens=11), greedy=True)
    assert_matches(tree, plain)
    assert max_diff(plain, base) > 1e-3  # the intervention moved the scores, so the agreement means something


def test_too_long_and_sliding_window_sequences_take_the_plain_engine():
    gpt2 = tiny_model("gpt2")  # n_positions 64: 80 tokens are left-truncated by the plain engine
    rng = np.random.default_rng(3)
    ctx = (1, *(int(t) for t in rng.integers(3, VOCAB, 39)))
    long = Request(ctx, tuple(int(t) for t in rng.integers(3, VOCAB, 40)))  # 79 inputs
    reqs = [long, Request(ctx, long.target[:5])]
    assert_matches(score_tree(gpt2, reqs), score(gpt2, reqs), tol=1e-5, greedy=False)
    torch.manual_seed(0)
    cfg = T.MistralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=48, vocab_size=VOCAB, sliding_window=8)
    mistral = T.AutoModelForCausalLM.from_config(cfg).eval()
    reqs = templated(seed=4) + [Request((1,), tuple(int(t) for t in rng.integers(3, VOCAB, 12)))]
    assert_matches(score_tree(mistral, reqs, greedy=True), [score_unbatched(mistral, r) for r in reqs])


def test_token_logprobs_same_with_and_without_the_tree():
    tok, model = real_tokenizer(), tiny_llama()
    texts = ["The keys to the cabinet are on the table.", "The keys to the cabinet is on the table.",
             "The author that the guards like laughs.", "The author that the guards like laugh.", "Hi"]
    on = token_logprobs(model, tok, texts, ScoringConfig(share_context=True))
    off = token_logprobs(model, tok, texts, ScoringConfig(share_context=False))
    assert_matches(on, off, greedy=False)


# ---------------------------------------------------------------------------------------------- deliberate bugs
def _reference(model, reqs):
    return [score_unbatched(model, r) for r in reqs]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # absolute and rotary positions
def test_wrong_positions_are_caught(monkeypatch, arch):
    model, reqs = tiny_model(arch), templated(seed=2)
    monkeypatch.setattr("negdiff.scoring.prefix_tree._positions", lambda n_past, width: torch.arange(width))
    assert max_diff(score_tree(model, reqs), _reference(model, reqs)) > 1e-4  # the exactness tests' tolerance


def test_unmasked_padding_is_caught(monkeypatch):
    model, reqs = tiny_model("gpt2"), templated(seed=2)

    def leaky(n_past, past_width, n_seg, width):
        mask = torch.ones(past_width + width, dtype=torch.long)
        mask[past_width + n_seg:] = 0  # the past's padding is visible
        return mask

    monkeypatch.setattr("negdiff.scoring.prefix_tree._row_mask", leaky)
    assert max_diff(score_tree(model, reqs, ScoringConfig(max_batch_tokens=64)), _reference(model, reqs)) > 1e-4


def test_a_cache_reused_across_conditions_is_caught(monkeypatch):
    """A store kept from the baseline pass (prefix keys/values not recomputed) gives wrong intervened scores."""
    import negdiff.scoring.prefix_tree as st

    model, reqs = tiny_model("llama"), templated(seed=5)
    neurons = NeuronSet({0: torch.arange(0, 48, 2), 1: torch.arange(0, 48, 3)})
    with intervene(model, neurons, "zero_negative"):
        truth = score(model, reqs)
    kept: dict = {}
    real_put = st._Store.put

    def stale_put(self, cache, rows, cols, slots, past):
        if "frozen" in kept:  # the second call keeps the baseline's keys/values
            self.keys, self.values = kept["frozen"]
            return
        real_put(self, cache, rows, cols, slots, past)
        kept["last"] = (self.keys, self.values)

    monkeypatch.setattr(st._Store, "put", stale_put)
    score_tree(model, reqs)
    kept["frozen"] = kept["last"]
    with intervene(model, neurons, "zero_negative"):
        stale = score_tree(model, reqs)
    assert max_diff(stale, truth) > 1e-4


# ---------------------------------------------------------------------------------------------- multiple choice
def mc_requests(seed: int = 0, vocab: int = VOCAB) -> list[Request]:
    """Items of 2-4 answers of 1-7 tokens after contexts of 1-20 tokens, some contexts repeated, plus loners."""
    rng = np.random.default_rng(seed)
    reqs = []
    for n_ctx, n_ans in [(12, 4), (1, 2), (20, 3), (5, 4), (12, 2), (3, 1)]:
        ctx = tuple(int(t) for t in rng.integers(3, vocab, n_ctx))
        for _ in range(n_ans):
            reqs.append(Request(ctx, tuple(int(t) for t in rng.integers(3, vocab, int(rng.integers(1, 8))))))
    reqs.append(Request((1, 5), (7,)))
    return reqs


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_shared_contexts_equal_unbatched_reference(arch):
    model = tiny_model(arch)
    reqs = mc_requests()
    ref = [score_unbatched(model, r) for r in reqs]
    for budget in (1, 16, 100_000):
        assert_matches(score_tree(model, reqs, ScoringConfig(max_batch_tokens=budget), greedy=True), ref,
                       msg=f"{arch} budget {budget}")


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


def _cost(batches, width_of, forward_cost):
    return sum(len(b) * max(width_of[s] for s in b) + forward_cost for b in batches)


def test_batch_cuts_are_the_cheapest_contiguous_split(monkeypatch):
    """_cut_batches against a hand-worked case and an exhaustive search over every split of the sorted run."""
    import itertools

    from negdiff.scoring import tree_plan as st

    monkeypatch.setattr(st, "PAST_FACTOR", 10**6)  # the past bound is not what this test checks
    def plan_of(lengths):  # one root segment per length; only the segment lengths matter here
        plan = build_plan(sorted([(1,)]))
        plan.segments = [np.arange(n) for n in lengths]
        return plan
    # hand-worked (cost 32 per forward, budget 40): greedy filling gives [20, 5] [5, 5, 5] = 40 + 15 + 64 = 119;
    # the cheapest split is [20] [5, 5, 5, 5] = 20 + 20 + 64 = 104
    plan = plan_of([20, 5, 5, 5, 5])
    assert st._cut_batches(plan, np.arange(5), dict.fromkeys(range(5), 0), 40) == [[0], [1, 2, 3, 4]]
    rng = np.random.default_rng(0)
    for _ in range(40):
        n, budget = int(rng.integers(1, 8)), int(rng.integers(8, 40))
        lengths = sorted((int(x) for x in rng.integers(1, 9, n)), reverse=True)
        plan = plan_of(lengths)
        got = st._cut_batches(plan, np.arange(n), dict.fromkeys(range(n), 0), budget)
        assert sorted(s for b in got for s in b) == list(range(n))
        assert all(len(b) == 1 or len(b) * lengths[b[0]] <= budget for b in got)
        best = min(
            _cost([list(range(a, b)) for a, b in itertools.pairwise((0, *cuts, n))], lengths, st.FORWARD_COST)
            for k in range(n) for cuts in itertools.combinations(range(1, n), k)
            if all(b - a == 1 or (b - a) * lengths[a] <= budget for a, b in itertools.pairwise((0, *cuts, n))))
        assert _cost(got, lengths, st.FORWARD_COST) == best
