"""The neuron scan: per-neuron statistics, Wasserstein distance, mapping difficulty and WN selection.

One streaming pass over a corpus: every window's pre-activations feed a per-layer
:class:`~negdiff.stats.NeuronStats` (memory independent of the number of tokens) and the MLP inputs at a
few planned positions feed a per-layer :class:`~negdiff.mapdiff.MDAccumulator`. The pass stops after the
last MLP activation (the LM head is never run). Accumulators are checkpointed, so an interrupted scan
resumes where it stopped; results are written only at the end, atomically.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from negdiff.data import corpus_documents, token_windows
from negdiff.figures import scan_figures
from negdiff.hooks import capture, intervene
from negdiff.mapdiff import MDAccumulator
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import bar, status
from negdiff.results import (
    atomic_write_with,
    config_key,
    file_sha256,
    read_json,
    versions,
    write_json,
    write_parquet,
)
from negdiff.scoring import window_nlls
from negdiff.select import random_like, select_wasserstein
from negdiff.stats import NeuronStats

STATE_FILE = ".scan_state.pt"
STATS_COLUMNS = ("wd", "wd_neg", "wd_pos", "mean", "std", "skew", "kurtosis", "frac_negative", "min", "max")


@dataclass
class ScanConfig:
    """Everything that decides a scan's numbers (hashed into the resume key)."""

    corpus: str = "wikitext2"
    tokens: int = 131_072
    window: int | None = None  # default: min(2048, the model's max length)
    batch_windows: int = 1
    md_pairs: int = 24_576  # per layer
    top_pairs: int = 10
    fraction: float = 0.01
    scope: str = "per_layer"
    criterion: str = "wd"
    seed: int = 0
    check_corpus: str = "wikitext2-valid"
    check_windows: int = 2
    checkpoint_every: int = 16  # windows (a checkpoint of a 30 x 1536 model is ~600 MB)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The settings that decide the numbers (speed-only knobs left out of the resume key)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_windows", "checkpoint_every")}


def default_window(loaded: LoadedModel, window: int | None) -> int:
    """min(requested or 2048, the model's max length): the authors' window, capped by the model."""
    limit = loaded.info.max_length or 2048
    return min(window or 2048, limit)


def plan_pairs(n_windows: int, seq_len: int, n_pairs: int, seed: int) -> np.ndarray:
    """Disjoint token pairs for mapping difficulty, as rows ``(window_a, pos_a, window_b, pos_b)``.

    The authors draw random disjoint pairs over all tokens, so a pair almost never shares a window. To
    stream, window ``w`` draws ``2p`` distinct positions: its first ``p`` are the partners of window
    ``w-1``'s second ``p``. Every token is used at most once and pair ids (row indices) are ordered by the
    window that completes them. A one-window scan pairs within the window.
    """
    if n_windows == 1:
        p = min(n_pairs, seq_len // 2)
        pos = _positions(0, seq_len, 2 * p, seed)
        return np.stack([np.zeros(p, int), pos[:p], np.zeros(p, int), pos[p:]], axis=1)
    p = min(-(-n_pairs // (n_windows - 1)), seq_len // 2)
    rows = []
    prev = _positions(0, seq_len, 2 * p, seed)[p:]
    for w in range(1, n_windows):
        pos = _positions(w, seq_len, 2 * p, seed)
        rows.append(np.stack([np.full(p, w - 1), prev, np.full(p, w), pos[:p]], axis=1))
        prev = pos[p:]
    return np.concatenate(rows)


def _positions(window: int, seq_len: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, window]).choice(seq_len, size=k, replace=False)


class Streamer:
    """The hook consumer: routes each layer's tensors to its accumulators as they are produced."""

    FLUSH_PAIRS = 2048

    def __init__(self, loaded: LoadedModel, plan: np.ndarray, top_k: int, flush_pairs: int | None = None):
        self.sites = loaded.sites
        self.weights = [tuple(None if t is None else t.float() for t in s.proj_weight()) for s in self.sites]
        self.stats: list[NeuronStats | None] = [None] * len(self.sites)
        self.md = [MDAccumulator(s.width, top_k=top_k) for s in self.sites]
        self.plan = plan
        self.held: dict[int, torch.Tensor] = {}  # layer -> MLP inputs of pairs waiting for their partner
        self.windows: list[int] = []
        # Complete pairs are buffered and added in batches of ~flush_pairs: MDAccumulator.add has a fixed
        # cost per call (~20 ms at 1536 neurons) that would otherwise be paid per layer per window.
        self.flush_pairs = flush_pairs or self.FLUSH_PAIRS
        self.pending: dict[int, list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]] = {}

    def start_batch(self, windows: list[int]) -> None:
        self.windows = windows

    def __call__(self, kind: str, layer: int, t: torch.Tensor) -> None:
        if kind == "pre":
            if self.stats[layer] is None:
                self.stats[layer] = NeuronStats(t.shape[-1], device=t.device)
            self.stats[layer].add(t.reshape(-1, t.shape[-1]))
            return
        W, b = self.weights[layer]
        for row, w in enumerate(self.windows):
            first = self.plan[:, 0] == w  # pairs whose side a lies in this window
            second = np.flatnonzero(self.plan[:, 2] == w)
            x = t[row]
            if first.any():
                pos_a = torch.as_tensor(self.plan[first, 1], device=x.device)
                waiting = x.index_select(0, pos_a).float()
                if len(second) and self.plan[second[0], 0] == w:  # a one-window plan: both sides here
                    pos_b = torch.as_tensor(self.plan[second, 3], device=x.device)
                    self._add(layer, waiting, x.index_select(0, pos_b).float(), second, W, b)
                    continue
            if len(second):
                pos_b = torch.as_tensor(self.plan[second, 3], device=x.device)
                self._add(layer, self.held.pop(layer), x.index_select(0, pos_b).float(), second, W, b)
            if first.any():
                self.held[layer] = waiting

    def _add(self, layer: int, xa: torch.Tensor, xb: torch.Tensor, ids: np.ndarray, W, b) -> None:
        self.pending.setdefault(layer, []).append((xa, xb, ids))
        if sum(len(i) for _, _, i in self.pending[layer]) >= self.flush_pairs:
            self.flush(layer)

    def flush(self, layer: int | None = None) -> None:
        """Add the buffered pairs of ``layer`` (or of every layer) to the MD accumulators."""
        for lyr in [layer] if layer is not None else list(self.pending):
            parts = self.pending.pop(lyr, [])
            if parts:
                W, b = self.weights[lyr]
                ids = torch.as_tensor(np.concatenate([i for _, _, i in parts]))
                self.md[lyr].add(torch.cat([a for a, _, _ in parts]), torch.cat([x for _, x, _ in parts]), W, b,
                                 meta={"pair_id": ids})

    def state(self, windows_done: int) -> dict[str, Any]:
        self.flush()
        return {
            "windows_done": windows_done,
            "stats": [None if s is None else s.state_dict() for s in self.stats],
            "md": [m.state_dict() for m in self.md],
            "held": {k: v.cpu() for k, v in self.held.items()},
        }

    def load(self, state: dict[str, Any], device: torch.device) -> int:
        self.stats = [None if s is None else NeuronStats.from_state_dict(s, device=device) for s in state["stats"]]
        self.md = [MDAccumulator.from_state_dict(m, device=device) for m in state["md"]]
        self.held = {k: v.to(device) for k, v in state["held"].items()}
        return int(state["windows_done"])


def stream(loaded: LoadedModel, windows: torch.Tensor, streamer: Streamer, batch: int, start: int = 0,
           on_checkpoint=None, every: int = 0) -> float:
    """Run the windows through the model with the streamer attached; returns the seconds spent."""
    device = loaded.device
    t0 = time.perf_counter()
    n = len(windows)
    progress = bar(total=n * windows.shape[1], initial=start * windows.shape[1], unit="tok", desc="scan")
    # Everything runs in inference mode: accumulator tensors first touched inside a hook become inference
    # tensors, and a flush or checkpoint between batches must be allowed to update them.
    with torch.inference_mode(), capture(loaded.model, what=("pre", "mlp_in"), fn=streamer, keep=False, stop_after_last=True,
                 sites=loaded.sites) as trace:
        for lo in range(start, n, batch):
            ids = list(range(lo, min(lo + batch, n)))
            streamer.start_batch(ids)
            trace.forward(windows[ids].to(device))
            progress.update(len(ids) * windows.shape[1])
            done = ids[-1] + 1
            if on_checkpoint and every and done < n and done // every != lo // every:
                on_checkpoint(streamer.state(done))
        streamer.flush()
    progress.close()
    return time.perf_counter() - t0


def neuron_table(streamer: Streamer) -> pd.DataFrame:
    """One row per neuron: moments, WD (total, negative side, positive side), MD, rank in its layer."""
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


def pairs_table(streamer: Streamer, tokenizer, windows: torch.Tensor, groups: dict[str, NeuronSet],
                context: int = 4) -> pd.DataFrame:
    """For each neuron of each group: its top-ratio MD pairs with tokens, a few words of context, both
    pre-activations and their sign class (both negative / mixed / both positive)."""
    plan = streamer.plan
    flat = windows.flatten()
    seq = windows.shape[1]

    def ctx(w: int, p: int) -> str:
        off = w * seq + p
        return tokenizer.decode(flat[max(0, off - context): off].tolist()) + "[[" + tokenizer.decode([int(flat[off])]) + "]]"

    rows = []
    results = {layer: streamer.md[layer].result() for g in groups.values() for layer in g.layers}
    for group, neurons in groups.items():
        for layer, n in neurons:
            res = results[layer]
            for rank in range(res["top_pair_id"].shape[1]):
                pid = int(res["top_pair_id"][n, rank])
                if pid < 0:
                    continue
                wa, pa, wb, pb = (int(v) for v in plan[pid])
                ya, yb = float(res["top_y_i"][n, rank]), float(res["top_y_j"][n, rank])
                sign = "both_negative" if max(ya, yb) < 0 else ("both_positive" if min(ya, yb) > 0 else "mixed")
                rows.append({
                    "group": group, "layer": layer, "neuron": n, "rank": rank + 1,
                    "ratio": float(res["top_score"][n, rank]), "d_norm": float(res["top_d"][n, rank]) / res["max_d"],
                    "pair_id": pid, "window_a": wa, "pos_a": pa, "window_b": wb, "pos_b": pb,
                    "token_a": int(windows[wa, pa]), "token_b": int(windows[wb, pb]),
                    "text_a": tokenizer.decode([int(windows[wa, pa])]), "text_b": tokenizer.decode([int(windows[wb, pb])]),
                    "context_a": ctx(wa, pa), "context_b": ctx(wb, pb), "y_a": ya, "y_b": yb, "sign_class": sign,
                })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ runner
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
        f"wd_neg > wd_pos     {100 * s['share_neg_wn']:.1f}% of WN vs {100 * s['share_neg_all']:.1f}% of all neurons",
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
    if not force and (out / "scan.json").is_file() and read_json(out / "scan.json").get("key") == key:
        status(f"scan already done in {out} (same model, corpus and settings); use --force to redo it")
        return read_json(out / "scan.json")
    plan = plan_pairs(len(windows), window, cfg.md_pairs, cfg.seed)
    streamer = Streamer(loaded, plan, cfg.top_pairs)
    state_path, start = out / STATE_FILE, 0
    if state_path.is_file() and not force:
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            start = streamer.load(saved, loaded.device)
            status(f"resuming the scan after window {start} of {len(windows)}")

    def save_state(state: dict) -> None:
        atomic_write_with(state_path, lambda tmp: torch.save({**state, "key": key}, tmp))

    started = time.time()
    seconds = stream(loaded, windows, streamer, cfg.batch_windows, start, save_state, cfg.checkpoint_every)
    table = neuron_table(streamer)
    wn = select_wasserstein(table, cfg.fraction, cfg.scope, cfg.criterion)
    wn_global = select_wasserstein(table, cfg.fraction, "global", cfg.criterion)
    wn.rule.update(scan=key, model=loaded.info.spec, corpus=cfg.corpus)
    table["is_wn"] = [(layer, n) in wn for layer, n in zip(table.layer, table.neuron)]
    table["is_wn_global"] = [(layer, n) in wn_global for layer, n in zip(table.layer, table.neuron)]
    widths = {s.layer: s.width for s in loaded.sites}
    rand = random_like(wn, widths, seed=cfg.seed)
    pairs = pairs_table(streamer, loaded.tokenizer, windows, {"wn": wn, "random": rand})
    wn_rows, neg = table[table.is_wn], table.wd_neg > table.wd_pos
    record["summary"] = {
        "n_wn": wn.size, "n_wn_global": wn_global.size, "overlap_global": wn.difference(wn.difference(wn_global)).size,
        "wn_per_layer": wn.counts(), "wn_global_per_layer": wn_global.counts(),
        "share_neg_wn": float(neg[table.is_wn].mean()), "share_neg_all": float(neg.mean()),
        "median_wd_wn": float(wn_rows.wd.median()), "median_wd_all": float(table.wd.median()),
        "median_md_wn": float(wn_rows.md.median()), "median_md_all": float(table.md.median()),
        "md_pairs_per_layer": int(streamer.md[0].n_pairs), "md_pairs_skipped": int(streamer.md[0].n_skipped),
        "check": _sanity(loaded, check, wn, rand),
    }
    record["timing"] = {"scan_s": seconds, "tokens_per_s": (len(windows) - start) * window / max(seconds, 1e-9),
                        "resumed_from_window": start, "total_s": time.time() - started}
    record["versions"] = versions()
    record["summary_lines"] = summarize(table, record)
    write_parquet(out / "neurons.parquet", table)
    wn.to_json(out / "wn.json")
    rand.to_json(out / "random.json")
    wn_global.to_json(out / "wn_global.json")
    write_parquet(out / "pairs.parquet", pairs)
    scan_figures(table, _hist_samples(loaded, windows, table), out)
    write_json(out / "scan.json", record)
    state_path.unlink(missing_ok=True)
    return record


# ------------------------------------------------------------------------------------------------ CLI
def _cmd_scan(args) -> int:
    from negdiff.models import load_model

    cfg = ScanConfig(corpus=args.corpus, tokens=args.tokens, window=args.window, batch_windows=args.batch_windows,
                     md_pairs=args.md_pairs, top_pairs=args.top_pairs, fraction=args.fraction, scope=args.scope,
                     criterion=args.criterion, seed=args.seed, check_windows=args.check_windows)
    loaded = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    record = run_scan(loaded, cfg, args.out, force=args.force)
    print("\n".join(record["summary_lines"]))
    print(f"wrote {args.out}/: neurons.parquet wn.json pairs.parquet scan.json figures/")
    return 0


def register(sub) -> None:
    """Add ``negdiff scan``."""
    from negdiff.cli import add_model_args

    p = sub.add_parser("scan", help="per-neuron WD / MD statistics over a corpus; select Wasserstein neurons")
    add_model_args(p)
    d = ScanConfig()
    p.add_argument("--corpus", default=d.corpus, help="wikitext2 (default), wikitext2-valid, ewt-dev, ewt-test, "
                   "train-corpus, or a .txt/.txt.gz/.jsonl path")
    p.add_argument("--tokens", type=int, default=d.tokens, help="token budget (whole windows; default %(default)s)")
    p.add_argument("--window", type=int, default=None, help="window length (default min(2048, model max length))")
    p.add_argument("--batch-windows", type=int, default=d.batch_windows, help="windows per forward pass")
    p.add_argument("--md-pairs", type=int, default=d.md_pairs, help="mapping-difficulty pairs per layer")
    p.add_argument("--top-pairs", type=int, default=d.top_pairs, help="top-ratio pairs kept per neuron")
    p.add_argument("--fraction", type=float, default=d.fraction, help="WN fraction (default 0.01)")
    p.add_argument("--scope", choices=("per_layer", "global"), default=d.scope)
    p.add_argument("--criterion", choices=("wd", "wd_neg", "md", "kurtosis"), default=d.criterion)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--check-windows", type=int, default=d.check_windows,
                   help="held-out windows for the closing perplexity read-out (0 to skip)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="redo a finished scan")
    p.set_defaults(func=_cmd_scan)
