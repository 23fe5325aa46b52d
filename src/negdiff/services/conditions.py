"""A condition of an experiment (a neuron set and the edit applied to it) and its resumable evaluation.

Why a service of its own: ablate, layers and dynamics all evaluate "this edit on these neurons, on these
tasks", and a finished condition must be reused only when nothing that changes its scores changed. The
resume key is the condition (name, edit, set, rule) plus every task's EvalConfig, without the batch
budget and context sharing (scores do not depend on them: tested to 1e-4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from negdiff.evaluate import evaluate, write_results
from negdiff.hooks import intervene
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.results import config_key, read_json
from negdiff.tasks.base import EvalConfig


@dataclass
class Condition:
    """One row of a table: a neuron set, the edit applied to it, and the tasks it is scored on."""

    name: str
    neurons: NeuronSet
    mode: str = "zero_negative"
    tasks: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "n_neurons": self.neurons.size, "rule": self.neurons.rule,
                "per_layer": self.neurons.counts(), "tasks": self.tasks}


def key_config(config: EvalConfig) -> dict[str, Any]:
    """An EvalConfig as a resume key, without the batch budget and context sharing."""
    out = config.to_dict()
    out["scoring"] = {k: v for k, v in out["scoring"].items() if k not in ("max_batch_tokens", "share_context")}
    return out


def run_condition(loaded: LoadedModel, cond: Condition, configs: dict[str, EvalConfig], folder: Path, sets_dir: Path,
                  key: str, force: bool) -> dict[str, Any]:
    """Evaluate ``cond`` on each task with ``configs[task]`` (or reuse the finished results in ``folder``).

    Returns the merged results with the per-item tables under ``"items"``; the set is written to
    ``sets_dir/<name>.json`` so a result file always sits beside the neurons it touched.
    """
    ckey = config_key({"base": key, "cond": cond.describe(), "cfg": [key_config(configs[t]) for t in cond.tasks]})
    if not force and (folder / "results.json").is_file():
        rec = read_json(folder / "results.json")
        if rec.get("key") == ckey:
            rec["items"] = {t: pd.read_parquet(folder / f) for t, f in rec["item_files"].items()}
            return rec
    status(f"condition {cond.name}: {cond.mode} on {cond.neurons.size} neurons; tasks {', '.join(cond.tasks)}")
    cond.neurons.to_json(sets_dir / f"{cond.name}.json")
    t0 = time.perf_counter()
    merged: dict[str, Any] = {"tasks": {}, "aggregates": {}, "items": {}}
    with intervene(loaded.model, cond.neurons, cond.mode, sites=loaded.sites):
        for task in cond.tasks:
            res = evaluate((loaded.model, loaded.tokenizer), [task], config=configs[task], condition=cond.describe())
            merged["tasks"].update(res["tasks"])
            merged["items"].update(res["items"])
            for k in ("format", "model", "condition", "versions"):
                merged[k] = res[k]
    merged["model"] = loaded.info.to_dict()
    merged["seconds"] = time.perf_counter() - t0
    write_results(folder, merged, {"key": ckey})
    return merged
