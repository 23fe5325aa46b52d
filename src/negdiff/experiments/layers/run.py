"""``negdiff layers``: which depth of Wasserstein neurons carries the syntax damage, and whether it adds up.

The paper splits Llama's 32 layers into 8 groups of 4 consecutive layers, negative-zeroes the WN of one
group at a time and of groups 1..k cumulatively, and finds early groups hurt most and errors growing
with depth in a few phenomena. negdiff runs, on the same items: the baseline; the WN of each single
group; groups 1..k from the bottom and n-k+1..n from the top, for every k. Each condition goes through
:func:`run_condition` (ablate's layout: evaluated once, cached under its key, so a rerun resumes),
and the read-outs are perplexity, BLiMP overall and per linguistics_term, TSE overall, per group and
per task (accuracy and the continuous margin), as paired deltas to baseline: a t-interval on
per-window NLL differences for perplexity, a stratified paired bootstrap for items, and no interval at
all below 10 windows or items (:mod:`.layers_stats`). Perplexity windows are ``ppl_window`` tokens
(default 512, not the paper's 2048) so that the default 6144 tokens give 12 windows: a t-interval on
3 windows of 2048 would be honest but uselessly wide, and a bootstrap on them would under-cover.

Group rule (``layer_groups``): by default 8 groups of consecutive layers whose sizes differ by at most
one, the larger groups first (``numpy.array_split``): 32 layers -> 8 x 4 (the paper's), 30 -> 4,4,4,4,
4,4,3,3, 12 -> 2,2,2,2,1,1,1,1; fewer than 8 layers -> one layer per group. ``--group-size G`` instead
cuts groups of G layers from the bottom, the last one shorter when G does not divide the depth.

Layer cache (``--layer-cache-mb``, default 2048; 0 = off): an edit on layers >= L leaves the residual
stream below L as some earlier condition had it, so the baseline records the stream entering each group
boundary, single group k and the cumulative runs record where their successors start, and every condition
runs only the layers above its deepest shared boundary (:mod:`negdiff.services.layer_cache.plan`): on 8 groups half
of all layer passes are skipped. Same scores within 1e-5; beyond the memory budget entries spill to disk
(``--layer-cache-disk-mb``) and beyond that are recomputed. ``layers.json`` says what each condition replayed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from negdiff import results
from negdiff.bootstrap import MIN_UNITS
from negdiff.errors import NegdiffError
from negdiff.experiments.layers import stats as layers_stats
from negdiff.experiments.layers.config import LayersConfig
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.runs import write_record
from negdiff.services.conditions import Condition
from negdiff.services.conditions import run_condition as run_condition_in
from negdiff.services.layer_cache.plan import PrefixCache
from negdiff.services.scan_outputs import load_wn, scan_record, wn_path
from negdiff.tasks import expand_tasks

FORMAT = "negdiff.layers/2"
N_GROUPS = 8


# ---------------------------------------------------------------------------------------------- groups
def layer_groups(n_layers: int, group_size: int | None = None) -> list[list[int]]:
    """Consecutive layer groups: the default 8-group rule, or groups of ``group_size`` (last one shorter)."""
    if n_layers < 1:
        raise NegdiffError(f"the model has no MLP layers to group ({n_layers})")
    if group_size is None:
        return [part.tolist() for part in np.array_split(np.arange(n_layers), min(N_GROUPS, n_layers))]
    if not 1 <= group_size <= n_layers:
        raise NegdiffError(f"--group-size must be between 1 and the number of layers ({n_layers}), got {group_size}")
    return [list(range(lo, min(lo + group_size, n_layers))) for lo in range(0, n_layers, group_size)]


def group_rule(n_layers: int, group_size: int | None) -> str:
    """The rule in words, for the results."""
    if group_size is None:
        return (f"{min(N_GROUPS, n_layers)} groups of consecutive layers, sizes differing by at most one, larger first"
                if n_layers >= N_GROUPS else "one layer per group (fewer than 8 layers)")
    return f"groups of {group_size} consecutive layers from the bottom" + (
        "" if n_layers % group_size == 0 else f", the last of {n_layers % group_size}")


def span_name(i: int, j: int) -> str:
    """Condition name of groups i..j (0-based in, 1-based out): g3, or g1-4 for a range."""
    return f"g{i + 1}" if i == j else f"g{i + 1}-{j + 1}"


def plan_spans(n_groups: int) -> dict[str, list[tuple[int, int]]]:
    """Group ranges: each single group; groups 0..k-1 (bottom) and n-k..n-1 (top) for k = 1..n."""
    return {"single": [(i, i) for i in range(n_groups)],
            "bottom": [(0, k - 1) for k in range(1, n_groups + 1)],
            "top": [(n_groups - k, n_groups - 1) for k in range(1, n_groups + 1)]}


def build_conditions(wn: NeuronSet, groups: list[list[int]], tasks: list[str], mode: str) -> list[Condition]:
    """Baseline, then every distinct group range once (a single group is also the first cumulative step)."""
    spans = plan_spans(len(groups))
    unique = list(dict.fromkeys(s for kind in ("single", "bottom", "top") for s in spans[kind]))
    out = [Condition("baseline", NeuronSet.empty(), mode, tasks)]
    for i, j in unique:
        layers = [layer for g in groups[i:j + 1] for layer in g]
        out.append(Condition(span_name(i, j), wn.restrict(layers), mode, tasks))
    return out


def group_records(groups: list[list[int]], wn: NeuronSet) -> list[dict[str, Any]]:
    return [{"index": i + 1, "layers": g, "label": f"g{i + 1} (L{g[0]}" + (f"-{g[-1]})" if len(g) > 1 else ")"),
             "single": span_name(i, i), "n_wn": wn.restrict(g).size} for i, g in enumerate(groups)]


# ---------------------------------------------------------------------------------------------- runner
def run_condition(loaded: LoadedModel, cond: Condition, cfg: LayersConfig, out: Path, key: str,
                  force: bool) -> dict[str, Any]:
    """Evaluate one condition (or reuse its finished results); its perplexity window is part of the key."""
    configs = {t: cfg.eval_config(t) for t in cond.tasks}
    return run_condition_in(loaded, cond, configs, out / "conditions" / cond.name, out / "sets", key, force)


def perplexity_windows(cfg: LayersConfig, base: dict[str, Any]) -> dict[str, Any] | None:
    """The declared and the used perplexity windows, and whether they are enough for an interval."""
    task = base.get("tasks", {}).get("perplexity")
    if task is None:
        return None
    used = task.get("config", {})
    n = used.get("n_windows")
    return {"ppl_window": cfg.ppl_window, "ppl_tokens": cfg.ppl_tokens, "expected_windows": cfg.expected_windows(),
            "window": used.get("window"), "n_windows": n, "min_windows_for_ci": MIN_UNITS,
            "note": None if n is None or n >= MIN_UNITS else
            f"{n} windows: perplexity deltas are point estimates only (n too small, < {MIN_UNITS})"}


def layer_cache(loaded: LoadedModel, conds: list[Condition], groups: list[list[int]], cfg: LayersConfig,
                out: Path) -> PrefixCache:
    """The residual-stream cache of a run: recorded at the group boundaries, replayed by every condition whose
    edits below a boundary match an earlier condition's (baseline: lowest edited group >= 2; cumulative
    g1..k: from g1..k-1 at group k). Results equal the uncached run within 1e-5 (tests/test_layer_cache.py)."""
    return PrefixCache(loaded.model, [(c.neurons, c.mode) for c in conds], [g[0] for g in groups[1:]],
                       cfg.layer_cache_mb, cfg.layer_cache_disk_mb, out,
                       names=[c.name for c in conds])


def run_layers(loaded: LoadedModel, scan_dir: str | Path, cfg: LayersConfig, out: str | Path,
               force: bool = False) -> dict[str, Any]:
    """Evaluate every condition (resuming finished ones), then write deltas.parquet, layers.json, figures/."""
    from negdiff.experiments.layers.figures import layers_figures

    out, scan_dir = Path(out), Path(scan_dir)
    wn, scan = load_wn(loaded, scan_dir), scan_record(scan_dir)
    n_layers = len(loaded.sites)
    groups = layer_groups(n_layers, cfg.group_size)
    tasks = expand_tasks(list(cfg.tasks))
    info = loaded.info.to_dict()
    key = results.config_key({"model": {k: info[k] for k in ("spec", "revision", "weights_hash", "dtype")},
                              "scan": scan.get("key"), "wn": wn.to_dict()})
    conds = build_conditions(wn, groups, tasks, cfg.mode)
    t0 = time.time()
    res, seconds = {}, {}
    with layer_cache(loaded, conds, groups, cfg, out) as cache:
        for k, cond in enumerate(conds, 1):
            status(f"layers [{k}/{len(conds)}] {cond.name}: {cond.neurons.size} WN in layers "
                   f"{cond.neurons.layers[0] if cond.neurons.size else '-'}..{cond.neurons.layers[-1] if cond.neurons.size else '-'}")
            with cache.step(k - 1):
                res[cond.name] = run_condition(loaded, cond, cfg, out, key, force)
            seconds[cond.name] = res[cond.name].get("seconds")
    items = {name: r["items"] for name, r in res.items()}
    names = [c.name for c in conds if c.name != "baseline"]
    spans = plan_spans(len(groups))
    singles, everything = [span_name(i, i) for i in range(len(groups))], span_name(0, len(groups) - 1)
    deltas, additivity = layers_stats.delta_table(items, names, cfg.n_boot, cfg.seed, singles, everything)
    record: dict[str, Any] = {
        "format": FORMAT, "key": key, "model": info, "config": cfg.to_dict(), "tasks": tasks,
        "scan": {"dir": str(scan_dir), "key": scan.get("key"), "n_wn": wn.size},
        "group_rule": group_rule(n_layers, cfg.group_size), "groups": group_records(groups, wn),
        "cumulative": {d: [span_name(i, j) for i, j in spans[d]] for d in ("bottom", "top")},
        "conditions": {c.name: c.describe() for c in conds},
        "perplexity_windows": perplexity_windows(cfg, res["baseline"]),
        "additivity": additivity,
        "additivity_note": "overall read-outs are the question; per-phenomenon ones (exploratory: true) are unadjusted",
        "most_degraded_all_groups": layers_stats.most_degraded(deltas, everything, 8),
        "group_profile": layers_stats.group_profile(deltas, group_records(groups, wn)),
        "delta_units": "perplexity: ppl(condition) - ppl(baseline), CI from a t-interval on per-window mean-NLL "
                       "differences (diff_nll*); acc: fraction (x100 = points); margin: nats",
        "min_units_for_ci": MIN_UNITS,
        "seconds_per_condition": seconds, "seconds_total": time.time() - t0, "versions": results.versions(),
        "layer_cache": cache.summary(),
    }
    record["summary_lines"] = layers_stats.summary_lines(record, deltas)
    results.write_parquet(out / "deltas.parquet", deltas)
    record["figures"] = [str(p.relative_to(out)) for p in layers_figures(record, deltas, out / "figures")]
    write_record(out / "layers.json", record, "layers", record.get("seconds_total"))
    return record


# ------------------------------------------------------------------------------------------------ CLI
def command(args) -> int:
    """``negdiff layers``."""
    from negdiff.options import check_task_data, config_from_args, run_on_model

    cfg = config_from_args(LayersConfig, args)

    def preflight() -> None:
        wn_path(args.scan)
        check_task_data(expand_tasks(list(cfg.tasks)))

    def run(loaded):
        layer_groups(len(loaded.sites), cfg.group_size)  # a bad --group-size fails before any evaluation
        return run_layers(loaded, args.scan, cfg, args.out, force=args.force)

    return run_on_model(args, run, "layers.json deltas.parquet conditions/ sets/ figures/", preflight=preflight)


def data_needs(cfg: LayersConfig) -> list[str]:
    """The dataset folders this step reads: ``negdiff reproduce`` fetches or refuses them before any model loads."""
    from negdiff.tasks import task_folders

    return task_folders(list(cfg.tasks))


# ------------------------------------------------------------------------------------------------ step
def run_step(loaded: LoadedModel, run_dir: Path, cfg: LayersConfig, force: bool = False) -> dict[str, Any]:
    return run_layers(loaded, Path(run_dir) / "scan", cfg, Path(run_dir) / "layers", force=force)

