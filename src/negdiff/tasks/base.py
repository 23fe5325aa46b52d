"""What every evaluation task shares: its config, its result, its registry row, and item helpers.

A task is a loader (data folder -> list of item dicts, in file order) plus a runner (model, tokenizer,
items, config -> :class:`TaskResult`). Results keep one row per item keyed by a stable ``item_id`` in
file order, so the same item can be paired across conditions (paired bootstrap, exact McNemar).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from negdiff.data import data_dir, iter_jsonl
from negdiff.errors import NegdiffError
from negdiff.result_stats import summarize, summarize_mean_of_groups
from negdiff.results import file_sha256
from negdiff.scoring import ScoringConfig

SAMPLE_RULES = ("first", "seeded")


def family_limit(task: str, blimp: int | None, tse: int | None, nongram: int | None) -> int | None:
    """The subsample of one task under per-family limits: BLiMP pairs per paradigm, TSE pairs per task, items
    per non-grammatical benchmark; perplexity takes none (its size is the token budget)."""
    return {"blimp": blimp, "tse": tse, "perplexity": None}.get(task, nongram)


def step_eval_config(cfg: Any, task: str, **override: Any) -> EvalConfig:
    """The EvalConfig of one task under a step's config, which every step builds the same way: its fields
    ``bos``, ``batch_tokens``, ``seed``, ``n_boot`` (capped at 1,000: per-task summaries, not decisions),
    ``ppl_window``, ``ppl_tokens`` and the per-family limits ``blimp_limit``, ``tse_limit``, ``nongram_limit``
    (a field a config lacks counts as unset; ``override`` replaces any of them, e.g. the dose sweep's sizes)."""
    def get(name: str, default: Any = None) -> Any:
        return override[name] if name in override else getattr(cfg, name, default)

    limit = family_limit(task, get("blimp_limit"), get("tse_limit"), get("nongram_limit"))
    return EvalConfig(scoring=ScoringConfig(bos=get("bos", "prefix"), max_batch_tokens=get("batch_tokens")),
                      limit=limit, seed=get("seed", 0), n_boot=min(get("n_boot"), 1000), ppl_window=get("ppl_window"),
                      max_tokens=get("ppl_tokens") if task == "perplexity" else None)


@dataclass(frozen=True)
class EvalConfig:
    """Every knob of an evaluation run (defaults follow ../shared/paper.md); recorded in results."""

    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    limit: int | None = None  # items per paradigm (BLiMP), per task (TSE), per benchmark (the others)
    seed: int = 0  # seeded subsets and bootstrap
    blimp_sample: str = "first"  # first k pairs per paradigm, or a seeded subset
    blimp_reduction: str = "sum"
    tse_reduction: str = "mean"
    ppl_corpus: str = "wikitext2-valid"
    ppl_window: int = 2048  # capped at the model's maximum length
    max_tokens: int | None = None  # perplexity: a seeded subset of max_tokens // window windows
    n_boot: int = 1000
    alpha: float = 0.05
    data_root: str | None = None  # None: $NEGDIFF_DATA, then the fetch folder

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise NegdiffError(f"--limit must be a positive number of items, got {self.limit}")
        if self.blimp_sample not in SAMPLE_RULES:
            raise NegdiffError(f"unknown sample rule '{self.blimp_sample}'; use first or seeded")
        for name in ("blimp_reduction", "tse_reduction"):
            if getattr(self, name) not in ("sum", "mean"):
                raise NegdiffError(f"{name} must be sum or mean, got '{getattr(self, name)}'")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise NegdiffError(f"--max-tokens must be positive, got {self.max_tokens}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["scoring"] = self.scoring.to_dict()
        return out


@dataclass
class TaskResult:
    """One task's outcome: named metrics (value/stderr/ci_low/ci_high/n), per-item rows, settings."""

    name: str
    version: str
    metrics: dict[str, dict]
    items: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    #: items the data offered before a limit (perplexity: windows); the harness's n-samples "original"
    n_available: int | None = None

    def to_dict(self) -> dict:
        """The JSON part (the item table goes to parquet)."""
        return {"version": self.version, "n": len(self.items), "n_available": self.n_available,
                "metrics": self.metrics, "config": self.config, "seconds": self.seconds}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: ``loader(cfg) -> items`` (file order); ``runner(model, tok, items, cfg) -> TaskResult``."""

    name: str
    version: str
    kind: str  # minimal_pairs | perplexity | multiple_choice | last_word
    loader: Callable[[EvalConfig], list[dict]]
    runner: Callable[..., TaskResult]
    description: str = ""
    group: str = ""

    def load(self, config: EvalConfig | None = None) -> list[dict]:
        return self.loader(config or EvalConfig())

    def run(self, model, tokenizer, config: EvalConfig | None = None) -> TaskResult:
        config = config or EvalConfig()
        items = self.load(config)
        result = self.runner(model, tokenizer, items, config)
        result.name, result.version = self.name, self.version
        if result.n_available is None:  # a runner whose unit is not the loader's item sets its own
            result.n_available = len(items)
        return result


# ---------------------------------------------------------------------------------------------- loading
def dataset_file(folder: str, name: str, root: str | None) -> Path:
    """A staged data file; a clear error naming the path when it is missing."""
    path = data_dir(root, need=folder) / folder / name
    if not path.is_file():
        raise NegdiffError(f"data file not found: {path} (see {path.parent / 'SOURCE.md'})")
    return path


#: Parsed data files by (path, size, mtime, fields): every condition of an experiment loads the same
#: benchmark, and parsing TSE again costs ~3 s per condition.
_RECORDS: dict[tuple, list[dict]] = {}


def read_records(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """JSON-lines records with the required ``fields``; errors name the file and line.

    Each call returns fresh dicts (callers may annotate them); the parse is reused while the file is unchanged.
    """
    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns, fields)
    if key not in _RECORDS:
        _RECORDS[key] = _parse_records(path, fields)
        while len(_RECORDS) > 128:  # BLiMP is 67 files
            _RECORDS.pop(next(iter(_RECORDS)))
    return [dict(r) for r in _RECORDS[key]]


def _parse_records(path: Path, fields: tuple[str, ...]) -> list[dict]:
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [f for f in fields if f not in row]
        if missing:
            raise NegdiffError(f"{path}:{lineno}: record lacks field(s) {', '.join(missing)}")
        row["_file"], row["_line"] = str(path), lineno
        rows.append(row)
    return rows


def file_hashes(items: list[dict]) -> dict[str, str]:
    """sha256 of every data file the items came from (recorded so a result names its data)."""
    return {p: file_sha256(p) for p in sorted({it["_file"] for it in items if "_file" in it})}


def subset(n: int, k: int | None, rule: str, seed: int) -> np.ndarray:
    """Indices of ``k`` of ``n`` items (all when ``k`` is None), in their original order."""
    if k is None or k >= n:
        return np.arange(n)
    if rule == "first":
        return np.arange(k)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def limited(items: list[dict], key: str | None, k: int | None, rule: str, seed: int) -> list[dict]:
    """At most ``k`` items per value of ``key`` (or overall when key is None), file order kept."""
    if k is None:
        return items
    if key is None:
        return [items[i] for i in subset(len(items), k, rule, seed)]
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it[key], []).append(i)
    keep: list[int] = []
    for g, idx in enumerate(groups.values()):
        keep.extend(idx[j] for j in subset(len(idx), k, rule, seed + g))
    return [items[i] for i in sorted(keep)]


# ---------------------------------------------------------------------------------------------- metrics
def accuracy_metrics(
    frame: pd.DataFrame, column: str, name: str, by: dict[str, str], cfg: EvalConfig
) -> dict[str, dict]:
    """``name`` pooled over all rows, plus ``name/<label>/<value>`` per group column in ``by``."""
    boot = {"n_boot": cfg.n_boot, "seed": cfg.seed, "alpha": cfg.alpha}
    out = {name: summarize(frame[column].to_numpy(dtype=float), **boot)}
    for label, col in by.items():
        for value, rows in frame.groupby(col, sort=True):
            out[f"{name}/{label}/{value}"] = summarize(rows[column].to_numpy(dtype=float), **boot)
    return out


def mean_of_groups(frame: pd.DataFrame, column: str, by: str, cfg: EvalConfig) -> dict:
    """The unweighted mean over groups of the per-group mean of ``column``."""
    groups = [rows[column].to_numpy(dtype=float) for _, rows in frame.groupby(by, sort=True)]
    return summarize_mean_of_groups(groups, n_boot=cfg.n_boot, seed=cfg.seed, alpha=cfg.alpha)
