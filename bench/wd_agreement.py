"""Top-1% agreement between negdiff's streaming WD and the authors' sampled estimator, over sampler seeds.

paper.md asks for the rank agreement of negdiff's WD (the exact W1 to N(0,1), streamed through per-neuron
histograms) with the authors' estimator (scipy.stats.wasserstein_distance against ONE N(0,1) sample of the
same size, unseeded in their code). On real pre-activations of a few layers, for each of ``--seeds`` sampler
seeds, this selects the WN set (top 1% per layer, strictly above the 99th percentile, as the authors) by
  streaming   NeuronStats (what `negdiff scan` uses)
  exact       the float64 sorted-sample W1 (negdiff.w1.exact_wd), the ground truth for both
  sampled[s]  negdiff.w1.sampled_wd with seed s (the authors' estimator)
and reports Jaccard |A & B| / |A | B| per layer and overall (the union of the per-layer sets): streaming vs
exact, streaming vs sampled (mean, min, max over seeds), exact vs sampled, and sampled vs sampled across
seed pairs (how well the authors' own estimator agrees with itself). Why: the sampled estimator's noise
shrinks like 1/sqrt(tokens), so at a modest token count it alone can reorder the top 1%.

Usage: NEGDIFF_DATA=../shared/data python bench/wd_agreement.py [--model default] [--tokens 16384]
       [--seeds 5] [--layers 0,15,29] [--out bench/results/wd_agreement.json]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import pandas as pd
import scipy.stats
import torch

from negdiff.data import corpus_documents, token_windows
from negdiff.experiments.scan import default_window
from negdiff.hooks import capture
from negdiff.models import load_model
from negdiff.results import versions, write_json
from negdiff.select import select_wasserstein
from negdiff.stats import NeuronStats, exact_wd, sampled_wd


def top_sets(wd: dict[int, np.ndarray], fraction: float) -> dict[int, set[int]]:
    """The WN rule (per layer, strictly above the (1 - fraction) percentile) on per-layer WD arrays."""
    table = pd.DataFrame([(layer, i, v) for layer, arr in wd.items() for i, v in enumerate(arr)],
                         columns=["layer", "neuron", "wd"])
    ns = select_wasserstein(table, fraction, "per_layer", "wd")
    return {layer: set(ns.indices(layer).tolist()) for layer in wd}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def agreement(a: dict[int, set[int]], b: dict[int, set[int]]) -> dict[str, float]:
    """Per-layer and overall (union of the per-layer sets, as (layer, neuron)) Jaccard."""
    out = {f"L{layer}": jaccard(a[layer], b[layer]) for layer in a}
    out["overall"] = jaccard({(k, n) for k, v in a.items() for n in v}, {(k, n) for k, v in b.items() for n in v})
    return out


def collect(loaded, windows: torch.Tensor, layers: list[int]) -> tuple[dict, dict]:
    """Raw pre-activations of ``layers`` (float32) and a NeuronStats per layer fed window by window."""
    raw: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    stats: dict[int, NeuronStats] = {}
    with torch.inference_mode(), capture(loaded.model, layers, stop_after_last=True, sites=loaded.sites) as tr:
        for w in windows:
            tr.forward(w[None].to(loaded.device))
            for layer in layers:
                x = tr.pre[layer][0].float().cpu()
                stats.setdefault(layer, NeuronStats(x.shape[1])).add(x)
                raw[layer].append(x)
    return {k: torch.cat(v).double().numpy() for k, v in raw.items()}, stats


def summarize(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = runs[0].keys()
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "min": float(np.min([r[k] for r in runs])),
                "max": float(np.max([r[k] for r in runs]))} for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seeds", type=int, default=5, help="sampler seeds of the authors' estimator")
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: first, middle, last)")
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--out", default="bench/results/wd_agreement.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    n_layers = len(loaded.sites)
    layers = ([int(v) for v in args.layers.split(",")] if args.layers
              else sorted({0, n_layers // 2, n_layers - 1}))
    windows = token_windows(loaded.tokenizer, corpus_documents("wikitext2")[0], default_window(loaded, None), args.tokens)
    raw, stats = collect(loaded, windows, layers)
    streaming = top_sets({k: s.result()["wd"] for k, s in stats.items()}, args.fraction)
    exact_vals = {k: exact_wd(v)[0] for k, v in raw.items()}
    exact = top_sets(exact_vals, args.fraction)
    sampled, rho = [], []
    for seed in range(args.seeds):
        vals = {k: sampled_wd(v, seed=seed) for k, v in raw.items()}
        sampled.append(top_sets(vals, args.fraction))
        rho.append(float(np.mean([scipy.stats.spearmanr(vals[k], exact_vals[k])[0] for k in layers])))
    res = {
        "model": loaded.info.name, "tokens": int(windows.numel()), "layers": layers, "fraction": args.fraction,
        "seeds": list(range(args.seeds)), "wn_per_layer": {f"L{k}": len(v) for k, v in exact.items()},
        "streaming_vs_exact": agreement(streaming, exact),
        "streaming_vs_sampled": summarize([agreement(streaming, s) for s in sampled]),
        "exact_vs_sampled": summarize([agreement(exact, s) for s in sampled]),
        "sampled_vs_sampled": summarize([agreement(a, b) for a, b in itertools.combinations(sampled, 2)])
        if len(sampled) > 1 else None,
        "spearman_sampled_vs_exact_mean_over_layers": rho,
        "seconds": time.perf_counter() - t0, "versions": versions(),
    }
    print(f"{res['model']}: {res['tokens']:,} tokens, layers {layers}, top {100 * args.fraction:g}% per layer "
          f"({sum(res['wn_per_layer'].values())} WN), {args.seeds} sampler seeds")
    cols = [*(f"L{k}" for k in layers), "overall"]
    print(f"{'Jaccard':<36}" + "".join(f"{c:>19}" for c in cols))
    print(f"{'streaming vs exact':<36}" + "".join(f"{res['streaming_vs_exact'][c]:>19.3f}" for c in cols))
    for name in ("streaming_vs_sampled", "exact_vs_sampled", "sampled_vs_sampled"):
        if res[name]:
            cells = "".join(f"{res[name][c]['mean']:>7.3f} [{res[name][c]['min']:.2f},{res[name][c]['max']:.2f}]"
                            for c in cols)
            print(f"{name.replace('_', ' ') + ' (mean [min,max])':<36}{cells}")
    print(f"Spearman(sampled, exact) per seed: {', '.join(f'{r:.4f}' for r in rho)}")
    write_json(args.out, res)
    print(f"wrote {args.out} ({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
