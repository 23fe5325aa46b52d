"""Benchmark ``negdiff layers`` with the layer cache against the same run without it (target <= 0.80x).

Both runs evaluate every condition from scratch in fresh folders (nothing resumed), on the same WN set: a
finished scan's wn.json (--scan) or, without one, seeded random neurons, 1% of each layer (the cost does not
depend on which neurons are edited). The report gives the wall time of each run, their ratio, the seconds
per condition, what the cache replayed and held, and the largest difference between the two runs' per-item
scores (it must stay below 1e-5), and the process CPU time of each run beside the wall time (steadier when
other jobs share the machine). With --repeats > 1 the order alternates (off/on, on/off, ...) and medians
are reported, so a machine whose load drifts favours neither. Default sizes are LayersConfig's (BLiMP 10
pairs per paradigm, TSE 10 per task, 6144 perplexity tokens); smaller ones via the limits below.

Usage: NEGDIFF_DATA=../shared/data python bench/layers_cache.py [--scan runs/scan] [--blimp-limit 2 ...]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from negdiff.experiments import layers
from negdiff.models import load_model
from negdiff.neuronset import NeuronSet
from negdiff.results import versions, write_json

TARGET = 0.80


def wn_dir(loaded, scan: str | None, work: Path) -> Path:
    """A folder holding the wn.json to use: the scan's, or a seeded random 1% per layer."""
    if scan:
        return Path(scan)
    gen = torch.Generator().manual_seed(0)
    wn = NeuronSet({s.layer: torch.randperm(s.width, generator=gen)[: max(1, s.width // 100)] for s in loaded.sites},
                   {"rule": "bench: seeded random 1% per layer"})
    folder = work / "scan"
    folder.mkdir(parents=True, exist_ok=True)
    wn.to_json(folder / "wn.json")
    return folder


def item_diff(a: Path, b: Path) -> float:
    """Largest absolute difference between the numeric per-item columns of two runs' conditions."""
    worst = 0.0
    for fa in sorted(a.glob("conditions/*/items_*.parquet")):
        ta, tb = pd.read_parquet(fa), pd.read_parquet(b / fa.relative_to(a))
        assert list(ta.item_id) == list(tb.item_id), fa
        for col in ta.select_dtypes("number").columns:
            worst = max(worst, float(np.nanmax(np.abs(ta[col].to_numpy(float) - tb[col].to_numpy(float)),
                                                initial=0.0)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = layers.LayersConfig()
    ap.add_argument("--model", default="default")
    ap.add_argument("--scan", default=None, help="a finished scan folder (its wn.json)")
    ap.add_argument("--tasks", default=",".join(d.tasks))
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--blimp-limit", type=int, default=d.blimp_limit)
    ap.add_argument("--tse-limit", type=int, default=d.tse_limit)
    ap.add_argument("--ppl-tokens", type=int, default=d.ppl_tokens)
    ap.add_argument("--ppl-window", type=int, default=d.ppl_window)
    ap.add_argument("--layer-cache-mb", type=int, default=d.layer_cache_mb)
    ap.add_argument("--layer-cache-disk-mb", type=int, default=d.layer_cache_disk_mb)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, deleted)")
    ap.add_argument("--out", default="bench/results/layers_cache.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_layers_cache_"))
    scan = wn_dir(loaded, args.scan, work)
    base = dict(tasks=tuple(t for t in args.tasks.split(",") if t), group_size=args.group_size,
                blimp_limit=args.blimp_limit, tse_limit=args.tse_limit, ppl_tokens=args.ppl_tokens,
                ppl_window=args.ppl_window, n_boot=1000, layer_cache_disk_mb=args.layer_cache_disk_mb)
    walls: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}  # process CPU time: steadier than wall on a shared machine
    records: dict[str, dict] = {}
    for r in range(args.repeats):
        for which in (("off", "on") if r % 2 == 0 else ("on", "off")):
            out = work / f"{which}{r}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = layers.LayersConfig(**base, layer_cache_mb=0 if which == "off" else args.layer_cache_mb)
            t, c = time.perf_counter(), time.process_time()
            records[which] = layers.run_layers(loaded, scan, cfg, out)
            walls[which].append(time.perf_counter() - t)
            cpus[which].append(time.process_time() - c)
            print(f"round {r + 1}: cache {which}: {walls[which][-1]:.1f} s wall, {cpus[which][-1]:.1f} s CPU", flush=True)
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    cpu_off, cpu_on = statistics.median(cpus["off"]), statistics.median(cpus["on"])
    diff = item_diff(work / "off0", work / "on0")
    per = {name: {"off": records["off"]["seconds_per_condition"][name], "on": sec,
                  "replay_from": next((s["replay_from"] for s in records["on"]["layer_cache"]["steps"]
                                       if s["condition"] == name), None)}
           for name, sec in records["on"]["seconds_per_condition"].items()}
    result = {"wall_seconds_off": off, "wall_seconds_on": on, "ratio": on / off, "target": TARGET,
              "meets_target": on / off <= TARGET, "cpu_seconds_off": cpu_off, "cpu_seconds_on": cpu_on,
              "cpu_ratio": cpu_on / cpu_off, "max_abs_item_diff": diff, "walls": walls, "cpus": cpus, "repeats": args.repeats,
              "conditions": per, "layer_cache": records["on"]["layer_cache"], "config": {**base,
              "layer_cache_mb": args.layer_cache_mb}, "n_layers": len(loaded.sites),
              "groups": [g["layers"] for g in records["on"]["groups"]], "model": loaded.info.to_dict(),
              "device": str(loaded.device), "threads": torch.get_num_threads(), "versions": versions()}
    print(f"{loaded.info.name} on {loaded.device} ({torch.get_num_threads()} threads), {len(per)} conditions")
    print(f"{'condition':<10}{'from layer':>11}{'off s':>9}{'on s':>9}")
    for name, row in per.items():
        print(f"{name:<10}{row['replay_from'] if row['replay_from'] is not None else '-':>11}"
              f"{row['off'] or 0:>9.1f}{row['on'] or 0:>9.1f}")
    print(f"wall: off {off:.1f} s, on {on:.1f} s, ratio {on / off:.3f} (target <= {TARGET}); CPU ratio "
          f"{cpu_on / cpu_off:.3f}; "
          f"peak cache {result['layer_cache']['peak_memory_mb']} MiB; max item diff {diff:.2e}")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
