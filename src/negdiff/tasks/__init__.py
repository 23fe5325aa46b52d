"""The task registry and the syntactic read-outs: BLiMP, TSE (Marvin & Linzen 2018), perplexity.

Like the evaluation harness, a task is registered by name with a version (bump it whenever a change
could move a number), a loader and a runner; ``nongrammatical`` is an alias for the eight benchmarks
of :mod:`negdiff.tasks.multiple_choice`. Defaults follow ../shared/paper.md "Read-outs": BLiMP sums token
log-probs and counts ties as wrong; TSE uses the mean per-token log-prob and pairs NPI items with
``sentence_bad_2`` as the authors do, with the stricter "good beats both" beside it; perplexity cuts
WikiText-2 raw validation into non-overlapping windows and reports exp of the mean NLL.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from negdiff.bootstrap import window_summary
from negdiff.data import corpus_documents, data_dir, token_windows
from negdiff.errors import NegdiffError
from negdiff.progress import status
from negdiff.scoring import model_max_length, scoring_record, token_logprobs, window_nlls
from negdiff.tasks.base import (
    EvalConfig,
    TaskResult,
    TaskSpec,
    accuracy_metrics,
    dataset_file,
    file_hashes,
    limited,
    mean_of_groups,
    read_records,
    subset,
)
from negdiff.tasks.multiple_choice import MC_TASKS

__all__ = ["TASKS", "ALIASES", "EvalConfig", "TaskResult", "TaskSpec", "expand_tasks", "get_task", "run_task",
           "task_folders"]


def _text_scores(model, tokenizer, texts: list[str], reduction: str, cfg: EvalConfig, desc: str):
    """Sentence scores (sum or mean of token log-probs) and scored-token counts."""
    scores = token_logprobs(model, tokenizer, texts, cfg.scoring, desc=desc)
    values = np.array([s.total if reduction == "sum" else s.mean for s in scores], dtype=np.float64)
    return values, np.array([s.n for s in scores], dtype=np.int64)


# ---------------------------------------------------------------------------------------------- BLiMP
#: Paradigms in the full BLiMP; a staged folder with fewer is scored, and says so (n_paradigms).
BLIMP_PARADIGMS = 67
BLIMP_FIELDS = ("sentence_good", "sentence_bad", "field", "linguistics_term", "UID", "pairID")


def load_blimp(cfg: EvalConfig) -> list[dict]:
    """All staged paradigms (``blimp/<UID>.jsonl(.gz)``), sorted by file name, pairs in file order."""
    folder = data_dir(cfg.data_root, need="blimp") / "blimp"
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise NegdiffError(f"no BLiMP paradigm files (*.jsonl.gz) in {folder}")
    if len(files) < BLIMP_PARADIGMS:
        status(f"warning: {folder} holds {len(files)} of BLiMP's {BLIMP_PARADIGMS} paradigms; 'blimp' scores only "
               "those (n_paradigms in every result)")
    return [row for path in files for row in read_records(path, BLIMP_FIELDS)]


def run_blimp(model, tokenizer, items: list[dict], cfg: EvalConfig) -> TaskResult:
    """Correct iff log P(good) > log P(bad) (ties wrong), pooled and per field / term / paradigm."""
    items = limited(items, "UID", cfg.limit, cfg.blimp_sample, cfg.seed)
    n = len(items)
    texts = [it["sentence_good"] for it in items] + [it["sentence_bad"] for it in items]
    lp, ntok = _text_scores(model, tokenizer, texts, cfg.blimp_reduction, cfg, "blimp")
    frame = pd.DataFrame({
        "item_id": [f"blimp/{it['UID']}/{it['pairID']}" for it in items],
        "paradigm": [it["UID"] for it in items],
        "field": [it["field"] for it in items],
        "linguistics_term": [it["linguistics_term"] for it in items],
        "lp_good": lp[:n], "lp_bad": lp[n:], "n_tokens_good": ntok[:n], "n_tokens_bad": ntok[n:],
        "correct": lp[:n] > lp[n:],
    })
    metrics = accuracy_metrics(frame, "correct", "acc",
                               {"field": "field", "term": "linguistics_term", "paradigm": "paradigm"}, cfg)
    metrics["acc_paradigm_mean"] = mean_of_groups(frame, "correct", "paradigm", cfg)
    config = {"reduction": cfg.blimp_reduction, "ties": "wrong", "limit": cfg.limit, "limit_rule":
              cfg.blimp_sample, "seed": cfg.seed, "n_paradigms": int(frame["paradigm"].nunique()),
              "scoring": scoring_record(cfg.scoring, tokenizer), "data_files": file_hashes(items)}
    return TaskResult("blimp", "", metrics, frame, config)


# ---------------------------------------------------------------------------------------------- TSE
TSE_FIELDS = ("task", "condition", "sentence_good", "sentence_bad")


def tse_group(task: str) -> str:
    """The phenomenon group of a Marvin & Linzen task: agreement, reflexives or npi."""
    if "npi" in task:
        return "npi"
    if "reflexive" in task:
        return "reflexives"
    return "agreement"


def load_tse(cfg: EvalConfig) -> list[dict]:
    return read_records(dataset_file("tse", "marvin_linzen_2018.jsonl.gz", cfg.data_root), TSE_FIELDS)


def run_tse(model, tokenizer, items: list[dict], cfg: EvalConfig) -> TaskResult:
    """Pairs scored by mean (default) or summed log-prob; NPI good vs ``sentence_bad_2`` (authors)."""
    items = limited(items, "task", cfg.limit, "seeded", cfg.seed)
    n = len(items)
    third = [i for i, it in enumerate(items) if it.get("sentence_bad_2") is not None]
    texts = ([it["sentence_good"] for it in items] + [it["sentence_bad"] for it in items]
             + [items[i]["sentence_bad_2"] for i in third])
    lp, _ = _text_scores(model, tokenizer, texts, cfg.tse_reduction, cfg, "tse")
    good, bad = lp[:n], lp[n:2 * n]
    bad2 = np.full(n, np.nan)
    bad2[third] = lp[2 * n:]
    has2 = ~np.isnan(bad2)
    rival = np.where(has2, bad2, bad)  # the authors pair NPI items with the last variant
    frame = pd.DataFrame({
        "item_id": [f"tse/{it['task']}/{it['_line']}" for it in items],
        "task": [it["task"] for it in items],
        "group": [tse_group(it["task"]) for it in items],
        "condition": [it["condition"] for it in items],
        "lp_good": good, "lp_bad": bad, "lp_bad_2": bad2,
        "correct": good > rival,
        "correct_strict": (good > bad) & (~has2 | (good > bad2)),
    })
    metrics = accuracy_metrics(frame, "correct", "acc", {"group": "group", "task": "task"}, cfg)
    metrics["acc_task_mean"] = mean_of_groups(frame, "correct", "task", cfg)
    npi = frame[frame["group"] == "npi"]
    if len(npi):
        metrics.update(accuracy_metrics(frame, "correct_strict", "acc_strict", {}, cfg))
        strict = accuracy_metrics(npi, "correct_strict", "acc_strict", {"group": "group", "task": "task"}, cfg)
        metrics.update({k: v for k, v in strict.items() if k != "acc_strict"})
    config = {"reduction": cfg.tse_reduction, "npi_pairing": "sentence_bad_2 (authors); acc_strict: beats both",
              "overall": "pooled over pairs (authors); acc_task_mean: mean over tasks", "ties": "wrong",
              "limit": cfg.limit, "limit_rule": "seeded per task", "seed": cfg.seed,
              "scoring": scoring_record(cfg.scoring, tokenizer), "data_files": file_hashes(items)}
    return TaskResult("tse", "", metrics, frame, config)


# ---------------------------------------------------------------------------------------------- perplexity
def load_perplexity(cfg: EvalConfig) -> list[dict]:
    """The corpus documents (default WikiText-2 raw validation, joined by blank lines)."""
    docs, path = corpus_documents(cfg.ppl_corpus, cfg.data_root)
    return [{"text": d, "_file": str(path)} if path else {"text": d} for d in docs]


def run_perplexity(model, tokenizer, items: list[dict], cfg: EvalConfig) -> TaskResult:
    """exp(mean NLL) over non-overlapping windows of one tokenization, remainder dropped (authors)."""
    max_len = model_max_length(model)
    window = min(cfg.ppl_window, max_len) if max_len else cfg.ppl_window
    windows = token_windows(tokenizer, [it["text"] for it in items], window)
    total = len(windows)
    k = None
    if cfg.max_tokens is not None:
        k = cfg.max_tokens // window
        if k == 0:
            raise NegdiffError(f"--max-tokens {cfg.max_tokens} is smaller than one window of {window} tokens")
    idx = subset(total, k, "seeded", cfg.seed)
    nll = window_nlls(model, windows[torch.as_tensor(idx, dtype=torch.long)], cfg.scoring, desc="perplexity")
    label = cfg.ppl_corpus if "/" not in cfg.ppl_corpus else Path(cfg.ppl_corpus).name
    frame = pd.DataFrame({"item_id": [f"perplexity/{label}/{i}" for i in idx], "window": idx, "nll": nll,
                          "n_tokens": window - 1})
    metrics = {"ppl": window_summary(nll, math.exp), "nll": window_summary(nll)}
    config = {"corpus": cfg.ppl_corpus, "interval": "t on per-window mean NLL (n - 1 df); none below 10 windows", "window": window, "n_windows_total": total, "n_windows": len(idx),
              "tokens_scored": len(idx) * (window - 1), "max_tokens": cfg.max_tokens, "seed": cfg.seed,
              "bos": "none: windows cut from one token stream, each window's first token is context only",
              "scoring": cfg.scoring.to_dict(), "data_files": file_hashes(items)}
    return TaskResult("perplexity", "", metrics, frame, config, n_available=total)


# ---------------------------------------------------------------------------------------------- registry
TASKS: dict[str, TaskSpec] = {
    "blimp": TaskSpec("blimp", "2", "minimal_pairs", load_blimp, run_blimp,
                      "BLiMP, 67 paradigms x 1000 minimal pairs; summed log-prob", "grammatical"),
    "tse": TaskSpec("tse", "2", "minimal_pairs", load_tse, run_tse,
                    "Marvin & Linzen 2018 targeted syntactic evaluation; mean per-token log-prob", "grammatical"),
    "perplexity": TaskSpec("perplexity", "1", "perplexity", load_perplexity, run_perplexity,
                           "token perplexity over non-overlapping windows (WikiText-2 raw validation)", "lm"),
    **MC_TASKS,
}
ALIASES: dict[str, list[str]] = {"nongrammatical": [n for n, t in MC_TASKS.items() if t.group == "nongrammatical"]}


def expand_tasks(names: list[str] | str) -> list[str]:
    """Task names with aliases expanded, duplicates dropped, order kept; unknown names are errors."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        members = ALIASES.get(name, [name])
        for m in members:
            if m not in TASKS:
                raise NegdiffError(
                    f"unknown task '{m}'; known tasks: {', '.join(TASKS)}; aliases: {', '.join(ALIASES)}"
                )
            if m not in out:
                out.append(m)
    if not out:
        raise NegdiffError("no tasks given; e.g. --tasks blimp,tse,perplexity,nongrammatical")
    return out


def task_folders(names: list[str], cfg: EvalConfig | None = None) -> list[str]:
    """The dataset folders the tasks read (perplexity: its corpus's), in order: what a preflight ensures."""
    from negdiff.data import corpus_folders
    from negdiff.tasks.multiple_choice import FORMATS

    cfg = cfg or EvalConfig()
    folders: list[str] = []
    for name in expand_tasks(names):
        if name == "perplexity":
            folders += corpus_folders(cfg.ppl_corpus)
        else:
            folders.append(FORMATS[name].folder if name in FORMATS else name)  # blimp, tse, lambada_openai
    return list(dict.fromkeys(folders))


def get_task(name: str) -> TaskSpec:
    """The registered task ``name`` (a clear error listing the known ones otherwise)."""
    if name not in TASKS:
        raise NegdiffError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}; aliases: {', '.join(ALIASES)}")
    return TASKS[name]


def run_task(name: str, model, tokenizer, config: EvalConfig | None = None) -> TaskResult:
    """Load and run one task, timing it."""
    t0 = time.perf_counter()
    result = get_task(name).run(model, tokenizer, config)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result
