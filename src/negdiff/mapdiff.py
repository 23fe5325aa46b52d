"""Mapping difficulty (MD): how far apart a neuron sends inputs that are close together.

Authors' definition (Sawmya et al. 2025 and Kong et al., identical ``utils/metrics.py``): draw P random
disjoint token pairs; d_k = ||x_i - x_j|| of the MLP inputs (the hidden state entering the projection that
makes the pre-activation), divided by max_k d_k (one scale per layer); e_k = |y_i - y_j| of the neuron's
pre-activations, divided by that neuron's median over the pairs; MD = mean_k (e_k / med e) / (d_k / max d).
:func:`md_reference` is that definition, all pairs in memory, float64.

Streaming form used by :class:`MDAccumulator`: since y = x W^T + b, e_k = |(x_i - x_j) W^T| (one matmul,
bias cancels; :meth:`MDAccumulator.add`), or, where the pre-activations are at hand (a scan sees them
next to the MLP inputs), e_k = |y_i - y_j| read off directly (:meth:`MDAccumulator.add_outputs`, no
matmul; the float32 pre-activations the model computed, ~1e-7 relative from the matmul form), and
MD = (max d / med e) * mean_k (e_k / d_k). The sum of ratios and max d stream exactly;
only the per-neuron median of e is approximate: a histogram of log2(e / s) (``bins_per_octave`` bins per
factor of two, ``octaves`` each side of a per-neuron scale s = the first batch's median e), read with
log-linear interpolation inside the median's bin. The relative error of the median (and so of MD) is at
most one bin, 2^(1/bins_per_octave) - 1 (1.1% at the default 64), and in practice shrinks like
sqrt(bin width / pairs): on SmolLM2 layer 3 with 4000 pairs, 0.06% median and 0.4% worst over 1536 neurons
(tests/test_mapdiff.py checks 0.5% on synthetic and 1% on the embedded model). Memory per neuron:
4 * (2 * octaves * bins_per_octave + 2) bytes (5.1 kB with the defaults; the median may drift 2^10 from
the first batch's) plus the top-k tables (8 bytes per kept pair and field: ratio, y_i, y_j, d, meta).

Pairs with d_k == 0 (identical MLP inputs, e.g. a repeated prefix) have an undefined ratio: they are
skipped, in the reference too, and counted in ``n_skipped``. A neuron whose median e is 0 gets MD = NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from negdiff.errors import NegdiffError
from negdiff.mapdiff_kernels import _scale_of, _scratch, hist_index, top_candidates
from negdiff.stats_kernels import _colsum64

FORMAT = "negdiff.mdaccumulator/1"
_TOP = ("ratio", "y_i", "y_j", "d")


def md_reference(x_a: np.ndarray, x_b: np.ndarray, W: np.ndarray) -> np.ndarray:
    """The authors' MD per neuron for pairs (x_a[k], x_b[k]) and weight W [D, d_in], in float64."""
    x_a, x_b, W = (np.asarray(t, dtype=np.float64) for t in (x_a, x_b, W))
    diff = x_a - x_b
    d = np.linalg.norm(diff, axis=1)
    keep = d > 0
    diff, d = diff[keep], d[keep]
    e = np.abs(diff @ W.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean((e / np.median(e, axis=0)) / (d / d.max())[:, None], axis=0)


def random_pairs(n_tokens: int, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random pairs of token indices, drawn without replacement as the authors' generate_pairs."""
    if 2 * n_pairs > n_tokens:
        raise NegdiffError(f"random_pairs: {n_pairs} disjoint pairs need {2 * n_pairs} tokens, have {n_tokens}")
    idx = np.random.default_rng(seed).choice(n_tokens, 2 * n_pairs, replace=False)
    return idx[:n_pairs], idx[n_pairs:]


@torch.no_grad()
def nearest_pairs(x: torch.Tensor, candidates: int = 4, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """Nearest-neighbour pairs: each token's most cosine-similar other tokens (``candidates`` per token)
    are matched greedily, most similar first, so every token is used at most once (disjoint pairs).
    Returns (idx_a, idx_b, cosine). Cost: n^2 * d_in flops in chunks of ``chunk`` rows, so sample a few
    thousand tokens. Identical inputs pair up at cosine 1; MDAccumulator then skips them (d = 0)."""
    n = x.shape[0]
    if n < 2:
        raise NegdiffError(f"nearest_pairs: need at least 2 tokens, got {n}")
    xn = torch.nn.functional.normalize(x.float(), dim=1)
    k = min(candidates, n - 1)
    sims, nbrs = [], []
    for lo in range(0, n, chunk):
        sim = xn[lo:lo + chunk] @ xn.T
        rows = torch.arange(lo, min(n, lo + chunk), device=x.device)
        sim[rows - lo, rows] = -float("inf")
        val, idx = sim.topk(k, dim=1)
        sims.append(val.cpu())
        nbrs.append(idx.cpu())
    sim_all, nbr_all = torch.cat(sims).flatten().numpy(), torch.cat(nbrs).flatten().numpy()
    src = np.repeat(np.arange(n), k)
    used = np.zeros(n, dtype=bool)
    out = []
    for j in np.argsort(-sim_all, kind="stable"):
        a, b = src[j], nbr_all[j]
        if not (used[a] or used[b]):
            used[a] = used[b] = True
            out.append((a, b, sim_all[j]))
    arr = np.array(out, dtype=np.float64).reshape(-1, 3)
    return (torch.as_tensor(arr[:, 0], dtype=torch.long), torch.as_tensor(arr[:, 1], dtype=torch.long),
            torch.as_tensor(arr[:, 2]))


class MDAccumulator:
    """Streaming MD for one layer of ``width`` neurons, plus each neuron's ``top_k`` pairs by e/d."""

    def __init__(self, width: int, top_k: int = 10, *, bins_per_octave: int = 64, octaves: int = 10,
                 device: str | torch.device | None = None, compute_dtype: torch.dtype = torch.float32) -> None:
        if width < 1 or top_k < 0 or bins_per_octave < 1 or octaves < 1:
            raise NegdiffError("MDAccumulator: width, bins_per_octave and octaves must be >= 1, top_k >= 0")
        self.width, self.top_k, self.bins_per_octave, self.octaves = width, top_k, bins_per_octave, octaves
        self.n_bins = 2 * octaves * bins_per_octave + 2
        self.device = torch.device(device) if device is not None else None
        self.compute_dtype = compute_dtype
        self.n_pairs = self.n_skipped = self.n_seen = 0
        self.max_d = 0.0
        self.meta_keys: tuple[str, ...] | None = None
        self.state: dict[str, torch.Tensor] = {}

    def _init(self, scale: torch.Tensor, meta_keys: tuple[str, ...]) -> None:
        dev, d, k = self.device, self.width, self.top_k
        self.meta_keys = meta_keys
        self.state = {"scale": scale.to(dev, torch.float64),
                      "sum_ratio": torch.zeros(d, dtype=torch.float64, device=dev),
                      "hist": torch.zeros(d, self.n_bins, dtype=torch.int32, device=dev),
                      "top_ratio": torch.full((d, k), -float("inf"), dtype=torch.float64, device=dev)}
        for name in ("y_i", "y_j", "d"):
            self.state[f"top_{name}"] = torch.full((d, k), float("nan"), dtype=torch.float64, device=dev)
        for name in meta_keys:
            self.state[f"top_{name}"] = torch.full((d, k), -1, dtype=torch.long, device=dev)

    @classmethod
    def like(cls, other: MDAccumulator) -> MDAccumulator:
        """Empty accumulator with ``other``'s histogram scales (required for :meth:`merge`)."""
        new = cls(other.width, other.top_k, bins_per_octave=other.bins_per_octave, octaves=other.octaves,
                  device=other.device, compute_dtype=other.compute_dtype)
        if other.meta_keys is not None:
            new._init(other.state["scale"].clone(), other.meta_keys)
        return new

    @torch.no_grad()
    def calibrate(self, x_a: torch.Tensor, x_b: torch.Tensor, W: torch.Tensor, meta_keys: tuple[str, ...] = ("pair_id",)
                  ) -> None:
        """Fix the histogram scales from sample pairs without counting them (see NeuronStats.calibrate)."""
        self.device = self.device or W.device
        diff = x_a.to(self.device).double() - x_b.to(self.device).double()
        diff = diff[diff.norm(dim=1) > 0]
        if not len(diff):
            raise NegdiffError("MDAccumulator.calibrate: every sample pair has identical inputs")
        self._init(_scale_of((diff.to(self.compute_dtype) @ W.to(self.device, self.compute_dtype).T).abs()), meta_keys)

    @torch.no_grad()
    def add(self, x_a: torch.Tensor, x_b: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None,
            meta: dict[str, Any] | None = None) -> None:
        """Add pairs (x_a[k], x_b[k]) [p, d_in] for a projection y = x W^T + b (W [width, d_in]).
        ``meta``: per-pair int arrays [p] kept in the top-k tables (default: pair_id = running row index)."""
        p = x_a.shape[0]
        if x_a.shape != x_b.shape or x_a.ndim != 2 or W.ndim != 2 or W.shape != (self.width, x_a.shape[1]):
            raise NegdiffError(f"MDAccumulator.add: need x_a, x_b [p, d_in] and W [{self.width}, d_in]; got "
                               f"{tuple(x_a.shape)}, {tuple(x_b.shape)}, {tuple(W.shape)}")
        dev = self.device = self.device or W.device
        meta = self._meta(meta, p, dev)
        bad = int((~torch.isfinite(x_a)).any(1).logical_or((~torch.isfinite(x_b)).any(1)).sum())
        if bad:
            raise NegdiffError(f"MDAccumulator.add: {bad} of {p} pairs have non-finite (NaN/inf) inputs")
        step = max(1, 2**24 // self.width)  # bounds the [pairs, width] temporaries (~64 MB each)
        for lo in range(0, p, step):
            sl = slice(lo, lo + step)
            self._add_chunk(x_a[sl].to(dev), x_b[sl].to(dev), W.to(dev), b, {k: v[sl] for k, v in meta.items()})
        self.n_seen += p

    @torch.no_grad()
    def add_outputs(self, y_a: torch.Tensor, y_b: torch.Tensor, d: torch.Tensor,
                    meta: dict[str, Any] | None = None) -> None:
        """Add pairs from their pre-activations ``y_a, y_b [p, width]`` (y = x W^T + b as the model computed
        it) and input distances ``d [p]`` (||x_a - x_b||, float64). Why: a scan that sees the pre-activations
        gets e_k = |y_i - y_j| for free (the authors' own definition), where :meth:`add` pays a [p, d_in] x
        [d_in, width] matmul; the top-k tables then hold the model's own y values."""
        p = y_a.shape[0]
        if y_a.shape != y_b.shape or y_a.ndim != 2 or y_a.shape[1] != self.width or tuple(d.shape) != (p,):
            raise NegdiffError(f"MDAccumulator.add_outputs: need y_a, y_b [p, {self.width}] and d [p]; got "
                               f"{tuple(y_a.shape)}, {tuple(y_b.shape)}, {tuple(d.shape)}")
        dev = self.device = self.device or y_a.device
        meta = self._meta(meta, p, dev)
        if not bool(torch.isfinite(d).all()):
            raise NegdiffError(f"MDAccumulator.add_outputs: {int((~torch.isfinite(d)).sum())} of {p} pairs have "
                               f"non-finite (NaN/inf) inputs")
        cd = self.compute_dtype
        y_a, y_b, d = y_a.to(dev), y_b.to(dev), d.to(dev)
        keep = d > 0
        self.n_skipped += int((~keep).sum())
        if not bool(keep.all()):
            y_a, y_b, d, meta = y_a[keep], y_b[keep], d[keep], {k: v[keep] for k, v in meta.items()}
        step = max(1, 2**22 // self.width)  # bounds the [pairs, width] scratch buffers (~16 MB each)
        for lo in range(0, len(d), step):
            ya, yb = y_a[lo:lo + step], y_b[lo:lo + step]
            e = torch.sub(ya.to(cd), yb.to(cd), out=_scratch("md_e", tuple(ya.shape), cd, dev)).abs_()
            self._accumulate(e, d[lo:lo + step], {k: v[lo:lo + step] for k, v in meta.items()},
                             lambda rows, cols, ya=ya, yb=yb: (ya[rows, cols].double(), yb[rows, cols].double()))
        self.n_seen += p

    def _meta(self, meta: dict[str, Any] | None, p: int, dev: torch.device) -> dict[str, torch.Tensor]:
        meta = {"pair_id": torch.arange(self.n_seen, self.n_seen + p)} if meta is None else meta
        meta = {k: torch.as_tensor(v, dtype=torch.long).to(dev) for k, v in meta.items()}
        if any(v.shape != (p,) for v in meta.values()):
            raise NegdiffError(f"MDAccumulator.add: every meta array needs shape ({p},)")
        if self.meta_keys is not None and tuple(meta) != self.meta_keys:
            raise NegdiffError(f"MDAccumulator.add: meta keys {tuple(meta)} differ from {self.meta_keys}")
        return meta

    def _add_chunk(self, x_a: torch.Tensor, x_b: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None,
                   meta: dict[str, torch.Tensor]) -> None:
        cd = self.compute_dtype
        diff64 = x_a.double() - x_b.double()
        d = diff64.norm(dim=1)
        keep = d > 0
        self.n_skipped += int((~keep).sum())
        if not bool(keep.any()):
            return
        x_a, x_b, d, diff64 = x_a[keep], x_b[keep], d[keep], diff64[keep]
        meta = {k: v[keep] for k, v in meta.items()}
        e = (diff64.to(cd) @ W.to(cd).T).abs_()
        bias = None if b is None else b.to(W.device).double()

        def exact_y(rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """float64 pre-activations of the selected (pair, neuron) entries, in slices of bounded memory."""
            y_i = torch.empty(len(rows), dtype=torch.float64, device=W.device)
            y_j = torch.empty_like(y_i)
            step = max(1, 2**22 // max(1, x_a.shape[1]))
            for lo in range(0, len(rows), step):
                r, c = rows[lo:lo + step], cols[lo:lo + step]
                w = W[c].double()
                y_i[lo:lo + step] = (x_a[r].double() * w).sum(-1) + (0.0 if bias is None else bias[c])
                y_j[lo:lo + step] = (x_b[r].double() * w).sum(-1) + (0.0 if bias is None else bias[c])
            return y_i, y_j

        self._accumulate(e, d, meta, exact_y)

    def _accumulate(self, e: torch.Tensor, d: torch.Tensor, meta: dict[str, torch.Tensor], y_of) -> None:
        """Fold pairs with output gaps ``e [p, width]`` (compute dtype) and input distances ``d [p]`` (> 0) in.
        ``y_of(rows, cols)`` gives the float64 (y_i, y_j) of selected (pair, neuron) entries, for the top-k
        tables."""
        cd = self.compute_dtype
        ratio = torch.div(e, d.to(cd)[:, None], out=_scratch("md_ratio", tuple(e.shape), cd, e.device))
        sums = _colsum64(ratio)
        if not bool(torch.isfinite(sums).all()):  # checked before any state changes
            raise NegdiffError("MDAccumulator: non-finite (NaN/inf) output differences")
        if self.meta_keys is None:
            self._init(_scale_of(e), tuple(meta))
        st = self.state
        st["sum_ratio"] += sums
        self.n_pairs += int(d.numel())
        self.max_d = max(self.max_d, float(d.max()))
        if self.n_pairs >= 2**31 and st["hist"].dtype == torch.int32:
            st["hist"] = st["hist"].long()
        # Blocks of neurons: a block's bins are computed in cache and its scatter touches only its counts.
        step = max(8, min(256, 2**19 // max(1, e.shape[0]) // 8 * 8))
        ones = torch.ones(1, dtype=st["hist"].dtype, device=e.device)
        for j0 in range(0, self.width, step):
            flat = hist_index(e[:, j0:j0 + step], st["scale"], slice(j0, j0 + step), self.octaves,
                              self.bins_per_octave, self.width)
            st["hist"].view(-1).index_add_(0, flat.view(-1), ones.expand(flat.numel()))
        if self.top_k:
            self._update_top(ratio, d, meta, y_of)

    def _update_top(self, ratio: torch.Tensor, d: torch.Tensor, meta: dict[str, torch.Tensor], y_of) -> None:
        """Merge the new pairs (``ratio [p, width]``) into each neuron's top-k: only the candidates that can
        enter (mapdiff_kernels.top_candidates) are gathered, with their y values from ``y_of``."""
        st, k, width = self.state, self.top_k, self.width
        picked = top_candidates(ratio, st["top_ratio"][:, -1], k)
        if picked is None:
            return
        rows, cols, vals, rank = picked
        dev = st["top_ratio"].device
        new = {"ratio": torch.full((width, k), -float("inf"), dtype=torch.float64, device=dev)}
        for name in ("y_i", "y_j", "d"):
            new[name] = torch.full((width, k), float("nan"), dtype=torch.float64, device=dev)
        for name in meta:
            new[name] = torch.full((width, k), -1, dtype=torch.long, device=dev)
        new["ratio"][cols, rank] = vals.double()
        new["y_i"][cols, rank], new["y_j"][cols, rank] = y_of(rows, cols)
        new["d"][cols, rank] = d[rows].double()
        for name, v in meta.items():
            new[name][cols, rank] = v[rows]
        self._merge_top(new)

    def _merge_top(self, new: dict[str, torch.Tensor]) -> None:
        st = self.state
        both = torch.cat([st["top_ratio"], new["ratio"].to(st["top_ratio"].device)], 1)
        _, pick = both.topk(self.top_k, dim=1)
        for name in (*_TOP, *self.meta_keys):
            st[f"top_{name}"] = torch.cat([st[f"top_{name}"], new[name].to(st[f"top_{name}"].device)], 1).gather(1, pick)

    @torch.no_grad()
    def merge(self, other: MDAccumulator) -> MDAccumulator:
        """Fold ``other`` in; both must share histogram scales (build it with :meth:`like`)."""
        if (other.width, other.top_k, other.bins_per_octave, other.octaves) != (
                self.width, self.top_k, self.bins_per_octave, self.octaves):
            raise NegdiffError("MDAccumulator.merge: width/top_k/bins_per_octave/octaves differ")
        if other.meta_keys is None:
            return self
        if self.meta_keys is None:
            self.device = self.device or other.device
            self._init(other.state["scale"].clone(), other.meta_keys)
        st, ot = self.state, {k: v.to(self.device) for k, v in other.state.items()}
        if other.meta_keys != self.meta_keys or not torch.equal(st["scale"], ot["scale"]):
            raise NegdiffError("MDAccumulator.merge: meta keys or histogram scales differ; use MDAccumulator.like()")
        st["sum_ratio"] += ot["sum_ratio"]
        if self.n_pairs + other.n_pairs >= 2**31:
            st["hist"] = st["hist"].long()
        st["hist"] += ot["hist"].to(st["hist"].dtype)
        self.n_pairs += other.n_pairs
        self.n_skipped += other.n_skipped
        self.n_seen += other.n_seen
        self.max_d = max(self.max_d, other.max_d)
        if self.top_k:
            self._merge_top({name: ot[f"top_{name}"] for name in (*_TOP, *self.meta_keys)})
        return self

    def median_e(self) -> torch.Tensor:
        """Histogram estimate of each neuron's median |y_i - y_j| (log-linear inside the median's bin)."""
        hist = self.state["hist"].double()
        cum = hist.cumsum(1)
        half = cum[:, -1:] / 2.0
        j = torch.searchsorted(cum, half).clamp(max=self.n_bins - 1)  # first bin with cum >= n/2
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0)), 0.0)
        frac = ((half - before) / hist.gather(1, j).clamp(min=1)).squeeze(1)
        j = j.squeeze(1)
        rm = self.octaves * self.bins_per_octave
        log2_rel = (j - 1 - rm + frac) / self.bins_per_octave
        med = self.state["scale"] * torch.exp2(log2_rel)
        return torch.where((j == 0) | (j == self.n_bins - 1), float("nan"), med)  # off the grid: unknown

    @torch.no_grad()
    def result(self) -> dict[str, Any]:
        """md [D] float64, median_e [D], n_pairs, n_skipped, max_d, and [D, top_k] tables: top_ratio (e/d),
        top_score (that pair's term of the MD mean), top_y_i, top_y_j, top_d and one per meta field."""
        if self.meta_keys is None:
            raise NegdiffError("MDAccumulator.result: no pairs were added")
        st = self.state
        med = self.median_e()
        md = self.max_d / med * st["sum_ratio"] / max(self.n_pairs, 1)
        ratio = st["top_ratio"].masked_fill(torch.isinf(st["top_ratio"]), float("nan"))
        out: dict[str, Any] = {"md": md, "median_e": med, "top_ratio": ratio, "top_score": ratio * self.max_d / med[:, None]}
        out.update({f"top_{n}": st[f"top_{n}"] for n in ("y_i", "y_j", "d", *self.meta_keys)})
        out = {k: v.cpu().numpy() for k, v in out.items()}
        out.update(n_pairs=self.n_pairs, n_skipped=self.n_skipped, max_d=self.max_d)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Tensors plus plain values (torch.save-able)."""
        return {"format": FORMAT, "width": self.width, "top_k": self.top_k, "bins_per_octave": self.bins_per_octave,
                "octaves": self.octaves, "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
                "n_pairs": self.n_pairs, "n_skipped": self.n_skipped,
                "n_seen": self.n_seen, "max_d": self.max_d, "meta_keys": list(self.meta_keys or []),
                "initialized": self.meta_keys is not None, **{k: v.clone() for k, v in self.state.items()}}

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any], device: str | torch.device | None = None) -> MDAccumulator:
        """Rebuild an accumulator saved by :meth:`state_dict`."""
        if sd.get("format") != FORMAT:
            raise NegdiffError(f"MDAccumulator state: format {sd.get('format')!r} is not {FORMAT!r}")
        new = cls(int(sd["width"]), int(sd["top_k"]), bins_per_octave=int(sd["bins_per_octave"]),
                  octaves=int(sd["octaves"]), device=device,
                  compute_dtype=getattr(torch, str(sd.get("compute_dtype", "float32"))))
        new.n_pairs, new.n_skipped, new.n_seen = int(sd["n_pairs"]), int(sd["n_skipped"]), int(sd["n_seen"])
        new.max_d = float(sd["max_d"])
        if sd["initialized"]:
            new.device = torch.device(device) if device is not None else sd["scale"].device
            new._init(sd["scale"], tuple(sd["meta_keys"]))
            for key in new.state:
                if key not in sd or tuple(sd[key].shape) != tuple(new.state[key].shape):
                    raise NegdiffError(f"MDAccumulator state: {key} missing or misshapen")
                new.state[key] = sd[key].to(new.device).clone()
        return new
