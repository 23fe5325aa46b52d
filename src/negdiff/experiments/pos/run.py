"""``negdiff pos``: where the excess surprisal of an ablation lands, by gold part of speech.

The paper tags raw text with spaCy and finds that negative-zeroing the Wasserstein neurons raises the
surprisal of determiners, punctuation, auxiliaries and particles, while content words barely move.
negdiff scores UD English EWT (gold UPOS, no tagger noise) once per condition, sums each word's subword
surprisals (nats) through :mod:`negdiff.align`, and reports per tag the mean excess surprisal
(condition minus baseline, per word) with a CI that resamples whole documents, and the tag's share of the total excess
against its share of tokens: a tag that carries more of the damage than of the text is where the
ablated neurons matter. Scaffolding tags (function words and punctuation) are pooled against content
tags. Every condition's per-token surprisals are cached under a key, so a rerun resumes. The arithmetic
lives in :mod:`negdiff.experiments.pos.stats` (its names are re-exported here).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from negdiff import align, results
from negdiff.errors import NegdiffError
from negdiff.experiments.pos.config import PosConfig
from negdiff.experiments.pos.stats import (  # noqa: F401  (re-exported: the public names of negdiff pos)
    CLUSTER,
    CONTENT,
    GROUPS,
    SCAFFOLDING,
    aggregate,
    cluster_counts,
    cluster_sums,
    summary_lines,
    tag_group,
    tag_order,
)
from negdiff.figures import save
from negdiff.hooks import intervene
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.runs import write_record
from negdiff.scoring import model_max_length, score
from negdiff.select import random_like
from negdiff.services.scan_outputs import load_wn

FORMAT = "negdiff.pos/2"
#: Default size: a seeded sample of whole EWT-test documents up to this many words (about 15k tokens per
#: condition; `--max-words 0` scores all 25k words).
#: Name suffix -> intervention, following the names ``negdiff ablate`` gives its sets (longest first).
SUFFIX_MODES = (("_identity_pos", "identity_positive"), ("_abs_neg", "abs_negative_output"),
                ("_neg", "zero_negative"), ("_pos", "zero_positive"), ("_zero", "zero"))


@dataclass
class PooledCondition:
    """A named condition pooled over one or more neuron sets (random seeds) edited with ``mode``.

    Not :class:`negdiff.services.conditions.Condition` (one set, scored on tasks): part of speech scores
    words once per set and pools the sets, so a condition here is a list of runs."""

    name: str
    mode: str
    runs: list[tuple[str, NeuronSet]] = field(default_factory=list)
    source: str = ""

    def describe(self) -> dict[str, Any]:
        sizes = {run: s.size for run, s in self.runs}
        return {"status": "done", "mode": self.mode, "source": self.source, "runs": list(sizes),
                "n_neurons": next(iter(sizes.values()), 0), "rules": {run: s.rule for run, s in self.runs}}


# ---------------------------------------------------------------------------------------------- inputs
def sets_folder(path: str | Path | None) -> Path | None:
    """``--sets`` names an ablate run (its ``sets/`` folder is used) or a folder of set files."""
    if path is not None and not Path(path).is_dir():
        raise NegdiffError(f"--sets: folder not found: {path}")
    return None if path is None else Path(path) / "sets" if (Path(path) / "sets").is_dir() else Path(path)


def mode_for(name: str) -> str:
    """The intervention a set file's name implies (``negdiff ablate`` names them ``<set>_<edit>``)."""
    for suffix, mode in SUFFIX_MODES:
        if name.endswith(suffix):
            return mode
    raise NegdiffError(f"cannot tell which edit set '{name}' takes from its name: it should end in "
                       + ", ".join(s for s, _ in SUFFIX_MODES))


def build_conditions(loaded: LoadedModel, scan_dir: str | Path, cfg: PosConfig) -> tuple[list[PooledCondition], dict]:
    """baseline, wn_neg, random_neg (``cfg.seeds`` layer-matched sets), ppl_matched_neg and extras.

    Returns the conditions to score and, for any that cannot be, the message saying why.
    """
    scan_dir = Path(scan_dir)
    wn = load_wn(loaded, scan_dir)
    widths = {s.layer: s.width for s in loaded.sites}
    conds = [PooledCondition("baseline", "zero_negative", [("baseline", NeuronSet.empty())], "none"),
             PooledCondition("wn_neg", "zero_negative", [("wn_neg", wn)], str(scan_dir / "wn.json")),
             PooledCondition("random_neg", "zero_negative",
                       [(f"random_neg_s{k}", random_like(wn, widths, seed=k)) for k in range(cfg.seeds)],
                       f"random_like(wn, seeds 0..{cfg.seeds - 1}), WN excluded")]
    missing: dict[str, dict] = {}
    folder = sets_folder(cfg.sets)
    for name in dict.fromkeys(("ppl_matched_neg", *cfg.extra)):
        path = None if folder is None else folder / f"{name}.json"
        if path is None or not path.is_file():
            if name != "ppl_matched_neg":
                raise NegdiffError(f"--extra: no set file {name}.json in {folder or '(no --sets folder given)'}")
            missing[name] = {"status": "missing", "message": "no ppl_matched_neg.json: run `negdiff ablate MODEL "
                             f"--scan {scan_dir} --out ADIR` first, then pass --sets ADIR"}
            continue
        neurons = NeuronSet.from_json(path)
        neurons.check_model(loaded.key(), f"--sets: {path}")
        neurons.validate(loaded.sites)
        conds.append(PooledCondition(name, mode_for(name), [(name, neurons)], str(path)))
    return conds, missing


# ---------------------------------------------------------------------------------------------- scoring
def score_run(loaded: LoadedModel, encoded: list[align.Encoded], neurons: NeuronSet, mode: str,
              cfg: PosConfig, desc: str) -> np.ndarray:
    """Per-target-token surprisal (nats, float64, concatenated over chunks) under one intervention."""
    with intervene(loaded.model, neurons, mode, sites=loaded.sites):
        scores = score(loaded.model, [e.request for e in encoded], cfg.scoring(), desc=desc)
    return -np.concatenate([s.logprobs for s in scores])


def cached_run(path: Path, key: str, compute, force: bool = False) -> tuple[np.ndarray, bool]:
    """The run's surprisals from ``path`` when its key matches, else computed and saved atomically."""
    if path.is_file() and not force:
        with np.load(path) as z:
            if str(z["key"]) == key:
                return z["surprisal"].astype(np.float64), True
    values = compute()
    results.atomic_write_with(path, lambda tmp: np.savez(tmp, key=np.array(key), surprisal=values))
    return values, False


# ---------------------------------------------------------------------------------------------- figures
def _bars(ax, tags: list[str], series: dict[str, list[dict]], grey: list[float] | None = None) -> None:
    """Grouped bars per tag, one per series, with CI whiskers; scaffolding | content split marked."""
    x = np.arange(len(tags))
    n = len(series) + (grey is not None)
    width = 0.8 / max(n, 1)
    if grey is not None:
        ax.bar(x - 0.4 + width / 2, grey, width, color="0.7", label="share of tokens")
    for j, (label, d) in enumerate(series.items(), start=int(grey is not None)):
        val = np.array([v["value"] for v in d])
        lo = np.array([np.nan if v.get("ci_low") is None else v["ci_low"] for v in d], dtype=float)
        hi = np.array([np.nan if v.get("ci_high") is None else v["ci_high"] for v in d], dtype=float)
        err = np.nan_to_num(np.abs([val - lo, hi - val]))  # no whisker: n too small (or K = 1 random set)
        ax.bar(x - 0.4 + (j + 0.5) * width, val, width, yerr=err, capsize=2, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(sum(t in SCAFFOLDING for t in tags) - 0.5, color="gray", ls="--", lw=0.7)
    ax.set_xticks(x, tags, rotation=45)
    ax.legend(fontsize=7)


def pos_figures(record: dict[str, Any], folder: Path) -> list[Path]:
    """pos_excess.png (mean excess per tag with CIs, conditions side by side) and pos_share.png."""
    import matplotlib.pyplot as plt

    res = record["results"]
    tags, conds = list(res["tags"]), res["conditions"]
    size = (max(7, 0.55 * len(tags)), 3.6)
    fig, ax = plt.subplots(figsize=size)
    _bars(ax, tags, {c: [r["tags"][t]["mean_excess"] for t in tags] for c, r in conds.items()})
    ax.set(ylabel="excess surprisal per word (nats)", xlabel="gold UPOS tag", title="mean excess surprisal by gold UPOS, 95% CI resampling "
           "documents (scaffolding | content; no whisker: n too small)")
    paths = [save(fig, folder / "pos_excess.png")]
    fig, ax = plt.subplots(figsize=size)
    _bars(ax, tags, {f"share of excess: {c}": [r["tags"][t]["share_excess"] for t in tags] for c, r in conds.items()},
          grey=[res["tags"][t]["share_tokens"] for t in tags])
    ax.set(ylabel="share of the total (fraction)", xlabel="gold UPOS tag", title="share of the total excess surprisal vs share of tokens, by gold UPOS")
    paths.append(save(fig, folder / "pos_share.png"))
    return paths


# ---------------------------------------------------------------------------------------------- runner
def run_pos(loaded: LoadedModel, scan_dir: str | Path, cfg: PosConfig, out: str | Path,
            force: bool = False) -> dict[str, Any]:
    """Score every condition, map surprisal to words, aggregate by UPOS, write pos.json/words.parquet/PNGs."""
    out, scan_dir = Path(out), Path(scan_dir)
    conds, missing = build_conditions(loaded, scan_dir, cfg)
    sents, source, tagger = align.load_sentences(cfg.corpus, cfg.data)
    sents = align.limit_documents(sents, cfg.limit_docs, cfg.max_words, cfg.seed if cfg.sample == "seeded" else None)
    if not sents:
        raise NegdiffError(f"--corpus {cfg.corpus}: no sentences to score")
    chunks, encoded = align.encode_corpus(loaded.tokenizer, sents, cfg.max_seq_tokens, model_max_length(loaded.model),
                                          cfg.mwt, cfg.bos, f"{cfg.corpus}: ")
    scan = results.read_json(scan_dir / "scan.json") if (scan_dir / "scan.json").is_file() else {}
    scan_hash = (scan.get("model") or {}).get("weights_hash")
    if scan_hash and loaded.info.weights_hash and scan_hash != loaded.info.weights_hash:
        status(f"note: the scan in {scan_dir} was made on other weights ({scan_hash}) than {loaded.info.spec}")
    info = loaded.info.to_dict()
    base = {"model": {k: info[k] for k in ("spec", "revision", "weights_hash", "dtype", "n_params")},
            "corpus": cfg.corpus, "corpus_sha256": None if source is None else results.file_sha256(source),
            "tokens": align.tokens_digest(encoded), "bos": cfg.bos, "scan": scan.get("key")}
    key = results.config_key(base)
    surprisal, timing = {}, {}
    n_tok = sum(len(e.owner) for e in encoded)
    for cond in conds:
        for run, neurons in cond.runs:
            rkey = results.config_key({"base": key, "mode": cond.mode, "neurons": neurons.to_dict()})
            t0 = time.perf_counter()

            def compute(run=run, neurons=neurons, cond=cond) -> np.ndarray:
                what = f"{cond.mode} on {neurons.size} neurons" if neurons.size else "no intervention"
                status(f"{run}: {what}, {n_tok:,} tokens")
                return score_run(loaded, encoded, neurons, cond.mode, cfg, desc=run)

            surprisal[run], reused = cached_run(out / "surprisal" / f"{run}.npz", rkey, compute, force)
            timing[run] = {"seconds": round(time.perf_counter() - t0, 2), "reused": reused,
                           "tokens_per_s": None if reused else round(n_tok / max(time.perf_counter() - t0, 1e-9), 1)}
    words = align.words_table(sents, chunks, encoded, surprisal)
    words.insert(words.columns.get_loc("upos") + 1, "group", words["upos"].map(tag_group))
    for cond in conds:  # a multi-seed condition is the mean of its runs
        words[f"surprisal_{cond.name}"] = words[[f"surprisal_{run}" for run, _ in cond.runs]].mean(axis=1)
    names = [c.name for c in conds if c.name != "baseline"]
    seed_runs = {c.name: [run for run, _ in c.runs] for c in conds if c.name == "random_neg"}  # random-set groups
    record: dict[str, Any] = {
        "format": FORMAT, "key": key, "units": "nats (natural-log surprisal, summed over a word's subword tokens)",
        "model": info, "config": cfg.to_dict(), "scoring": cfg.scoring().to_dict(),
        "corpus": {"name": cfg.corpus, "file": None if source is None else str(source),
                   "sha256": base["corpus_sha256"], "tagger": tagger},
        "scan": {"dir": str(scan_dir), "key": scan.get("key"), "n_wn": conds[1].runs[0][1].size},
        "mwt_rule": align.MWT_RULES[cfg.mwt],
        "alignment": align.alignment_stats(sents, chunks, encoded, words),
        "conditions": {**{c.name: c.describe() for c in conds if c.name != "baseline"}, **missing},
        "results": aggregate(words[words.scored], names, seed_runs, cfg.n_boot, cfg.seed),
        "random_control": {"k": cfg.seeds, "note": (
            f"random_neg averages K = {cfg.seeds} layer-matched sets; its intervals include the between-set variance"
            if cfg.seeds >= 2 else "random_neg is K = 1 set: the between-set variance is not estimable, so its "
            "intervals are n too small (point estimates only); paper.md asks for >= 5 sets")},
    }
    record["timing"] = timing
    record["versions"] = results.versions()
    record["summary_lines"] = summary_lines(record)
    results.write_parquet(out / "words.parquet", words)
    pos_figures(record, out / "figures")
    write_record(out / "pos.json", record, "pos")
    return record


# ------------------------------------------------------------------------------------------------ CLI
def command(args) -> int:
    """``negdiff pos``."""
    from negdiff.services.scan_outputs import scan_corpus_command

    return scan_corpus_command(args, PosConfig, run_pos, "pos.json words.parquet figures/pos_excess.png figures/pos_share.png")


def data_needs(cfg: PosConfig) -> list[str]:
    """The dataset folders this step reads: ``negdiff reproduce`` fetches or refuses them before any model loads."""
    from negdiff.data import corpus_folders

    return corpus_folders(cfg.corpus)


# ------------------------------------------------------------------------------------------------ step
def run_step(loaded: LoadedModel, run_dir: Path, cfg: PosConfig, force: bool = False) -> dict[str, Any]:
    """In a run folder the random sets are the ablation's (the same sets on both read-outs)."""
    cfg = dataclasses.replace(cfg, sets=str(Path(run_dir) / "ablate"))
    return run_pos(loaded, Path(run_dir) / "scan", cfg, Path(run_dir) / "pos", force=force)

