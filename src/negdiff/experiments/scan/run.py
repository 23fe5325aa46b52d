"""The neuron scan: per-neuron statistics, Wasserstein distance, mapping difficulty and WN selection.

One streaming pass over a corpus: every window's pre-activations feed a per-layer
:class:`~negdiff.stats.NeuronStats` (memory independent of the number of tokens) and the MLP inputs and
pre-activations at a few planned positions feed a per-layer :class:`~negdiff.mapdiff.MDAccumulator`. On
CPU several layers are accumulated at once on the intra-op threads (:mod:`negdiff.workers`) while the
forward pass waits. The pass stops after the last MLP activation (the LM head is never run). Accumulators are checkpointed, so an interrupted scan
resumes where it stopped; results are written only at the end, atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from negdiff import distributed
from negdiff.choices import check_criterion
from negdiff.data import check_corpus, corpus_documents, token_windows
from negdiff.errors import NegdiffError
from negdiff.experiments.scan.config import ScanConfig
from negdiff.experiments.scan.figures import scan_figures
from negdiff.experiments.scan.stats import grid_health, grid_warning, negative_region, negative_region_lines
from negdiff.hooks import capture, intervene
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.results import (
    atomic_write_with,
    config_key,
    file_sha256,
    read_json,
    versions,
    write_parquet,
)
from negdiff.runs import write_record
from negdiff.scoring import window_nlls
from negdiff.select import random_like, select_wasserstein
from negdiff.services.md_pairs import pairs_table
from negdiff.services.scan_outputs import wn_path
from negdiff.services.streaming import Streamer, default_window, merge_ranks, nearest_md, plan_pairs, stream

__all__ = ["ScanConfig", "Streamer", "neuron_table", "pairs_table", "plan_pairs", "run_scan", "stream", "wn_path"]

STATE_FILE = ".scan_state.pt"
STATS_COLUMNS = ("wd", "wd_below_mean", "wd_above_mean", "wd_neg_raw", "wd_pos_raw", "wd_neg_raw_q", "wd_pos_raw_q",
                 "mean", "std", "skew", "kurtosis", "frac_negative", "min", "max", "frac_offgrid")


def neuron_table(streamer: Streamer) -> pd.DataFrame:
    """One row per neuron: moments, WD and its splits (raw sign, mass-adjusted, at the mean; see
    negdiff.stats), frac_offgrid, MD, rank in its layer."""
    frames = []
    for site, st, acc in zip(streamer.sites, streamer.stats, streamer.md):
        r, m = st.result(), acc.result()
        df = pd.DataFrame({"layer": site.layer, "neuron": np.arange(site.width)})
        for key in STATS_COLUMNS:
            df[key] = np.asarray(r[key], dtype=np.float64)
        df["md"] = np.asarray(m["md"], dtype=np.float64)
        df["wd_rank_in_layer"] = df["wd"].rank(ascending=False, method="first").astype(int)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------ runner
def _members(table: pd.DataFrame, neurons: NeuronSet) -> np.ndarray:
    """A boolean column: is each row's (layer, neuron) in ``neurons``."""
    keys = table.layer.to_numpy(np.int64) * (1 << 32) + table.neuron.to_numpy(np.int64)
    chosen = np.array([layer * (1 << 32) + n for layer, n in neurons], dtype=np.int64)
    return np.isin(keys, chosen)


def _record_base(loaded: LoadedModel, cfg: ScanConfig, corpus_file, window: int, n_windows: int) -> dict[str, Any]:
    return {
        "model": loaded.info.to_dict(),
        "config": cfg.to_dict(),
        "corpus": {"name": cfg.corpus, "file": None if corpus_file is None else str(corpus_file),
                   "sha256": None if corpus_file is None else file_sha256(corpus_file)},
        "window": window,
        "n_windows": n_windows,
        "tokens": n_windows * window,
    }


def _sanity(loaded: LoadedModel, check: torch.Tensor | None, wn: NeuronSet, rand: NeuronSet) -> dict[str, Any]:
    """Perplexity on held-out windows: baseline, WN negative-zeroed, and as many layer-matched random."""
    if check is None:
        return {}
    out = {"windows": len(check), "tokens": int(check.numel())}
    for name, neurons in (("baseline", NeuronSet.empty()), ("wn_neg", wn), ("random_neg", rand)):
        with intervene(loaded.model, neurons, "zero_negative", sites=loaded.sites):
            nll = window_nlls(loaded.model, check)
        out[name] = float(np.exp(nll.mean()))
    return out


def _hist_samples(loaded: LoadedModel, windows: torch.Tensor, table: pd.DataFrame, n_windows: int = 2) -> dict:
    """Raw pre-activations of the top WN and a median-WD neuron of a few layers (for the histogram figure)."""
    n_layers = len(loaded.sites)
    layers = sorted({0, n_layers // 2, n_layers - 1})
    picks = {}
    for layer in layers:
        rows = table[table.layer == layer].sort_values("wd")
        picks[layer] = (int(rows.neuron.iloc[-1]), int(rows.neuron.iloc[len(rows) // 2]))
    with capture(loaded.model, layers, stop_after_last=True, sites=loaded.sites) as trace:
        values: dict[str, list] = {}
        for w in range(min(n_windows, len(windows))):
            trace.forward(windows[w : w + 1].to(loaded.device))
            for layer, (top, med) in picks.items():
                h = trace.pre[layer][0].float().cpu()
                values.setdefault(f"L{layer}.N{top} (top WD)", []).append(h[:, top])
                values.setdefault(f"L{layer}.N{med} (median WD)", []).append(h[:, med])
    return {k: torch.cat(v).numpy() for k, v in values.items()}


def summarize(table: pd.DataFrame, record: dict[str, Any]) -> list[str]:
    """The closing summary printed after a scan (and stored in scan.json)."""
    s = record["summary"]
    lines = [
        f"tokens scanned      {record['tokens']:,} ({record['n_windows']} windows of {record['window']})"
        f" in {record['timing']['scan_s']:.0f} s ({record['timing']['tokens_per_s']:.0f} tok/s)",
        f"Wasserstein neurons {s['n_wn']} ({record['config']['scope']}, top {100 * record['config']['fraction']:g}%)"
        f"; global-scope set overlaps {s['overlap_global']} of them",
        *negative_region_lines(s["negative_region"]),
        f"median WD           WN {s['median_wd_wn']:.3f} vs all {s['median_wd_all']:.3f}; median MD WN "
        f"{s['median_md_wn']:.2f} vs all {s['median_md_all']:.2f}",
    ]
    c = s.get("check") or {}
    if c:
        lines.append(
            f"held-out perplexity baseline {c['baseline']:.2f} | WN zero_negative {c['wn_neg']:.2f} | "
            f"{s['n_wn']} random zero_negative {c['random_neg']:.2f}  ({c['tokens']:,} tokens of {record['config']['check_corpus']})"
        )
    return lines


def run_scan(loaded: LoadedModel, cfg: ScanConfig, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Scan ``loaded`` and write neurons.parquet, wn.json, pairs.parquet, scan.json and figures to ``out``.

    All inputs are validated before anything is written; a finished scan with the same key is reused
    unless ``force``; an interrupted one resumes from its last checkpoint.
    """
    out = Path(out)
    check_criterion(cfg.criterion)
    window = default_window(loaded, cfg.window)
    docs, corpus_file = corpus_documents(cfg.corpus)
    windows = token_windows(loaded.tokenizer, docs, window, cfg.tokens)
    check = None
    if cfg.check_windows > 0:
        check_docs, _ = corpus_documents(cfg.check_corpus)
        check = token_windows(loaded.tokenizer, check_docs, window, cfg.check_windows * window)
    record = _record_base(loaded, cfg, corpus_file, window, len(windows))
    key = config_key({"config": cfg.key_dict()} | {k: record[k] for k in ("corpus", "window")} | {
        "model": {k: record["model"][k] for k in ("spec", "revision", "weights_hash", "dtype", "n_params")}})
    record["key"] = key
    if not force and (out / "scan.json").is_file():
        if read_json(out / "scan.json").get("key") == key:
            status(f"scan already done in {out} (same model, corpus and settings); use --force to redo it")
            return read_json(out / "scan.json")
        raise NegdiffError(f"{out} holds a finished scan made with other settings or another model; pass --force to "
                           "replace it (the steps that read it must then be rerun), or choose another --out")
    r = distributed.init(loaded.device)
    if len(windows) < r.world:
        raise NegdiffError(f"{len(windows)} windows cannot be shared among {r.world} processes; scan more tokens")
    plan = plan_pairs(len(windows), window, cfg.md_pairs, cfg.seed)
    streamer = Streamer(loaded, plan, cfg.top_pairs)
    state_path, start = out / (STATE_FILE + (f".rank{r.rank}of{r.world}" if r.active else "")), 0
    if state_path.is_file() and not force:
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            start = streamer.load(saved, loaded.device)
            status(f"resuming the scan after window {start} of {len(windows)}")
    if not start:
        streamer.calibrate(loaded, windows[0])

    def save_state(state: dict) -> None:
        atomic_write_with(state_path, lambda tmp: torch.save({**state, "key": key}, tmp), all_ranks=True)

    started = time.time()
    block = distributed.shard(len(windows), r)
    seconds = stream(loaded, windows, streamer, cfg.batch_windows, start, save_state, cfg.checkpoint_every,
                     block=block, show=r.main)
    merge_ranks(streamer, r)
    if not r.main:
        state_path.unlink(missing_ok=True)
        return {"rank": r.rank, "windows": [block.start, block.stop]}
    streamed = (len(block) - max(0, start - block.start)) * window * r.world  # tokens this run streamed
    record["timing"] = {"scan_s": seconds, "tokens_per_s": streamed / max(seconds, 1e-9), "resumed_from_window": start,
                        "ranks": r.world}
    with distributed.local_only():  # the other ranks are done: rank 0 finishes alone
        record = _finish(loaded, cfg, out, record, streamer, windows, check)
    record["timing"]["total_s"] = time.time() - started
    write_record(out / "scan.json", record, "scan", record["timing"].get("total_s"))
    state_path.unlink(missing_ok=True)
    return record


def _finish(loaded: LoadedModel, cfg: ScanConfig, out: Path, record: dict, streamer: Streamer, windows: torch.Tensor,
            check: torch.Tensor | None) -> dict[str, Any]:
    """Tables, selections, the sanity read-out and figures from the (merged) accumulators (scan.json is the
    caller's to write, last, so a finished scan.json always means a finished scan)."""
    key = record["key"]
    table = neuron_table(streamer)
    if cfg.md_nearest_tokens > 0:
        table["md_nearest"] = np.concatenate(nearest_md(loaded, windows, streamer, cfg.md_nearest_tokens))
    wn = select_wasserstein(table, cfg.fraction, cfg.scope, cfg.criterion)
    wn_global = select_wasserstein(table, cfg.fraction, "global", cfg.criterion)
    wn.rule.update(scan=key, model=loaded.info.spec, corpus=cfg.corpus)
    table["is_wn"] = _members(table, wn)
    table["is_wn_global"] = _members(table, wn_global)
    widths = {s.layer: s.width for s in loaded.sites}
    rand = random_like(wn, widths, seed=cfg.seed)
    pairs = pairs_table(streamer, loaded.tokenizer, windows, {"wn": wn, "random": rand})
    wn_rows = table[table.is_wn]
    scales = np.concatenate([st.calibration()["scale"] for st in streamer.stats])
    health = grid_health(table, scales)
    if (warning := grid_warning(health)) is not None:
        status(warning)
    groups = {"wn": table.is_wn.to_numpy(), "all": np.ones(len(table), bool), "random": _members(table, rand)}
    record["summary"] = {
        "n_wn": wn.size, "n_wn_global": wn_global.size, "overlap_global": wn.difference(wn.difference(wn_global)).size,
        "wn_per_layer": wn.counts(), "wn_global_per_layer": wn_global.counts(),
        "negative_region": negative_region(table, groups, len(loaded.sites), cfg.seed),
        "grid": health,
        "median_wd_wn": float(wn_rows.wd.median()), "median_wd_all": float(table.wd.median()),
        "median_md_wn": float(wn_rows.md.median()), "median_md_all": float(table.md.median()),
        "md_pairs_per_layer": int(streamer.md[0].n_pairs), "md_pairs_skipped": int(streamer.md[0].n_skipped),
        "check": _sanity(loaded, check, wn, rand),
    }
    record["versions"] = versions()
    record["summary_lines"] = summarize(table, record)
    write_parquet(out / "neurons.parquet", table)
    for neurons in (wn, rand, wn_global):  # downstream steps refuse these on another model
        neurons.model = loaded.key()
    wn.to_json(out / "wn.json")
    rand.to_json(out / "random.json")
    wn_global.to_json(out / "wn_global.json")
    write_parquet(out / "pairs.parquet", pairs)
    scan_figures(table, _hist_samples(loaded, windows, table), out)
    return record


# ------------------------------------------------------------------------------------------------ CLI
def data_needs(cfg: ScanConfig) -> list[str]:
    """The dataset folders this step reads: ``negdiff reproduce`` fetches or refuses them before any model loads."""
    from negdiff.data import corpus_folders

    return corpus_folders(cfg.corpus) + (corpus_folders(cfg.check_corpus) if cfg.check_windows > 0 else [])


def command(args) -> int:
    """``negdiff scan``."""
    from negdiff.options import config_from_args, run_on_model

    cfg = config_from_args(ScanConfig, args)

    def preflight() -> None:
        check_corpus(cfg.corpus)
        if cfg.check_windows > 0:
            check_corpus(cfg.check_corpus)

    return run_on_model(args, lambda loaded: run_scan(loaded, cfg, args.out, force=args.force),
                        "neurons.parquet wn.json pairs.parquet scan.json figures/", preflight=preflight)


# ------------------------------------------------------------------------------------------------ step
def run_step(loaded: LoadedModel, run_dir: Path, cfg: ScanConfig, force: bool = False) -> dict[str, Any]:
    return run_scan(loaded, cfg, Path(run_dir) / "scan", force=force)

