"""Benchmark the neuron scan against a plain forward pass and the naive path; prints a table, writes JSON.

Rows (same tokens for every row):
  (a) forward   plain forward passes of the model over the windows (the floor)
  (b) scan      negdiff's streaming scan (statistics + WD + MD accumulators)
  (c) naive     keep every pre-activation, then scipy.stats.wasserstein_distance per neuron against a normal
                sample of the same size (the authors' path); timed on a subset of neurons and extrapolated
Also: peak RSS of the scan at N and 4N tokens (each in a fresh subprocess), and the WD error of the scan
against the exact sorted-sample value on the same tokens for a few layers.

Usage: NEGDIFF_DATA=../shared/data python bench/scan.py [--model default] [--tokens 16384] [--threads N] [--repeat R]
       [--out bench/results/scan.json]
The forward and the scan run at the same intra-op thread count (--threads, recorded as "threads"); the scan
accumulates several layers at once on that many threads (negdiff.workers).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import scipy.stats
import torch

from negdiff.data import corpus_documents, token_windows
from negdiff.experiments.scan import Streamer, default_window, neuron_table, plan_pairs, stream
from negdiff.hooks import capture
from negdiff.models import load_model
from negdiff.results import versions, write_json
from negdiff.stats import exact_wd


def windows_for(loaded, tokens: int) -> torch.Tensor:
    window = default_window(loaded, None)
    return token_windows(loaded.tokenizer, corpus_documents("wikitext2")[0], window, tokens)


def time_forward(loaded, windows) -> float:
    with torch.inference_mode():
        loaded.model(windows[:1].to(loaded.device))  # warm-up
        t = time.perf_counter()
        for w in windows:
            loaded.model(w[None].to(loaded.device), use_cache=False)
        return time.perf_counter() - t


def time_scan(loaded, windows, md_pairs: int) -> tuple[float, Streamer]:
    streamer = Streamer(loaded, plan_pairs(len(windows), windows.shape[1], md_pairs, 0), top_k=10)
    warm = Streamer(loaded, plan_pairs(1, windows.shape[1], 64, 0), top_k=2)
    stream(loaded, windows[:1], warm, 1)
    return stream(loaded, windows, streamer, 1), streamer


def naive(loaded, windows, layers: list[int], per_layer: int) -> dict:
    """Keep all pre-activations of ``per_layer`` neurons in ``layers``; scipy WD per neuron; extrapolate."""
    keep = {layer: [] for layer in layers}
    t0 = time.perf_counter()
    with capture(loaded.model, layers, stop_after_last=True) as tr:
        for w in windows:
            tr.forward(w[None].to(loaded.device))
            for layer in layers:
                keep[layer].append(tr.pre[layer][0, :, :per_layer].float().cpu())
    collect = time.perf_counter() - t0
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for layer in layers:
        x = torch.cat(keep[layer]).double().numpy()
        z = (x - x.mean(0)) / x.std(0)
        for j in range(z.shape[1]):
            scipy.stats.wasserstein_distance(z[:, j], rng.standard_normal(len(z)))
    n = len(layers) * per_layer
    per_neuron = (time.perf_counter() - t0) / n
    total = sum(s.width for s in loaded.sites)
    return {"neurons_timed": n, "wd_seconds_per_neuron": per_neuron, "wd_seconds_all_neurons": per_neuron * total,
            "forward_seconds": collect, "seconds_extrapolated": per_neuron * total + collect,
            "memory_all_preacts_gb": windows.numel() * total * 4 / 2**30}


def wd_error(loaded, windows, table, layers: list[int]) -> dict:
    """Scan WD vs the exact sorted-sample WD on the same tokens, every neuron of ``layers``."""
    worst_rel, worst_abs, n_big = 0.0, 0.0, 0
    with capture(loaded.model, layers, stop_after_last=True) as tr:
        vals = {layer: [] for layer in layers}
        for w in windows:
            tr.forward(w[None].to(loaded.device))
            for layer in layers:
                vals[layer].append(tr.pre[layer][0].float().cpu())
    for layer in layers:
        exact = exact_wd(torch.cat(vals[layer]).double().numpy())[0]
        got = table[table.layer == layer].sort_values("neuron").wd.to_numpy()
        big = exact >= 0.05
        n_big += int(big.sum())
        worst_rel = max(worst_rel, float(np.max(np.abs(got[big] - exact[big]) / exact[big], initial=0)))
        worst_abs = max(worst_abs, float(np.max(np.abs(got[~big] - exact[~big]), initial=0)))
    return {"layers": layers, "max_rel_err_wd_ge_0.05": worst_rel, "max_abs_err_wd_lt_0.05": worst_abs, "n_wd_ge_0.05": n_big}


def rss_child(model: str, tokens: int, md_pairs: int) -> float:
    """Peak RSS (MiB) of a fresh process that loads the model and scans ``tokens`` tokens."""
    script = (
        "import resource, sys\n"
        "from negdiff.models import load_model\n"
        "from negdiff.experiments.scan import Streamer, plan_pairs, stream, neuron_table, default_window\n"
        "from negdiff.data import corpus_documents, token_windows\n"
        f"lm = load_model({model!r})\n"
        "w = token_windows(lm.tokenizer, corpus_documents('wikitext2')[0], default_window(lm, None), " + str(tokens) + ")\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"s = Streamer(lm, plan_pairs(len(w), w.shape[1], {md_pairs}, 0), 10); stream(lm, w, s, 1); neuron_table(s)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--md-pairs", type=int, default=24576)
    ap.add_argument("--naive-neurons", type=int, default=64, help="neurons per layer timed on the naive path")
    ap.add_argument("--no-rss", action="store_true", help="skip the N vs 4N peak-RSS subprocesses")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for the forward and the scan (default: torch's default)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time forward and scan alternately this many times; the medians are reported")
    ap.add_argument("--out", default="bench/results/scan.json")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    windows = windows_for(loaded, args.tokens)
    n_tok = windows.numel()
    fwds, scans = [], []
    for _ in range(max(1, args.repeat)):  # alternated, so that a noisy neighbour hits both rows alike
        fwds.append(time_forward(loaded, windows))
        scan_s, streamer = time_scan(loaded, windows, args.md_pairs)
        scans.append(scan_s)
    fwd, scan_s = float(np.median(fwds)), float(np.median(scans))
    table = neuron_table(streamer)
    n_layers = len(loaded.sites)
    nv = naive(loaded, windows, [0, n_layers // 2, n_layers - 1], args.naive_neurons)
    err = wd_error(loaded, windows, table, [0, n_layers // 2, n_layers - 1])
    rss = {}
    if not args.no_rss:
        small = max(windows.shape[1], args.tokens // 4)
        rss = {"tokens_n": small, "peak_rss_mib_n": rss_child(args.model, small, args.md_pairs),
               "tokens_4n": 4 * small, "peak_rss_mib_4n": rss_child(args.model, 4 * small, args.md_pairs)}
        rss["growth"] = rss["peak_rss_mib_4n"] / rss["peak_rss_mib_n"] - 1
    res = {
        "model": loaded.info.name, "device": str(loaded.device), "dtype": loaded.info.dtype,
        "threads": torch.get_num_threads(), "tokens": n_tok, "window": windows.shape[1],
        "forward_s": fwd, "forward_tok_s": n_tok / fwd, "scan_s": scan_s, "scan_tok_s": n_tok / scan_s,
        "scan_over_forward": scan_s / fwd,
        "repeats": {"forward_s": fwds, "scan_s": scans, "scan_over_forward": [s / f for s, f in zip(scans, fwds)]},
        "naive": nv, "naive_over_scan": nv["seconds_extrapolated"] / scan_s,
        "wd_error": err, "rss": rss, "versions": versions(),
    }
    rows = [
        ("(a) forward", f"{fwd:.1f} s", f"{n_tok / fwd:.0f} tok/s", "1.00"),
        ("(b) negdiff scan", f"{scan_s:.1f} s", f"{n_tok / scan_s:.0f} tok/s", f"{scan_s / fwd:.2f} (target <= 1.3)"),
        ("(c) naive (extrapolated)", f"{nv['seconds_extrapolated']:.0f} s", f"{n_tok / nv['seconds_extrapolated']:.1f} tok/s",
         f"{nv['seconds_extrapolated'] / fwd:.1f}; naive/scan {res['naive_over_scan']:.1f} (target >= 10)"),
    ]
    print(f"{loaded.info.name} on {res['device']} ({res['threads']} threads), {n_tok:,} tokens in windows of {windows.shape[1]}")
    print(f"{'row':<26}{'wall':>10}{'speed':>16}  ratio to forward")
    for r in rows:
        print(f"{r[0]:<26}{r[1]:>10}{r[2]:>16}  {r[3]}")
    print(f"WD error vs exact (layers {err['layers']}): max rel {100 * err['max_rel_err_wd_ge_0.05']:.3f}% "
          f"(WD >= 0.05, n={err['n_wd_ge_0.05']}; target <= 1%), max abs {err['max_abs_err_wd_lt_0.05']:.5f} below")
    print(f"naive path memory for all pre-activations: {nv['memory_all_preacts_gb']:.1f} GiB")
    if rss:
        print(f"peak RSS: {rss['peak_rss_mib_n']:.0f} MiB at {rss['tokens_n']:,} tokens, {rss['peak_rss_mib_4n']:.0f} MiB at "
              f"{rss['tokens_4n']:,} ({100 * rss['growth']:+.1f}%; target within 10%)")
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
