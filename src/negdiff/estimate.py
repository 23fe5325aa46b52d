"""How long a pipeline run will take, before it starts: model tokens per step / measured tokens per second.

Why: a preset can be a 25-minute check or a multi-hour run; a user should see which before the model
spends an hour. Every step's cost is almost all model forward, so the estimate counts the positions the
model will compute per step (perplexity windows, the prefix-tree tokens of BLiMP and TSE per pair at the
preset's limits, multiple-choice tokens per item, scan and word tokens) and divides by the throughput of
a forward measured on the loaded model just now. The per-item token counts were measured on the
embedded model's tokenizer with the prefix-tree engine (``planned_counts``, padded positions); another
tokenizer moves them by its compression, so the figure is a rough guide (the README compares it with a
measured run of the quick preset), not a promise.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

#: Padded positions per BLiMP pair (first-k per paradigm) and per TSE pair (seeded per task) in the prefix
#: tree, by limit; ``None`` is the whole benchmark (67,000 and 158,084 pairs).
BLIMP_PER_PAIR = {5: 16.0, 10: 14.6, 20: 14.3, 30: 13.8, 50: 13.4, 100: 13.1, 200: 12.7}
TSE_PER_PAIR = {5: 13.3, 10: 11.0, 20: 8.9, 30: 8.0, 50: 6.9, 100: 5.7, 200: 5.2}
BLIMP_FULL, TSE_FULL = 796_294, 185_292
BLIMP_PAIRS, TSE_PAIRS, TSE_TASKS, BLIMP_PARADIGMS = 67_000, 158_084, 22, 67
#: Padded positions per item of all eight non-grammatical benchmarks together (20 items each: 14k), and the
#: whole suite (3.0M tokens with shared contexts).
NONGRAM_PER_ITEM, NONGRAM_FULL = 700, 3_000_000
WIKITEXT_VALID_TOKENS = 290_000
EWT_TOKENS_PER_WORD = 1.4
EWT_WORDS = 25_000
#: Cost of a scanned token relative to a forward token of the 512-token probe: 2048-token windows (longer
#: attention), statistics, mapping difficulty and the step's summaries. Measured on the quick preset (idle, 2
#: threads): 188 s for 32,768 tokens at a probe rate of 427 tokens/s.
SCAN_FACTOR = 2.4
#: The prefix-tree engine's tokens/s relative to a plain forward (bench/minimal_pairs.py, idle, 2 threads:
#: 0.83 on BLiMP, 0.81 on TSE): smaller forwards and the ancestors' keys/values each row attends over.
TREE_RATE = 0.82
#: The layer cache skips about a third of the layer passes of the layer-group step.
LAYER_CACHE_FACTOR = 0.7


def _per_pair(table: dict[int, float], limit: int) -> float:
    keys = sorted(table)
    if limit <= keys[0]:
        return table[keys[0]]
    if limit >= keys[-1]:
        return table[keys[-1]]
    return float(np.interp(math.log(limit), [math.log(k) for k in keys], [table[k] for k in keys]))


def blimp_tokens(limit: int | None) -> float:
    if limit is None or limit >= 1000:
        return BLIMP_FULL
    return BLIMP_PARADIGMS * limit * _per_pair(BLIMP_PER_PAIR, limit)


def tse_tokens(limit: int | None) -> float:
    if limit is None or TSE_TASKS * limit >= TSE_PAIRS:
        return TSE_FULL
    return TSE_TASKS * limit * _per_pair(TSE_PER_PAIR, limit)


def nongram_tokens(limit: int | None) -> float:
    return NONGRAM_FULL if limit is None else NONGRAM_PER_ITEM * limit


def ppl_tokens(tokens: int | None) -> float:
    return WIKITEXT_VALID_TOKENS if tokens is None else tokens


def _readouts(tasks, blimp: int | None, tse: int | None, nongram: int | None, ppl: int | None) -> float:
    """Forward-equivalent positions of one condition's read-outs (tree-scored tokens / TREE_RATE)."""
    cost = 0.0
    for t in tasks:
        cost += {"perplexity": ppl_tokens(ppl), "blimp": blimp_tokens(blimp) / TREE_RATE,
                 "tse": tse_tokens(tse) / TREE_RATE}.get(t, 0.0)
    if any(t not in ("perplexity", "blimp", "tse") for t in tasks):
        cost += nongram_tokens(nongram) / TREE_RATE
    return cost


def step_tokens(step: str, cfg: Any, n_layers: int) -> float:
    """Model positions ``step`` computes under its config ``cfg`` (a step config dataclass)."""
    if step == "scan":
        return cfg.tokens * SCAN_FACTOR + (cfg.check_windows * 2048)
    if step == "pairs":
        return cfg.tokens * SCAN_FACTOR
    if step == "pos":
        words = cfg.max_words or EWT_WORDS
        return (3 + cfg.seeds) * words * EWT_TOKENS_PER_WORD / TREE_RATE
    if step == "ablate":
        full = 3 + cfg.seeds  # baseline, wn_neg, the random sets, the perplexity-matched set
        head = _readouts(cfg.tasks_expanded, cfg.blimp_limit, cfg.tse_limit, cfg.nongram_limit, cfg.ppl_tokens)
        ctrl_tasks = cfg.tasks_expanded if cfg.controls_on_nongram else ["blimp", "tse"]
        ctrl = _readouts(ctrl_tasks, cfg.control_blimp, cfg.control_tse, cfg.nongram_limit, cfg.ppl_tokens)
        search = 7 * cfg.calib_tokens
        dose = (1 + 2 * len(cfg.dose_fractions)) * (ppl_tokens(cfg.dose_ppl_tokens) + blimp_tokens(cfg.dose_blimp_limit) / TREE_RATE)
        return full * head + 4 * ctrl + search + (dose if cfg.dose_fractions else 0)
    if step == "layers":
        groups = math.ceil(n_layers / cfg.group_size) if cfg.group_size else 8
        n_cond = 1 + groups + 2 * (groups - 1)
        per = _readouts(cfg.tasks, cfg.blimp_limit, cfg.tse_limit, cfg.nongram_limit, cfg.ppl_tokens)
        return n_cond * per * (LAYER_CACHE_FACTOR if cfg.layer_cache_mb else 1.0)
    raise ValueError(step)


def forward_tokens_per_second(model: torch.nn.Module, n_tokens: int = 512, repeats: int = 3) -> float:
    """Throughput of a plain forward of a ``[4, n_tokens / 4]`` batch on the loaded model.

    The fastest of ``repeats`` timed calls (after a warm-up): on a shared machine a preempted thread can
    stall one call many-fold, and the estimate is for the machine the run will mostly see.
    """
    dev = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(3, max(4, vocab), (4, max(2, n_tokens // 4)), generator=torch.Generator().manual_seed(0))
    best = float("inf")
    with torch.inference_mode():
        model(input_ids=ids[:1].to(dev))
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids.to(dev))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return ids.numel() / best


def counted(step: str, cfg: Any) -> Any:
    """A step's config as the counting sees it (ablate: its expanded task list and the controls' limits)."""
    if step == "ablate" and not isinstance(cfg, _Ablate):
        from negdiff.tasks import expand_tasks

        tasks = expand_tasks(list(cfg.tasks))
        cfg = _Ablate(cfg, ["perplexity", *[t for t in tasks if t != "perplexity"]])
    return cfg


def estimate_step(step: str, cfg: Any, n_layers: int, tok_s: float) -> float:
    """Estimated seconds of one step under its built config (what ``negdiff ablate`` prints first)."""
    return step_tokens(step, counted(step, cfg), n_layers) / tok_s


class _Ablate:
    """An AblateConfig seen by the estimator: its expanded task list and the controls' limits."""

    def __init__(self, cfg: Any, tasks: list[str]):
        self._cfg, self.tasks_expanded = cfg, tasks
        self.control_blimp = cfg.blimp_limit if cfg.control_blimp_limit is None else cfg.control_blimp_limit
        self.control_tse = cfg.tse_limit if cfg.control_tse_limit is None else cfg.control_tse_limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


def estimate(configs: dict[str, Any], n_layers: int, tok_s: float) -> dict[str, float]:
    """Estimated seconds per step (and ``total``) of the built step configs at ``tok_s`` forward tokens/s."""
    secs = {step: estimate_step(step, cfg, n_layers, tok_s) for step, cfg in configs.items()}
    secs["total"] = sum(secs.values())
    return secs


def describe(secs: dict[str, float], tok_s: float) -> str:
    """One line: the total and each step, in minutes."""
    if "total" not in secs:
        secs = {**secs, "total": sum(secs.values())}
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in secs.items() if k != "total")
    return (f"estimated {secs['total'] / 60:.0f} min at {tok_s:.0f} forward tokens/s measured now "
            f"({parts} min; rough: token counts from the embedded model's tokenizer)")
