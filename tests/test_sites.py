"""The activation-site registry finds the right module and the hooked tensor is the activation's input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from negdiff import NegdiffError, capture, resolve
from negdiff.sites import REGISTRY, describe, neuron_name

from conftest import REGISTRY_ARCHS, tiny_config, tiny_model

EXPECTED = {  # arch -> (activation module path of layer 0, kind, config width attribute)
    "gpt2": ("transformer.h.0.mlp.act", "gelu", None),
    "gpt_neox": ("gpt_neox.layers.0.mlp.act", "gelu", "intermediate_size"),
    "llama": ("model.layers.0.mlp.act_fn", "silu", "intermediate_size"),
    "qwen2": ("model.layers.0.mlp.act_fn", "silu", "intermediate_size"),
    "gemma": ("model.layers.0.mlp.act_fn", "gelu", "intermediate_size"),
    "opt": ("model.decoder.layers.0.activation_fn", "relu", "ffn_dim"),
}


def test_registry_finds_module_and_counts(arch_model):
    arch, model = arch_model
    sites = resolve(model)
    path, kind, width_attr = EXPECTED[arch]
    cfg = model.config
    n_layers = cfg.n_layer if arch == "gpt2" else cfg.num_hidden_layers
    width = 4 * cfg.n_embd if width_attr is None else getattr(cfg, width_attr)
    assert len(sites) == n_layers
    assert sites[0].act_path == path
    assert model.get_submodule(path) is sites[0].act_module
    assert all(s.width == width and s.kind == kind for s in sites)
    info = describe(sites)
    assert info["n_neurons"] == n_layers * width
    assert info["smooth"] is (kind != "relu")


def _manual_mlp_input(model, arch, ids, mask, layer):
    """Recompute the MLP input of ``layer`` with a raw torch hook on the block's norm, independent of negdiff."""
    norm_path = {
        "gpt2": f"transformer.h.{layer}.ln_2",
        "gpt_neox": f"gpt_neox.layers.{layer}.post_attention_layernorm",
        "llama": f"model.layers.{layer}.post_attention_layernorm",
        "qwen2": f"model.layers.{layer}.post_attention_layernorm",
        "gemma": f"model.layers.{layer}.post_attention_layernorm",
        "opt": f"model.decoder.layers.{layer}.final_layer_norm",
    }[arch]
    seen = {}
    handle = model.get_submodule(norm_path).register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return seen["x"]


def test_capture_equals_recomputation_from_weights(arch_model, token_batch):
    arch, model = arch_model
    ids, mask = token_batch
    sites = resolve(model)
    layer = len(sites) - 1
    with capture(model, what=("pre", "mlp_in")) as tr:
        tr.forward(ids, mask)
    x = _manual_mlp_input(model, arch, ids, mask, layer)
    if arch == "opt":  # OPT flattens (batch, seq) before fc1
        x = x.reshape(-1, x.shape[-1])
    torch.testing.assert_close(tr.mlp_in[layer].reshape(x.shape), x)
    w, b = sites[layer].proj_weight()
    expected = F.linear(x, w, b)
    assert tr.pre[layer].shape[-1] == sites[layer].width
    torch.testing.assert_close(tr.pre[layer].reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_phi3_fused_gate_is_first_half(token_batch):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(tiny_config("phi3")).eval()
    ids, mask = token_batch
    sites = resolve(model)
    with capture(model, what=("pre", "mlp_in")) as tr:
        tr.forward(ids, mask)
    w, b = sites[0].proj_weight()
    assert w.shape[0] == sites[0].width == 40
    torch.testing.assert_close(tr.pre[0], F.linear(tr.mlp_in[0], w), rtol=1e-5, atol=1e-5)


def test_unknown_architecture_lists_supported():
    cfg = T.GPTJConfig(n_layer=1, n_embd=16, n_head=2, rotary_dim=4, vocab_size=50, n_positions=32)
    model = T.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(NegdiffError, match="no activation-site rule for model_type 'gptj'.*Supported architectures: .*gpt2"):
        resolve(model)


def test_neuron_name():
    assert neuron_name(3, 1021) == "L3.N1021"


def test_relu_model_is_flagged():
    sites = resolve(tiny_model("opt"))
    assert describe(sites)["smooth"] is False and sites[0].kind == "relu"


def test_every_registry_row_has_a_tiny_config():
    """A new registry row without a tiny config would go untested."""
    assert sorted(REGISTRY) == sorted(REGISTRY_ARCHS)
    assert sorted(tiny_config(a).model_type for a in REGISTRY_ARCHS) == sorted(REGISTRY)


@pytest.mark.parametrize("arch", REGISTRY_ARCHS)
def test_every_registry_row_hooks_the_activation_functions_argument(arch, token_batch):
    """What negdiff calls a neuron's pre-activation is, bit for bit, what the activation module receives
    (seen by a raw torch pre-hook, independent of negdiff), in every layer, with the right width."""
    model = tiny_model(arch)
    ids, mask = token_batch
    sites = resolve(model)
    cfg = model.config
    assert len(sites) == (getattr(cfg, "num_hidden_layers", None) or cfg.n_layer) >= 2
    seen: dict[int, torch.Tensor] = {}
    handles = [s.act_module.register_forward_pre_hook(
        lambda m, args, i=s.layer: seen.setdefault(i, args[0].detach().clone())) for s in sites]
    try:
        with capture(model, what=("pre",)) as tr:
            tr.forward(ids, mask)
    finally:
        for h in handles:
            h.remove()
    assert sorted(seen) == [s.layer for s in sites]
    for s in sites:
        got = seen[s.layer]
        assert got.shape[-1] == s.width  # phi3's fused gate_up: the activation sees the gate half only
        assert torch.equal(tr.pre[s.layer].reshape(got.shape), got), f"{arch} layer {s.layer}"
