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


def _side(a: torch.Tensor, b: torch.Tensor, fa: torch.Tensor, fb: torch.Tensor, qa: torch.Tensor,
          qb: torch.Tensor, pos: bool) -> torch.Tensor:
    """Sum over intervals (all on one side of 0) of the integral of |F - Phi|. Where F - Phi changes sign
    inside an interval the root is found (secant start, Newton steps) and both parts are integrated."""
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
    return total.sum(1)


def _integrate_abs(a: torch.Tensor, b: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                   n: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(z < 0 part, z > 0 part) of the integral of |F - Phi| over intervals [a, b] (rows = neurons), with F
    linear from left/n to right/n; 1 - F comes from the integer counts directly, not from 1 - F."""
    fa, fb, qa, qb = left / n, right / n, (n - left) / n, (n - right) / n
    w = b - a

    def at(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frac = torch.where(w > 0, (z - a) / torch.where(w > 0, w, 1.0), 0.0)
        return (torch.where(z == b, fb, fa + (fb - fa) * frac), torch.where(z == b, qb, qa + (qb - qa) * frac))

    an, bn, ap, bp = a.clamp(max=0.0), b.clamp(max=0.0), a.clamp(min=0.0), b.clamp(min=0.0)
    (fan, qan), (fbn, qbn), (fap, qap), (fbp, qbp) = at(an), at(bn), at(ap), at(bp)
    return _side(an, bn, fan, fbn, qan, qbn, False), _side(ap, bp, fap, fbp, qap, qbp, True)


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
    """Exact (wd, wd_neg, wd_pos) of a sample (1-D) or of each column (2-D): the integral of |F_n - Phi|
    for the empirical CDF F_n of z = (x - mean) / std (population std), in closed form between sorted
    points. Used as the ground truth for :class:`NeuronStats` in tests and benchmarks."""
    x = np.asarray(x, dtype=np.float64)
    cols = x[:, None] if x.ndim == 1 else x
    n, m = cols.shape
    out = np.full((3, m), np.nan)
    c = (np.arange(n + 1) / n)[:, None]
    q = ((n - np.arange(n + 1)) / n)[:, None]
    step = max(1, 2**22 // (n + 2))
    for lo in range(0, m, step):
        block = cols[:, lo:lo + step]
        mean, std = block.mean(0), block.std(0)
        z = np.sort((block - mean) / np.where(std > 0, std, 1.0), axis=0)
        far = np.abs(z).max(0) + 40.0
        pts = np.vstack([-far, z, far])
        a, b = pts[:-1], pts[1:]
        neg = _const_piece(np.minimum(a, 0), np.minimum(b, 0), c, q, False).sum(0)
        pos = _const_piece(np.maximum(a, 0), np.maximum(b, 0), c, q, True).sum(0)
        bad = ~(std > 0)
        out[:, lo:lo + step] = np.where(bad, np.nan, [neg + pos, neg, pos])
    return (out[0, 0], out[1, 0], out[2, 0]) if x.ndim == 1 else (out[0], out[1], out[2])


def sampled_wd(x: np.ndarray, seed: int | None = None) -> Any:
    """The authors' estimator: scipy.stats.wasserstein_distance between the standardized sample and ONE
    N(0,1) sample of the same size (shared by all columns, as in their calculate_WD). Noisy by design."""
    x = np.asarray(x, dtype=np.float64)
    cols = x[:, None] if x.ndim == 1 else x
    ref = np.random.default_rng(seed).standard_normal(cols.shape[0])
    z = (cols - cols.mean(0)) / cols.std(0)
    out = np.array([scipy.stats.wasserstein_distance(z[:, j], ref) for j in range(cols.shape[1])])
    return out[0] if x.ndim == 1 else out
