"""``negdiff quadrants``: zero one gate-by-up sign quadrant on the WN and on random neurons.

In a gated MLP (SwiGLU, GeGLU) each neuron contributes act(h) x u, h at the gate (the neuron, as
paper.md defines it) and u at the up projection. ``zero_negative`` on the WN removes both gate < 0
quadrants at once; this step asks which one carries the harm, and whether the gate > 0 quadrants matter
for the WN more than for random neurons. Conditions (each evaluated on the same items, resumable through
:mod:`negdiff.services.conditions`): ``baseline``; for each of the 4 quadrants ``wn_<q>`` and
``random_<q>_s<k>`` (the random sets are ablate's: ``random_like(wn, seed=k)``, the same in every
quadrant). Statistics and verdicts: :mod:`.stats`. Ungated models are refused before any evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from negdiff import results
from negdiff.experiments.quadrants import stats
from negdiff.experiments.quadrants.config import QuadrantsConfig
from negdiff.gate_up import QUADRANTS, check_gated
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.runs import write_record
from negdiff.select import random_like
from negdiff.services.conditions import Condition
from negdiff.services.conditions import run_condition as run_condition_in
from negdiff.services.scan_outputs import load_wn, scan_record, wn_path
from negdiff.tasks import expand_tasks

FORMAT = "negdiff.quadrants/1"


def build_conditions(wn: NeuronSet, widths: dict[int, int], seeds: int, tasks: list[str]) -> list[Condition]:
    """Baseline, then per quadrant the WN and the K random sets."""
    randoms = [random_like(wn, widths, seed=k) for k in range(seeds)]
    out = [Condition("baseline", NeuronSet.empty(), tasks=tasks)]
    for mode in QUADRANTS:
        q = stats.short(mode)
        out.append(Condition(f"wn_{q}", wn, mode, tasks))
        out += [Condition(f"random_{q}_s{k}", r, mode, tasks) for k, r in enumerate(randoms)]
    return out


def run_quadrants(loaded: LoadedModel, scan_dir: str | Path, cfg: QuadrantsConfig, out: str | Path,
                  force: bool = False) -> dict[str, Any]:
    """Evaluate every condition (resuming finished ones), then write quadrants.json and figures/."""
    from negdiff.experiments.quadrants.figures import quadrant_figures

    check_gated(loaded.sites, next(iter(QUADRANTS)), "quadrants")
    out, scan_dir = Path(out), Path(scan_dir)
    wn, scan = load_wn(loaded, scan_dir), scan_record(scan_dir)
    tasks = expand_tasks(list(cfg.tasks))
    info = loaded.info.to_dict()
    key = results.config_key({"model": {k: info[k] for k in ("spec", "revision", "weights_hash", "dtype")},
                              "scan": scan.get("key"), "wn": wn.to_dict()})
    conds = build_conditions(wn, {s.layer: s.width for s in loaded.sites}, cfg.seeds, tasks)
    configs = {t: cfg.eval_config(t) for t in tasks}
    t0 = time.time()
    items, seconds = {}, {}
    for k, cond in enumerate(conds, 1):
        status(f"quadrants [{k}/{len(conds)}] {cond.name}")
        res = run_condition_in(loaded, cond, configs, out / "conditions" / cond.name, out / "sets", key, force)
        items[cond.name], seconds[cond.name] = res["items"], res.get("seconds")
    record: dict[str, Any] = {"format": FORMAT, "key": key, "model": info, "config": cfg.to_dict(), "tasks": tasks,
                              "scan": {"dir": str(scan_dir), "key": scan.get("key"), "n_wn": wn.size},
                              "modes": {stats.short(m): stats.words(stats.short(m)) for m in QUADRANTS},
                              "set_sizes": {c.name: c.neurons.size for c in conds},
                              **stats.analyze(items, cfg, tasks)}
    record.update(seconds_per_condition=seconds, seconds_total=time.time() - t0, versions=results.versions())
    record["summary_lines"] = stats.summary_lines(record)
    record["figures"] = [str(p.relative_to(out)) for p in quadrant_figures(record, out / "figures")]
    write_record(out / "quadrants.json", record, "quadrants", record["seconds_total"])
    results.write_csv(out / "table.csv", *stats.table_csv(record))
    return record


# ------------------------------------------------------------------------------------------------ CLI
def command(args) -> int:
    """``negdiff quadrants``."""
    from negdiff.options import check_task_data, config_from_args, run_on_model

    cfg = config_from_args(QuadrantsConfig, args)

    def preflight() -> None:
        wn_path(args.scan)
        check_task_data(expand_tasks(list(cfg.tasks)))

    return run_on_model(args, lambda loaded: run_quadrants(loaded, args.scan, cfg, args.out, force=args.force),
                        "quadrants.json table.csv conditions/ sets/ figures/", preflight=preflight)


def data_needs(cfg: QuadrantsConfig) -> list[str]:
    """The dataset folders this step reads."""
    from negdiff.tasks import task_folders

    return task_folders(list(cfg.tasks))


# ------------------------------------------------------------------------------------------------ step
def run_step(loaded: LoadedModel, run_dir: Path, cfg: QuadrantsConfig, force: bool = False) -> dict[str, Any]:
    return run_quadrants(loaded, Path(run_dir) / "scan", cfg, Path(run_dir) / "quadrants", force=force)
