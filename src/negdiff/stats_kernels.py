"""The CPU fast path of :meth:`negdiff.stats.NeuronStats.add`: one batch in cache-sized blocks of neurons.

Why a separate path: on CPU the accumulator was memory-bound, not compute-bound. Each full-batch
temporary ([2048, 1536] float32 is 12.6 MB) was streamed through DRAM two dozen times per layer, and the
histogram scatter (index_add_, the one serial step) hopped across all neurons' counts for every row, so
the statistics cost more than the forward pass that produced the values. Here a batch is cut into
chunks of ~0.5M values, a block of columns (neurons) over all rows, up to 4096 rows at a time: the
working buffers are reused (thread-local, so several layers can be accumulated at once on different
threads) and stay in cache, every pass is in place or into such a buffer, and a chunk's scatter only
touches its neurons' counts, which fit the core's cache.

The arithmetic is the generic path's: the same float32 centre and bin recipe (identical counts), the same
float32 deviations about the float32-rounded batch mean summed in 64-row blocks (float64 across blocks),
column by column. A batch of more than 4096 rows is done in row blocks whose moments are merged with the
exact shift formulas; a chunk whose float32 sums overflow, or whose 4th powers could, is redone in float64.

Atomicity: the counts are the only state written chunk by chunk. If the batch turns out to hold a NaN/inf,
the counts already added are taken back (recomputed and subtracted; the bin recipe is bounded for NaN/inf)
before the error is raised, so a refused batch leaves the accumulator as it was, as the generic path does.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from negdiff.stats import NeuronStats

_ONE_BITS = 0x3F800000  # float32 bit pattern of 1.0
_CHUNK_VALUES = 2**19  # ~2 MB per float32 buffer: the buffers and the input chunk stay in the last-level cache
_NEURON_BLOCK = 256  # neurons per chunk: their active histogram bins (~1 kB each) fit a core's cache
_ROW_BLOCK = 4096  # rows per block; a batch up to this size is processed exactly as the generic path does
_BLOCK = 64
_LOCAL = threading.local()


def buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A reusable per-thread scratch tensor (contents undefined). Why: a multi-MB temporary per pass streams
    through DRAM; reused buffers stay in cache, and one set per thread keeps concurrent layers apart.
    Buffers made under inference mode are inference tensors, which may not be written outside it: each
    mode has its own."""
    store = _LOCAL.__dict__.setdefault("buffers", {})
    numel = math.prod(shape)
    key = (name, dtype, torch.is_inference_mode_enabled())
    buf = store.get(key)
    if buf is None or buf.numel() < numel:
        buf = store[key] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def release_buffers() -> None:
    """Free this thread's scratch buffers (a scan's main thread calls it when done; worker threads' go
    with the threads)."""
    _LOCAL.__dict__.pop("buffers", None)


def _rowsum64(t: torch.Tensor) -> torch.Tensor:
    """Row sums of ``t [D, R]`` in float64 from float32 sums over 64-value blocks (as _colsum64)."""
    k = t.shape[1] // _BLOCK * _BLOCK
    total = t[:, :k].reshape(t.shape[0], -1, _BLOCK).sum(2).sum(1, dtype=torch.float64) if k else None
    if k < t.shape[1]:
        rest = t[:, k:].sum(1, dtype=torch.float64)
        return rest if total is None else total + rest
    return total


def merge_chunks(parts: list[tuple]) -> tuple:
    """(n, mean, M2, M3, M4) of the union of row blocks (each (n, mean, M2, M3, M4) with [D] tensors): each
    block's central moments shifted to the common mean (exact: M_p about m = sum_k C(p,k) M_(p-k) about m_b
    times (m_b - m)^k, with M_1 = 0)."""
    if len(parts) == 1:
        return parts[0]
    n = torch.tensor([float(p[0]) for p in parts], dtype=torch.float64)[:, None]
    mean_b, m2, m3, m4 = (torch.stack([p[i] for p in parts]) for i in range(1, 5))
    total = float(n.sum())
    mean = (n * mean_b).sum(0) / total
    d = mean_b - mean
    d2 = d * d
    return (int(total), mean, (m2 + n * d2).sum(0), (m3 + 3.0 * d * m2 + n * d2 * d).sum(0),
            (m4 + 4.0 * d * m3 + 6.0 * d2 * m2 + n * d2 * d2).sum(0))


def _bins(acc: NeuronStats, t: torch.Tensor, cols: slice) -> torch.Tensor:
    """Flat counts index of every value of ``t = x - c [rows, cols]`` (float32 buffer, overwritten): the
    integer recipe of NeuronStats._bin_index plus each neuron's row offset."""
    rm = acc.octaves * acc.bins_per_octave
    t.mul_(acc._inv32[cols])
    sign = torch.bitwise_right_shift(t.view(torch.int32), 31,
                                     out=buffer("sign", tuple(t.shape), torch.int32))  # -1 where t < 0
    q = t.abs_().add_(1.0).view(torch.int32).sub_(_ONE_BITS)
    q.bitwise_right_shift_(23 - int(math.log2(acc.bins_per_octave))).clamp_(max=rm).bitwise_xor_(sign)
    if acc._offsets.dtype == torch.int32:
        return q.add_(acc._row_start[cols])
    return q.long().add_(acc._row_start[cols])


def _chunks(acc: NeuronStats, x: torch.Tensor):
    """(row slice, column slice, the float32 values x[rows, cols]) for every chunk of a batch."""
    rows, width = x.shape
    for r0 in range(0, rows, _ROW_BLOCK):
        n = min(_ROW_BLOCK, rows - r0)
        step = max(8, min(width, _NEURON_BLOCK, _CHUNK_VALUES // n // 8 * 8))
        for j0 in range(0, width, step):
            xc = x[r0:r0 + n, j0:j0 + step]
            if xc.dtype != torch.float32:
                xc = buffer("x32", tuple(xc.shape), torch.float32).copy_(xc)
            yield slice(r0, r0 + n), slice(j0, j0 + step), xc


def _scatter(acc: NeuronStats, flat: torch.Tensor, sign: int) -> None:
    counts = acc._state["counts"]
    ones = torch.full((1,), sign, dtype=counts.dtype).expand(flat.numel())  # stride 0: nothing to stream
    counts.view(-1).index_add_(0, flat.reshape(-1), ones)


def _shifted(acc: NeuronStats, xc: torch.Tensor, cols: slice) -> torch.Tensor:
    return torch.sub(xc, acc._center32[cols], out=buffer("sh", tuple(xc.shape), torch.float32))


def add_cpu(acc: NeuronStats, x: torch.Tensor, raise_nonfinite) -> None:
    """Add a CPU batch ``x [N, width]`` (float32, bfloat16 or float16) to ``acc`` (calibrated).

    Chunks are blocks of neurons (all rows of a block of columns, up to 4096 rows at a time): every neuron's
    moments then come out of exactly the generic path's arithmetic (same 64-row blocks, same rounded
    centre), and the histogram scatter of a chunk touches only that block's counts, which stay in the
    core's cache (the scatter is the one serial step, about a third of the work).
    """
    st = acc._state
    width, center = x.shape[1], st["center"]
    blocks: dict[int, dict[str, torch.Tensor]] = {}  # row block -> per-neuron sums (float64) and extremes
    for rows, cols, xc in _chunks(acc, x):
        n = xc.shape[0]
        if rows.start not in blocks:
            blocks[rows.start] = {k: torch.empty(width, dtype=torch.float64) for k in ("s1", "s2", "s3", "s4", "neg")}
            blocks[rows.start].update(n=torch.tensor(float(n), dtype=torch.float64), lo=torch.empty(width),
                                      hi=torch.empty(width), a=torch.empty(width))
        blk = blocks[rows.start]
        torch.amin(xc, 0, out=blk["lo"][cols])
        torch.amax(xc, 0, out=blk["hi"][cols])
        sh = _shifted(acc, xc, cols)
        blk["s1"][cols] = _colsum64(sh)
        a = ((blk["s1"][cols] + n * center[cols]) / n).float()  # the float32-rounded mean, as _batch_moments
        blk["a"][cols] = a
        shape = tuple(xc.shape)
        dev = torch.sub(xc, a, out=buffer("dev", shape, torch.float32))
        d2 = torch.mul(dev, dev, out=buffer("d2", shape, torch.float32))
        blk["s2"][cols] = _colsum64(d2)
        blk["s3"][cols] = _colsum64(dev.mul_(d2))
        blk["s4"][cols] = _colsum64(d2.mul_(d2))
        blk["neg"][cols] = _colsum64(torch.lt(xc, 0, out=d2))
        _scatter(acc, _bins(acc, sh, cols), 1)
    lo_all = torch.stack([b["lo"] for b in blocks.values()]).amin(0).double()
    hi_all = torch.stack([b["hi"] for b in blocks.values()]).amax(0).double()
    if not bool(torch.isfinite(lo_all).all() and torch.isfinite(hi_all).all()):  # amin/amax propagate NaN
        for _, cols, xc in _chunks(acc, x):  # take back the counts (the bin recipe is bounded for NaN/inf)
            _scatter(acc, _bins(acc, _shifted(acc, xc, cols), cols), -1)
        raise_nonfinite(x)
    parts = []
    for r0, blk in blocks.items():
        n = blk["n"]
        mean = (blk["s1"] + n * center) / n
        delta = mean - blk["a"].double()  # mean of the deviations from the rounded centre
        s2, s3, s4 = blk["s2"], blk["s3"], blk["s4"]
        m2 = s2 - n * delta**2
        m3 = s3 - 3.0 * delta * s2 + 2.0 * n * delta**3
        m4 = s4 - 4.0 * delta * s3 + 6.0 * delta**2 * s2 - 3.0 * n * delta**4
        # A float32 sum that overflowed, or deviations whose 4th powers could: those neurons in float64.
        wide = torch.maximum(blk["hi"].double() - mean, mean - blk["lo"].double()) > 1e9
        redo = torch.nonzero(wide | ~torch.isfinite(mean) | ~torch.isfinite(m4)).flatten()
        if len(redo):
            xd = x[r0:r0 + int(n)].index_select(1, redo).double()
            _, mean[redo], m2[redo], m3[redo], m4[redo] = _batch_moments(xd, xd.sum(0), xd.amin(0), xd.amax(0))
        parts.append((int(n), mean, m2, m3, m4))
    # Under/overflow sums are needed only when a value left the grid; min/max tell us cheaply.
    reach = (2.0**acc.octaves - 1.0) * 0.999
    unit = st["scale"] * acc.center_width
    if bool(((center - lo_all) / unit > reach).any() or ((hi_all - center) / unit > reach).any()):
        for _, cols, xc in _chunks(acc, x):
            local = _bins(acc, _shifted(acc, xc, cols), cols).long() - acc._offsets[cols].long()
            xd = xc.double()
            st["under_sum"][cols] += torch.where(local == 0, xd, 0.0).sum(0)
            st["over_sum"][cols] += torch.where(local == acc.n_bins - 1, xd, 0.0).sum(0)
    st["min"], st["max"] = torch.minimum(st["min"], lo_all), torch.maximum(st["max"], hi_all)
    st["neg"] += sum(b["neg"] for b in blocks.values()).round().to(st["neg"].dtype)
    acc._merge_moments(merge_chunks(parts))


# ---------------------------------------------------------------------- generic pieces and calibration
def _colsum64(t: torch.Tensor) -> torch.Tensor:
    """Column sums in float64. Why blocks: float32 partial sums over 64 rows (relative error < 4e-6, about
    5e-7 typically) then float64 across blocks are ~10x faster on CPU than casting everything to float64."""
    if t.dtype == torch.float64:
        return t.sum(0)
    t = t.float()
    k = t.shape[0] // _BLOCK * _BLOCK
    total = t[:k].reshape(-1, _BLOCK, t.shape[1]).sum(1).sum(0, dtype=torch.float64)
    return total + t[k:].sum(0, dtype=torch.float64) if k < t.shape[0] else total


def _batch_moments(x: torch.Tensor, total: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple:
    """(n, mean, M2, M3, M4) of one batch. Why float32 products and block sums: several times faster than
    all-float64 and exact to ~1e-6 relative, far below any use of the moments. The
    deviations are taken from the float32-rounded mean and corrected exactly for the rounding; a batch
    whose deviations could overflow float32 at the 4th power goes through float64 instead."""
    rows = x.shape[0]
    mean = total / rows
    wide = bool((torch.maximum(hi - mean, mean - lo) > 1e9).any())
    work = torch.float64 if wide or x.dtype == torch.float64 else torch.float32
    a = mean.to(work)
    dev = x.to(work) - a
    d2 = dev * dev
    s2 = _colsum64(d2)
    s3 = _colsum64(dev.mul_(d2))
    s4 = _colsum64(d2.mul_(d2))
    delta = mean - a.double()  # mean of the deviations from the rounded centre
    m2 = s2 - rows * delta**2
    m3 = s3 - 3.0 * delta * s2 + 2.0 * rows * delta**3
    m4 = s4 - 4.0 * delta * s3 + 6.0 * delta**2 * s2 - 3.0 * rows * delta**4
    return rows, mean, m2, m3, m4


def first_batch(x: torch.Tensor, reach: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, bin unit) per neuron from a finite first batch ``x [N, D]``: the centre and the unit the bins
    are laid out with (see _provisional_unit). On CPU the float64 mean/std run in blocks of neurons (a
    [2048, 256] float64 block stays in cache; the same numbers as the whole-batch expressions)."""
    if x.device.type != "cpu":
        first = x.double()
        mean = first.mean(0)
        std = (first - mean).square_().mean(0).sqrt()
    else:
        mean, std = (torch.empty(x.shape[1], dtype=torch.float64) for _ in range(2))
        for j0 in range(0, x.shape[1], _NEURON_BLOCK):
            cols = slice(j0, j0 + _NEURON_BLOCK)
            block = buffer("first", (x.shape[0], min(_NEURON_BLOCK, x.shape[1] - j0)), torch.float64).copy_(x[:, cols])
            mean[cols] = block.mean(0)
            std[cols] = block.sub_(mean[cols]).square_().mean(0).sqrt()
    return mean, _provisional_unit(x, mean, std, reach)


def _provisional_unit(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reach: float) -> torch.Tensor:
    """First-batch bin unit: min(std, IQR / 1.349) (both sigma for a normal). Why robust: a heavy-tailed
    neuron's std is inflated by a few outliers, and bins that wide would blur the bulk where F is steepest;
    the octaves cover the tails. The unit is raised where the batch's range exceeds a quarter of the grid's
    reach (only Cauchy-like neurons, > 1000 IQRs), and a constant neuron borrows the layer's median unit."""
    n = x.shape[0]
    q1, q3 = _order_stats(x, [n // 4, (3 * n) // 4])
    iqr = (q3.double() - q1.double()) / 1.349
    unit = torch.where(iqr > 0, torch.minimum(iqr, std), std)
    unit = torch.maximum(unit, 4.0 * torch.maximum(x.amax(0).double() - mean, mean - x.amin(0).double()) / reach)
    good = unit[unit > 0]
    return torch.where(unit > 0, unit, good.median() if good.numel() else torch.ones_like(unit))


def _order_stats(x: torch.Tensor, ks: list[int]) -> list[torch.Tensor]:
    """The k-th smallest value of every column, for each k in ``ks`` (exact: the values a full sort puts there).
    Why not sort: on CPU a column sort of a [2048, 1536] batch took ~0.5 s per layer; selections (numpy
    introselect on the transposed batch) do the same job in a few percent of that."""
    if x.device.type != "cpu":
        srt = x.sort(dim=0).values
        return [srt[k] for k in ks]
    cols = (x.T.float() if x.dtype in (torch.bfloat16, torch.float16) else x.T).contiguous().numpy()
    # One kth per call: numpy's multi-kth partition is several times slower than two single ones.
    return [torch.from_numpy(np.partition(cols, k, axis=1)[:, k].copy()) for k in ks]
