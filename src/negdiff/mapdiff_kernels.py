"""Per-batch pieces of :class:`negdiff.mapdiff.MDAccumulator`: histogram index, top-k candidates, scratch.

Why separate: they are the inner loop of a scan's mapping difficulty, written for speed on CPU (reused
per-thread buffers, blocks of neurons, a threshold instead of a full top-k) and kept apart from the
accumulator's bookkeeping.
"""

from __future__ import annotations

import numpy as np
import torch

from negdiff.stats_kernels import buffer


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused per-thread CPU buffer (negdiff.stats_kernels.buffer), a fresh tensor elsewhere."""
    return buffer(name, shape, dtype) if device.type == "cpu" else torch.empty(shape, dtype=dtype, device=device)


def _scale_of(e: torch.Tensor) -> torch.Tensor:
    """Each neuron's histogram scale: its median |output difference| over a sample (a fallback where 0)."""
    if e.device.type == "cpu" and e.dtype in (torch.float32, torch.float64):  # torch.median's lower median,
        k = (e.shape[0] - 1) // 2  # by a selection (several times faster on CPU)
        scale = torch.from_numpy(np.partition(e.T.contiguous().numpy(), k, axis=1)[:, k].copy()).double()
    else:
        scale = e.median(dim=0).values.double()
    good = scale[scale > 0]
    return torch.where(scale > 0, scale, good.median() if good.numel() else 1.0)


def hist_index(e: torch.Tensor, scale: torch.Tensor, cols: slice, octaves: int, bins_per_octave: int,
               width: int) -> torch.Tensor:
    """Flat histogram index of every e [p, cols]: floor(log2(e / scale) * bins_per_octave) + rm + 1, clamped
    to the grid (e = 0 -> bin 0), plus each neuron's row offset (rows of 2 * rm + 2 bins)."""
    rm, dev = octaves * bins_per_octave, e.device
    n_bins = 2 * rm + 2
    u = torch.div(e, scale[cols].float(), out=_scratch("md_u", tuple(e.shape), torch.float32, dev))
    u = u.log2_().mul_(bins_per_octave).floor_().add_(rm + 1).clamp_(0, 2 * rm + 1)
    offsets = torch.arange(cols.start, cols.start + e.shape[1], device=dev) * n_bins
    if width * n_bins < 2**24:  # exact in float32: one pass less
        return _scratch("md_idx", tuple(e.shape), torch.int32, dev).copy_(u.add_(offsets.float()))
    return u.long().add_(offsets)


def top_candidates(ratio: torch.Tensor, thr: torch.Tensor, k: int) -> tuple[torch.Tensor, ...] | None:
    """The entries of ``ratio [p, width]`` that can enter each neuron's top-k, as (rows, cols, values, rank in
    the neuron), best first; ``thr [width]`` is each neuron's current k-th kept ratio (-inf while filling).

    Why a threshold: once a neuron's table is full only pairs above its k-th ratio can enter, a handful per
    batch, so one comparison and a 1-D nonzero replace a top-k over every pair. Ties with the threshold stay
    out; among candidates, ties go to the earlier pair."""
    width = ratio.shape[1]
    if bool(torch.isinf(thr).any()):  # tables still filling: a dense top-k over the batch
        kk = min(k, ratio.shape[0])
        vals, rows = ratio.topk(kk, dim=0)
        rows, vals = rows.T.flatten(), vals.T.flatten()
        cols = torch.arange(width, device=ratio.device).repeat_interleave(kk)
        return rows, cols, vals, torch.arange(kk, device=ratio.device).repeat(width)
    thr = thr.to(ratio.dtype)  # exact: kept ratios are compute-dtype values
    sel = torch.nonzero(ratio.amax(0) > thr).squeeze(1)  # neurons with at least one candidate
    if not len(sel):
        return None
    sub = ratio if 2 * len(sel) > width else ratio.index_select(1, sel)  # a long scan: few neurons
    mask = _scratch("md_mask", tuple(sub.shape), torch.bool, ratio.device)
    flat = torch.gt(sub, thr if sub is ratio else thr[sel], out=mask).view(-1).nonzero().squeeze(1)
    rows, cols = flat // sub.shape[1], flat % sub.shape[1]
    if sub is not ratio:
        cols = sel[cols]
    vals = ratio[rows, cols]
    order = torch.argsort(vals, descending=True, stable=True)
    order = order[torch.argsort(cols[order], stable=True)]  # by neuron, best first
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = torch.bincount(cols, minlength=width)
    rank = torch.arange(len(cols), device=cols.device) - (counts.cumsum(0) - counts)[cols]
    keep = rank < k
    return rows[keep], cols[keep], vals[keep], rank[keep]
