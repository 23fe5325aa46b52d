"""Interventions change exactly the selected entries with the right sign, and always clean up."""

from __future__ import annotations

import pytest
import torch

from negdiff import NegdiffError, NeuronSet, capture, intervene, resolve
from negdiff.hooks import MODES, hook_count

from conftest import tiny_model

LAYER = 1


def _pre(model, ids, mask, layer=LAYER):
    with capture(model, [layer]) as tr:
        tr.forward(ids, mask)
    return tr.pre[layer].clone()


def _selected(model, n=7, seed=0):
    width = resolve(model)[LAYER].width
    idx = torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:n]
    neurons = NeuronSet({LAYER: idx})
    return neurons, neurons.indices(LAYER)  # sorted: the order `mean` values are aligned with


@pytest.mark.parametrize("mode", ["zero_negative", "zero_positive", "zero", "mean"])
def test_pre_modes_change_exactly_the_selected_entries(arch_model, token_batch, mode):
    _, model = arch_model
    ids, mask = token_batch
    before = _pre(model, ids, mask)
    neurons, idx = _selected(model)
    values = {LAYER: torch.linspace(-1, 1, len(idx))} if mode == "mean" else None
    with intervene(model, neurons, mode, values=values):
        after = _pre(model, ids, mask)  # capture registered after the edit sees what act() receives
    other = torch.ones(after.shape[-1], dtype=torch.bool)
    other[idx] = False
    assert torch.equal(after[..., other], before[..., other])
    old, new = before[..., idx], after[..., idx]
    expected = {
        "zero_negative": old.clamp_min(0),
        "zero_positive": old.clamp_max(0),
        "zero": torch.zeros_like(old),
        "mean": torch.linspace(-1, 1, len(idx)).expand_as(old),
    }[mode]
    assert torch.equal(new, expected)
    if mode == "zero_negative":  # both signs present, only negatives touched
        assert (old < 0).any() and (old > 0).any()
        assert torch.equal(new[old > 0], old[old > 0])


@pytest.mark.parametrize("mode", ["identity_positive", "abs_negative_output"])
def test_post_modes_edit_activation_output(token_batch, mode):
    model = tiny_model("llama")
    ids, mask = token_batch
    site = resolve(model)[LAYER]
    neurons, idx = _selected(model)
    seen = {}
    handle = site.act_module.register_forward_hook(lambda m, a, out: seen.update(h=a[0], out=out))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        h, base = seen["h"], seen["out"]
        with intervene(model, neurons, mode), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    # the raw hook was registered first, so it saw the unedited output; recompute the edit by hand
    act = torch.nn.functional.silu(h)
    assert torch.allclose(act, base)
    if mode == "identity_positive":
        want = torch.where(h[..., idx] > 0, h[..., idx], act[..., idx])
    else:
        want = act[..., idx].abs()
    edited = base.clone()
    edited[..., idx] = want
    # run again with the edit and a hook registered after it
    got = {}
    with intervene(model, neurons, mode):
        handle = site.act_module.register_forward_hook(lambda m, a, out: got.update(out=out))
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
        finally:
            handle.remove()
    torch.testing.assert_close(got["out"], edited)


def test_empty_set_is_bit_identical(arch_model, token_batch):
    _, model = arch_model
    ids, mask = token_batch
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with intervene(model, NeuronSet.empty(), "zero_negative"):
            assert hook_count(model) == 0
            out = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ref, out)


def test_hooks_removed_on_exit_exception_and_nesting(token_batch):
    model = tiny_model("llama")
    ids, mask = token_batch
    neurons, _ = _selected(model)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"), intervene(model, neurons):
        assert hook_count(model) == 1
        raise RuntimeError("boom")
    assert hook_count(model) == 0
    with intervene(model, neurons, "zero_negative"):
        with capture(model) as tr:
            assert hook_count(model) == 1 + len(tr.sites)
        assert hook_count(model) == 1  # the inner exit did not remove the outer intervention
    assert hook_count(model) == 0
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)


def test_intervention_changes_output_only_while_active(token_batch):
    model = tiny_model("gpt2")
    ids, mask = token_batch
    neurons = NeuronSet({0: torch.arange(40), 1: torch.arange(40)})
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with intervene(model, neurons, "zero_negative"):
            ablated = model(input_ids=ids, attention_mask=mask).logits
        again = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(ref, ablated)
    assert torch.equal(ref, again)


def test_batched_padded_equals_single(token_batch):
    """With an intervention on, each real token's logits do not depend on the batch or its padding."""
    model = tiny_model("llama")
    ids, mask = token_batch
    neurons, _ = _selected(model, n=20)
    with intervene(model, neurons), torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for row in range(len(ids)):
            n = int(mask[row].sum())
            single = model(input_ids=ids[row : row + 1, :n]).logits[0]
            torch.testing.assert_close(batched[row, :n], single, rtol=1e-4, atol=1e-5)


def test_bf16_model(token_batch):
    model = tiny_model("qwen2", dtype=torch.bfloat16)
    ids, mask = token_batch
    neurons, idx = _selected(model)
    before = _pre(model, ids, mask)
    with intervene(model, neurons, "zero_negative"):
        after = _pre(model, ids, mask)
    assert after.dtype == torch.bfloat16
    assert torch.equal(after[..., idx], before[..., idx].clamp_min(0))


def test_capture_stop_after_last_skips_the_head(token_batch):
    model = tiny_model("llama")
    ids, mask = token_batch
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        seen = []
        with capture(model, [0], fn=lambda kind, layer, t: seen.append((kind, layer, t.shape)), keep=False, stop_after_last=True) as tr:
            assert tr.forward(ids, mask) is None
        assert not calls and not tr.pre
        assert seen == [("pre", 0, torch.Size([3, 11, 48]))]
    finally:
        handle.remove()
    assert hook_count(model) == 0


def test_bad_input_errors():
    model = tiny_model("llama")
    with pytest.raises(NegdiffError, match=r"neuron L1\.N48 is out of range: layer 1 has 48 neurons"), intervene(model, NeuronSet({1: [3, 48]})):
        pass
    with pytest.raises(NegdiffError, match="names layer 5, but the model has layers 0..1"), intervene(model, NeuronSet({5: [0]})):
        pass
    with pytest.raises(NegdiffError, match="unknown intervention mode 'flip'; choose one of: zero_negative"), intervene(model, NeuronSet({0: [0]}), "flip"):
        pass
    with pytest.raises(NegdiffError, match="mode 'mean' needs per-neuron values"), intervene(model, NeuronSet({0: [0]}), "mean"):
        pass
    with pytest.raises(NegdiffError, match="layer 9 out of range"), capture(model, [9]):
        pass
    assert hook_count(model) == 0
    assert set(MODES) >= {"zero_negative", "zero_positive", "zero", "mean"}
