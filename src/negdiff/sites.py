"""The activation-site registry: where each architecture's neurons are.

A *neuron* is one channel of the MLP activation function's input (its pre-activation). For every
supported architecture one small frozen row says where the activation module sits and which projection
feeds it; :func:`resolve` turns a loaded model into one :class:`Site` per layer and checks each site's
width against the projection, so a tensor is never reported under a neuron name it does not belong to.

Hook names follow TransformerLens (``blocks.{L}.mlp.hook_pre``) and neurons print as ``L3.N1021``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from negdiff.errors import NegdiffError


@dataclass(frozen=True)
class SiteRule:
    """Where one architecture keeps its MLP activation.

    ``proj_layout`` says how to read neuron input rows from the projection's weight: ``linear`` (rows are
    neurons), ``conv1d`` (GPT-2's transposed Conv1D) or ``fused_gate_up`` (Phi-3: the first half of a fused
    gate+up projection is the gate, i.e. the activation's input).
    """

    layers: str  # dotted path of the ModuleList of decoder blocks
    act: str  # path of the activation module inside a block (its input is the pre-activation)
    proj: str  # path of the projection producing the pre-activation (its input is the MLP input)
    proj_layout: str = "linear"
    gated: bool = False  # SwiGLU/GeGLU: the activation output is multiplied by an up projection
    up: str | None = None  # path of the up projection (gated, unfused); fused layouts carry it in ``proj``


_LLAMA_LIKE = SiteRule("model.layers", "mlp.act_fn", "mlp.gate_proj", gated=True, up="mlp.up_proj")

REGISTRY: dict[str, SiteRule] = {
    "gpt2": SiteRule("transformer.h", "mlp.act", "mlp.c_fc", proj_layout="conv1d"),
    "gpt_neox": SiteRule("gpt_neox.layers", "mlp.act", "mlp.dense_h_to_4h"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "phi": SiteRule("model.layers", "mlp.activation_fn", "mlp.fc1"),
    "phi3": SiteRule("model.layers", "mlp.activation_fn", "mlp.gate_up_proj", proj_layout="fused_gate_up", gated=True),
    "opt": SiteRule("model.decoder.layers", "activation_fn", "fc1"),
}

#: Activation kinds whose negative region is smooth (the paper's object of study).
SMOOTH_KINDS = ("gelu", "silu")


@dataclass
class Site:
    """One layer's activation site: the modules to hook and what they compute."""

    layer: int
    act_path: str
    proj_path: str
    width: int
    kind: str
    act_module: nn.Module
    proj_module: nn.Module
    proj_layout: str = "linear"
    gated: bool = False
    #: the module whose output holds the up factor: the up projection, or the fused gate+up projection (its
    #: second half); None for ungated MLPs
    up_module: nn.Module | None = None

    @property
    def name(self) -> str:
        """TransformerLens-style hook name of the pre-activation."""
        return f"blocks.{self.layer}.mlp.hook_pre"

    def proj_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The neurons' input rows ``W [width, d_in]`` and bias ``b [width]``: pre = x @ W.T + b."""
        mod = self.proj_module
        weight, bias = mod.weight, getattr(mod, "bias", None)
        if self.proj_layout == "conv1d":
            weight = weight.t()
        elif self.proj_layout == "fused_gate_up":
            weight = weight[: self.width]
            bias = None if bias is None else bias[: self.width]
        return weight.detach(), None if bias is None else bias.detach()


def neuron_name(layer: int, index: int) -> str:
    """The one printed name of a neuron, e.g. ``L3.N1021``."""
    return f"L{layer}.N{index}"


def activation_kind(module: nn.Module, config_act: str | None = None) -> str:
    """Classify an activation module as gelu / silu / relu / other (by class, then config string)."""
    names = [type(module).__name__.lower(), str(getattr(module, "__name__", "")).lower(), (config_act or "").lower()]
    for name in names:
        if "gelu" in name:
            return "gelu"
        if "silu" in name or "swish" in name:
            return "silu"
        if "relu" in name:
            return "relu"
    return "other"


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def _proj_width(proj: nn.Module, layout: str) -> int:
    if layout == "conv1d":
        return int(proj.weight.shape[1])
    if layout == "fused_gate_up":
        return int(proj.weight.shape[0]) // 2
    return int(proj.weight.shape[0])


def model_type(model: nn.Module) -> str:
    """The Hugging Face ``model_type`` of a model (empty string if it has no config)."""
    return str(getattr(getattr(model, "config", None), "model_type", ""))


def supported() -> str:
    """Comma-separated list of supported model types, for error messages and docs."""
    return ", ".join(sorted(REGISTRY))


def resolve(model: nn.Module) -> list[Site]:
    """One :class:`Site` per layer of ``model``; a clear error for unsupported architectures."""
    mtype = model_type(model)
    rule = REGISTRY.get(mtype)
    if rule is None:
        raise NegdiffError(
            f"no activation-site rule for model_type '{mtype or type(model).__name__}': negdiff needs a known "
            f"MLP activation to hook. Supported architectures: {supported()}"
        )
    try:
        blocks = _get(model, rule.layers)
    except AttributeError:
        raise NegdiffError(f"model_type '{mtype}' but no '{rule.layers}' module: unexpected model layout") from None
    cfg = getattr(model, "config", None)
    config_act = None
    for key in ("hidden_act", "hidden_activation", "activation_function"):
        config_act = config_act or getattr(cfg, key, None)
    sites, seen = [], set()
    for i, block in enumerate(blocks):
        act, proj = _get(block, rule.act), _get(block, rule.proj)
        if id(act) in seen:
            raise NegdiffError(
                f"layer {i} shares its activation module with another layer; per-layer hooks would be ambiguous"
            )
        seen.add(id(act))
        width = _proj_width(proj, rule.proj_layout)
        expected = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or getattr(cfg, "n_inner", None)
        if mtype == "gpt2" and expected is None:
            expected = 4 * cfg.n_embd
        if expected is not None and int(expected) != width:
            raise NegdiffError(f"layer {i}: projection width {width} != config MLP width {expected}")
        sites.append(
            Site(
                layer=i,
                act_path=f"{rule.layers}.{i}.{rule.act}",
                proj_path=f"{rule.layers}.{i}.{rule.proj}",
                width=width,
                kind=activation_kind(act, config_act),
                act_module=act,
                proj_module=proj,
                proj_layout=rule.proj_layout,
                gated=rule.gated,
                up_module=_get(block, rule.up) if rule.up else (proj if rule.proj_layout == "fused_gate_up" else None),
            )
        )
    if not sites:
        raise NegdiffError(f"model_type '{mtype}' has no layers")
    return sites


def describe(sites: list[Site]) -> dict:
    """A JSON-able summary: layer count, neurons per layer, activation kind, and a ReLU flag."""
    kinds = sorted({s.kind for s in sites})
    return {
        "n_layers": len(sites),
        "neurons_per_layer": sorted({s.width for s in sites}) if len({s.width for s in sites}) > 1 else sites[0].width,
        "n_neurons": sum(s.width for s in sites),
        "activation": kinds[0] if len(kinds) == 1 else kinds,
        "smooth": all(k in SMOOTH_KINDS for k in kinds),
        "gated": sites[0].gated,
        "hook": sites[0].act_path.replace(".0.", ".{L}.", 1),
    }
