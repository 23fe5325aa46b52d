"""Gate-by-up sign quadrants of a gated MLP: zero the contribution act(gate) x up of one sign quadrant.

In SwiGLU/GeGLU the neuron (defined at the gate, as paper.md says: the activation's input h) contributes
``act(h) * u`` to the down projection, with ``u`` the same channel of the up projection. The signs of the
two factors split every contribution into four quadrants; zeroing one quadrant on a neuron set asks whether
the negative-region harm of the Wasserstein neurons lives in, say, ``h < 0, u > 0`` (Gerstner & Schuetze,
"Weakening Neurons", report that negative gate values matter in OLMo). Zeroing both ``h < 0`` quadrants is
exactly ``zero_negative`` (act(0) = 0 for SiLU and GELU), and all four exactly ``zero``: the tests pin both.

Why edit the up factor: the product is not a module, so there is nothing to hook between the two factors.
Setting ``u`` to 0 where the quadrant holds makes the product exactly 0 there and leaves every other
contribution untouched. Unfused (Llama-style) MLPs compute ``act_fn(gate_proj(x)) * up_proj(x)`` left to
right, so a pre-hook on the activation records the gate's sign before the up projection runs, and a hook on
the up projection consumes it; an architecture that ran them in the other order is refused at the first
forward rather than edited with a stale mask. Fused projections (Phi-3's ``gate_up_proj``) hold both factors
in one output, so one hook reads the gate half and edits the up half.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from negdiff.errors import NegdiffError
from negdiff.sites import Site

#: mode -> (sign of the gate h, sign of the up factor u) whose contributions the mode zeroes
QUADRANTS: dict[str, tuple[int, int]] = {
    "zero_gate_neg_up_pos": (-1, 1),
    "zero_gate_neg_up_neg": (-1, -1),
    "zero_gate_pos_up_pos": (1, 1),
    "zero_gate_pos_up_neg": (1, -1),
}


def _side(x: torch.Tensor, sign: int) -> torch.Tensor:
    return x < 0 if sign < 0 else x > 0


def check_gated(sites: list[Site], mode: str, where: str = "intervene") -> None:
    """Refuse a quadrant mode on an ungated MLP (GPT-2, Pythia, OPT, Phi-2): there is no up factor to split."""
    if mode in QUADRANTS and not all(s.gated and s.up_module is not None for s in sites):
        raise NegdiffError(f"{where}: mode '{mode}' needs a gated MLP (SwiGLU/GeGLU: act(gate) x up); this model's "
                           f"MLP is ungated ({sites[0].act_path.rsplit('.', 1)[0]}), so its sign quadrants do not "
                           f"exist; use zero_negative / zero_positive")


def register(site: Site, on_device: Callable[[torch.device], torch.Tensor], mode: str,
             wrap: Callable[[Callable[..., Any]], Any]) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook ``site`` so that the selected channels' contributions in ``mode``'s quadrant are zero.

    ``on_device`` gives the selected channel indices on a device; ``wrap`` turns a hook function into the
    object registered (hooks.intervene tags it with its Intervention). Returns the handles to remove.
    """
    g_sign, u_sign = QUADRANTS[mode]
    if site.proj_layout == "fused_gate_up":
        width = site.width

        def fused_hook(_mod, _args, out):
            idx = on_device(out.device)
            gate = out[..., :width].index_select(-1, idx)
            up_idx = idx + width
            up = out.index_select(-1, up_idx)
            new = up.masked_fill(_side(gate, g_sign) & _side(up, u_sign), 0)
            return out.index_copy(-1, up_idx, new)

        return [site.up_module.register_forward_hook(wrap(fused_hook))]

    pending: list[torch.Tensor] = []  # the gate-side mask of the forward in flight (at most one)

    def gate_hook(_mod, args):
        h = args[0]
        pending.clear()
        pending.append(_side(h.index_select(-1, on_device(h.device)), g_sign))

    def up_hook(_mod, _args, out):
        if not pending:
            raise NegdiffError(f"{site.proj_path}: the up projection ran before the activation, so the gate's sign "
                               f"is unknown; mode '{mode}' supports MLPs computing act(gate) before up")
        gate_mask = pending.pop()
        idx = on_device(out.device)
        up = out.index_select(-1, idx)
        if gate_mask.shape != up.shape:
            raise NegdiffError(f"{site.proj_path}: gate mask {tuple(gate_mask.shape)} does not match the up output "
                               f"{tuple(up.shape)}; the MLP does not apply act(gate) x up channel by channel")
        return out.index_copy(-1, idx, up.masked_fill(gate_mask & _side(up, u_sign), 0))

    return [site.act_module.register_forward_pre_hook(wrap(gate_hook)),
            site.up_module.register_forward_hook(wrap(up_hook))]
