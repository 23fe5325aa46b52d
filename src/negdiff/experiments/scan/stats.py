"""The scan's closing statistics: where the non-Gaussian mass sits (raw-sign split) and grid health.

Split from :mod:`negdiff.experiments.scan` because these are pure functions of the neuron table (plus each
layer's calibration), so a finished scan's numbers can be recomputed from neurons.parquet alone.

Negative region (paper.md, "Wasserstein distance"): the raw pre-activation h < 0, not "below the mean".
Per group of neurons (WN, all, the layer-matched random set) and per part of the network (all layers,
the first half, the second half) this reports the share of neurons with wd_neg_raw > wd_pos_raw and the
median of the mass-adjusted ratio wd_neg_raw_q / wd_pos_raw_q (> 1: per unit of mass, the raw-negative
values are further from N(0, 1) than the others), each with a percentile-bootstrap 95% CI that resamples
neurons (with replacement, within the group and part). The mean split (wd_below_mean > wd_above_mean) is
kept beside it under its honest name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from negdiff.result_stats import bootstrap_ci

#: Bootstrap replicates of the negative-region CIs.
N_BOOT = 10_000
#: frac_offgrid above this is worth a warning (values beyond the grid are modelled by count and sum only).
OFFGRID_WARN = 1e-3
#: A first-batch bin unit this many times wider or narrower than the final std is worth a warning.
SCALE_WARN = 10.0


def _parts(table: pd.DataFrame, n_layers: int) -> dict[str, np.ndarray]:
    """All layers, the first half (layer < n_layers // 2) and the rest."""
    layer = table.layer.to_numpy()
    return {"overall": np.ones(len(table), bool), "early": layer < n_layers // 2, "late": layer >= n_layers // 2}


def _ci(values: np.ndarray, stat, n_boot: int, seed: int) -> list[float] | None:
    return list(bootstrap_ci(values, stat, n_boot=n_boot, seed=seed)) if len(values) > 1 else None


def _group_stats(rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    if rows.empty:
        return {"n": 0}
    raw = (rows.wd_neg_raw > rows.wd_pos_raw).to_numpy(np.float64)
    below = (rows.wd_below_mean > rows.wd_above_mean).to_numpy(np.float64)
    ratio = (rows.wd_neg_raw_q / rows.wd_pos_raw_q).to_numpy(np.float64)
    ratio = ratio[np.isfinite(ratio)]
    return {
        "n": len(rows),
        "share_neg_raw": float(raw.mean()), "share_neg_raw_ci": _ci(raw, np.mean, n_boot, seed),
        "n_ratio": int(len(ratio)),  # neurons with both raw-negative and non-negative values
        "median_q_ratio": float(np.median(ratio)) if len(ratio) else None,
        "median_q_ratio_ci": _ci(ratio, np.median, n_boot, seed),
        "share_below_mean": float(below.mean()), "share_below_mean_ci": _ci(below, np.mean, n_boot, seed),
    }


def negative_region(table: pd.DataFrame, groups: dict[str, np.ndarray], n_layers: int, seed: int,
                    n_boot: int = N_BOOT) -> dict[str, Any]:
    """The raw-sign finding per group (boolean row masks of ``table``) and part of the network."""
    parts = _parts(table, n_layers)
    out: dict[str, Any] = {
        "split": "raw h < 0 (z0 = -mean/std); mass-adjusted ratio = wd_neg_raw_q / wd_pos_raw_q",
        "resampled": "neurons, with replacement, within each group and part (percentile bootstrap 95% CI)",
        "n_boot": n_boot, "seed": seed, "early_layers": f"layer < {n_layers // 2}",
    }
    for name, mask in groups.items():
        out[name] = {part: _group_stats(table[mask & pmask], n_boot, seed) for part, pmask in parts.items()}
    return out


def grid_health(table: pd.DataFrame, scales: np.ndarray) -> dict[str, Any]:
    """Counts of neurons whose histogram grid may be inaccurate: values beyond the grid, or a first-batch
    bin unit (``scales``, one per table row) more than SCALE_WARN times off the final std."""
    std = table["std"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = scales / std
    return {"n_offgrid": int((table.frac_offgrid > OFFGRID_WARN).sum()), "offgrid_threshold": OFFGRID_WARN,
            "max_frac_offgrid": float(table.frac_offgrid.max()),
            "n_scale_too_wide": int((rel > SCALE_WARN).sum()), "n_scale_too_narrow": int((rel < 1 / SCALE_WARN).sum()),
            "scale_threshold": SCALE_WARN}


def grid_warning(health: dict[str, Any]) -> str | None:
    """One line when the grid may be inaccurate for some neurons, else None."""
    parts = []
    if health["n_offgrid"]:
        parts.append(f"{health['n_offgrid']} neurons have frac_offgrid > {health['offgrid_threshold']:g} "
                     f"(max {health['max_frac_offgrid']:.2g})")
    off = health["n_scale_too_wide"] + health["n_scale_too_narrow"]
    if off:
        parts.append(f"{off} neurons have a first-batch bin unit > {health['scale_threshold']:g}x off their final std "
                     f"({health['n_scale_too_wide']} wider, {health['n_scale_too_narrow']} narrower)")
    return None if not parts else "WD grid check: " + "; ".join(parts) + " (their WD may be less accurate)"


def _fmt(s: dict[str, Any], key: str, pct: bool) -> str:
    if not s.get("n") or s.get(key) is None:
        return "n/a"
    ci = s.get(key + "_ci")
    if pct:
        return f"{100 * s[key]:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
    return f"{s[key]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def negative_region_lines(neg: dict[str, Any]) -> list[str]:
    """The summary lines of :func:`negative_region` (WN vs all vs random, overall then early / late)."""
    names = [g for g in ("wn", "all", "random") if g in neg]
    lines = [f"negative region h < 0, raw-sign split (95% CIs: neurons resampled, {neg['n_boot']} draws; "
             f"early = {neg['early_layers']}):"]
    for part in ("overall", "early", "late"):
        tag = "" if part == "overall" else f" ({part})"
        share = " vs ".join(f"{g} {_fmt(neg[g][part], 'share_neg_raw', True)}" for g in names)
        ratio = " vs ".join(f"{g} {_fmt(neg[g][part], 'median_q_ratio', False)}" for g in names)
        lines.append(f"wd_neg_raw > wd_pos_raw{tag}: {share}")
        lines.append(f"median wd_neg_raw_q / wd_pos_raw_q{tag}: {ratio}")
    below = " vs ".join(f"{g} {_fmt(neg[g]['overall'], 'share_below_mean', True)}" for g in names)
    lines.append(f"wd_below_mean > wd_above_mean (split at the mean, not h < 0): {below}")
    return lines
