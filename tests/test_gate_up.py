"""Gate-by-up sign quadrants (negdiff.gate_up) against a float64 recomputation of the gated MLP.

The reference recomputes ``down(act(gate x) * up x)`` from the weights in float64 and zeroes, for the
selected channels, exactly the contributions whose gate and up signs fall in the quadrant; the hooked
MLP must match it. Identities pinned on whole models: both gate < 0 quadrants together are
``zero_negative`` and all four are ``zero`` (act(0) = 0), and a quadrant on an empty set changes nothing.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from negdiff.choices import QUADRANT_MODES
from negdiff.errors import NegdiffError
from negdiff.gate_up import QUADRANTS
from negdiff.hooks import active_interventions, intervene
from negdiff.sites import resolve

from conftest import tiny_model


def _reference(mlp, arch: str, x: torch.Tensor, idx: list[int], mode: str) -> torch.Tensor:
    x = x.double()
    if arch == "phi3":
        w = mlp.gate_up_proj.weight.double()
        gate, up = (x @ w.T).chunk(2, dim=-1)
        act, down = mlp.activation_fn, mlp.down_proj
    else:
        gate, up = x @ mlp.gate_proj.weight.double().T, x @ mlp.up_proj.weight.double().T
        act, down = mlp.act_fn, mlp.down_proj
    prod = act(gate) * up
    g_sign, u_sign = QUADRANTS[mode]
    for j in idx:
        hit = ((gate[..., j] < 0) if g_sign < 0 else (gate[..., j] > 0)) & ((up[..., j] < 0) if u_sign < 0 else (up[..., j] > 0))
        prod[..., j] = torch.where(hit, torch.zeros_like(prod[..., j]), prod[..., j])
    out = prod @ down.weight.double().T
    return out if down.bias is None else out + down.bias.double()


@pytest.mark.parametrize("arch", ["llama", "gemma", "phi3"])
@pytest.mark.parametrize("mode", list(QUADRANTS))
def test_quadrant_matches_float64_reference(arch, mode):
    model = tiny_model(arch)
    mlp = model.model.layers[1].mlp
    torch.manual_seed(1)
    x = 20 * torch.randn(3, 7, 32)  # pre-activations well away from 0 at the tiny init's scale
    idx = [0, 5, 17, 30]
    with intervene(model, {1: idx}, mode) as ns:
        got = mlp(x)
        assert [iv.mode for iv in active_interventions(model)] == [mode] and ns.size == len(idx)
    want = _reference(mlp, arch, x, idx, mode)
    err = (got.double() - want).abs().max()
    untouched = _reference(mlp, arch, x, [], mode)
    assert err < 1e-3 * want.abs().max()
    assert (want - untouched).abs().max() > 100 * err  # the quadrant mattered: the comparison can fail
    assert (mlp(x).double() - untouched).abs().max() < 1e-3 * untouched.abs().max()  # hooks gone after the block


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_quadrants_compose_to_zero_negative_and_zero(arch, token_batch):
    model = tiny_model(arch)
    ids = token_batch[0]
    neurons = {0: [1, 2, 3, 9], 1: [0, 4, 11]}

    def logits(modes: list[str]) -> torch.Tensor:
        with ExitStack() as stack, torch.no_grad():
            for m in modes:
                stack.enter_context(intervene(model, neurons, m))
            return model(ids).logits

    neg = logits(["zero_gate_neg_up_pos", "zero_gate_neg_up_neg"])
    # act(0) x u = act(h) x 0 = 0, so equal up to float rounding (Phi-3's fused output differs by an ulp: the
    # edited half changes the memory layout the down projection reads)
    assert torch.allclose(neg, logits(["zero_negative"]), atol=1e-6, rtol=0)
    assert torch.allclose(logits(list(QUADRANTS)), logits(["zero"]), atol=1e-6, rtol=0)
    base = logits([])
    for m in QUADRANTS:
        assert not torch.allclose(logits([m]), base, atol=1e-4), m
    with intervene(model, {}, "zero_gate_pos_up_pos"), torch.no_grad():
        assert torch.equal(model(ids).logits, base)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "opt", "phi"])
def test_ungated_models_are_refused(arch):
    model = tiny_model(arch)
    with pytest.raises(NegdiffError, match="needs a gated MLP"), intervene(model, {0: [0]}, "zero_gate_neg_up_pos"):
        pass


def test_up_before_gate_is_refused_not_edited_with_a_stale_mask():
    model = tiny_model("llama")
    site = resolve(model)[0]
    x = torch.randn(1, 4, 32)
    with intervene(model, {0: [0, 1]}, "zero_gate_neg_up_pos"), pytest.raises(NegdiffError, match="ran before"):
        site.up_module(x)


def test_vocabularies_agree():
    assert set(QUADRANTS) == set(QUADRANT_MODES)
