"""The layer cache: replaying the residual stream at layer L equals the uncached pass (within 1e-5) for every
tiny architecture, several L, both scoring engines (the shared-context one continues from a key/value cache),
under interventions on layers >= L; deliberate misuse raises or shows the mismatch; budgets, spills, the
plan over the layers experiment's conditions, and the experiment's results with the cache on and off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T

from negdiff import NegdiffError, NeuronSet, intervene, load_model
from negdiff.cli import main
from negdiff.experiments import layers
from negdiff.hooks import hook_count
from negdiff.scoring import Request, ScoringConfig, score, window_nlls
from negdiff.scoring.prefix_tree import score_tree
from negdiff.services import layer_cache as lc
from negdiff.services.layer_cache.plan import PrefixCache, plan, prefix_key

from _evalutil import one_thread  # noqa: F401  (autouse: one thread)
from conftest import DATA, REGISTRY_ARCHS, VOCAB, tiny_config

CACHED = [score_tree]  # the engine that continues from a key/value cache

TOL = 1e-5
CFG = ScoringConfig(max_batch_tokens=40)  # several batches, several shared-context chunks
SHARED = DATA
needs_data = pytest.mark.skipif(not (SHARED / "blimp").is_dir(), reason="staged data not beside the repo")


def deep_model(arch: str, n_layers: int = 4, seed: int = 0):
    """A tiny ``arch`` with ``n_layers`` decoder layers (random biases, as conftest's)."""
    cfg = tiny_config(arch)
    cfg.num_hidden_layers = n_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[0]] * n_layers
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def mc_requests(seed: int = 0) -> list[Request]:
    """Multiple-choice-like requests: contexts shared by 2-4 answers (cache continuations), plus loners."""
    rng = np.random.default_rng(seed)
    reqs = []
    for n_ctx, n_ans in [(12, 4), (1, 2), (20, 3), (5, 4), (12, 2), (3, 1)]:
        ctx = tuple(int(t) for t in rng.integers(3, VOCAB, n_ctx))
        for _ in range(n_ans):
            reqs.append(Request(ctx, tuple(int(t) for t in rng.integers(3, VOCAB, int(rng.integers(1, 8))))))
    return reqs


def edit_above(model, low: int) -> NeuronSet:
    """Neurons at every layer >= ``low`` (mode ``zero``: visible under ReLU too)."""
    n = len(lc.decoder_layers(model)[1])
    return NeuronSet({layer: torch.arange(0, 24, 3) for layer in range(low, n)})


@contextlib.contextmanager
def counting_below(model, layer: int) -> Iterator[list[int]]:
    """Counts the calls of the modules inside the layers below ``layer`` (a hook the layer cache's signature
    leaves out, as its own are: any other hook there would make a replay refuse)."""
    blocks = lc.decoder_layers(model)[1]
    calls = [0]

    def hook(*_):
        calls[0] += 1

    setattr(hook, lc._MARK, True)
    handles = [m.register_forward_pre_hook(hook) for b in blocks[:layer] for m in b.modules() if m is not b]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def max_diff(a, b) -> float:
    return max(float(np.abs(x.logprobs - y.logprobs).max()) for x, y in zip(a, b, strict=True))


def windows(n: int = 5, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, w), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("arch", REGISTRY_ARCHS)
def test_replay_equals_uncached_for_every_arch_layer_and_engine(arch):
    """Recorded once at layers 1-3 in the baseline, replayed under edits on layers >= L: the same log-probs
    (plain engine, shared-context engine continuing from a cache, perplexity windows), and no module below the
    replayed layer ran."""
    model = deep_model(arch)
    reqs = mc_requests()
    runs = {"plain": lambda: score(model, reqs, CFG), "windows": lambda: window_nlls(model, windows(), CFG),
            **{e.__name__: (lambda e=e: e(model, reqs, CFG)) for e in CACHED}}
    for name, run in runs.items():
        with lc.record(model, [1, 2, 3], 10**9) as stores:
            base = run()
        assert all(s.usable() and s.n_recorded == s.n_calls > 0 for s in stores.values())
        for low in (1, 2, 3):
            neurons = edit_above(model, low)
            with intervene(model, neurons, "zero"):
                want = run()
            for start in range(1, low + 1):  # replay from any recorded layer <= the lowest edited one
                with counting_below(model, start) as calls, lc.replay(model, start, stores[start]) as stats, \
                        intervene(model, neurons, "zero"):
                    got = run()
                assert stats.replayed == stores[start].n_calls and stats.full == 0 and calls == [0]
                if name == "windows":
                    np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"{arch} L={low} from {start}")
                else:
                    assert max_diff(got, want) <= TOL, (arch, name, low, start)
            if name != "windows" and arch != "opt":  # the edit moved the numbers (OPT's ReLU: see below)
                assert max_diff(want, base) > 1e-4
    assert hook_count(model) == 0 and all("forward" not in b.__dict__ for b in lc.decoder_layers(model)[1])


@pytest.mark.parametrize("engine", CACHED)
def test_cache_lengths_stay_right_for_continued_passes(engine, monkeypatch):
    """Without the skipped layers' length stubs a continuation's cache is wrong: replay refuses or fails."""
    model = deep_model("llama")
    reqs = mc_requests()
    with lc.record(model, [2], 10**9) as stores:
        engine(model, reqs, CFG)
    assert any(stores[2].continues)
    monkeypatch.setattr(lc, "_pass_through", lambda idx: (lambda *a, **k: lc._hidden_of(a, k)))
    with pytest.raises((NegdiffError, IndexError, RuntimeError, TypeError)), lc.replay(model, 2, stores[2]):
        engine(model, reqs, CFG)
    assert all("forward" not in b.__dict__ for b in lc.decoder_layers(model)[1])


# ---------------------------------------------------------------------------------------------- misuse
@pytest.fixture
def recorded():
    model = deep_model("llama")
    reqs = mc_requests()
    with lc.record(model, [1, 2], 10**9) as stores:
        score(model, reqs, CFG)
    return model, reqs, stores


def test_wrong_layer_raises_and_a_relabelled_store_shows_the_mismatch(recorded):
    model, reqs, stores = recorded
    with pytest.raises(NegdiffError, match="holds layer 1, not layer 2"), lc.replay(model, 2, stores[1]):
        pass
    want = score(model, reqs, CFG)
    stores[1].layer = 2  # a bug that substituted layer 1's input at layer 2
    with lc.replay(model, 2, stores[1]):
        got = score(model, reqs, CFG)
    assert max_diff(got, want) > 1e-3


def test_other_batches_and_shapes_raise(recorded):
    model, reqs, stores = recorded
    with pytest.raises(NegdiffError, match="other inputs"), lc.replay(model, 1, stores[1]):
        score(model, reqs, ScoringConfig(max_batch_tokens=100))  # another batch composition
    with pytest.raises(NegdiffError, match="other inputs"), lc.replay(model, 1, stores[1]):
        score(model, reqs[::-1][:5] + reqs[5:], CFG)
    entry = stores[1].entries[0]
    entry.tensor = entry.tensor[:, :-1]  # same inputs, but a state of another shape
    with pytest.raises(NegdiffError, match="was recorded; replay refused"), lc.replay(model, 1, stores[1]):
        score(model, reqs, CFG)


def test_intervention_below_the_replayed_layer_raises(recorded):
    model, reqs, stores = recorded
    with pytest.raises(NegdiffError, match="hooks below layer 2 differ"), lc.replay(model, 2, stores[2]), \
            intervene(model, NeuronSet({1: [0, 1]}), "zero"):
        score(model, reqs, CFG)
    with intervene(model, NeuronSet({2: [0, 1]}), "zero"), lc.replay(model, 2, stores[2]):
        score(model, reqs, CFG)  # at the replayed layer itself: fine
    assert hook_count(model) == 0


def test_tags_call_counts_and_outputs_are_checked(recorded):
    model, reqs, stores = recorded
    with pytest.raises(NegdiffError, match="replayed under 'x'"), lc.replay(model, 1, stores[1], tag="x"):
        pass
    with pytest.raises(NegdiffError, match="only .* were recorded"), lc.replay(model, 1, stores[1]):
        for _ in range(2):
            score(model, reqs, CFG)
    ids = [torch.tensor([list(r.context)]) for r in reqs[:2]]
    with lc.record(model, [1], 10**9) as two:
        for x in ids:
            model(input_ids=x)
    with pytest.raises(NegdiffError, match="1 of 2 recorded forward calls were replayed"), lc.replay(model, 1, two[1]):
        model(input_ids=ids[0])
    with pytest.raises(NegdiffError, match="hidden states or attentions"), lc.replay(model, 1, two[1]):
        model(input_ids=ids[0], output_hidden_states=True)
    with lc.replay(model, 1, two[1]):  # nothing run: fine (a resumed condition)
        pass
    with pytest.raises(NegdiffError, match="cannot record layer 0"), lc.record(model, [0], 1):
        pass


def test_broken_recordings_are_unusable():
    model = deep_model("gpt2")
    ids = torch.randint(3, VOCAB, (2, 9))
    blocks = lc.decoder_layers(model)[1]

    def fail(*_):
        raise RuntimeError("boom")

    boom = blocks[2].register_forward_pre_hook(fail)
    with lc.record(model, [1, 3], 10**9) as stores:
        with pytest.raises(RuntimeError):
            model(input_ids=ids)
        boom.remove()
        model(input_ids=ids)
    assert stores[1].invalid and "did not finish" in stores[1].invalid and not stores[3].usable()
    with pytest.raises(NegdiffError, match="unusable"), lc.replay(model, 1, stores[1]):
        pass


# ---------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("engine", [score, *CACHED])
def test_budget_prefix_spill_and_recompute_stay_exact(engine, tmp_path):
    """A budget that holds a few calls in memory, a few on disk, then stops: exact either way; a stop inside
    a shared-context chain rolls back to the call that built the cache; spilled files go when freed."""
    model = deep_model("qwen2")
    reqs = mc_requests(seed=2)
    with lc.record(model, [2], 10**9) as full:
        engine(model, reqs, CFG)
    sizes = [e.nbytes for e in full[2].entries]
    neurons = edit_above(model, 2)
    with intervene(model, neurons, "zero"):
        want = engine(model, reqs, CFG)
    cases = {(sizes[0] + sizes[1], 0): (2, 0), (sizes[0], sizes[1] + sizes[2]): (3, 2), (0, 0): (0, 0)}
    for (mem, disk), expected in cases.items():
        budget = lc.Budget(mem, disk, tmp_path / f"spill{mem}_{disk}")
        with lc.record(model, [2], budget) as stores:
            engine(model, reqs, CFG)
        st = stores[2]
        assert st.n_calls == full[2].n_calls and st.n_recorded < st.n_calls and budget.used_memory <= mem
        assert not st.continues[st.n_recorded]  # the first call run in full builds its own cache
        on_disk = sum(e.path is not None for e in st.entries)
        assert on_disk == len(list(budget.spill_dir.glob("*.pt"))) if on_disk else budget.used_disk == 0
        if engine is score:  # no chains: the budget alone decides
            assert (st.n_recorded, on_disk) == expected
        if st.n_recorded:
            with lc.replay(model, 2, st) as stats, intervene(model, neurons, "zero"):
                got = engine(model, reqs, CFG)
            assert (stats.replayed, stats.full) == (st.n_recorded, st.n_calls - st.n_recorded)
            assert max_diff(got, want) <= TOL
        st.free()
        assert budget.used_memory == 0 and budget.used_disk == 0
        assert not budget.spill_dir.exists() or not any(budget.spill_dir.glob("*.pt"))


@pytest.mark.parametrize("pattern, fits, recorded", [
    ("FFFFF", 2, 2),  # plain engine: no caches, a plain prefix
    ("FTFTT", 3, 2),  # shared context: call 3 continues call 2's cache, so call 2 goes too
    ("FFFTTFT", 2, 0),  # prefix tree: calls 3-4 read keys of calls 0-2, so the whole chunk goes
    ("FFTFFTT", 4, 3),  # ... but a finished chunk (calls 0-2) stays
])
def test_a_stop_never_splits_a_cache_chain(pattern, fits, recorded):
    """Store.append: F = a call that starts a fresh cache, T = one that continues earlier calls' caches."""
    st = lc.Store(1, lc.Budget(fits * 16))
    t = torch.zeros(1, 4)  # 16 bytes
    for i, c in enumerate(pattern):
        st.append(bytes([i]), (), c == "T", t)
    assert st.n_calls == len(pattern) and st.n_recorded == recorded and st.stopped
    assert st.budget.used_memory == 16 * recorded


# ---------------------------------------------------------------------------------------------- plan
def test_plan_over_the_layers_conditions():
    wn = NeuronSet({0: [3], 1: [4], 2: [0], 3: [5], 4: [1], 5: [2]})
    groups = layers.layer_groups(6, 2)
    conds = layers.build_conditions(wn, groups, ["perplexity"], "zero_negative")
    steps = plan([(c.neurons, c.mode) for c in conds], [2, 4])
    key = {c.name: {b: prefix_key(c.neurons, c.mode, b) for b in (2, 4)} for c in conds}
    got = {c.name: (s.replay, s.record, s.free) for c, s in zip(conds, steps, strict=True)}
    assert got == {
        "baseline": (None, {2: None, 4: None}, []),
        "g1": (None, {2: key["g1"][2]}, []),
        "g2": ((2, None), {4: key["g2"][4]}, [(2, None)]),
        "g3": ((4, None), {}, [(4, None)]),
        "g1-2": ((2, key["g1"][2]), {4: key["g1-2"][4]}, [(2, key["g1"][2])]),  # bottom: from g1 at group 2
        "g1-3": ((4, key["g1-2"][4]), {}, [(4, key["g1-2"][4])]),
        "g2-3": ((4, key["g2"][4]), {}, [(4, key["g2"][4])]),  # top: from g2 at group 3
    }
    assert key["g1"][4] == key["g1"][2] and key["baseline"] == {2: None, 4: None}
    assert prefix_key(wn, "zero_negative", 2) != prefix_key(wn, "zero_positive", 2)
    off = PrefixCache(torch.nn.Linear(1, 1), [(c.neurons, c.mode) for c in conds], [2, 4], memory_mb=0)
    assert not off.enabled and all(s.replay is None and not s.record for s in off.steps)


# ---------------------------------------------------------------------------------------------- experiment
@needs_data
def test_layers_experiment_same_items_with_and_without_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    loaded = load_model(str(tiny_model_dir))
    scan = tmp_path / "scan"
    scan.mkdir()
    NeuronSet({0: torch.tensor([1, 5, 7, 30]), 1: torch.tensor([2, 3, 40])}).to_json(scan / "wn.json")
    recs = {}
    for mb in (0, 64):
        cfg = layers.LayersConfig(tasks=("perplexity", "blimp"), blimp_limit=1, ppl_tokens=320,
                                  ppl_window=32, n_boot=200, layer_cache_mb=mb)
        recs[mb] = layers.run_layers(loaded, scan, cfg, tmp_path / f"out{mb}")
    cache = recs[64]["layer_cache"]
    steps = {s["condition"]: s for s in cache["steps"]}
    assert steps["g2"]["replay_from"] == 1 and steps["g2"]["full_calls"] == 0 and steps["g2"]["replayed_calls"] > 0
    assert steps["g1-2"]["replay_from"] == 1  # from g1's state at group 2
    assert steps["baseline"]["recorded"][0]["layer"] == 1 and cache["peak_memory_mb"] > 0
    assert not recs[0]["layer_cache"]["enabled"] and not list((tmp_path / "out64").glob("layer_cache_tmp*"))
    for cond in ("baseline", "g1", "g2", "g1-2"):
        for task, cols in (("perplexity", ["nll"]), ("blimp", ["lp_good", "lp_bad"])):
            a, b = (pd.read_parquet(tmp_path / f"out{mb}" / "conditions" / cond / f"items_{task}.parquet")
                    for mb in (0, 64))
            assert list(a.item_id) == list(b.item_id)
            np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), atol=TOL, rtol=0, err_msg=cond)


def test_cli_refuses_a_negative_cache_budget(tiny_model_dir, tmp_path, capsys):
    scan = tmp_path / "scan"
    scan.mkdir()
    NeuronSet({0: torch.tensor([1])}).to_json(scan / "wn.json")
    args = ["layers", str(tiny_model_dir), "--scan", str(scan), "--out", str(tmp_path / "o")]
    assert main([*args, "--layer-cache-mb", "-1"]) == 2
    assert "--layer-cache-mb must be at least 0, got -1" in capsys.readouterr().err
