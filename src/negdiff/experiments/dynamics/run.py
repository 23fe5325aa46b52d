"""``negdiff dynamics``: Wasserstein neurons and the ablation's harm across training checkpoints.

The paper follows the final Pythia checkpoint's top-1% WN back through training: their WD rises
early and then stabilizes, their input weights settle, the cohort's WD tracks syntactic accuracy,
and negative-zeroing them hurts more as they emerge. Per checkpoint this runs a small scan (WD of
every neuron), measures how far each neuron's input-projection row turned since the previous
checkpoint (1 - cos), and evaluates baseline, ``cohort_neg`` (the final checkpoint's WN, fixed),
``reid_neg`` (the WN re-identified at this checkpoint) and ``random_neg`` (layer-matched random
neurons, cohort excluded, several seeds) on perplexity, BLiMP and TSE subsamples. Every checkpoint's
results are kept in its own folder under a key, so an interrupted run resumes; a checkpoint that
cannot be loaded (missing folder, hub revision offline) is reported, recorded as missing and drawn as
missing, never dropped. Which checkpoints a SPEC names is :mod:`dynamics_spec`; statistics live in
:mod:`dynamics_stats`, figures in :mod:`dynamics_figures`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from negdiff.bootstrap import Interval, too_small
from negdiff.contrasts import Contrasts, ppl_cell
from negdiff.errors import NegdiffError
from negdiff.experiments.dynamics.config import TASK_METRIC, DynamicsConfig
from negdiff.experiments.dynamics.spec import SHORTHANDS, Checkpoint, parse_spec
from negdiff.experiments.dynamics.stats import (
    DESCRIPTIVE,
    change_summary,
    overlap_columns,
    spearman_descriptive,
    wd_summary,
    weight_change_table,
)
from negdiff.experiments.scan.run import run_scan
from negdiff.models import LoadedModel, load_model, resolve_device, resolve_dtype
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.results import config_key, read_json, versions, write_json, write_parquet
from negdiff.runs import write_record
from negdiff.select import random_like, select_wasserstein
from negdiff.services.conditions import Condition, run_condition

__all__ = ["SHORTHANDS", "Checkpoint", "DynamicsConfig", "parse_spec", "run_dynamics"]

FORMAT = "negdiff.dynamics/2"
#: The per-item read-out each task's delta is computed on (perplexity: per-window NLL, shown as Δppl).
TASK_READOUT = {"perplexity": "nll", "blimp": "acc", "tse": "acc"}


@dataclass
class _Run:
    """What every checkpoint's processing shares."""

    cfg: DynamicsConfig
    out: Path
    cohort: NeuronSet
    randoms: list[NeuronSet]
    dtype: str
    device: str
    force: bool
    loader: Any
    fresh: set[str] = dataclasses.field(default_factory=set)  # scanned in this run already (the final)

    def folder(self, ck: Checkpoint) -> Path:
        return self.out / "checkpoints" / ck.label

    def load(self, ck: Checkpoint) -> tuple[LoadedModel | None, str | None]:
        """The checkpoint's model, or None and why it cannot be had."""
        if ck.revision is None and not Path(ck.spec).exists():
            return None, f"folder not found: {ck.spec}"
        try:
            return self.loader(ck.spec, revision=ck.revision, dtype=self.dtype, device=self.device), None
        except NegdiffError as exc:
            return None, str(exc)


def proj_rows(loaded: LoadedModel) -> list[torch.Tensor]:
    """Each layer's neuron input rows (the projection feeding the activation), float32 on the CPU."""
    return [s.proj_weight()[0].detach().float().cpu() for s in loaded.sites]


def _ablate(run: _Run, loaded: LoadedModel, folder: Path, reid: NeuronSet) -> dict[str, Any]:
    """Score every condition (cached per condition) and summarize values and paired deltas vs baseline."""
    cfg, tasks = run.cfg, list(run.cfg.tasks)
    configs = {t: cfg.eval_config(t) for t in tasks}
    same = set(reid) == set(run.cohort)
    conds = [Condition("baseline", NeuronSet.empty(), tasks=tasks), Condition("cohort_neg", run.cohort, tasks=tasks)]
    conds += [] if same else [Condition("reid_neg", reid, tasks=tasks)]
    conds += [Condition(f"random_neg_s{k}", r, tasks=tasks) for k, r in enumerate(run.randoms)]
    info = loaded.info.to_dict()
    base = {k: info[k] for k in ("spec", "revision", "weights_hash", "dtype", "n_params")}
    results = {c.name: run_condition(loaded, c, configs, folder / "ablate" / "conditions" / c.name,
                                     folder / "ablate" / "sets", config_key({"model": base, "neurons": c.neurons.to_dict()}),
                                     run.force)
               for c in conds}
    if same:  # at the final checkpoint the re-identified set is the cohort: the same numbers
        results["reid_neg"] = results["cohort_neg"]
    groups = {"baseline": ["baseline"], "cohort_neg": ["cohort_neg"], "reid_neg": ["reid_neg"],
              "random_neg": [f"random_neg_s{k}" for k in range(len(run.randoms))]}
    con = Contrasts({name: r["items"] for name, r in results.items()}, groups, n_boot=cfg.n_boot, seed=cfg.seed)
    out: dict[str, Any] = {"reid_equals_cohort": same, "n_reid": reid.size,
                           "seconds_ablation": sum(r.get("seconds") or 0.0 for r in results.values())}
    for g, names in groups.items():
        for task in tasks:
            out[f"{task}_{g}"] = float(np.mean([results[n]["tasks"][task]["metrics"][TASK_METRIC[task]]["value"]
                                                for n in names]))
            if g != "baseline":
                out.update(delta_columns(con, task, g, len(names) if g == "random_neg" else None))
    return out


def delta_columns(con: Contrasts, task: str, group: str, k_sets: int | None) -> dict[str, Any]:
    """``d_<task>_<group>`` (Δppl, or Δaccuracy as a fraction) and its 95% CI, NaN where there is none.

    Perplexity: t-interval on per-window NLL differences, transformed to Δppl. Items: paired bootstrap.
    A random control of K >= 2 sets carries its between-set variance; from K = 1 set that variance
    cannot be estimated, so the contrast gets its point estimate and "n too small", not a CI that
    pretends the one set drawn is the control.
    """
    readout = TASK_READOUT[task]
    if k_sets is not None and k_sets < 2:
        est = con.parts(task, readout, "baseline", group)["estimate"]
        iv: Interval = too_small(est, k_sets, "random sets", "between-set variance not estimable from K = 1 set")
    else:
        iv = con.interval(task, readout, "baseline", group)
    col = f"d_{task}_{group}"
    if task == "perplexity":
        cell = ppl_cell(iv, con.value("baseline", task, readout)["value"])
        d, lo, hi = cell["diff"], cell.get("ci_low", float("nan")), cell.get("ci_high", float("nan"))
    else:
        d, (lo, hi) = iv.estimate, iv.ci if iv.ci is not None else (float("nan"), float("nan"))
    return {col: d, f"{col}_lo": lo, f"{col}_hi": hi, f"{col}_n": iv.n, f"{col}_units": iv.units,
            f"{col}_method": iv.method}


def _process(run: _Run, ck: Checkpoint, loaded: LoadedModel, prev: Checkpoint | None,
             prev_rows: list[torch.Tensor] | None) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Scan, weight change against ``prev`` and ablation of one checkpoint; returns its summary and rows."""
    folder, t0 = run.folder(ck), time.time()
    scan = run_scan(loaded, run.cfg.scan_config(), folder / "scan", force=run.force and ck.label not in run.fresh)
    table = pd.read_parquet(folder / "scan" / "neurons.parquet")
    widths = table.groupby("layer").size().to_dict()
    if any(n >= widths.get(layer, 0) for layer, n in run.cohort):
        raise NegdiffError(f"checkpoint {ck.name} has other layers/widths ({widths}) than the final checkpoint")
    reid = NeuronSet.from_json(folder / "scan" / "wn.json")
    rows = proj_rows(loaded)
    summary: dict[str, Any] = {"label": ck.label, "step": ck.step, "name": ck.name, "status": "ok",
                               "model": loaded.info.to_dict(), "scan_key": scan.get("key"), "n_neurons": len(table),
                               "n_wn": reid.size, **wd_summary(table, run.cohort, reid)}
    if prev is not None:
        if prev_rows is None:  # resumed after prev was done: reload its weights
            prev_loaded, msg = run.load(prev)
            prev_rows = None if prev_loaded is None else proj_rows(prev_loaded)
            if msg:
                summary["wchange_note"] = f"previous checkpoint {prev.name} cannot be reloaded: {msg}"
        if prev_rows is not None:
            change = weight_change_table(prev_rows, rows)
            write_parquet(folder / "weight_change.parquet", change)
            summary.update(change_summary(change, run.cohort, run.randoms), wchange_prev=prev.label)
    summary.update(_ablate(run, loaded, folder, reid))
    summary["seconds"] = time.time() - t0
    return summary, rows


def _checkpoint_key(run: _Run, ck: Checkpoint, prev: Checkpoint | None) -> str:
    return config_key({"format": FORMAT, "ckpt": ck.identity(), "cfg": {**run.cfg.to_dict(), "batch_tokens": None},
                       "cohort": run.cohort.to_dict(), "randoms": [r.to_dict() for r in run.randoms],
                       "prev": None if prev is None else prev.identity(), "dtype": run.dtype})


def run_dynamics(ckpts: list[Checkpoint], cfg: DynamicsConfig, out: str | Path, *, dtype: str = "float32",
                 device: str = "cpu", force: bool = False, spec: str | None = None, loader=None) -> dict[str, Any]:
    """Process every checkpoint (resuming finished ones) and write dynamics.json, dynamics.parquet, figures/."""
    from negdiff.experiments.dynamics.figures import dynamics_figures, summary_lines

    resolve_dtype(dtype), resolve_device(device)  # a bad option must not read as "every checkpoint missing"
    out, t0 = Path(out), time.time()
    missing: dict[str, str] = {}
    run = _Run(cfg, out, NeuronSet.empty(), [], dtype, device, force, loader or load_model)
    final, loaded = None, None
    for ck in reversed(ckpts):  # the cohort comes from the last checkpoint that can be had
        loaded, msg = run.load(ck)
        if loaded is not None:
            final = ck
            break
        missing[ck.label] = msg or "cannot be loaded"
        status(f"checkpoint {ck.name} is missing: {missing[ck.label]}")
    if final is None:
        raise NegdiffError(f"none of the {len(ckpts)} checkpoints could be loaded: "
                           + "; ".join(f"{c.name} ({missing[c.label]})" for c in ckpts))
    scan = run_scan(loaded, cfg.scan_config(), run.folder(final) / "scan", force=force)
    cohort = select_wasserstein(pd.read_parquet(run.folder(final) / "scan" / "neurons.parquet"), cfg.fraction,
                                cfg.scope, cfg.criterion)
    cohort.rule.update(role="fixed cohort: WN of the final available checkpoint", checkpoint=final.name,
                       scan=scan.get("key"))
    widths = {s.layer: s.width for s in loaded.sites}
    run.cohort, run.fresh = cohort, {final.label}
    run.randoms = [random_like(cohort, widths, seed=cfg.seed + k) for k in range(cfg.seeds)]
    cohort.to_json(out / "cohort.json")
    del loaded
    summaries: dict[str, dict[str, Any]] = {}
    prev, prev_rows = None, None
    for i, ck in enumerate(ckpts):
        if ck.label in missing:
            continue
        path, key = run.folder(ck) / "summary.json", _checkpoint_key(run, ck, prev)
        if not force and path.is_file() and read_json(path).get("key") == key:
            summaries[ck.label], prev, prev_rows = read_json(path), ck, None
            continue
        cur, msg = run.load(ck)
        if cur is None:
            missing[ck.label] = msg or "cannot be loaded"
            status(f"checkpoint {ck.name} is missing: {missing[ck.label]}")
            continue
        status(f"checkpoint {i + 1}/{len(ckpts)}: {ck.name}")
        summary, rows = _process(run, ck, cur, prev, prev_rows)
        write_json(path, {**summary, "key": key})
        summaries[ck.label], prev, prev_rows = summary, ck, rows
        del cur
    rows = []
    for i, ck in enumerate(ckpts):
        row: dict[str, Any] = {"index": i, "label": ck.label, "step": ck.step, "name": ck.name,
                               "tokens_seen": ck.tokens_seen()}
        s = summaries.get(ck.label)
        if s is None:
            row.update(status="missing", message=missing.get(ck.label, "not processed"))
        else:
            row.update({k: v for k, v in s.items()
                        if k not in row and k != "key" and isinstance(v, (int, float, str, bool, type(None)))})
            row["message"] = None
        rows.append(row)
    overlap_columns(rows, {lab: NeuronSet.from_json(run.folder(c) / "scan" / "wn.json")
                           for c in ckpts if (lab := c.label) in summaries}, cohort)
    table = pd.DataFrame(rows)
    write_parquet(out / "dynamics.parquet", table)
    ok = table[table.status == "ok"]
    corr = {}
    for name, target in (("tse", "tse_baseline"), ("blimp", "blimp_baseline")):
        if target in ok:
            corr[f"wd_cohort_median_vs_{name}"] = spearman_descriptive(ok.wd_cohort_q50, ok[target])
    if "d_tse_cohort_neg" in ok:  # harm = accuracy lost when the cohort is negative-zeroed
        corr["wd_cohort_median_vs_tse_harm"] = spearman_descriptive(ok.wd_cohort_q50, -ok.d_tse_cohort_neg)
    record: dict[str, Any] = {
        "format": FORMAT, "spec": spec, "config": cfg.to_dict(), "dtype": dtype, "device": device,
        "checkpoints": [{"label": c.label, "step": c.step, "name": c.name,
                         "status": "ok" if c.label in summaries else "missing",
                         "message": None if c.label in summaries else missing.get(c.label, "not processed")}
                        for c in ckpts],
        "missing": [c.name for c in ckpts if c.label not in summaries],
        "final": final.name, "model": summaries.get(final.label, {}).get("model"),
        "cohort": {"file": "cohort.json", "n": cohort.size, "per_layer": cohort.counts(), "rule": cohort.rule},
        "random_controls": [r.rule for r in run.randoms], "correlations": corr, "correlations_note": DESCRIPTIVE,
        "table": "dynamics.parquet",
        "timing": {"seconds": time.time() - t0, "per_checkpoint": {k: v.get("seconds") for k, v in summaries.items()}},
        "versions": versions(),
    }
    record["figures"] = [str(p.relative_to(out)) for p in dynamics_figures(table, record, out / "figures")]
    record["summary_lines"] = summary_lines(table, record)
    write_record(out / "dynamics.json", record, "dynamics", record["timing"]["seconds"])
    return record


# ---------------------------------------------------------------------------------------------- CLI
def command(args) -> int:
    """``negdiff dynamics``."""
    from negdiff.options import config_from_args

    ckpts = parse_spec(args.checkpoints)
    cfg = config_from_args(DynamicsConfig, args)
    record = run_dynamics(ckpts, cfg, args.out, dtype=args.dtype, device=args.device, force=args.force,
                          spec=args.checkpoints)
    print("\n".join(record["summary_lines"]))
    print(f"wrote {args.out}/: dynamics.json dynamics.parquet cohort.json figures/ checkpoints/")
    return 0
