"""The paper's headline experiment: sign-specific ablation of Wasserstein neurons against controls.

Conditions (each evaluated on the same items): ``baseline``; ``wn_neg`` (zero_negative on the WN);
``random_neg_s<k>`` (as many layer-matched random non-WN neurons, seeds 0..K-1); ``ppl_matched_neg`` (the
lowest-WD m% of every layer, m searched until the perplexity increase matches wn_neg's); ``wn_pos``,
``wn_zero`` and the sign-versus-magnitude controls ``wn_identity_pos`` and ``wn_abs_neg``. Each
condition's results are written atomically as it finishes, so a rerun resumes; a changed parameter
changes that condition's key and only it is redone. Statistics and verdicts live in ``ablate_stats``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from negdiff.data import corpus_documents, token_windows
from negdiff.errors import NegdiffError
from negdiff.experiments.ablate.config import CONTROLS, MIN_CALIB_WINDOWS, AblateConfig
from negdiff.hooks import intervene
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.results import config_key, read_json, write_json
from negdiff.scoring import ScoringConfig, window_nlls
from negdiff.select import random_like, select_lowest, select_wasserstein
from negdiff.services import conditions
from negdiff.services.conditions import Condition
from negdiff.services.scan_outputs import load_scan
from negdiff.tasks import expand_tasks
from negdiff.tasks.base import EvalConfig, step_eval_config

SYNTAX_TASKS = ("perplexity", "blimp", "tse")


def eval_config(cfg: AblateConfig, task: str, dose: bool = False, control: bool = False) -> EvalConfig:
    """The EvalConfig of one task: each task family gets its own subsample size."""
    blimp = cfg.dose_blimp_limit if dose else cfg.blimp_limit
    tse = cfg.tse_limit
    if control:
        blimp = blimp if cfg.control_blimp_limit is None else cfg.control_blimp_limit
        tse = tse if cfg.control_tse_limit is None else cfg.control_tse_limit
    return step_eval_config(cfg, task, blimp_limit=blimp, tse_limit=tse,
                            ppl_tokens=cfg.dose_ppl_tokens if dose else cfg.ppl_tokens)


def calibration_windows(loaded: LoadedModel, cfg: AblateConfig) -> torch.Tensor:
    window = min(cfg.ppl_window, loaded.info.max_length or cfg.ppl_window)
    windows = token_windows(loaded.tokenizer, corpus_documents(cfg.calib_corpus)[0], window, cfg.calib_tokens)
    if len(windows) < MIN_CALIB_WINDOWS:
        raise NegdiffError(f"the calibration corpus {cfg.calib_corpus} gives {len(windows)} windows of {window} tokens; "
                           f"the perplexity-matched search needs >= {MIN_CALIB_WINDOWS}")
    return windows


def calib_ppl(loaded: LoadedModel, windows: torch.Tensor, neurons: NeuronSet, cfg: AblateConfig) -> float:
    """Perplexity of the calibration windows with ``neurons`` negative-zeroed."""
    with intervene(loaded.model, neurons, "zero_negative", sites=loaded.sites):
        nll = window_nlls(loaded.model, windows, ScoringConfig(bos=cfg.bos, max_batch_tokens=cfg.batch_tokens))
    return float(np.exp(nll.mean()))


def match_perplexity(loaded, table: pd.DataFrame, target_increase: float, base_ppl: float, windows, cfg: AblateConfig,
                     max_steps: int = 14) -> dict[str, Any]:
    """Search m (bottom-m% WD per layer, negative-zeroed) until ppl increase matches ``target_increase``.

    Bracketing (doubling m from 1%) then bisection, to a relative tolerance ``cfg.match_tol`` on the
    increase (ppl - base). Returns m, the set and the whole trace; a search that cannot reach the target
    (even at 95%) or runs out of steps reports ``matched: False`` and the closest point.
    """
    trace: list[dict[str, float]] = []
    if target_increase <= 0:  # nothing to match: report it and fall back to a WN-sized bottom set
        neurons = select_lowest(table, cfg.fraction, cfg.criterion)
        neurons.rule.update(matched_to="wn_neg", target_increase=target_increase, fallback="wn_neg did not raise perplexity")
        status(f"ppl-matched search skipped: wn_neg changed calibration perplexity by {target_increase:+.3f}, not an increase")
        return {"m": cfg.fraction, "n_neurons": neurons.size, "increase": None, "target": target_increase,
                "matched": False, "reason": "wn_neg did not raise calibration perplexity; bottom set of the WN's size used",
                "trace": trace, "neurons": neurons, "base_ppl": base_ppl}

    def at(m: float) -> float:
        neurons = select_lowest(table, m, cfg.criterion)
        inc = calib_ppl(loaded, windows, neurons, cfg) - base_ppl
        trace.append({"m": m, "n_neurons": neurons.size, "increase": inc, "target": target_increase})
        status(f"ppl-matched search: m={100 * m:.2f}% ({neurons.size} neurons) -> increase {inc:.3f} (target {target_increase:.3f})")
        return inc

    def close(inc: float) -> bool:
        return abs(inc - target_increase) <= cfg.match_tol * abs(target_increase)

    lo, hi, m = 0.0, None, 0.01
    while hi is None and len(trace) < max_steps:
        inc = at(m)
        if close(inc):
            hi = lo = m
        elif inc < target_increase:
            lo, m = m, min(0.95, 2 * m)
            if lo == 0.95:
                break
        else:
            hi = m
    while hi is not None and lo != hi and len(trace) < max_steps:
        m = (lo + hi) / 2
        inc = at(m)
        if close(inc):
            lo = hi = m
        elif inc < target_increase:
            lo = m
        else:
            hi = m
    best = min(trace, key=lambda t: abs(t["increase"] - target_increase))
    neurons = select_lowest(table, best["m"], cfg.criterion)
    neurons.rule.update(matched_to="wn_neg", target_increase=target_increase)
    return {"m": best["m"], "n_neurons": neurons.size, "increase": best["increase"], "target": target_increase,
            "matched": close(best["increase"]), "trace": trace, "neurons": neurons, "base_ppl": base_ppl}


def build_conditions(table: pd.DataFrame, loaded: LoadedModel, cfg: AblateConfig, tasks: list[str]) -> list[Condition]:
    """Every condition but the perplexity-matched one (which needs a search first)."""
    wn = select_wasserstein(table, cfg.fraction, cfg.scope, cfg.criterion)
    widths = {s.layer: s.width for s in loaded.sites}
    syntax = [t for t in tasks if t in SYNTAX_TASKS]
    ctrl = tasks if cfg.controls_on_nongram else syntax
    out = [Condition("baseline", NeuronSet.empty(), tasks=tasks), Condition("wn_neg", wn, tasks=tasks)]
    out += [Condition(f"random_neg_s{k}", random_like(wn, widths, seed=k), tasks=tasks) for k in range(cfg.seeds)]
    modes = ("zero_positive", "zero", "identity_positive", "abs_negative_output")
    out += [Condition(name, wn, mode, ctrl) for name, mode in zip(CONTROLS, modes, strict=True)]
    return out


def run_condition(loaded: LoadedModel, cond: Condition, cfg: AblateConfig, out: Path, key: str,
                  force: bool, dose: bool = False) -> dict[str, Any]:
    """Evaluate one condition (or reuse its finished results) with this run's per-task EvalConfigs."""
    folder = out / ("dose" if dose else "conditions") / cond.name
    configs = {t: eval_config(cfg, t, dose, control=cond.name in CONTROLS) for t in cond.tasks}
    return conditions.run_condition(loaded, cond, configs, folder, out / "sets", key, force)


def dose_response(loaded, table, cfg: AblateConfig, out: Path, key: str, force: bool) -> list[dict[str, Any]]:
    """Perplexity and subsampled BLiMP as the per-layer fraction p of top-WD neurons grows, with random beside."""
    widths = {s.layer: s.width for s in loaded.sites}
    base = run_condition(loaded, Condition("baseline", NeuronSet.empty(), tasks=["perplexity", "blimp"]), cfg, out, key,
                         force, dose=True)
    rows = [{"p": 0.0, "set": "baseline", "n_neurons": 0, **_dose_cells(base)}]
    for p in cfg.dose_fractions:
        top = select_wasserstein(table, p, cfg.scope, cfg.criterion)
        for name, neurons in ((f"top_{p:g}", top), (f"random_{p:g}", random_like(top, widths, seed=cfg.seed))):
            res = run_condition(loaded, Condition(name, neurons, tasks=["perplexity", "blimp"]), cfg, out, key, force, dose=True)
            rows.append({"p": p, "set": name.split("_")[0], "n_neurons": neurons.size, **_dose_cells(res)})
    return rows


def _dose_cells(res: dict[str, Any]) -> dict[str, Any]:
    """Perplexity and BLiMP accuracy of one dose condition, each with its 95% CI (windows / items resampled)."""
    out = {}
    for key, task, metric in (("ppl", "perplexity", "ppl"), ("blimp", "blimp", "acc")):
        m = res["tasks"][task]["metrics"][metric]
        out[key] = m["value"]
        out[f"{key}_ci"] = [m.get("ci_low"), m.get("ci_high")]
    return out


def check_sign_meaningful(loaded: LoadedModel) -> None:
    """Refuse a model whose activation already outputs 0 for every h < 0 (ReLU): zero_negative is then a no-op,
    so every wn_neg-versus-control verdict would be 'no effect' by construction, not by measurement."""
    kinds = sorted({s.kind for s in loaded.sites})
    if "relu" in kinds:
        raise NegdiffError(f"'{loaded.info.spec}' uses a ReLU activation, where zero_negative changes nothing (ReLU "
                           "already outputs 0 for h < 0), so the ablation's verdicts would be empty; run ablate on a "
                           "gelu/silu model (scan and eval --mode zero/zero_positive still work on ReLU)")


def run_ablate(loaded: LoadedModel, scan_dir: str | Path, cfg: AblateConfig, out: str | Path,
               force: bool = False) -> dict[str, Any]:
    """Run every condition, the perplexity-matched search and the dose response; write ablation.json."""
    from negdiff.experiments.ablate.stats import analyze, write_outputs

    out = Path(out)
    check_sign_meaningful(loaded)
    table, scan = load_scan(scan_dir, loaded)
    tasks = expand_tasks(list(cfg.tasks))
    if "perplexity" not in tasks:
        tasks.insert(0, "perplexity")  # the matching criterion of the control; always reported
    key = config_key({"model": {k: loaded.info.to_dict()[k] for k in ("spec", "revision", "weights_hash", "dtype")},
                      "scan": scan.get("key"), "criterion": cfg.criterion, "scope": cfg.scope, "fraction": cfg.fraction})
    t0 = time.time()
    if not (out / "ablation.json").is_file() or force:
        from negdiff.estimate import describe, estimate_step, forward_tokens_per_second

        tok_s = forward_tokens_per_second(loaded.model)
        status(f"ablate: {describe({'ablate': estimate_step('ablate', cfg, len(loaded.sites), tok_s)}, tok_s)}")
    conditions = build_conditions(table, loaded, cfg, tasks)
    results = {}
    for cond in conditions[:2]:  # baseline and wn_neg first: the search needs wn_neg's perplexity increase
        results[cond.name] = run_condition(loaded, cond, cfg, out, key, force)
    calib = calibration_windows(loaded, cfg)
    search_key = config_key({"base": key, "calib": [cfg.calib_corpus, cfg.calib_tokens, cfg.match_tol, cfg.bos]})
    search_file = out / "ppl_matched_search.json"
    if not force and search_file.is_file() and read_json(search_file).get("key") == search_key:
        search = read_json(search_file)
        search["neurons"] = NeuronSet.from_json(out / "sets" / "ppl_matched_neg.json")
    else:
        base_ppl = calib_ppl(loaded, calib, NeuronSet.empty(), cfg)
        target = calib_ppl(loaded, calib, conditions[1].neurons, cfg) - base_ppl
        search = match_perplexity(loaded, table, target, base_ppl, calib, cfg)
        search["neurons"].to_json(out / "sets" / "ppl_matched_neg.json")
        write_json(search_file, {**{k: v for k, v in search.items() if k != "neurons"}, "key": search_key,
                                 "calib": {"corpus": cfg.calib_corpus, "tokens": int(calib.numel())}})
    conditions.insert(2 + cfg.seeds, Condition("ppl_matched_neg", search["neurons"], tasks=tasks))
    for cond in conditions[2:]:
        results[cond.name] = run_condition(loaded, cond, cfg, out, key, force)
    dose = dose_response(loaded, table, cfg, out, key, force) if cfg.dose_fractions else []
    record = analyze(results, conditions, search, dose, cfg)
    record.update(model=loaded.info.to_dict(), scan={"dir": str(scan_dir), "key": scan.get("key")},
                  config=cfg.to_dict(), seconds_total=time.time() - t0,
                  seconds_per_condition={c.name: results[c.name].get("seconds") for c in conditions})
    write_outputs(record, results, out)
    return record


# ------------------------------------------------------------------------------------------------ CLI
def command(args) -> int:
    """``negdiff ablate``: the flags' config, then --full and --no-dose on top."""
    from negdiff.experiments.ablate.stats import table_lines
    from negdiff.options import config_from_args, run_on_model

    cfg = config_from_args(AblateConfig, args)
    if args.full:
        cfg = cfg.full()
    if args.no_dose:
        cfg = dataclasses.replace(cfg, dose_fractions=())

    def preflight() -> None:  # data_needs below lists the same datasets for negdiff reproduce
        from negdiff.data import check_corpus
        from negdiff.options import check_task_data
        from negdiff.services.scan_outputs import check_scan_dir

        check_scan_dir(args.scan)
        tasks = expand_tasks(list(cfg.tasks))
        check_task_data(tasks if "perplexity" in tasks else ["perplexity", *tasks])
        check_corpus(cfg.calib_corpus)

    return run_on_model(args, lambda loaded: run_ablate(loaded, args.scan, cfg, args.out, force=args.force),
                        "ablation.json table.md items/ figures/", lines=table_lines, preflight=preflight)


def data_needs(cfg: AblateConfig) -> list[str]:
    """The dataset folders this step reads: ``negdiff reproduce`` fetches or refuses them before any model loads."""
    from negdiff.data import corpus_folders
    from negdiff.tasks import task_folders

    tasks = expand_tasks(list(cfg.tasks))
    return task_folders(tasks if "perplexity" in tasks else ["perplexity", *tasks]) + corpus_folders(cfg.calib_corpus)


# ------------------------------------------------------------------------------------------------ step
def run_step(loaded: LoadedModel, run_dir: Path, cfg: AblateConfig, force: bool = False) -> dict[str, Any]:
    return run_ablate(loaded, Path(run_dir) / "scan", cfg, Path(run_dir) / "ablate", force=force)

