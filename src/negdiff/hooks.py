"""Hooks as context managers: read pre-activations (``capture``) and edit them (``intervene``).

Hooks are registered on the activation module where it sits in the Hugging Face model (never a
reimplementation), kept as exact handles, and removed in ``finally`` so an exception inside the block
cannot leave a model silently ablated. Nothing here removes hooks it did not add, so a user's outer
interventions survive an inner ``capture``. Hooks run in registration order: a ``capture`` opened
inside an ``intervene`` sees what the activation actually receives.

Both accept a bare Hugging Face model or the :class:`~negdiff.models.LoadedModel` that ``load_model``
returns (its resolved sites are reused). What is active on a model is read from the model's own hook
tables (:func:`active_interventions`): each edit hook carries its :class:`Intervention`, so the record
lives exactly as long as the hook, and no registry can outlive a block or disagree with what runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from negdiff import gate_up
from negdiff.choices import MODES, PRE_MODES, QUADRANT_MODES
from negdiff.errors import NegdiffError
from negdiff.neuronset import NeuronSet, NeuronSetLike
from negdiff.sites import Site, resolve


def unwrap(model: Any, sites: list[Site] | None = None, where: str = "negdiff") -> tuple[nn.Module, list[Site]]:
    """The ``nn.Module`` and its sites from a bare model or a LoadedModel (duck-typed: ``.model`` + ``.sites``).

    Why duck typing: hooks sit below models in the layering, and a LoadedModel is just the model plus what
    was resolved on it; passing one must not fail deep inside the site registry with "model_type 'LoadedModel'".
    """
    if isinstance(model, nn.Module):
        return model, sites if sites is not None else resolve(model)
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(model, "sites", None), list):
        return inner, sites if sites is not None else model.sites
    raise NegdiffError(f"{where}: expected a torch model or the LoadedModel load_model() returns, "
                       f"got {type(model).__name__}")


@dataclass(frozen=True)
class Intervention:
    """One active edit: the mode and the neurons, as results record it (``evaluate`` reads it from the hooks)."""

    mode: str
    neurons: NeuronSet
    has_values: bool = False

    def describe(self) -> dict[str, Any]:
        """The condition record: the same fields ``negdiff eval --neurons`` writes (minus the file name)."""
        return {"intervention": self.mode, "n_neurons": self.neurons.size,
                "neurons_per_layer": {str(k): v for k, v in self.neurons.counts().items()}, "rule": self.neurons.rule}


class _EditHook:
    """A hook that knows which :class:`Intervention` it belongs to (what :func:`active_interventions` reads)."""

    def __init__(self, intervention: Intervention, fn: Callable[..., Any]) -> None:
        self.intervention = intervention
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def active_interventions(model: Any) -> list[Intervention]:
    """The interventions whose hooks are on ``model`` now, in the order they were entered.

    Read from the modules' hook tables, whose keys are torch's global, increasing handle ids: the order of
    registration even across modules. Empty outside every ``intervene`` block.
    """
    module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        return []
    found: dict[int, tuple[int, Intervention]] = {}
    for mod in module.modules():
        for table in (mod._forward_pre_hooks, mod._forward_hooks):
            for hid, hook in table.items():
                if isinstance(hook, _EditHook):
                    iv = hook.intervention
                    if id(iv) not in found or hid < found[id(iv)][0]:
                        found[id(iv)] = (hid, iv)
    return [iv for _, iv in sorted(found.values(), key=lambda x: x[0])]


def condition_of(interventions: list[Intervention]) -> dict[str, Any]:
    """The ``condition`` a result records: baseline, one intervention, or a stack of nested ones."""
    if not interventions:
        return {"intervention": None}
    if len(interventions) == 1:
        return interventions[0].describe()
    return {"intervention": "+".join(iv.mode for iv in interventions),
            "n_neurons": sum(iv.neurons.size for iv in interventions),
            "stack": [iv.describe() for iv in interventions]}


def check_mode(mode: str) -> None:
    """Raise a clear error for an unknown intervention mode."""
    if mode not in MODES:
        raise NegdiffError(f"unknown intervention mode '{mode}'; choose one of: {', '.join(MODES)}")


def _edit_pre(h: torch.Tensor, idx: torch.Tensor, mode: str, values: torch.Tensor | None) -> torch.Tensor:
    sel = h.index_select(-1, idx)
    if mode == "zero_negative":
        new = sel.clamp_min(0)
    elif mode == "zero_positive":
        new = sel.clamp_max(0)
    elif mode == "zero":
        new = torch.zeros_like(sel)
    else:  # mean
        new = values.to(device=h.device, dtype=h.dtype).expand_as(sel)
    return h.index_copy(-1, idx, new)


def _edit_post(h: torch.Tensor, out: torch.Tensor, idx: torch.Tensor, mode: str) -> torch.Tensor:
    sel = out.index_select(-1, idx)
    if mode == "identity_positive":
        hin = h.index_select(-1, idx)
        new = torch.where(hin > 0, hin, sel)
    else:  # abs_negative_output
        new = sel.abs()
    return out.index_copy(-1, idx, new)


@contextmanager
def intervene(
    model: Any,
    neurons: NeuronSetLike,
    mode: str = "zero_negative",
    values: dict[int, torch.Tensor] | None = None,
    sites: list[Site] | None = None,
) -> Iterator[NeuronSet]:
    """Edit the selected neurons' pre-activations (or activation outputs) while the block runs.

    ``model`` is a torch model or a LoadedModel; ``neurons`` a NeuronSet or anything
    :meth:`NeuronSet.coerce` reads (``{layer: indices}``, ``(layer, index)`` pairs, names, a wn.json path).
    ``values`` (mode ``mean`` only) maps layer -> a tensor aligned with ``neurons.indices(layer)``.
    Layers without selected neurons get no hook, so an empty set is bit-identical to no hook. Yields the
    NeuronSet in use; :func:`active_interventions` reports the edit while the block runs.
    """
    check_mode(mode)
    model, sites = unwrap(model, sites, "intervene")
    neurons = NeuronSet.coerce(neurons)
    neurons.validate(sites)
    gate_up.check_gated(sites, mode)
    if mode == "mean":
        if values is None:
            raise NegdiffError("mode 'mean' needs per-neuron values (values={layer: tensor})")
        for layer in neurons.layers:
            if layer not in values or len(values[layer]) != len(neurons.indices(layer)):
                raise NegdiffError(f"mode 'mean': layer {layer} needs {len(neurons.indices(layer))} values")
    record = Intervention(mode, neurons, values is not None)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for site in sites:
            idx_cpu = neurons.indices(site.layer)
            if len(idx_cpu) == 0:
                continue
            cache: dict[torch.device, torch.Tensor] = {}

            def on_device(dev: torch.device, idx_cpu: torch.Tensor = idx_cpu, cache: dict = cache) -> torch.Tensor:
                if dev not in cache:
                    cache[dev] = idx_cpu.to(dev)
                return cache[dev]

            if mode in QUADRANT_MODES:
                handles += gate_up.register(site, on_device, mode, lambda fn: _EditHook(record, fn))
            elif mode in PRE_MODES:
                vals = None if values is None else torch.as_tensor(values[site.layer])

                def pre_hook(_mod, args, on_device=on_device, vals=vals):
                    h = args[0]
                    return (_edit_pre(h, on_device(h.device), mode, vals), *args[1:])

                handles.append(site.act_module.register_forward_pre_hook(_EditHook(record, pre_hook)))
            else:

                def post_hook(_mod, args, out, on_device=on_device):
                    return _edit_post(args[0], out, on_device(out.device), mode)

                handles.append(site.act_module.register_forward_hook(_EditHook(record, post_hook)))
        yield neurons
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised inside a hook to skip the rest of the model (the LM head is not needed by a scan)."""


@dataclass
class Trace:
    """What :func:`capture` saw in the latest forward pass.

    ``pre[layer]`` is the activation input (pre-activations, ``[batch, seq, width]``) and ``mlp_in[layer]``
    the projection input (``[batch, seq, d_model]``), both from the *latest* batch only: a streaming
    consumer reads them (or receives them through ``fn``) batch by batch, so memory never grows with the
    corpus. Tensors stay on the model's device and dtype; upcast before accumulating.
    """

    model: nn.Module
    sites: list[Site]
    pre: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp_in: dict[int, torch.Tensor] = field(default_factory=dict)
    #: ``(batch, seq)`` of the batch :meth:`forward` runs: families that flatten the tokens before the MLP
    #: (OPT: ``[batch * seq, d]``) get their tensors back as ``[batch, seq, d]``
    shape: tuple[int, int] | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Run the model on a batch; a ``capture(stop_after_last=True)`` ends it after the last hooked layer."""
        self.pre.clear()
        self.mlp_in.clear()
        self.shape = (int(input_ids.shape[0]), int(input_ids.shape[1])) if input_ids.dim() == 2 else None
        try:
            with torch.inference_mode():
                return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        except _StopForward:
            return None


@contextmanager
def capture(
    model: Any,
    layers: list[int] | None = None,
    *,
    what: tuple[str, ...] = ("pre",),
    fn: Callable[[str, int, torch.Tensor], None] | None = None,
    keep: bool = True,
    stop_after_last: bool = False,
    sites: list[Site] | None = None,
) -> Iterator[Trace]:
    """Read pre-activations (``"pre"``) and/or MLP inputs (``"mlp_in"``) of the chosen layers.

    ``fn(what, layer, tensor)`` is called as each tensor is produced (the streaming interface);
    ``keep=False`` then stops the trace from holding even the latest batch. Use ``trace.forward(...)``
    to run the model so that ``stop_after_last`` can end the pass early without an error. ``model`` is a
    torch model or a LoadedModel (``trace.model`` is then its torch model).
    """
    model, sites = unwrap(model, sites, "capture")
    bad = [w for w in what if w not in ("pre", "mlp_in")]
    if bad:
        raise NegdiffError(f"capture: unknown tensor kind {bad}; use 'pre' and/or 'mlp_in'")
    chosen = list(range(len(sites))) if layers is None else sorted({int(x) for x in layers})
    for layer in chosen:
        if not 0 <= layer < len(sites):
            raise NegdiffError(f"capture: layer {layer} out of range 0..{len(sites) - 1}")
    trace = Trace(model, sites)
    last = chosen[-1] if chosen else None
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def record(kind: str, layer: int, t: torch.Tensor) -> None:
        t = t.detach()
        if t.dim() == 2 and trace.shape is not None and t.shape[0] == trace.shape[0] * trace.shape[1]:
            t = t.view(*trace.shape, t.shape[-1])  # OPT flattens batch and sequence before fc1
        if fn is not None:
            fn(kind, layer, t)
        if keep:
            (trace.pre if kind == "pre" else trace.mlp_in)[layer] = t

    try:
        for layer in chosen:
            site = sites[layer]
            if "mlp_in" in what:

                def proj_hook(_mod, args, layer=layer):
                    record("mlp_in", layer, args[0])

                handles.append(site.proj_module.register_forward_pre_hook(proj_hook))

            def act_hook(_mod, args, layer=layer, site=site):
                if "pre" in what:
                    h = args[0]
                    if site.proj_layout == "fused_gate_up" and h.shape[-1] != site.width:
                        raise NegdiffError(f"layer {layer}: activation input width {h.shape[-1]} != {site.width}")
                    record("pre", layer, h)
                if stop_after_last and layer == last:
                    raise _StopForward

            handles.append(site.act_module.register_forward_pre_hook(act_hook))
        yield trace
    finally:
        for handle in handles:
            handle.remove()


def hook_count(model: nn.Module) -> int:
    """Number of forward (pre-)hooks registered anywhere in ``model`` (for leak tests)."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
