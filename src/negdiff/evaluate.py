"""Run registered tasks on a model under whatever intervention is active, and write the results.

The caller owns the condition: ``with intervene(model, neurons, "zero_negative"): evaluate(...)``.
This module never registers hooks or caches anything across calls, so a baseline and an ablated run
differ only by the caller's context; it reads that context from the model's hooks
(:func:`negdiff.hooks.active_interventions`), so a result computed inside an ``intervene`` block says so
even when the caller passes no ``condition``. Every run writes ``results.json`` (per task: metrics with
stderr and CI, n, task version, scoring config; model, dtype, device, condition, package versions, plus
the fields lm-evaluation-harness results carry, so tooling written for those reads these: ``date``,
``git_hash``, ``n-samples``, ``n-shot``, ``higher_is_better``) and one ``items_<task>.parquet`` per task,
whose ``item_id`` column pairs items across conditions.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from negdiff.errors import NegdiffError
from negdiff.hooks import active_interventions, condition_of
from negdiff.result_stats import bootstrap_draws, percentile_ci
from negdiff.results import versions, write_json, write_parquet
from negdiff.runs import git_revision
from negdiff.tasks import ALIASES, EvalConfig, TaskResult, expand_tasks, run_task

FORMAT = "negdiff.eval/1"


def _unpack(loaded_or_pair: Any) -> tuple[Any, Any, dict]:
    """A LoadedModel, or a (model, tokenizer) pair; returns model, tokenizer and a model record."""
    if isinstance(loaded_or_pair, tuple) and len(loaded_or_pair) == 2:
        model, tok = loaded_or_pair
        p = next(model.parameters())
        info = {"name": type(model).__name__, "model_type": getattr(getattr(model, "config", None), "model_type", None),
                "dtype": str(p.dtype).removeprefix("torch."), "device": str(p.device),
                "n_params": int(sum(x.numel() for x in model.parameters()))}
        return model, tok, info
    if hasattr(loaded_or_pair, "model") and hasattr(loaded_or_pair, "tokenizer"):
        info = loaded_or_pair.info.to_dict() if hasattr(loaded_or_pair, "info") else {}
        return loaded_or_pair.model, loaded_or_pair.tokenizer, info
    raise NegdiffError("evaluate() needs a LoadedModel or a (model, tokenizer) pair")


def mean_error(results: dict[str, TaskResult], members: list[str], metric: str, cfg: EvalConfig) -> dict:
    """Mean over benchmarks of 1 - ``metric`` (``acc`` where ``metric`` is absent), with a bootstrap CI.

    Each benchmark's items are resampled independently (the same exact draws as its own CI), and the
    stderr combines the benchmarks' standard errors.
    """
    errors, draws, ses, used = [], [], [], {}
    for i, name in enumerate(members):
        res = results[name]
        col = "correct_norm" if metric == "acc_norm" and "correct_norm" in res.items else "correct"
        used[name] = "acc_norm" if col == "correct_norm" else "acc"
        x = res.items[col].to_numpy(dtype=float)
        errors.append(1.0 - x.mean())
        draws.append(1.0 - bootstrap_draws(x, np.mean, cfg.n_boot, cfg.seed + i))
        ses.append(x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0)
    lo, hi = percentile_ci(np.mean(draws, axis=0), cfg.alpha)
    return {"value": float(np.mean(errors)), "stderr": float(np.sqrt(np.sum(np.square(ses))) / len(members)),
            "ci_low": lo, "ci_high": hi, "n": len(members), "metrics": used}


def evaluate(
    loaded_or_model_and_tokenizer: Any,
    tasks: list[str] | str,
    limit: int | None = None,
    config: EvalConfig | None = None,
    condition: dict | None = None,
) -> dict:
    """Run ``tasks`` (names or aliases) and return the results dict; ``"items"`` holds the DataFrames.

    ``limit`` overrides ``config.limit``. ``condition`` describes the caller's intervention (recorded
    as given); ``None`` records what is active on the model: the ``intervene`` blocks around this call
    (:func:`negdiff.hooks.condition_of`), or ``{"intervention": None}`` for the unedited model.
    """
    model, tok, info = _unpack(loaded_or_model_and_tokenizer)
    if condition is None:
        condition = {**condition_of(active_interventions(model)), "recorded_from": "active hooks"}
    config = config or EvalConfig()
    if limit is not None:
        config = dataclasses.replace(config, limit=limit)
    names = expand_tasks(tasks)
    t0 = time.perf_counter()
    done: dict[str, TaskResult] = {}
    for name in names:
        done[name] = run_task(name, model, tok, config)
    out: dict[str, Any] = {
        "format": FORMAT,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "negdiff_version": _negdiff_version(),
        "git_hash": git_revision(),
        "model": info,
        "condition": condition,
        "config": config.to_dict(),
        "tasks": {n: r.to_dict() for n, r in done.items()},
        "aggregates": {},
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    for alias, members in ALIASES.items():
        if all(m in done for m in members):
            out["aggregates"][f"{alias}_mean_error"] = mean_error(done, members, "acc", config)
            out["aggregates"][f"{alias}_mean_error_norm"] = mean_error(done, members, "acc_norm", config)
    out.update(harness_fields(out["tasks"], out["aggregates"]))
    out["items"] = {n: r.items for n, r in done.items()}
    return out


#: Metric names (before any ``/group/value``) for which lower is better; every other metric is an accuracy.
LOWER_IS_BETTER = ("ppl", "nll")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (the harness's per-metric flag): accuracies yes,
    perplexity, NLL and error rates no."""
    base = metric.split("/", 1)[0]
    return not (base in LOWER_IS_BETTER or "error" in base)


def harness_fields(tasks: dict[str, dict], aggregates: dict[str, dict]) -> dict[str, Any]:
    """``n-samples`` (original = items offered, effective = items scored), ``n-shot`` and
    ``higher_is_better`` per task, as lm-evaluation-harness names them; aggregates carry their own flag.

    Computed from the task records, so a merged result (``negdiff eval`` runs one call per limit) gets them
    recomputed over all its tasks.
    """
    for name, agg in aggregates.items():
        agg["higher_is_better"] = higher_is_better(name)
    return {
        "n-samples": {n: {"original": t.get("n_available", t["n"]), "effective": t["n"]} for n, t in tasks.items()},
        "n-shot": {n: 0 for n in tasks},
        "higher_is_better": {n: {m: higher_is_better(m) for m in t["metrics"]} for n, t in tasks.items()},
    }


def _negdiff_version() -> str:
    from negdiff import __version__

    return __version__


def write_results(out_dir: str | Path, results: dict, extra: dict | None = None) -> Path:
    """Write ``results.json`` and ``items_<task>.parquet`` atomically into ``out_dir``; returns the JSON path."""
    out_dir = Path(out_dir)
    items = results.get("items", {})
    for name, frame in items.items():
        write_parquet(out_dir / f"items_{name}.parquet", frame)
    record = {k: v for k, v in results.items() if k != "items"}
    record["item_files"] = {name: f"items_{name}.parquet" for name in items}
    if extra:
        record.update(extra)
    path = write_json(out_dir / "results.json", record)
    # items files of an earlier run with other tasks would sit beside results.json as if they were this run's:
    # removed once the new results.json (which lists only this run's files) is in place
    for stale in out_dir.glob("items_*.parquet"):
        if stale.name not in record["item_files"].values():
            stale.unlink(missing_ok=True)
    return path


def _partial_note(res: dict) -> str:
    """' (N of 67 BLiMP paradigms)' when a BLiMP result did not cover every paradigm, else ''."""
    from negdiff.tasks import BLIMP_PARADIGMS

    n = (res.get("config") or {}).get("n_paradigms")
    return f" ({n} of {BLIMP_PARADIGMS} BLiMP paradigms)" if n is not None and n < BLIMP_PARADIGMS else ""


def summary_lines(results: dict) -> list[str]:
    """One line per task headline metric (and the aggregates), for the terminal."""
    lines = []
    for name, res in results["tasks"].items():
        for key in ("acc", "acc_norm", "ppl", "acc_task_mean", "acc_strict"):
            if key in res["metrics"]:
                m = res["metrics"][key]
                ci = f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]" if m.get("ci_low") is not None else "(n too small for a CI)"
                lines.append(f"{name:<16} {key:<14} {m['value']:.4f}  {ci}  n={m['n']}{_partial_note(res)}")
    for name, m in results.get("aggregates", {}).items():
        lines.append(f"{name:<31} {m['value']:.4f}  [{m['ci_low']:.4f}, {m['ci_high']:.4f}]")
    return lines
