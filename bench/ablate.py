"""Benchmark the cost of each ablation condition's intervention against a plain forward pass.

Every row scores the same WikiText-2 windows (the perplexity path: forward + LM head + log-softmax gather)
under one condition's edit; the target is <= 1.3x the plain pass for each. Sets come from a finished scan
(its wn.json; the perplexity-matched control is approximated by the lowest-WD m% of each layer, m from
--ppl-matched-fraction, default 14.4% as measured on the embedded model) or, without --scan, from seeded
random neurons of the same sizes. Rows are timed in an interleaved order over --repeats rounds and the
median is reported, so a machine whose load drifts does not favour one row.

Usage: NEGDIFF_DATA=../shared/data python bench/ablate.py [--scan runs/scan] [--tokens 8192] [--out bench/results/ablate.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from negdiff.data import corpus_documents, token_windows
from negdiff.hooks import intervene
from negdiff.models import load_model
from negdiff.neuronset import NeuronSet
from negdiff.results import versions, write_json
from negdiff.scoring import window_nlls
from negdiff.select import random_like, select_lowest


def sets_for(loaded, scan: str | None, matched: float) -> dict[str, NeuronSet]:
    widths = {s.layer: s.width for s in loaded.sites}
    if scan:
        wn = NeuronSet.from_json(f"{scan}/wn.json")
        low = select_lowest(pd.read_parquet(f"{scan}/neurons.parquet"), matched)
    else:
        gen = torch.Generator().manual_seed(0)
        wn = NeuronSet({s.layer: torch.randperm(s.width, generator=gen)[: max(1, s.width // 100)]
                        for s in loaded.sites})
        low = NeuronSet({s.layer: torch.randperm(s.width, generator=gen)[: int(s.width * matched)]
                         for s in loaded.sites})
    return {"wn": wn, "random": random_like(wn, widths, seed=0), "ppl_matched": low}


CONDITIONS = (("baseline", None, "zero_negative"), ("wn_neg", "wn", "zero_negative"),
              ("random_neg", "random", "zero_negative"), ("ppl_matched_neg", "ppl_matched", "zero_negative"),
              ("wn_pos", "wn", "zero_positive"), ("wn_zero", "wn", "zero"),
              ("wn_identity_pos", "wn", "identity_positive"), ("wn_abs_neg", "wn", "abs_negative_output"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--scan", default=None, help="a finished scan folder (wn.json, neurons.parquet)")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ppl-matched-fraction", type=float, default=0.144)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="bench/results/ablate.json")
    args = ap.parse_args()

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    windows = token_windows(loaded.tokenizer, corpus_documents("wikitext2-valid")[0],
                            min(2048, loaded.info.max_length or 2048), args.tokens)
    sets = sets_for(loaded, args.scan, args.ppl_matched_fraction)
    window_nlls(loaded.model, windows[:1])  # warm-up
    times: dict[str, list[float]] = {name: [] for name, _, _ in CONDITIONS}
    for _ in range(args.repeats):
        for name, which, mode in CONDITIONS:
            neurons = NeuronSet.empty() if which is None else sets[which]
            t = time.perf_counter()
            with intervene(loaded.model, neurons, mode, sites=loaded.sites):
                window_nlls(loaded.model, windows)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["baseline"])
    rows = []
    for name, which, mode in CONDITIONS:
        med = statistics.median(times[name])
        n = 0 if which is None else sets[which].size
        rows.append({"condition": name, "mode": mode, "neurons": n, "seconds": med, "tokens_per_s": windows.numel() / med,
                     "ratio_to_plain": med / base})
    print(f"{loaded.info.name} on {loaded.device} ({torch.get_num_threads()} threads), {windows.numel():,} tokens, "
          f"median of {args.repeats} interleaved rounds")
    print(f"{'condition':<18}{'mode':<22}{'neurons':>8}{'seconds':>10}{'tok/s':>9}  ratio (target <= 1.3)")
    for r in rows:
        print(f"{r['condition']:<18}{r['mode']:<22}{r['neurons']:>8}{r['seconds']:>10.1f}{r['tokens_per_s']:>9.0f}"
              f"  {r['ratio_to_plain']:.3f}")
    write_json(args.out, {"rows": rows, "tokens": int(windows.numel()), "repeats": args.repeats,
                          "model": loaded.info.to_dict(), "threads": torch.get_num_threads(), "versions": versions()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
