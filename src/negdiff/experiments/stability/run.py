"""``negdiff stability``: shard bootstrap of the WN set, its overlap across corpora and budgets, and the
headline ablation on redrawn sets.

1. The bootstrapped corpus is read once into S contiguous shards (one :class:`~negdiff.stats.NeuronStats`
   per layer and shard, sharing bin edges fixed on the first window). At each token budget the shards read
   so far are merged and the WN set taken (top ``fraction`` of each layer by ``criterion``); the full
   budget's set is the reference.
2. B bootstrap replicates redraw the S shards with replacement (:mod:`.stats`): each neuron's probability of
   being a WN, the expected Jaccard of a replicate's set with the reference and between two replicates.
3. Every compared corpus is read the same way (one shard) and its WN set taken at each budget it holds.
4. ``wn_neg`` (zero_negative) is rerun on the reference set and on ``redraws`` replicate sets, on the same
   items: how much the headline ablation moves when the WN set is redrawn (a range over the redraws: fewer
   than 10 give no interval).

The WN sets here come from this step's own accumulators (``bins_per_octave``, default 32, so that S shards fit
in memory), not from a ``negdiff scan`` folder; the reference set's overlap with a scan's set is a check the
user can make with ``NeuronSet.jaccard``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from negdiff import results
from negdiff.data import corpus_documents, token_windows
from negdiff.errors import NegdiffError
from negdiff.experiments.stability import stats
from negdiff.experiments.stability.config import StabilityConfig
from negdiff.hooks import capture
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.runs import write_record
from negdiff.services.conditions import Condition
from negdiff.services.conditions import run_condition as run_condition_in
from negdiff.services.streaming import default_window, stream
from negdiff.stats import NeuronStats
from negdiff.tasks import expand_tasks

FORMAT = "negdiff.stability/1"


class ShardStreamer:
    """A :func:`~negdiff.services.streaming.stream` consumer: each window's pre-activations go to its shard."""

    def __init__(self, shard_of: np.ndarray, n_shards: int, bins_per_octave: int) -> None:
        self.shard_of, self.n_shards, self.bins = shard_of, n_shards, bins_per_octave
        self.shards: dict[int, list[NeuronStats]] = {}
        self.rows = np.zeros(0, dtype=int)

    def calibrate(self, loaded: LoadedModel, window: torch.Tensor) -> None:
        """Fix every layer's bin edges from one window (not counted), shared by all shards so they merge."""
        def fn(kind: str, layer: int, t: torch.Tensor) -> None:
            if kind == "pre":
                base = NeuronStats(t.shape[-1], bins_per_octave=self.bins, device=t.device)
                base.calibrate(t.reshape(-1, t.shape[-1]))
                self.shards[layer] = [NeuronStats.like(base) for _ in range(self.n_shards)]

        with torch.inference_mode(), capture(loaded.model, what=("pre",), fn=fn, keep=False, stop_after_last=True,
                                             sites=loaded.sites) as trace:
            trace.forward(window.reshape(1, -1).to(loaded.device))

    def start_batch(self, windows: list[int]) -> None:
        self.rows = self.shard_of[windows]

    def __call__(self, kind: str, layer: int, t: torch.Tensor) -> None:
        if kind != "pre":
            return
        for s in np.unique(self.rows):
            sel = torch.as_tensor(np.flatnonzero(self.rows == s), device=t.device)
            self.shards[layer][s].add(t.index_select(0, sel).reshape(-1, t.shape[-1]))

    def flush(self, layer: int | None = None) -> None:
        """Nothing is staged between batches."""

    def layers(self, counts: np.ndarray | None = None) -> list[NeuronStats]:
        """One merged accumulator per layer (shard s taken ``counts[s]`` times; default each once)."""
        return [stats.merged(self.shards[i], counts) for i in sorted(self.shards)]


def read_corpus(loaded: LoadedModel, corpus: str, tokens: int, budgets: list[int], n_shards: int,
                cfg: StabilityConfig) -> tuple[ShardStreamer, dict[int, NeuronSet], int]:
    """Stream ``corpus`` into shards; the WN set at every budget it reaches (whole windows); tokens read."""
    window = default_window(loaded, cfg.window)
    windows = token_windows(loaded.tokenizer, corpus_documents(corpus)[0], window, tokens)
    if len(windows) < n_shards:
        raise NegdiffError(f"{corpus}: {len(windows)} windows of {window} tokens cannot make {n_shards} shards; "
                           "lower --window or --shards, or raise --tokens")
    shard_of = np.arange(len(windows)) * n_shards // len(windows)
    streamer = ShardStreamer(shard_of, n_shards, cfg.bins_per_octave)
    streamer.calibrate(loaded, windows[0])
    ends = sorted({min(len(windows), max(1, b // window)) for b in budgets if b // window >= 1} | {len(windows)})
    sets, start = {}, 0
    for end in ends:
        status(f"stability: {corpus}, windows {start}..{end} of {len(windows)} ({end * window:,} tokens)")
        stream(loaded, windows, streamer, cfg.batch_windows, start, block=range(start, end))
        sets[end * window] = stats.select(streamer.layers(), cfg.fraction, cfg.criterion)[0]
        start = end
    return streamer, sets, len(windows) * window


def redrawn_ablation(loaded: LoadedModel, reference: NeuronSet, redraws: list[NeuronSet], cfg: StabilityConfig,
                     out: Path, key: str, force: bool) -> dict[str, Any]:
    """wn_neg on the reference set and on each redrawn set: deltas to baseline with item/window intervals."""
    from negdiff.contrasts import Contrasts, interval_cell, ppl_cell

    tasks = expand_tasks(list(cfg.tasks))
    conds = [Condition("baseline", NeuronSet.empty(), tasks=tasks), Condition("wn_neg_reference", reference, tasks=tasks)]
    conds += [Condition(f"wn_neg_redraw_{r}", s, tasks=tasks) for r, s in enumerate(redraws)]
    configs = {t: cfg.eval_config(t) for t in tasks}
    items = {}
    for c in conds:
        items[c.name] = run_condition_in(loaded, c, configs, out / "conditions" / c.name, out / "sets", key, force)["items"]
    con = Contrasts(items, {c.name: [c.name] for c in conds}, n_boot=cfg.n_boot, seed=cfg.seed)
    base_ppl = con.value("baseline", "perplexity", "nll")["value"] if "perplexity" in tasks else None
    delta: dict[str, dict] = {}
    for c in conds[1:]:
        for t in tasks:
            readout = "nll" if t == "perplexity" else "acc"
            iv = con.interval(t, readout, "baseline", c.name)
            delta.setdefault(c.name, {})[t] = ppl_cell(iv, base_ppl) if t == "perplexity" else interval_cell(iv)
    spread = {}
    for t in tasks:
        vals = [delta[c.name][t]["diff"] for c in conds[2:]]
        if vals:
            spread[t] = {"reference": delta["wn_neg_reference"][t]["diff"], "redraw_min": min(vals),
                         "redraw_max": max(vals), "n_redraws": len(vals),
                         "note": "range over the redraws; fewer than 10 redraws: no interval"}
    return {"tasks": tasks, "delta": delta, "spread": spread,
            "jaccard_with_reference": {c.name: reference.jaccard(c.neurons) for c in conds[2:]}}


def run_stability(loaded: LoadedModel, cfg: StabilityConfig, out: str | Path, force: bool = False) -> dict[str, Any]:
    """All four parts; writes stability.json, probabilities.parquet, overlap.csv and figures/."""
    from negdiff.experiments.stability.figures import stability_figures

    out = Path(out)
    info = loaded.info.to_dict()
    key = results.config_key({"model": {k: info[k] for k in ("spec", "revision", "weights_hash", "dtype")},
                              "config": cfg.to_dict()})
    if not force and (out / "stability.json").is_file() and results.read_json(out / "stability.json").get("key") == key:
        status(f"stability already done in {out} (same model and settings); use --force to redo it")
        return results.read_json(out / "stability.json")
    t0 = time.time()
    streamer, main_sets, read = read_corpus(loaded, cfg.corpus, cfg.tokens, list(cfg.budgets), cfg.shards, cfg)
    t_scan = time.time() - t0
    reference = main_sets[max(main_sets)]
    draws = stats.multiplicities(cfg.shards, cfg.replicates, cfg.seed)
    t1 = time.time()
    rep_sets = []
    for b, counts in enumerate(draws):
        if b % 10 == 0:
            status(f"stability: bootstrap replicate {b + 1}/{len(draws)}")
        rep_sets.append(stats.select(streamer.layers(counts), cfg.fraction, cfg.criterion)[0])
    t_boot = time.time() - t1
    del streamer
    summary = stats.replicate_summary(reference, rep_sets, {s.layer: s.width for s in loaded.sites})
    probabilities = summary.pop("probabilities")
    all_sets = {(cfg.corpus, t): s for t, s in main_sets.items()}
    tokens_read = {cfg.corpus: read}
    for corpus in cfg.compare:
        budgets = [b for b in cfg.budgets if b < cfg.compare_tokens] + [cfg.compare_tokens]
        _, sets, n = read_corpus(loaded, corpus, cfg.compare_tokens, budgets, 1, cfg)
        tokens_read[corpus] = n
        all_sets.update({(corpus, t): s for t, s in sets.items()})
    overlap = stats.overlap_rows(all_sets, (cfg.corpus, max(main_sets)))
    t2 = time.time()
    ablation = (redrawn_ablation(loaded, reference, rep_sets[:cfg.redraws], cfg, out, key, force)
                if cfg.redraws else None)
    reference.to_json(out / "sets" / "reference.json")
    record: dict[str, Any] = {
        "format": FORMAT, "key": key, "model": info, "config": cfg.to_dict(), "tokens_read": tokens_read,
        "window": default_window(loaded, cfg.window), "bootstrap": summary, "overlap": overlap, "ablation": ablation,
        "resampling": f"{cfg.replicates} replicates of {cfg.shards} contiguous shards of {cfg.corpus} "
                      f"({read:,} tokens), drawn with replacement",
        "seconds": {"scan_bootstrapped_corpus": t_scan, "bootstrap": t_boot, "compare": t2 - t1 - t_boot,
                    "ablation": time.time() - t2, "total": time.time() - t0},
    }
    record["summary_lines"] = summary_lines(record)
    results.write_parquet(out / "probabilities.parquet", probabilities)
    results.write_csv(out / "overlap.csv", ["corpus", "tokens", "n_wn", "jaccard_reference", "jaccard_same_budget"],
                      [[r[k] for k in ("corpus", "tokens", "n_wn", "jaccard_reference", "jaccard_same_budget")]
                       for r in overlap])
    record["figures"] = [str(p.relative_to(out)) for p in stability_figures(record, probabilities, rep_sets, reference,
                                                                             out / "figures")]
    write_record(out / "stability.json", record, "stability", record["seconds"]["total"])
    return record


def summary_lines(record: dict[str, Any]) -> list[str]:
    """What the terminal and the report show."""
    b, cfg = record["bootstrap"], record["config"]
    jr, jp = b["jaccard_reference"], b["jaccard_pairs"]
    rp = b["reference_p_wn"]
    out = [f"Shard bootstrap: {record['resampling']}; WN = top {100 * cfg['fraction']:g}% of each layer by "
           f"{cfg['criterion']} ({b['n_wn']} neurons).",
           f"Expected Jaccard, replicate vs full-data set: {jr['mean']:.3f} (Monte-Carlo SE {jr['mcse']:.3f}; middle 95% "
           f"of replicates {jr['q025']:.3f}-{jr['q975']:.3f}); two replicates: {jp['mean']:.3f} "
           f"({jp['q025']:.3f}-{jp['q975']:.3f}).",
           f"Reference WN: mean membership probability {rp['mean']:.3f}; {100 * rp['share_ge_0.9']:.0f}% of them are WN "
           f"in >= 90% of replicates, {100 * rp['share_lt_0.5']:.0f}% in fewer than half; {b['n_ever_wn']} neurons "
           "are WN in at least one replicate.",
           "| corpus | tokens | WN | Jaccard with reference | Jaccard with reference corpus, same budget |", "|---|---|---|---|---|"]
    for r in record["overlap"]:
        same = "-" if r["jaccard_same_budget"] is None else f"{r['jaccard_same_budget']:.3f}"
        out.append(f"| {r['corpus']} | {r['tokens']:,} | {r['n_wn']} | {r['jaccard_reference']:.3f} | {same} |")
    a = record.get("ablation")
    if a:
        for t, s in a["spread"].items():
            unit = "perplexity" if t == "perplexity" else "points"
            k = 1 if t == "perplexity" else 100
            out.append(f"wn_neg redrawn ({s['n_redraws']} replicate sets): Δ{t} {k * s['reference']:+.3f} {unit} on the "
                       f"reference set; {k * s['redraw_min']:+.3f} to {k * s['redraw_max']:+.3f} on the redrawn sets "
                       "(a range, no interval: fewer than 10 redraws)")
    return out


# ------------------------------------------------------------------------------------------------ CLI
def command(args) -> int:
    """``negdiff stability``."""
    from negdiff.data import check_corpus
    from negdiff.options import check_task_data, config_from_args, run_on_model

    cfg = config_from_args(StabilityConfig, args)

    def preflight() -> None:
        for corpus in (cfg.corpus, *cfg.compare):
            check_corpus(corpus)
        if cfg.redraws:
            check_task_data(expand_tasks(list(cfg.tasks)))

    return run_on_model(args, lambda loaded: run_stability(loaded, cfg, args.out, force=args.force),
                        "stability.json probabilities.parquet overlap.csv conditions/ sets/ figures/", preflight=preflight)


def data_needs(cfg: StabilityConfig) -> list[str]:
    """The dataset folders this step reads."""
    from negdiff.data import corpus_folders
    from negdiff.tasks import task_folders

    folders = [f for c in (cfg.corpus, *cfg.compare) for f in corpus_folders(c)]
    return folders + (task_folders(list(cfg.tasks)) if cfg.redraws else [])


# ------------------------------------------------------------------------------------------------ step
def run_step(loaded: LoadedModel, run_dir: Path, cfg: StabilityConfig, force: bool = False) -> dict[str, Any]:
    return run_stability(loaded, cfg, Path(run_dir) / "stability", force=force)
