"""``negdiff pairs``: the inputs a Wasserstein neuron sends far apart, and whether they sit on its negative side.

Mapping difficulty (MD) is high when inputs that are close (small distance between MLP inputs) get
pre-activations far apart. The paper reads the pairs with the largest ratio for one Pythia neuron and
finds function words with one value deep in the negative range and the other near zero: the negative
region *differentiates* them. This command re-samples MD pairs on a text with gold part of speech (UD
English EWT by default) for the WN and for layer-matched random neurons, with the scan's streaming
machinery (:class:`~negdiff.services.streaming.Streamer`, ``plan_pairs``, ``pairs_table``), maps
every pair's two tokens to their EWT words and gold UPOS through :mod:`negdiff.align`, and reports
per layer and over depth the share of top pairs in the negative region (both values < 0; also "at
least one < 0"), WN vs random, with CIs that resample neurons (:mod:`~negdiff.experiments.pairs.stats`).

The stream: EWT documents in a seeded order, each whole and contiguous (documents are never cut into
sentences), joined by blank lines, tokenized per document and cut into windows; the first
``--tokens`` are used. A finished run is reused when its key (model, scan sets, corpus, settings)
matches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from negdiff import align, results
from negdiff.data import corpus_documents, corpus_file, token_windows
from negdiff.errors import NegdiffError
from negdiff.experiments.pairs import stats as pairs_stats
from negdiff.experiments.pairs.config import PairsConfig
from negdiff.mapdiff import MDAccumulator
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.runs import write_record
from negdiff.select import random_like
from negdiff.services.md_pairs import pairs_table
from negdiff.services.scan_outputs import load_wn
from negdiff.services.streaming import Streamer, default_window, plan_pairs, stream

FORMAT = "negdiff.pairs/1"


@dataclass
class Stream:
    """The token windows and, for every token, the EWT unit (word) it belongs to (-1: none)."""

    windows: torch.Tensor  # [n, window]
    unit: np.ndarray  # [n * window]
    units: pd.DataFrame  # one row per unit: sent_id, sentence, form, upos
    documents: int
    source: Path | None
    tagger: str | None


# ---------------------------------------------------------------------------------------------- the stream
def unit_table(sents: list, mwt: str) -> pd.DataFrame:
    """One row per alignment unit (a word, or a multi-word token kept whole): its form and gold tag(s)."""
    words = align.word_frame(sents, mwt)
    g = words.groupby("unit", sort=True)
    first = g.first()
    many = g.size() > 1
    return pd.DataFrame({"sent_id": first.sent_id, "sentence": first.sentence,
                         "form": np.where(many, first.token_form, first.form),
                         "upos": g.upos.agg("+".join)}).reset_index(drop=True)


def tagged_stream(tokenizer, sents: list, tokens: int, seed: int, mwt: str) -> tuple[list[int], list[int], list[int], list]:
    """Token ids, owning units and each document's first position, of whole documents in a seeded order joined by blank lines.

    Also returns the sentences in that order: units are numbered over them as
    :func:`negdiff.align.word_frame` numbers them. The stream stops once ``tokens`` is reached (the
    caller cuts the last document at a window boundary).
    """
    docs = align.documents(sents)
    ordered = [sents[i] for d in np.random.default_rng(seed).permutation(len(docs)) for i in docs[d]]
    _, encoded = align.encode_corpus(tokenizer, ordered, 1 << 30, None, mwt, "prefix")
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    owner: list[int] = []
    starts: list[int] = []
    for e in encoded:
        if len(ids) >= tokens:
            break
        starts.append(len(ids))
        ids += [*e.request.target, *sep]
        owner += [*e.owner.tolist(), *[-1] * len(sep)]
    return ids, owner, starts, ordered


def load_stream(loaded: LoadedModel, cfg: PairsConfig) -> Stream:
    """EWT (or any CoNLL-U file) with gold tags; any other corpus untagged, as the scan streams it."""
    window = default_window(loaded, cfg.window)
    if window > cfg.tokens:
        raise NegdiffError(f"--tokens {cfg.tokens} is smaller than one window of {window} tokens (--window)")
    gold = cfg.corpus in align.GOLD_CORPORA or Path(cfg.corpus).name.removesuffix(".gz").endswith(".conllu")
    if not gold:
        docs, source = corpus_documents(cfg.corpus, cfg.data)
        windows = token_windows(loaded.tokenizer, docs, window, cfg.tokens)
        return Stream(windows, np.full(windows.numel(), -1), pd.DataFrame(columns=["sent_id", "sentence", "form", "upos"]),
                      len(docs), source, None)
    sents, source, tagger = align.load_sentences(cfg.corpus, cfg.data)
    ids, owner, starts, ordered = tagged_stream(loaded.tokenizer, sents, cfg.tokens, cfg.seed, cfg.mwt)
    n = min(len(ids), cfg.tokens) // window
    if n == 0:
        raise NegdiffError(f"--corpus {cfg.corpus}: {len(ids)} tokens, fewer than one window of {window}")
    windows = torch.tensor(ids[: n * window], dtype=torch.long).view(n, window)
    return Stream(windows, np.asarray(owner[: n * window], dtype=np.int64), unit_table(ordered, cfg.mwt),
                  sum(s < n * window for s in starts), source, tagger)


# ---------------------------------------------------------------------------------------------- neurons
def neuron_sets(loaded: LoadedModel, scan_dir: Path, cfg: PairsConfig) -> tuple[NeuronSet, NeuronSet, pd.DataFrame | None]:
    """The scan's WN, the pooled random control (random.json + extra seeds, WN excluded) and its neuron table."""
    wn = load_wn(loaded, scan_dir)
    if wn.size == 0:
        raise NegdiffError(f"--scan: {scan_dir / 'wn.json'} is empty")
    widths = {s.layer: s.width for s in loaded.sites}
    has_file = (scan_dir / "random.json").is_file()
    rand = NeuronSet.from_json(scan_dir / "random.json") if has_file else random_like(wn, widths, seed=0)
    rand.validate(loaded.sites)
    for k in range(1, cfg.seeds):
        rand = rand.union(random_like(wn, widths, seed=k))
    rand.rule = {"rule": "pooled layer-matched random neurons, WN excluded",
                 "sets": ["random.json" if has_file else "random_like seed 0", *(f"seed {k}" for k in range(1, cfg.seeds))]}
    table = pd.read_parquet(scan_dir / "neurons.parquet") if (scan_dir / "neurons.parquet").is_file() else None
    return wn, rand, table


def panel_neurons(wn: NeuronSet, table: pd.DataFrame | None, layers: tuple[int, ...] | None,
                  n_layers: int) -> dict[int, int]:
    """Layer -> its WN with the highest WD (the first WN when the scan's table is missing)."""
    if layers is None:
        layers = tuple(sorted({n_layers // 6, n_layers // 2, (5 * n_layers) // 6}))
    out = {}
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise NegdiffError(f"--panel-layers: layer {layer} is out of range 0..{n_layers - 1}")
        idx = wn.indices(layer).tolist()
        if not idx:
            continue
        rows = None if table is None else table[(table.layer == layer) & table.neuron.isin(idx)]
        out[layer] = int(idx[0]) if rows is None or rows.empty else int(rows.neuron.iloc[int(np.argmax(rows.wd.to_numpy()))])
    return out


class WatchedMD(MDAccumulator):
    """An MD accumulator that also keeps every pair's input distance and output gap for a few neurons."""

    def watch(self, neurons: list[int]) -> WatchedMD:
        self.watched = torch.as_tensor(neurons, dtype=torch.long)
        self.log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        return self

    def add(self, x_a, x_b, W, b=None, meta=None) -> None:
        diff = x_a.double() - x_b.double()
        e = (diff @ W[self.watched.to(W.device)].double().T).abs()
        self.log.append((diff.norm(dim=1).cpu(), e.cpu(), torch.as_tensor(meta["pair_id"]).cpu()))
        super().add(x_a, x_b, W, b, meta)

    def points(self, k: int) -> pd.DataFrame:
        """Every logged pair of watched neuron ``k``: d / max d and e / the neuron's median e (the MD terms)."""
        d, e, ids = (torch.cat(t).numpy() for t in zip(*self.log))
        neuron = int(self.watched[k])
        med = float(self.result()["median_e"][neuron])
        keep = d > 0
        return pd.DataFrame({"pair_id": ids[keep], "d_norm": d[keep] / self.max_d, "e_norm": e[keep, k] / med})


class Consumer:
    """Feeds the MLP inputs to the scan's Streamer and keeps the panel neurons' pre-activations."""

    def __init__(self, streamer: Streamer, panels: dict[int, int]):
        self.streamer, self.panels = streamer, panels
        self.values: dict[int, list[torch.Tensor]] = {layer: [] for layer in panels}

    def start_batch(self, windows: list[int]) -> None:
        self.streamer.start_batch(windows)

    def flush(self, layer: int | None = None) -> None:
        self.streamer.flush(layer)

    def __call__(self, kind: str, layer: int, t: torch.Tensor) -> None:
        if kind == "mlp_in":
            self.streamer(kind, layer, t)
        elif layer in self.panels:
            self.values[layer].append(t[..., self.panels[layer]].float().flatten().cpu())


# ---------------------------------------------------------------------------------------------- tables
def show(text: str) -> str:
    """A token as a reader sees it: stripped, or its repr when it is only whitespace."""
    return text.strip() or repr(text)


def word_context(units: pd.DataFrame, unit: int, before: int = 3, after: int = 1) -> str | None:
    """A few words of the unit's sentence around it, the unit in [[ ]]."""
    if unit < 0:
        return None
    sent = units.sentence.iat[unit]
    lo, hi = max(0, unit - before), min(len(units), unit + after + 1)
    parts = [(f"[[{units.form.iat[u]}]]" if u == unit else units.form.iat[u]) for u in range(lo, hi)
             if units.sentence.iat[u] == sent]
    return " ".join(parts)


def annotate(table: pd.DataFrame, stream: Stream, n_layers: int, neurons: pd.DataFrame | None,
             panels: dict[int, int]) -> pd.DataFrame:
    """Add to ``pairs_table`` rows: shown tokens, EWT words, their gold tags and context, depth half, WD."""
    t = table.copy()
    seq = stream.windows.shape[1]
    t["sign_class"] = pairs_stats.sign_class(t.y_a, t.y_b)
    t["e_norm"] = t.ratio * t.d_norm
    for side in ("a", "b"):
        t[f"show_{side}"] = t[f"text_{side}"].map(show)
        unit = stream.unit[t[f"window_{side}"].to_numpy() * seq + t[f"pos_{side}"].to_numpy()]
        t[f"unit_{side}"] = unit
        ok = unit >= 0
        for col in ("form", "upos", "sent_id"):
            vals = np.full(len(t), None, dtype=object)
            vals[ok] = stream.units[col].to_numpy()[unit[ok]]
            t[f"{'word' if col == 'form' else col}_{side}"] = vals
        t[f"words_{side}"] = [word_context(stream.units, int(u)) for u in unit]
    t["half"] = pairs_stats.depth_half(t.layer, n_layers)
    if neurons is not None:
        cols = [c for c in ("wd", "wd_rank_in_layer") if c in neurons]
        t = t.merge(neurons[["layer", "neuron", *cols]], on=["layer", "neuron"], how="left")
    t["is_panel"] = [panels.get(int(layer)) == int(n) and g == "wn" for g, layer, n in zip(t.group, t.layer, t.neuron)]
    return t


# ---------------------------------------------------------------------------------------------- runner
def run_pairs(loaded: LoadedModel, scan_dir: str | Path, cfg: PairsConfig, out: str | Path,
              force: bool = False) -> dict[str, Any]:
    """Sample MD pairs on the corpus, tabulate the WN's and random neurons' top pairs, write everything."""
    from negdiff.experiments.pairs.figures import pairs_figures

    out, scan_dir = Path(out), Path(scan_dir)
    wn, rand, neurons = neuron_sets(loaded, scan_dir, cfg)
    n_layers = len(loaded.sites)
    panels = panel_neurons(wn, neurons, cfg.panel_layers, n_layers)
    scan = results.read_json(scan_dir / "scan.json") if (scan_dir / "scan.json").is_file() else {}
    info, source = loaded.info.to_dict(), corpus_file(cfg.corpus, cfg.data)
    key = results.config_key({"model": {k: info[k] for k in ("spec", "revision", "weights_hash", "dtype", "n_params")},
                              "scan": scan.get("key"), "wn": wn.to_dict(), "random": rand.to_dict(),
                              "config": cfg.key_dict(), "corpus": source and results.file_sha256(source)})
    if not force and (out / "pairs.json").is_file() and results.read_json(out / "pairs.json").get("key") == key:
        status(f"pairs already done in {out} (same model, sets, corpus and settings); use --force to redo them")
        return results.read_json(out / "pairs.json")
    t0 = time.perf_counter()
    st = load_stream(loaded, cfg)
    plan = plan_pairs(len(st.windows), st.windows.shape[1], cfg.md_pairs, cfg.seed)
    streamer = Streamer(loaded, plan, cfg.top_pairs)
    for layer, n in panels.items():
        streamer.md[layer] = WatchedMD(loaded.sites[layer].width, top_k=cfg.top_pairs).watch([n])
    consumer = Consumer(streamer, panels)
    status(f"pairs: {st.windows.numel():,} tokens of {cfg.corpus}, {len(plan):,} pairs per layer, "
           f"{wn.size} WN and {rand.size} random neurons")
    seconds = stream(loaded, st.windows, consumer, cfg.batch_windows)
    table = annotate(pairs_table(streamer, loaded.tokenizer, st.windows, {"wn": wn, "random": rand}), st, n_layers,
                     neurons, panels)
    preacts = pd.concat([pd.DataFrame({"layer": layer, "neuron": n, "value": torch.cat(consumer.values[layer]).numpy()})
                         for layer, n in panels.items()], ignore_index=True) if panels else pd.DataFrame()
    points = _panel_points(streamer, table, panels, cfg.seed)
    res = pairs_stats.shares(table, n_layers, cfg.n_boot, cfg.seed)
    res["frequent"] = pairs_stats.frequent(table)
    sp = pd.read_parquet(scan_dir / "pairs.parquet") if (scan_dir / "pairs.parquet").is_file() else pd.DataFrame()
    if len(sp):  # the same read-out on the scan's own corpus (no tags there)
        sp["sign_class"] = pairs_stats.sign_class(sp.y_a, sp.y_b)
        res["scan_corpus"] = {"corpus": (scan.get("config") or {}).get("corpus"),
                              **pairs_stats.shares(sp, n_layers, cfg.n_boot, cfg.seed)["depth"]}
    md0 = streamer.md[0]
    record: dict[str, Any] = {
        "format": FORMAT, "key": key, "model": info, "config": cfg.to_dict(),
        "corpus": {"name": cfg.corpus, "file": None if st.source is None else str(st.source),
                   "sha256": None if st.source is None else results.file_sha256(st.source), "tagger": st.tagger},
        "scan": {"dir": str(scan_dir), "key": scan.get("key")},
        "sets": {"wn": wn.size, "random": rand.size, "random_rule": rand.rule},
        "stream": {"tokens": int(st.windows.numel()), "windows": len(st.windows), "window": int(st.windows.shape[1]),
                   "documents": st.documents, "share_tokens_with_word": float((st.unit >= 0).mean()),
                   "md_pairs_per_layer": int(md0.n_pairs), "md_pairs_skipped": int(md0.n_skipped)},
        "panels": [{"layer": layer, "neuron": n, "wd": None if neurons is None else float(
            neurons.wd[(neurons.layer == layer) & (neurons.neuron == n)].iloc[0])} for layer, n in panels.items()],
        "results": res,
        "timing": {"stream_s": round(seconds, 2), "tokens_per_s": round(st.windows.numel() / max(seconds, 1e-9), 1),
                   "total_s": round(time.perf_counter() - t0, 2)},
        "versions": results.versions(),
    }
    record["summary_lines"] = pairs_stats.summary_lines(record)
    results.write_parquet(out / "pairs.parquet", table)
    results.write_parquet(out / "panel_preacts.parquet", preacts)
    results.write_parquet(out / "panel_points.parquet", points)
    record["figures"] = [str(p.relative_to(out)) for p in pairs_figures(record, table, preacts, points, out / "figures")]
    write_record(out / "pairs.json", record, "pairs", time.perf_counter() - t0)
    return record


def _panel_points(streamer: Streamer, table: pd.DataFrame, panels: dict[int, int], seed: int,
                  sample: int = 3000) -> pd.DataFrame:
    """A seeded sample of each panel neuron's pairs in MD coordinates, its top pairs always kept and flagged."""
    frames = []
    for layer, n in panels.items():
        pts = streamer.md[layer].points(0)
        top = set(table.pair_id[(table.group == "wn") & (table.layer == layer) & (table.neuron == n)].tolist())
        pts["is_top"] = pts.pair_id.isin(top)
        rng = np.random.default_rng([seed, layer])
        keep = pts.is_top.to_numpy() | (rng.random(len(pts)) < sample / max(len(pts), 1))
        frames.append(pts[keep].assign(layer=layer, neuron=n))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------------------------ CLI
def command(args) -> int:
    """``negdiff pairs``."""
    from negdiff.services.scan_outputs import scan_corpus_command

    return scan_corpus_command(args, PairsConfig, run_pairs, "pairs.json pairs.parquet panel_preacts.parquet panel_points.parquet figures/")


def data_needs(cfg: PairsConfig) -> list[str]:
    """The dataset folders this step reads: ``negdiff reproduce`` fetches or refuses them before any model loads."""
    from negdiff.data import corpus_folders

    return corpus_folders(cfg.corpus)


# ------------------------------------------------------------------------------------------------ step
def run_step(loaded: LoadedModel, run_dir: Path, cfg: PairsConfig, force: bool = False) -> dict[str, Any]:
    return run_pairs(loaded, Path(run_dir) / "scan", cfg, Path(run_dir) / "pairs", force=force)

