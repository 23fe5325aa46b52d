"""Streaming per-neuron statistics of pre-activations: moments and the W1 distance to N(0, 1).

Why streaming: a scan sees 10^5..10^6 tokens for 46k..460k neurons, far too much to keep, and the
authors' estimator (scipy ``wasserstein_distance`` against one random normal sample) adds sampling noise
that reorders neurons. :class:`NeuronStats` keeps, per neuron, float64 central moments (merged with
Chan/Pebay's pairwise formulas, so batch order and splitting do not matter) and an int32 histogram
whose bins are uniform near a provisional centre ``c`` and log-spaced in the tails. That shape is what
Wasserstein neurons need: kurtosis in the hundreds and values tens of std out must be resolved without
giving up resolution where most of the mass sits. At :meth:`NeuronStats.result` the bin edges are
mapped to z with the *final* mean and population std, and |F(z) - Phi(z)| is integrated in closed form
per bin (F linear inside a bin, exact roots where F - Phi changes sign).

Splits of wd (see :meth:`NeuronStats.result`). The paper's negative region is the raw pre-activation h < 0,
whose standardized image is z < z0 = -mean/std, not z < 0:

* ``wd_neg_raw`` / ``wd_pos_raw``: the integral over z < z0 / z > z0 (they sum to wd). Each includes the
  normal's own part on that side: an all-negative neuron has wd_pos_raw = int_z0^inf (1 - Phi), not 0.
* ``wd_neg_raw_q`` / ``wd_pos_raw_q`` (mass-adjusted): in the quantile form wd = int_0^1 |Q(u) - Phi^-1(u)| du,
  split at p = ``frac_negative`` (the raw-negative mass) and divided by each side's mass: (1/p) int_0^p and
  (1/(1-p)) int_p^1, the mean transport distance per unit of raw-negative / non-negative mass, so
  p wd_neg_raw_q + (1 - p) wd_pos_raw_q = wd. Why: z0, and with it the raw split, moves with the share of
  negative values; per unit of mass, neurons with different negative shares compare. A side without mass is
  NaN (wd_neg_raw_q at p = 0, wd_pos_raw_q at p = 1; the other side is then wd). Computed as the area
  between F and Phi below the level u = p, int |min(F, p) - min(Phi, p)| dz, closed form per piece.
* ``wd_below_mean`` / ``wd_above_mean``: the split at z = 0, the neuron's mean (called wd_neg / wd_pos
  before 2026-12; it is not the raw-negative region and is not monotone in the negative mass).

Bin layout. With t = (x - c) / (s * center_width), where c is a neuron's first-batch mean and s its
first-batch min(std, IQR/1.349) (robust, so outliers do not blur the bulk), the float32 bit pattern of
1 + |t| is cut into ``bins_per_octave`` bins per power of two: |t| in [0, 1) gets uniform bins of width
1/bins_per_octave, [1, 3) bins twice as wide, and so on for ``octaves`` octaves (|t| < 2^octaves - 1);
beyond that, an underflow/overflow bin per side keeps exact counts and sums (``frac_offgrid`` reports
their share). Taking the exponent/mantissa bits is a log transform that costs one integer shift. Limit: F
is taken linear inside a bin, so exact atoms (integer-valued data) are smeared over one bin width, and a
first batch whose bulk is >= 20x wider than the final one leaves too few bins across the bulk.

Memory per neuron: 4 * (2 * octaves * bins_per_octave + 2) bytes of counts plus 13 scalars (~104 bytes):
6.3 kB with the defaults (64 bins/octave, 12 octaves), i.e. 0.29 GB for 30 x 1536 neurons and 2.9 GB for
32 x 14336 (Llama-8B). Halving ``bins_per_octave`` halves it (accuracy: see tests/test_stats.py).

Speed: on CPU, float32/bfloat16/float16 batches go through :mod:`negdiff.stats_kernels` (the same
arithmetic in cache-sized blocks of neurons; ~25 ms per [2048, 1536] batch on one core).

Merging: accumulators merge only if they share the bin edges (same centre/scale per neuron). Make the
per-process accumulators of a distributed or resumed scan with :meth:`NeuronStats.like` from one that
has seen the first batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from negdiff.errors import NegdiffError
from negdiff.stats_kernels import _batch_moments, _colsum64, add_cpu, first_batch
from negdiff.w1 import _interval_terms, exact_wd, exact_wd_split, sampled_wd, split_integrals  # noqa: F401  (references re-exported)

FORMAT = "negdiff.neuronstats/1"
_ONE_BITS = 0x3F800000  # float32 bit pattern of 1.0
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: The W1 keys of :meth:`NeuronStats.result` (module docstring: what each split means).
WD_KEYS = ("wd", "wd_below_mean", "wd_above_mean", "wd_neg_raw", "wd_pos_raw", "wd_neg_raw_q", "wd_pos_raw_q")
_STATE_TENSORS = ("counts", "mean", "m2", "m3", "m4", "min", "max", "neg", "center", "scale",
                  "under_sum", "over_sum")


class NeuronStats:
    """Mergeable running statistics for one layer of ``width`` neurons (see the module docstring)."""

    #: CPU batches of float32/bfloat16/float16 go through negdiff.stats_kernels.add_cpu (same numbers, in
    #: cache-sized blocks); False sends them through the generic whole-batch code (for comparisons).
    cpu_fast_path = True

    def __init__(self, width: int, *, bins_per_octave: int = 64, octaves: int = 12, center_width: float = 1.0,
                 device: str | torch.device | None = None, center: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        if width < 1:
            raise NegdiffError(f"NeuronStats: width must be >= 1, got {width}")
        if bins_per_octave < 1 or bins_per_octave > 2**16 or bins_per_octave & (bins_per_octave - 1):
            raise NegdiffError(f"NeuronStats: bins_per_octave must be a power of two <= 65536, got {bins_per_octave}")
        if not 1 <= octaves <= 100:
            raise NegdiffError(f"NeuronStats: octaves must be in 1..100, got {octaves}")
        if not center_width > 0:
            raise NegdiffError(f"NeuronStats: center_width must be > 0, got {center_width}")
        self.width, self.bins_per_octave, self.octaves = int(width), int(bins_per_octave), int(octaves)
        self.center_width = float(center_width)
        self.n_bins = 2 * self.octaves * self.bins_per_octave + 2
        self.n = 0
        self.device = torch.device(device) if device is not None else None
        self._state: dict[str, torch.Tensor] | None = None
        if center is not None or scale is not None:
            if center is None or scale is None:
                raise NegdiffError("NeuronStats: pass both center= and scale=, or neither")
            center = torch.as_tensor(center)
            self._init_state(center.to(self.device) if self.device is not None else center, torch.as_tensor(scale))

    # ------------------------------------------------------------------ construction helpers
    def _init_state(self, center: torch.Tensor, scale: torch.Tensor) -> None:
        dev = center.device
        self.device = dev
        d, f64 = self.width, torch.float64
        # The centre is rounded to float32 so that binning can subtract it exactly from float32 values
        # (x - c is exact for nearby floats): a neuron with mean 1000 and std 0.01 keeps its resolution.
        center, scale = center.to(dev, torch.float32).to(f64).flatten(), scale.to(dev, f64).flatten()
        if center.numel() != d or scale.numel() != d:
            raise NegdiffError(f"NeuronStats: center/scale need {d} values, got {center.numel()}/{scale.numel()}")
        if not (torch.isfinite(center).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise NegdiffError("NeuronStats: center must be finite and scale finite and > 0")

        def z() -> torch.Tensor:
            return torch.zeros(d, dtype=f64, device=dev)

        self._state = {"counts": torch.zeros(d, self.n_bins, dtype=torch.int32, device=dev),
                       "mean": z(), "m2": z(), "m3": z(), "m4": z(), "min": z().fill_(math.inf),
                       "max": z().fill_(-math.inf), "neg": torch.zeros(d, dtype=torch.int64, device=dev),
                       "center": center, "scale": scale, "under_sum": z(), "over_sum": z()}
        self._inv32, self._center32 = (1.0 / (scale * self.center_width)).float(), center.float()
        idx_dtype = torch.int32 if self.width * self.n_bins < 2**31 else torch.int64
        self._offsets = torch.arange(self.width, device=dev, dtype=idx_dtype) * self.n_bins
        self._row_start = self._offsets + (self.octaves * self.bins_per_octave + 1)  # flat index of local bin rm+1

    @classmethod
    def like(cls, other: NeuronStats) -> NeuronStats:
        """An empty accumulator with ``other``'s bin edges, so the two can be merged."""
        new = cls(other.width, bins_per_octave=other.bins_per_octave, octaves=other.octaves,
                  center_width=other.center_width, device=other.device)
        if other._state is not None:
            new._init_state(other._state["center"].clone(), other._state["scale"].clone())
        return new

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Fix each neuron's bin edges from a sample ``x [N, width]`` (N >= 16) without counting it.

        The first :meth:`add` does this implicitly; calling it explicitly on the same sample in every process
        of a data-parallel job gives all ranks the same edges, so their accumulators merge.
        """
        if x.ndim != 2 or x.shape[1] != self.width:
            raise NegdiffError(f"NeuronStats.calibrate: expected a [N, {self.width}] tensor, got {tuple(x.shape)}")
        if x.shape[0] < 16:
            raise NegdiffError(f"NeuronStats: the first batch fixes each neuron's bins from its mean/std and needs "
                               f"at least 16 rows (got {x.shape[0]}); or pass center=/scale=")
        if self.device is not None and x.device != self.device:
            x = x.to(self.device)
        if not bool(torch.isfinite(x.amin(0)).all() and torch.isfinite(x.amax(0)).all()):  # NaN propagates
            _raise_nonfinite(x)
        self._init_state(*first_batch(x, (2.0**self.octaves - 1.0) * self.center_width))

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Add a batch ``x [N, width]`` of pre-activations (any float dtype, any device)."""
        if x.ndim != 2 or x.shape[1] != self.width:
            raise NegdiffError(f"NeuronStats.add: expected a [N, {self.width}] tensor, got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        if self.device is not None and x.device != self.device:
            x = x.to(self.device)
        rows = x.shape[0]
        if self._state is None:
            self.calibrate(x)
        st = self._state
        if self.n + rows >= 2**31 and st["counts"].dtype == torch.int32:
            st["counts"] = st["counts"].long()
        if self.cpu_fast_path and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
            add_cpu(self, x, _raise_nonfinite)  # same arithmetic, in cache-sized chunks (negdiff.stats_kernels)
            return
        # Deviations from the float32 centre are exact for nearby values; summing them (not x) keeps the batch
        # mean accurate when |mean| >> std. They are reused, scaled in place, for the bin index.
        shifted = x.to(torch.float32) - self._center32
        total = x.sum(0) if x.dtype == torch.float64 else _colsum64(shifted) + rows * st["center"]
        if not torch.isfinite(total).all():
            total = x.double().sum(0)  # a float32 block sum can overflow on huge finite values
            if not torch.isfinite(total).all():
                _raise_nonfinite(x)
        lo, hi = x.amin(0).double(), x.amax(0).double()
        batch = _batch_moments(x, total, lo, hi)
        st["min"], st["max"] = torch.minimum(st["min"], lo), torch.maximum(st["max"], hi)
        st["neg"] += (x < 0).sum(0, dtype=torch.int32)
        local = self._bin_index(shifted)
        # Under/overflow sums are needed only when a value left the grid; min/max tell us cheaply.
        reach = (2.0**self.octaves - 1.0) * 0.999
        unit = st["scale"] * self.center_width
        if bool(((st["center"] - lo) / unit > reach).any() or ((hi - st["center"]) / unit > reach).any()):
            xd = x.double()
            st["under_sum"] += torch.where(local == 0, xd, 0.0).sum(0)
            st["over_sum"] += torch.where(local == self.n_bins - 1, xd, 0.0).sum(0)
        flat = local.add_(self._offsets).view(-1)
        ones = torch.ones(1, dtype=st["counts"].dtype, device=flat.device).expand(flat.numel())
        st["counts"].view(-1).index_add_(0, flat, ones)
        self._merge_moments(batch)

    def _bin_index(self, shifted: torch.Tensor) -> torch.Tensor:
        """Local bin of every value (from x - c in float32, overwritten): 0 underflow, 1..RM negative side,
        RM+1..2RM positive side, last overflow."""
        rm = self.octaves * self.bins_per_octave
        t = shifted.mul_(self._inv32)
        sign = t.view(torch.int32).bitwise_right_shift(31)  # -1 where t < 0, else 0
        q = t.abs_().add_(1.0).view(torch.int32).sub_(_ONE_BITS)
        q.bitwise_right_shift_(23 - int(math.log2(self.bins_per_octave))).clamp_(max=rm)
        local = q.bitwise_xor_(sign).add_(rm + 1)  # negative side: rm - q (since ~q = -q - 1)
        return local if self._offsets.dtype == torch.int32 else local.long()

    def _merge_moments(self, other: tuple) -> None:
        st = self._state
        nb, mb, m2b, m3b, m4b = other
        na = self.n
        n = na + nb
        if na == 0:
            st["mean"], st["m2"], st["m3"], st["m4"] = mb.clone(), m2b.clone(), m3b.clone(), m4b.clone()
        else:
            ma, m2a, m3a, m4a = st["mean"], st["m2"], st["m3"], st["m4"]
            delta = mb - ma
            d2 = delta * delta
            st["m4"] = (m4a + m4b + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / n**3
                        + 6.0 * d2 * (na * na * m2b + nb * nb * m2a) / n**2 + 4.0 * delta * (na * m3b - nb * m3a) / n)
            st["m3"] = m3a + m3b + d2 * delta * na * nb * (na - nb) / n**2 + 3.0 * delta * (na * m2b - nb * m2a) / n
            st["m2"] = m2a + m2b + d2 * na * nb / n
            st["mean"] = ma + delta * (nb / n)
        self.n = n

    @torch.no_grad()
    def merge(self, other: NeuronStats) -> NeuronStats:
        """Fold ``other`` into ``self`` (same bin edges required: build it with :meth:`like`)."""
        if (other.width, other.bins_per_octave, other.octaves, other.center_width) != (
                self.width, self.bins_per_octave, self.octaves, self.center_width):
            raise NegdiffError("NeuronStats.merge: width/bins_per_octave/octaves/center_width differ")
        if other.n == 0:
            return self
        if self._state is None:
            self._init_state(other._state["center"].clone(), other._state["scale"].clone())
        st, ot = self._state, {k: v.to(self.device) for k, v in other._state.items()}
        if not (torch.equal(st["center"], ot["center"]) and torch.equal(st["scale"], ot["scale"])):
            raise NegdiffError("NeuronStats.merge: bin edges differ; create the accumulators with NeuronStats.like()")
        if self.n + other.n >= 2**31 and st["counts"].dtype == torch.int32:
            st["counts"] = st["counts"].long()
        st["counts"] += ot["counts"].to(st["counts"].dtype)
        for key in ("neg", "under_sum", "over_sum"):
            st[key] += ot[key]
        st["min"], st["max"] = torch.minimum(st["min"], ot["min"]), torch.maximum(st["max"], ot["max"])
        self._merge_moments((other.n, ot["mean"], ot["m2"], ot["m3"], ot["m4"]))
        return self

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Tensors plus plain values: save with torch.save, or the tensors alone with safetensors."""
        sd: dict[str, Any] = {"format": FORMAT, "width": self.width, "bins_per_octave": self.bins_per_octave,
                              "octaves": self.octaves, "center_width": self.center_width, "n": self.n}
        if self._state is not None:
            sd.update({k: v.clone() for k, v in self._state.items()})
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any], device: str | torch.device | None = None) -> NeuronStats:
        """Rebuild an accumulator saved by :meth:`state_dict` (optionally onto another device)."""
        if sd.get("format") != FORMAT:
            raise NegdiffError(f"NeuronStats state: format {sd.get('format')!r} is not {FORMAT!r}")
        new = cls(int(sd["width"]), bins_per_octave=int(sd["bins_per_octave"]), octaves=int(sd["octaves"]),
                  center_width=float(sd["center_width"]), device=device)
        if "center" in sd:
            missing = [k for k in _STATE_TENSORS if k not in sd]
            if missing:
                raise NegdiffError(f"NeuronStats state: missing {missing}")
            dev = torch.device(device) if device is not None else sd["center"].device
            new._init_state(sd["center"].to(dev), sd["scale"].to(dev))
            for k in _STATE_TENSORS:
                if tuple(sd[k].shape) != tuple(new._state[k].shape):
                    raise NegdiffError(f"NeuronStats state: {k} has shape {tuple(sd[k].shape)}")
                new._state[k] = sd[k].to(dev).clone()
            new.n = int(sd["n"])
        return new

    # ------------------------------------------------------------------ results
    @torch.no_grad()
    def result(self, chunk_elements: int = 2**20) -> dict[str, np.ndarray]:
        """Per-neuron float64 arrays: count, mean, std (population), min, max, skew, kurtosis (EXCESS; both
        as scipy.stats with bias=True), frac_negative (share of h < 0, exact), wd (W1 to N(0,1) of the
        standardized values) and its splits WD_KEYS (module docstring; wd = wd_below_mean + wd_above_mean
        exactly, = wd_neg_raw + wd_pos_raw to rounding), frac_offgrid: the share of values beyond the grid,
        known only by count and sum (a few 1e-3 is harmless; more means the first batch fixed the bins
        badly). NaN for spread-based statistics of a constant neuron."""
        d, nan = self.width, np.full(self.width, np.nan)
        if self.n == 0:
            return {"count": np.zeros(d), **{k: nan.copy() for k in ("mean", "std", "min", "max", "skew",
                    "kurtosis", "frac_negative", *WD_KEYS, "frac_offgrid")}}
        st, n = self._state, self.n
        var = st["m2"] / n
        std = var.sqrt()
        ok = std > 0
        safe_var = torch.where(ok, var, 1.0)
        skew = torch.where(ok, st["m3"] / n / safe_var**1.5, math.nan)
        kurt = torch.where(ok, st["m4"] / n / safe_var**2 - 3.0, math.nan)
        parts: dict[str, list[torch.Tensor]] = {}
        for sl in self._chunks(chunk_elements):
            for key, val in self._wd_chunk(sl, torch.where(ok[sl], std[sl], 1.0)).items():
                parts.setdefault(key, []).append(val)
        w = {k: torch.cat(v).masked_fill(~ok, math.nan) for k, v in parts.items()}
        p = st["neg"].double() / n
        has_neg, has_pos = p > 0, p < 1  # a side without mass has no per-mass distance
        out = {"count": torch.full((d,), float(n), dtype=torch.float64), "mean": st["mean"], "std": std,
               "min": st["min"], "max": st["max"], "skew": skew, "kurtosis": kurt, "frac_negative": p,
               "wd": w["below_mean"] + w["above_mean"], "wd_below_mean": w["below_mean"],
               "wd_above_mean": w["above_mean"], "wd_neg_raw": w["neg_raw"], "wd_pos_raw": w["pos_raw"],
               "wd_neg_raw_q": torch.where(has_neg, w["area_neg"] / torch.where(has_neg, p, 1.0), math.nan),
               "wd_pos_raw_q": torch.where(has_pos, w["area_pos"] / torch.where(has_pos, 1.0 - p, 1.0), math.nan),
               "frac_offgrid": (st["counts"][:, 0] + st["counts"][:, -1]).double() / n}
        return {k: v.detach().to("cpu", torch.float64).numpy() for k, v in out.items()}

    def calibration(self) -> dict[str, np.ndarray]:
        """Each neuron's bin centre and unit as fixed by the first batch (to check them against the final
        mean/std: a unit far from the std means the grid resolves the bulk badly)."""
        if self._state is None:
            return {"center": np.full(self.width, np.nan), "scale": np.full(self.width, np.nan)}
        return {k: self._state[k].detach().to("cpu", torch.float64).numpy() for k in ("center", "scale")}

    def _wd_chunk(self, sl: slice, std: torch.Tensor) -> dict[str, torch.Tensor]:
        """W1 pieces for neurons ``sl``: build the intervals of the piecewise-linear CDF and integrate."""
        return split_integrals(*self._intervals(sl, std))

    @torch.no_grad()
    def wd(self, chunk_elements: int = 2**20) -> np.ndarray:
        """Only ``result()["wd"]`` (same values), without the splits: what a selection by wd needs, several
        times cheaper (a shard bootstrap recomputes it for every replicate)."""
        if self.n == 0:
            return np.full(self.width, np.nan)
        std = (self._state["m2"] / self.n).sqrt()
        ok = std > 0
        parts = []
        for sl in self._chunks(chunk_elements):
            a, b, left, right, n, _, _ = self._intervals(sl, torch.where(ok[sl], std[sl], 1.0))
            neg_t, pos_t = _interval_terms(a, b, left, right, n)
            parts.append((neg_t + pos_t).sum(1))
        return torch.cat(parts).masked_fill(~ok, math.nan).to("cpu", torch.float64).numpy()

    def _chunks(self, chunk_elements: int) -> list[slice]:
        """Neuron slices whose bin tables hold about ``chunk_elements`` values (bounded memory at any width)."""
        step = max(1, chunk_elements // self.n_bins)
        return [slice(lo, min(self.width, lo + step)) for lo in range(0, self.width, step)]

    def _intervals(self, sl: slice, std: torch.Tensor) -> tuple:
        """The piecewise-linear CDF of neurons ``sl`` as intervals [a, b] with counts at their ends (z units),
        plus n, the image z0 of h = 0 and the raw-negative count: the arguments of ``split_integrals``."""
        st, n, dev, f64 = self._state, self.n, self.device, torch.float64
        mean = st["mean"][sl, None]
        std = std[:, None]

        def to_z(x: torch.Tensor) -> torch.Tensor:
            return (x - mean) / std

        m = self.bins_per_octave
        q = torch.arange(self.octaves * m + 1, device=dev, dtype=f64)
        v1 = torch.exp2(torch.floor(q / m)) * (1.0 + torch.remainder(q, m) / m) - 1.0  # |t| at octave-bin edges
        t_edges = torch.cat([-v1.flip(0), v1[1:]]) * self.center_width
        counts = st["counts"][sl].long()
        # Only the bins some neuron of the chunk occupies: below and above them F is constant (all of the
        # underflow / everything up to the last bin), so the empty bins merge into the neighbouring intervals
        # exactly; heavy-tailed grids are mostly empty, and this skips most of the work.
        occupied = counts[:, 1:-1].any(0).nonzero().flatten()
        lo_bin, hi_bin = (int(occupied[0]), int(occupied[-1])) if len(occupied) else (0, 0)
        t_edges = t_edges[lo_bin: hi_bin + 2]
        counts = torch.cat([counts[:, :1], counts[:, 1 + lo_bin: 2 + hi_bin], counts[:, -1:]], 1)
        zmin, zmax = to_z(st["min"][sl, None]), to_z(st["max"][sl, None])
        e = to_z(st["center"][sl, None] + st["scale"][sl, None] * t_edges[None, :]).clamp(zmin, zmax)
        cum = counts.cumsum(1)  # cum[:, j] = number of values in bins 0..j
        n_under, n_over = counts[:, :1], counts[:, -1:]
        mu_u = torch.where(n_under > 0, to_z(st["under_sum"][sl, None] / n_under.clamp(min=1)), e[:, :1])
        mu_o = torch.where(n_over > 0, to_z(st["over_sum"][sl, None] / n_over.clamp(min=1)), e[:, -1:])
        mu_u, mu_o = mu_u.clamp(zmin, zmax), mu_o.clamp(zmin, zmax)
        z0 = to_z(torch.zeros_like(mean))
        far_lo = torch.minimum(torch.minimum(zmin, torch.zeros_like(zmin)), z0) - 40.0
        far_hi = torch.maximum(torch.maximum(zmax, torch.zeros_like(zmax)), z0) + 40.0
        a = torch.cat([far_lo, mu_u, e, mu_o], 1)
        b = torch.cat([mu_u, e, mu_o, far_hi], 1)
        # Intervals and the count <= each end: [-far, mu_u] F=0; [mu_u, e_0] F=under (all underflow mass at its
        # mean, which keeps the integral of F exact); bins [e_j, e_j+1] linear; [e_last, mu_o] and [mu_o, far]
        # likewise for the overflow. Edges clamped to [min, max] make F exact outside the data.
        zero, full, last = torch.zeros_like(n_under), torch.full_like(n_under, n), cum[:, -2:-1]
        left = torch.cat([zero, n_under, cum[:, :-2], last, full], 1)
        right = torch.cat([zero, n_under, cum[:, 1:-1], last, full], 1)
        return a, b, left.to(f64), right.to(f64), float(n), z0, st["neg"][sl, None].to(f64)


def _raise_nonfinite(x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    per_neuron = bad.sum(0)
    where = torch.nonzero(per_neuron).flatten().cpu().tolist()
    shown = ", ".join(str(i) for i in where[:10]) + (" ..." if len(where) > 10 else "")
    raise NegdiffError(f"NeuronStats.add: {int(per_neuron.sum())} non-finite values (NaN/inf) in "
                       f"{len(where)} neurons: {shown}")


# ---------------------------------------------------------------------- closed-form pieces (torch)
