"""Run only the layers above the first intervened one: record the residual stream entering a decoder layer
once, then replay it.

Why: an intervention on layers >= L leaves everything below L as it was in the pass that recorded it, so an
experiment that scores the same items under many such conditions (layer groups, cumulative-from-the-top,
any per-layer dose) need not rerun the lower stack. :func:`record` stores, per forward call in call order,
the hidden states entering the chosen decoder layers (a forward pre-hook on each, where it sits in the Hugging
Face model); :func:`replay` then, call by call, turns the layers below L into pass-throughs (their ``forward``
is shadowed on the instance, restored when the call ends) and puts the recorded tensor back at L's input.
The embeddings, masks and position embeddings still run: they are cheap and the upper layers need them.

Replay refuses rather than guesses. Each call is keyed by a digest of its input ids, attention mask,
position ids and incoming key/value-cache length, and a call whose key or batch shape differs from the
recorded one raises; so does a call with hooks below L that the recording did not have (an intervention
there would be silently skipped), and a store recorded under another ``tag`` (the experiment's name for
what ran below L). A skipped layer handed a key/value cache appends a length-only stub (zeros of shape
``[batch, 1, tokens, 1]``) for its own layer index, so the cache length that the model reads from layer 0
for positions and masks stays right when an engine continues from that cache (the shared-context and
prefix-tree scorers, tested); a full pass that later attended to such a stub would fail on its shape,
never silently. Memory is bounded by a :class:`Budget`: beyond it calls spill to disk, beyond that they
are not recorded and replay runs them in full; a store never ends inside a chain of calls that share
caches (:meth:`Store.append`), so no call run in full reads a stub.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from negdiff.errors import NegdiffError
from negdiff.services.layer_cache.store import Budget, Store
from negdiff.sites import REGISTRY, model_type

_MARK = "_negdiff_layer_cache"  # set on this module's hook functions, so hook signatures leave them out
_STOPPED = object()  # a layer reached after its store ran out of budget: key only
_FALLBACK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The module that loops over the decoder layers, and their ModuleList (the site registry's path first)."""
    rule = REGISTRY.get(model_type(model))
    for path in ((rule.layers,) if rule else ()) + _FALLBACK_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
            return parent, layers
    raise NegdiffError(f"layer cache: no decoder layer list found in {type(model).__name__}")


# ---------------------------------------------------------------------------------------------- call keys
def _bind(sig: inspect.Signature | None, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by name (``**kwargs`` flattened in), from the signature of the layers' parent."""
    try:
        bound = dict(sig.bind_partial(*args, **kwargs).arguments) if sig is not None else dict(kwargs)
    except TypeError:
        bound = dict(kwargs)
    if sig is not None:
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD and isinstance(bound.get(p.name), dict):
                bound.update(bound.pop(p.name))
    return bound


def _signature(parent: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(parent.forward)
    except (TypeError, ValueError):
        return None


def _cache_of(values) -> Any:
    for v in values:
        if isinstance(v, Cache):
            return getattr(v, "self_attention_cache", v)
    return None


def _digest(bound: dict[str, Any]) -> tuple[bytes, bool]:
    """A key for one forward call: every tensor and plain value it was given (ids, masks, positions, flags)
    and its incoming cache length; and whether it continues a cache."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(bound):
        v = bound[name]
        if isinstance(v, torch.Tensor):
            c = v.detach().cpu().contiguous()
            h.update(f"{name}{tuple(c.shape)}{c.dtype}".encode())
            h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif v is None or isinstance(v, (bool, int, float, str)):
            h.update(f"{name}={v!r};".encode())
    cache = _cache_of(bound.values())
    past = int(cache.get_seq_length()) if cache is not None else 0
    h.update(f"past{past}".encode())
    return h.digest(), past > 0


def _hooks(module: nn.Module) -> tuple[int, int]:
    pre = sum(not getattr(f, _MARK, False) for f in module._forward_pre_hooks.values())
    post = sum(not getattr(f, _MARK, False) for f in module._forward_hooks.values())
    return pre, post


def hook_signature(layers: nn.ModuleList, below: int) -> tuple:
    """The hooks (other than the layer cache's) registered inside decoder layers ``0..below-1``."""
    return tuple((i, name, *_hooks(m)) for i in range(below) for name, m in layers[i].named_modules()
                 if any(_hooks(m)))


def _mark(fn):
    setattr(fn, _MARK, True)
    return fn


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _output_flags(bound: dict[str, Any], parent: nn.Module) -> bool:
    cfg = getattr(parent, "config", None)
    return any(bool(bound[k] if bound.get(k) is not None else getattr(cfg, k, False))
               for k in ("output_hidden_states", "output_attentions"))


# ---------------------------------------------------------------------------------------------- record
@contextmanager
def record(model: nn.Module, layers: list[int] | set[int], budget: Budget | int, *,
           tags: dict[int, Any] | None = None, device: str | torch.device = "cpu") -> Iterator[dict[int, Store]]:
    """Store, per forward call, the hidden states entering each decoder layer in ``layers``.

    ``budget`` is a shared :class:`Budget` or a memory budget in bytes; ``tags[layer]`` names what runs
    below that layer while recording (a replay must name the same). Yields ``{layer: Store}``; a store whose
    recording broke (a forward pass that did not finish, a layer not reached) is marked invalid.
    """
    parent, blocks = decoder_layers(model)
    chosen = sorted({int(x) for x in layers})
    for layer in chosen:
        if not 1 <= layer < len(blocks):
            raise NegdiffError(f"layer cache: cannot record layer {layer} (1..{len(blocks) - 1})")
    budget = budget if isinstance(budget, Budget) else Budget(int(budget))
    sig = _signature(parent)
    tags = tags or {}
    stores = {layer: Store(layer, budget, tag=tags.get(layer), device=torch.device(device)) for layer in chosen}
    pending: dict[str, Any] = {}

    def invalidate(reason: str) -> None:
        for s in stores.values():
            if s.invalid is None:
                s.invalid = reason
                s.free()

    @_mark
    def on_call(mod, args, kwargs):
        if pending:
            invalidate("a forward pass did not finish while recording")
        key, continues = _digest(_bind(sig, args, kwargs))
        sigs = hook_signature(blocks, chosen[-1]) if chosen else ()
        pending.update(key=key, continues=continues, sigs=sigs, hidden={})

    def on_layer(layer: int):
        @_mark
        def hook(_mod, args, kwargs):
            if pending:
                if layer in pending["hidden"]:
                    invalidate(f"layer {layer} ran twice in one forward pass")
                store = stores[layer]
                pending["hidden"][layer] = (_hidden_of(args, kwargs).detach().to(store.device, copy=True)
                                            if not store.stopped else _STOPPED)
        return hook

    @_mark
    def check_output(_mod, _args, _kwargs, out):
        if not isinstance(out, torch.Tensor):
            invalidate(f"decoder layers return {type(out).__name__}, not a tensor (needs transformers >= 5)")

    @_mark
    def on_done(mod, args, kwargs, out):
        if not pending:
            return
        for layer, store in stores.items():
            hidden = pending["hidden"].get(layer)
            if hidden is None:
                invalidate(f"layer {layer} was not reached in a forward pass")
            elif store.invalid is None:
                below = tuple(s for s in pending["sigs"] if s[0] < layer)
                store.append(pending["key"], below, pending["continues"], None if hidden is _STOPPED else hidden)
        pending.clear()

    handles = []
    try:
        handles.append(parent.register_forward_pre_hook(on_call, with_kwargs=True))
        handles.append(parent.register_forward_hook(on_done, with_kwargs=True))
        handles.append(blocks[0].register_forward_hook(check_output, with_kwargs=True))
        for layer in chosen:
            handles.append(blocks[layer].register_forward_pre_hook(on_layer(layer), with_kwargs=True))
        yield stores
    finally:
        for h in handles:
            h.remove()
        if pending:
            invalidate("a forward pass did not finish while recording")


# ---------------------------------------------------------------------------------------------- replay
def _cache_index(block: nn.Module, default: int) -> int:
    for m in block.modules():
        idx = getattr(m, "layer_idx", None)
        if isinstance(idx, int):
            return idx
    return default


def _pass_through(cache_idx: int):
    """A stand-in ``forward`` for a skipped layer: hands its input on, and keeps a cache's length right."""

    def forward(*args, **kwargs):
        hidden = _hidden_of(args, kwargs)
        cache = _cache_of([*args[1:], *kwargs.values()])
        if cache is not None:
            stub = hidden.new_zeros((hidden.shape[0], 1, hidden.shape[1], 1))
            cache.update(stub, stub, cache_idx)
        return hidden

    return forward


@dataclass
class ReplayStats:
    """What a :func:`replay` did: calls served from the store, and calls run in full (beyond the budget)."""

    layer: int
    replayed: int = 0
    full: int = 0


@contextmanager
def replay(model: nn.Module, layer: int, store: Store, *, tag: Any = None,
           strict: bool = True) -> Iterator[ReplayStats]:
    """Run each forward call from ``store``'s hidden states at ``layer``, skipping the layers below it.

    Calls must come in the recorded order with the recorded inputs; ``strict`` also requires, on a normal
    exit, that either no call or every recorded call was made.
    """
    parent, blocks = decoder_layers(model)
    if store.layer != layer:
        raise NegdiffError(f"layer cache: the store holds layer {store.layer}, not layer {layer}")
    if store.invalid is not None:
        raise NegdiffError(f"layer cache: the store of layer {layer} is unusable: {store.invalid}")
    if tag != store.tag:
        raise NegdiffError(f"layer cache: recorded under {store.tag!r} below layer {layer}, replayed under {tag!r}")
    lower = list(blocks[:layer])
    sig = _signature(parent)
    stand_ins = [_pass_through(_cache_index(b, i)) for i, b in enumerate(lower)]
    saved: list[Any] = []
    state: dict[str, Any] = {"next": 0, "hidden": None}
    stats = ReplayStats(layer)

    def restore() -> None:
        for b, prev in zip(lower, saved):
            if prev is None:
                b.__dict__.pop("forward", None)
            else:
                b.forward = prev
        saved.clear()

    @_mark
    def on_call(mod, args, kwargs):
        restore()
        i = state["next"]
        if i >= store.n_calls:
            raise NegdiffError(f"layer cache: forward call {i + 1} but only {store.n_calls} were recorded")
        state["next"] = i + 1
        bound = _bind(sig, args, kwargs)
        if i < store.n_recorded and _output_flags(bound, mod):
            raise NegdiffError("layer cache: a replay cannot return hidden states or attentions of skipped layers")
        key, _ = _digest(bound)
        if key != store.keys[i]:
            raise NegdiffError(f"layer cache: forward call {i + 1} has other inputs than the recorded one "
                               "(another batch or order); replay refused")
        if hook_signature(blocks, layer) != store.sigs[i]:
            raise NegdiffError(f"layer cache: hooks below layer {layer} differ from the recording: an "
                               "intervention below the replayed layer would be skipped")
        if i >= store.n_recorded:
            stats.full += 1
            state["hidden"] = None
            return
        state["hidden"] = store.load(i, next(blocks[layer].parameters()).device)
        for b, fwd in zip(lower, stand_ins):
            saved.append(b.__dict__.get("forward"))
            b.forward = fwd
        stats.replayed += 1

    @_mark
    def at_layer(_mod, args, kwargs):
        hidden = state["hidden"]
        if hidden is None:
            return None
        state["hidden"] = None
        incoming = _hidden_of(args, kwargs)
        if tuple(incoming.shape) != tuple(hidden.shape) or incoming.dtype != hidden.dtype:
            raise NegdiffError(f"layer cache: layer {layer} gets {tuple(incoming.shape)} {incoming.dtype} but "
                               f"{tuple(hidden.shape)} {hidden.dtype} was recorded; replay refused")
        return _with_hidden(args, kwargs, hidden)

    @_mark
    def on_done(_mod, _args, _kwargs, _out):
        restore()
        if state["hidden"] is not None:
            state["hidden"] = None
            raise NegdiffError(f"layer cache: layer {layer} was not reached; the recorded state went unused")

    handles = []
    ok = False
    try:
        handles.append(parent.register_forward_pre_hook(on_call, with_kwargs=True))
        handles.append(parent.register_forward_hook(on_done, with_kwargs=True))
        handles.append(blocks[layer].register_forward_pre_hook(at_layer, with_kwargs=True))
        yield stats
        ok = True
    finally:
        for h in handles:
            h.remove()
        restore()
    if ok and strict and state["next"] not in (0, store.n_calls):
        raise NegdiffError(f"layer cache: {state['next']} of {store.n_calls} recorded forward calls were replayed")
