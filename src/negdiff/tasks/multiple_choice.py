"""The non-grammatical suite: eight 0-shot benchmarks scored the evaluation harness's way.

Prompt formats and metrics are those of lm-evaluation-harness (each data folder's SOURCE.md quotes
them): every answer candidate is a continuation ``" " + text`` of the prompt and its summed
log-likelihood is compared; ``acc_norm`` divides by the candidate's length in characters. WinoGrande
uses partial scoring (each option fills the blank; the shared rest of the sentence is scored), LAMBADA
asks whether the last word is the greedy continuation. They are the control of the paper's double
dissociation: a syntax-specific ablation should move them little.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from negdiff.errors import NegdiffError
from negdiff.result_stats import summarize
from negdiff.scoring import continuation_logliks, scoring_record
from negdiff.tasks.base import (
    EvalConfig,
    TaskResult,
    TaskSpec,
    accuracy_metrics,
    dataset_file,
    file_hashes,
    limited,
    read_records,
)


@dataclass(frozen=True)
class Prompted:
    """One multiple-choice item as scoring requests: a (context, continuation) per choice."""

    pairs: list[tuple[str, str]]
    norm_chars: list[int] | None  # candidate lengths for acc_norm (None: the task has no acc_norm)


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag cleaning: strip, " [title]" -> ". ", drop [tags], collapse double spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _qa(question: str, choices: list[str]) -> Prompted:
    ctx = f"Question: {question}\nAnswer:"
    return Prompted([(ctx, " " + c) for c in choices], [len(c) for c in choices])


def prompt_arc(it: dict) -> Prompted:
    return _qa(it["question"], it["choices"])


def prompt_piqa(it: dict) -> Prompted:
    return _qa(it["question"], it["choices"])


def prompt_hellaswag(it: dict) -> Prompted:
    ctx = hellaswag_preprocess(it["activity_label"] + ": " + it["ctx_a"] + " " + it["ctx_b"].capitalize())
    cands = [hellaswag_preprocess(e) for e in it["choices"]]
    return Prompted([(ctx, " " + c) for c in cands], [len(c) for c in cands])


def prompt_winogrande(it: dict) -> Prompted:
    sentence = it["sentence"]
    idx = sentence.index("_")
    rest = " " + sentence[idx + 1:].strip()
    return Prompted([(sentence[:idx] + opt, rest) for opt in it["choices"]], None)


def prompt_sciq(it: dict) -> Prompted:
    ctx = f"{it['support'].lstrip()}\nQuestion: {it['question']}\nAnswer:"
    return Prompted([(ctx, " " + c) for c in it["choices"]], [len(c) for c in it["choices"]])


def prompt_boolq(it: dict) -> Prompted:
    ctx = f"{it['passage']}\nQuestion: {it['question']}?\nAnswer:"
    return Prompted([(ctx, " " + c) for c in ("no", "yes")], None)


@dataclass(frozen=True)
class MCFormat:
    """Where a benchmark lives and how its items become prompts."""

    folder: str
    file: str
    fields: tuple[str, ...]
    prompt: Callable[[dict], Prompted]


FORMATS: dict[str, MCFormat] = {
    "arc_easy": MCFormat("arc", "arc_easy_test.jsonl.gz", ("id", "question", "choices", "label"), prompt_arc),
    "arc_challenge": MCFormat("arc", "arc_challenge_test.jsonl.gz", ("id", "question", "choices", "label"), prompt_arc),
    "piqa": MCFormat("piqa", "piqa_valid.jsonl.gz", ("id", "question", "choices", "label"), prompt_piqa),
    "hellaswag": MCFormat("hellaswag", "hellaswag_val.jsonl.gz",
                          ("id", "activity_label", "ctx_a", "ctx_b", "choices", "label"), prompt_hellaswag),
    "winogrande": MCFormat("winogrande", "winogrande_dev.jsonl.gz", ("id", "sentence", "choices", "label"),
                           prompt_winogrande),
    "sciq": MCFormat("sciq", "sciq_validation.jsonl.gz", ("id", "question", "support", "choices", "label"), prompt_sciq),
    "boolq": MCFormat("boolq", "boolq_dev.jsonl.gz", ("id", "question", "passage", "label"), prompt_boolq),
}


def _check_item(it: dict, name: str) -> None:
    """Labels in range, blanks present: a bad record is an error naming its file and line."""
    where = f"{it['_file']}:{it['_line']}"
    n = 2 if name == "boolq" else len(it["choices"]) if isinstance(it["choices"], list) else 0
    if n < 2:
        raise NegdiffError(f"{where}: 'choices' must be a list of at least 2 answers")
    if not isinstance(it["label"], int) or not 0 <= it["label"] < n:
        raise NegdiffError(f"{where}: label {it['label']!r} is not an index into {n} choices")
    if name == "winogrande" and "_" not in it["sentence"]:
        raise NegdiffError(f"{where}: WinoGrande sentence has no '_' blank")


def mc_loader(name: str) -> Callable[[EvalConfig], list[dict]]:
    fmt = FORMATS[name]

    def load(cfg: EvalConfig) -> list[dict]:
        items = read_records(dataset_file(fmt.folder, fmt.file, cfg.data_root), fmt.fields)
        for it in items:
            _check_item(it, name)
        return items

    return load


def mc_runner(name: str) -> Callable[..., TaskResult]:
    fmt = FORMATS[name]

    def run(model, tokenizer, items: list[dict], cfg: EvalConfig) -> TaskResult:
        """Pick the candidate with the highest log-likelihood (and per character, for acc_norm)."""
        items = limited(items, None, cfg.limit, "first", cfg.seed)
        prompts = [fmt.prompt(it) for it in items]
        flat = [p for pr in prompts for p in pr.pairs]
        ll, _ = continuation_logliks(model, tokenizer, flat, cfg.scoring, desc=name)
        rows, at = [], 0
        for it, pr in zip(items, prompts, strict=True):
            lls = ll[at:at + len(pr.pairs)]
            at += len(pr.pairs)
            pred = int(np.argmax(lls))
            row = {"item_id": f"{name}/{it['id']}", "label": it["label"], "pred": pred,
                   "correct": pred == it["label"], "ll": lls.tolist()}
            if pr.norm_chars is not None:
                pred_norm = int(np.argmax(lls / np.asarray(pr.norm_chars, dtype=np.float64)))
                row.update(pred_norm=pred_norm, correct_norm=pred_norm == it["label"], n_chars=pr.norm_chars)
            rows.append(row)
        frame = pd.DataFrame(rows)
        metrics = accuracy_metrics(frame, "correct", "acc", {}, cfg)
        if "correct_norm" in frame:
            metrics.update(accuracy_metrics(frame, "correct_norm", "acc_norm", {}, cfg))
        config = {"limit": cfg.limit, "limit_rule": "first", "shots": 0, "format": "lm-evaluation-harness",
                  "acc_norm": "log-likelihood / candidate characters" if "correct_norm" in frame else None,
                  "scoring": scoring_record(cfg.scoring, tokenizer, model), "data_files": file_hashes(items)}
        return TaskResult(name, "", metrics, frame, config)

    return run


# ---------------------------------------------------------------------------------------------- LAMBADA
def load_lambada(cfg: EvalConfig) -> list[dict]:
    return read_records(dataset_file("lambada_openai", "lambada_openai_test.jsonl.gz", cfg.data_root), ("id", "text"))


def lambada_split(text: str) -> tuple[str, str]:
    """The harness's split: context = all but the last space-separated word; target = " " + that word."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def run_lambada(model, tokenizer, items: list[dict], cfg: EvalConfig) -> TaskResult:
    """acc: every target token is the argmax; ppl: exp(-mean target log-likelihood) over passages."""
    items = limited(items, None, cfg.limit, "first", cfg.seed)
    ll, greedy = continuation_logliks(model, tokenizer, [lambada_split(it["text"]) for it in items], cfg.scoring,
                                      desc="lambada_openai")
    frame = pd.DataFrame({"item_id": [f"lambada_openai/{it['id']}" for it in items], "ll": ll, "correct": greedy})
    boot = {"n_boot": cfg.n_boot, "seed": cfg.seed, "alpha": cfg.alpha}
    metrics = accuracy_metrics(frame, "correct", "acc", {}, cfg)
    metrics["ppl"] = summarize(-ll, transform=math.exp, **boot)
    config = {"limit": cfg.limit, "limit_rule": "first", "split": "last space-separated word (harness)",
              "scoring": scoring_record(cfg.scoring, tokenizer, model), "data_files": file_hashes(items)}
    return TaskResult("lambada_openai", "", metrics, frame, config)


MC_TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(name, "2", "multiple_choice", mc_loader(name), mc_runner(name),
                   f"{name}, 0-shot, lm-evaluation-harness prompt", "nongrammatical")
    for name in ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "sciq")
}
MC_TASKS["lambada_openai"] = TaskSpec("lambada_openai", "2", "last_word", load_lambada, run_lambada,
                                      "LAMBADA (OpenAI), last-word accuracy and perplexity", "nongrammatical")
MC_TASKS["boolq"] = TaskSpec("boolq", "2", "multiple_choice", mc_loader("boolq"), mc_runner("boolq"),
                             "BoolQ, 0-shot, lm-evaluation-harness prompt", "nongrammatical")
