"""Closed-form pieces of the W1 distance to N(0, 1), and the exact and sampled reference estimators.

:class:`negdiff.stats.NeuronStats` integrates |F(z) - Phi(z)| per histogram bin with these closed forms;
:func:`exact_wd` is the exact value for a whole sample (the reference of every accuracy test and of the
benchmark), and :func:`sampled_wd` is the authors' estimator (scipy against one random normal sample).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.special as sps
import scipy.stats
import torch

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def _signed(a: torch.Tensor, b: torch.Tensor, fa: torch.Tensor, fb: torch.Tensor, qa: torch.Tensor,
            qb: torch.Tensor, pos: bool) -> torch.Tensor:
    """Integral of F - Phi over [a, b] for F linear; on z > 0 written with the complements 1 - F and
    1 - Phi (antiderivative z Phi(-z) - phi(z)) so far-tail pieces keep their digits."""
    ndtr = torch.special.ndtr
    if pos:
        h_b, h_a = b * ndtr(-b) - _phi(b), a * ndtr(-a) - _phi(a)
        return (h_b - h_a) - 0.5 * (qa + qb) * (b - a)
    g_b, g_a = b * ndtr(b) + _phi(b), a * ndtr(a) + _phi(a)
    return 0.5 * (fa + fb) * (b - a) - (g_b - g_a)


def _gap(z: torch.Tensor, f: torch.Tensor, q: torch.Tensor, pos: bool) -> torch.Tensor:
    return torch.special.ndtr(-z) - q if pos else f - torch.special.ndtr(z)


def _side_terms(a: torch.Tensor, b: torch.Tensor, fa: torch.Tensor, fb: torch.Tensor, qa: torch.Tensor,
                qb: torch.Tensor, pos: bool) -> torch.Tensor:
    """Per interval (all on one side of 0), the integral of |F - Phi|. Where F - Phi changes sign inside an
    interval the root is found (secant start, Newton steps) and both parts are integrated. Kept per interval
    (not summed) so that a split at any cut point reuses them and integrates only the one cut interval."""
    total = _signed(a, b, fa, fb, qa, qb, pos).abs()
    cross = (_gap(a, fa, qa, pos) * _gap(b, fb, qb, pos) < 0) & (b > a)
    if bool(cross.any()):
        idx = cross.nonzero(as_tuple=True)
        a_, b_, fa_, fb_, qa_, qb_ = (t[idx] for t in (a, b, fa, fb, qa, qb))
        slope = (fb_ - fa_) / (b_ - a_)
        ga, gb = _gap(a_, fa_, qa_, pos), _gap(b_, fb_, qb_, pos)
        r = a_ + (b_ - a_) * ga / (ga - gb)
        for _ in range(4):
            g = _gap(r, fa_ + slope * (r - a_), qa_ - slope * (r - a_), pos)
            dg = slope - _phi(r)
            r = torch.where(dg != 0, r - g / torch.where(dg != 0, dg, 1.0), r).clamp(a_, b_)
        fr, qr = fa_ + slope * (r - a_), qa_ - slope * (r - a_)
        total[idx] = (_signed(a_, r, fa_, fr, qa_, qr, pos).abs() + _signed(r, b_, fr, fb_, qr, qb_, pos).abs())
    return total


def _interval_terms(a: torch.Tensor, b: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                    n: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per interval [a, b] (rows = neurons), the z < 0 and the z > 0 part of the integral of |F - Phi|, with
    F linear from left/n to right/n; 1 - F comes from the counts directly, not from 1 - F."""
    fa, fb, qa, qb = left / n, right / n, (n - left) / n, (n - right) / n
    w = b - a

    def at(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frac = torch.where(w > 0, (z - a) / torch.where(w > 0, w, 1.0), 0.0)
        return (torch.where(z == b, fb, fa + (fb - fa) * frac), torch.where(z == b, qb, qa + (qb - qa) * frac))

    an, bn, ap, bp = a.clamp(max=0.0), b.clamp(max=0.0), a.clamp(min=0.0), b.clamp(min=0.0)
    (fan, qan), (fbn, qbn), (fap, qap), (fbp, qbp) = at(an), at(bn), at(ap), at(bp)
    return _side_terms(an, bn, fan, fbn, qan, qbn, False), _side_terms(ap, bp, fap, fbp, qap, qbp, True)


def _integrate_abs(a: torch.Tensor, b: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                   n: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(z < 0 part, z > 0 part) of the integral of |F - Phi| over intervals [a, b] (see :func:`_interval_terms`)."""
    neg, pos = _interval_terms(a, b, left, right, n)
    return neg.sum(1), pos.sum(1)


def _count_at(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The count (n F) at z inside [a, b], F linear there."""
    w = b - a
    return left + (right - left) * torch.where(w > 0, (z - a) / torch.where(w > 0, w, 1.0), 0.0)


def _cut(a: torch.Tensor, b: torch.Tensor, left: torch.Tensor, right: torch.Tensor, n: float, terms: torch.Tensor,
         c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(below c, above c) of the integral of |F - Phi|, for one cut c [rows, 1] per row. Intervals wholly on
    one side reuse their ``terms``; only the interval containing c is cut and integrated again."""
    below = (terms * (b <= c)).sum(1)
    above = (terms * (a >= c)).sum(1)
    inside = (a < c) & (b > c)
    has = inside.any(1, keepdim=True)
    j = inside.to(torch.float64).argmax(1, keepdim=True)
    aj, bj, lj, rj = (t.gather(1, j) for t in (a, b, left, right))
    cj = torch.where(has, c, aj)
    lc = _count_at(cj, aj, bj, lj, rj)
    neg, pos = _interval_terms(torch.cat([aj, cj], 1), torch.cat([cj, bj], 1), torch.cat([lj, lc], 1),
                               torch.cat([lc, rj], 1), n)
    part = (neg + pos) * has
    return below + part[:, 0], above + part[:, 1]


def split_integrals(a: torch.Tensor, b: torch.Tensor, left: torch.Tensor, right: torch.Tensor, n: float,
                    z0: torch.Tensor, k: torch.Tensor) -> dict[str, torch.Tensor]:
    """All splits of the W1 integral for a piecewise-linear CDF (intervals [a, b] sorted per row, counts
    left/right at their ends, n values; see :meth:`negdiff.stats.NeuronStats.result` for the names):

    * ``below_mean`` / ``above_mean``: z < 0 / z > 0 (exactly the old, summed per-side values);
    * ``neg_raw`` / ``pos_raw``: z < z0 / z > z0, z0 [rows, 1] the standardized image of h = 0;
    * ``area_neg`` / ``area_pos``: the area between F and Phi below / above the level u = p = k / n (k [rows, 1]
      the raw-negative count), i.e. the quantile-form integrals of |Q(u) - Phi^-1(u)| over u < p / u > p.
      Below the level: |min(F, p) - min(Phi, p)|, which is |F - Phi| left of min(zF, zp) (zF: F = p;
      zp = Phi^-1(p)), then either p - Phi (zF < zp) or p - F (zp < zF) up to max(zF, zp); above alike.
    """
    neg_t, pos_t = _interval_terms(a, b, left, right, n)
    terms = neg_t + pos_t
    out = {"below_mean": neg_t.sum(1), "above_mean": pos_t.sum(1)}
    out["neg_raw"], out["pos_raw"] = _cut(a, b, left, right, n, terms, z0)
    first, last = a[:, :1], b[:, -1:]
    # zF: the end of the part of F below p (the cut inside the interval where F reaches k)
    grow = right > left
    frac = ((k - left) / torch.where(grow, right - left, 1.0)).clamp(0.0, 1.0)
    cross = torch.where(grow, a + frac * (b - a), b)
    zf = torch.where(left < k, cross, -math.inf).amax(1, keepdim=True)
    zf = torch.where(torch.isfinite(zf), zf, first)
    zp = torch.special.ndtri(k / n).clamp(first, last)
    lo, hi = torch.minimum(zf, zp), torch.maximum(zf, zp)
    inner_lo, _ = _cut(a, b, left, right, n, terms, lo)
    _, inner_hi = _cut(a, b, left, right, n, terms, hi)
    cn, cp = _integrate_abs(lo, hi, k, k, n)  # |p - Phi| on [lo, hi]
    const = cn + cp
    ca, cb = a.clamp(lo, hi), b.clamp(lo, hi)  # |F - p| on [lo, hi]: one sign there, F linear per piece
    la, lb = _count_at(ca, a, b, left, right), _count_at(cb, a, b, left, right)
    lin = (((la - k).abs() + (lb - k).abs()) * (cb - ca)).sum(1) / (2.0 * n)
    f_first = (zf < zp).flatten()
    out["area_neg"] = inner_lo + torch.where(f_first, const, lin)
    out["area_pos"] = inner_hi + torch.where(f_first, lin, const)
    return out


# ---------------------------------------------------------------------- references (float64 numpy)
def _const_piece(a: np.ndarray, b: np.ndarray, c: np.ndarray, q: np.ndarray, pos: bool) -> np.ndarray:
    """Integral of |c - Phi| over [a, b] (one side of 0), split at the root Phi^-1(c) when inside."""
    def signed(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        if pos:
            return (hi * sps.ndtr(-hi) - _np_phi(hi)) - (lo * sps.ndtr(-lo) - _np_phi(lo)) - q * (hi - lo)
        return c * (hi - lo) - ((hi * sps.ndtr(hi) + _np_phi(hi)) - (lo * sps.ndtr(lo) + _np_phi(lo)))

    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.clip(-sps.ndtri(q) if pos else sps.ndtri(c), a, b)
    return np.abs(signed(a, root)) + np.abs(signed(root, b))


def _np_phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) * _INV_SQRT_2PI


def exact_wd(x: np.ndarray) -> tuple[Any, Any, Any]:
    """Exact (wd, wd_below_mean, wd_above_mean) of a sample (1-D) or of each column (2-D): the integral of
    |F_n - Phi| for the empirical CDF F_n of z = (x - mean) / std (population std), in closed form between
    sorted points, split at z = 0 (the neuron's mean). The ground truth for :class:`NeuronStats` in tests
    and benchmarks; :func:`exact_wd_split` adds the raw-sign split."""
    d = exact_wd_split(x)
    return d["wd"], d["wd_below_mean"], d["wd_above_mean"]


def _z_domain(z: np.ndarray, z0: np.ndarray) -> tuple[np.ndarray, ...]:
    """(below z0, above z0) x (z < 0, z > 0) integrals of |F_n - Phi| for sorted columns z [n, m]."""
    n = z.shape[0]
    c = (np.arange(n + 1) / n)[:, None]
    q = ((n - np.arange(n + 1)) / n)[:, None]
    far = np.maximum(np.abs(z).max(0), np.abs(z0)) + 40.0
    pts = np.vstack([-far, z, far])
    out = []
    for a, b in ((np.minimum(pts[:-1], z0), np.minimum(pts[1:], z0)), (np.maximum(pts[:-1], z0), np.maximum(pts[1:], z0))):
        out.append(_const_piece(np.minimum(a, 0), np.minimum(b, 0), c, q, False).sum(0))
        out.append(_const_piece(np.maximum(a, 0), np.maximum(b, 0), c, q, True).sum(0))
    return tuple(out)


def _quantile_cells(z: np.ndarray) -> np.ndarray:
    """Per cell i (u in [(i-1)/n, i/n], where Q = z_(i)) the integral of |z_(i) - Phi^-1(u)| du, in closed
    form from d/du phi(Phi^-1(u)) = -Phi^-1(u), split at u = Phi(z_(i)). Upper-half cells take their widths
    from complements 1 - u (exact: (n - i)/n), so far-tail cells keep their digits."""
    n = z.shape[0]
    i = np.arange(n + 1)[:, None]
    u, v = i / n, (n - i) / n
    with np.errstate(divide="ignore"):
        t = np.where(u <= 0.5, sps.ndtri(u), -sps.ndtri(v))
    phit = _np_phi(t)
    t_lo, t_hi, u_lo, u_hi, v_lo, v_hi = t[:-1], t[1:], u[:-1], u[1:], v[:-1], v[1:]
    tc = np.clip(z, t_lo, t_hi)
    uc, vc = sps.ndtr(tc), sps.ndtr(-tc)
    upper = u_lo >= 0.5
    w_lo = np.where(upper, v_lo - vc, uc - u_lo)  # width of [u_lo, uc]
    w_hi = np.where(upper, vc - v_hi, u_hi - uc)  # width of [uc, u_hi]
    phic = _np_phi(tc)
    below = z * w_lo + phic - phit[:-1]  # int (z - Phi^-1) over [u_lo, uc], >= 0
    above = (phic - phit[1:]) - z * w_hi  # int (Phi^-1 - z) over [uc, u_hi], >= 0
    return np.abs(below) + np.abs(above)


def exact_wd_split(x: np.ndarray) -> dict[str, Any]:
    """Exact float64 references for every split of W1 of a sample (1-D) or of each column (2-D):

    * z domain (closed form between sorted points, cut at 0 and z0 = -mean/std): ``wd``,
      ``wd_below_mean`` / ``wd_above_mean`` (z < 0 / z > 0), ``wd_neg_raw`` / ``wd_pos_raw`` (z < z0 / z > z0);
    * quantile domain, computed independently (W1 = int_0^1 |Q(u) - Phi^-1(u)| du, Q a step function on the
      cells of width 1/n): ``wd_q`` (the same total, a cross-check), ``frac_negative`` p (share of x < 0, a
      cell boundary k/n, so no cell is split), and the mass-adjusted ``wd_neg_raw_q`` = (1/p) int_0^p and
      ``wd_pos_raw_q`` = (1/(1-p)) int_p^1 (NaN for the side without mass: p = 0 or p = 1).

    NaN everywhere for a constant column. Arrays for 2-D input, floats for 1-D."""
    x = np.asarray(x, dtype=np.float64)
    cols = x[:, None] if x.ndim == 1 else x
    n, m = cols.shape
    keys = ("wd", "wd_below_mean", "wd_above_mean", "wd_neg_raw", "wd_pos_raw", "wd_q", "frac_negative",
            "wd_neg_raw_q", "wd_pos_raw_q")
    out = {k: np.full(m, np.nan) for k in keys}
    step = max(1, 2**21 // (n + 2))
    for lo in range(0, m, step):
        sl = slice(lo, lo + step)
        block = cols[:, sl]
        mean, std = block.mean(0), block.std(0)
        ok = std > 0
        safe = np.where(ok, std, 1.0)
        z = np.sort((block - mean) / safe, axis=0)
        z0 = -mean / safe
        bn, bp, an, ap = _z_domain(z, z0)
        cells = _quantile_cells(z)
        k = (block < 0).sum(0)
        below = np.vstack([np.zeros((1, z.shape[1])), np.cumsum(cells, 0)])
        above = np.vstack([np.cumsum(cells[::-1], 0)[::-1], np.zeros((1, z.shape[1]))])
        cols_idx = np.arange(z.shape[1])
        area_neg, area_pos = below[k, cols_idx], above[k, cols_idx]
        p = k / n
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = {"wd": (bn + an) + (bp + ap), "wd_below_mean": bn + an, "wd_above_mean": bp + ap,
                    "wd_neg_raw": bn + bp, "wd_pos_raw": an + ap, "wd_q": area_neg + area_pos, "frac_negative": p,
                    "wd_neg_raw_q": np.where(k > 0, area_neg / p, np.nan),
                    "wd_pos_raw_q": np.where(k < n, area_pos / (1 - p), np.nan)}
        for key, val in vals.items():
            out[key][sl] = np.where(ok, val, np.nan) if key != "frac_negative" else val
    return {k: v[0] for k, v in out.items()} if x.ndim == 1 else out


def sampled_wd(x: np.ndarray, seed: int | None = None) -> Any:
    """The authors' estimator: scipy.stats.wasserstein_distance between the standardized sample and ONE
    N(0,1) sample of the same size (shared by all columns, as in their calculate_WD). Noisy by design."""
    x = np.asarray(x, dtype=np.float64)
    cols = x[:, None] if x.ndim == 1 else x
    ref = np.random.default_rng(seed).standard_normal(cols.shape[0])
    z = (cols - cols.mean(0)) / cols.std(0)
    out = np.array([scipy.stats.wasserstein_distance(z[:, j], ref) for j in range(cols.shape[1])])
    return out[0] if x.ndim == 1 else out
