"""The scan's streaming machinery: which token pairs to sample, the hook consumer, the pass, and the merge.

Split from :mod:`negdiff.experiments.scan` (which holds the config, the tables and the runner) because this
is the part that runs inside the forward pass and across ranks. Data-parallel scans give each rank a
contiguous block of windows; a mapping-difficulty pair that straddles two blocks has its first input held
by one rank and its second by the next, and :func:`merge_ranks` joins them on rank 0, so the merged
accumulators see the same pairs as a single process.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from negdiff import distributed
from negdiff.hooks import capture
from negdiff.mapdiff import MDAccumulator, nearest_pairs
from negdiff.models import LoadedModel
from negdiff.progress import bar
from negdiff.stats import NeuronStats


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
        # layer -> (second inputs, pair ids) of pairs whose first input lies before this rank's block
        self.orphans: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        self.windows: list[int] = []
        # Complete pairs are buffered and added in batches of ~flush_pairs: MDAccumulator.add has a fixed
        # cost per call (~20 ms at 1536 neurons) that would otherwise be paid per layer per window.
        self.flush_pairs = flush_pairs or self.FLUSH_PAIRS
        self.pending: dict[int, list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]] = {}

    def calibrate(self, loaded: LoadedModel, window: torch.Tensor, k: int = 256) -> None:
        """Fix every accumulator's bin edges from one window (the corpus's first) without counting it.

        All ranks of a data-parallel scan calibrate on the same window, so their accumulators merge and
        the merged result equals a single process's. MD scales come from pairs (x[i], x[k + i]) of the
        window's first 2k positions.
        """
        k = max(1, min(k, window.shape[-1] // 2))

        def fn(kind: str, layer: int, t: torch.Tensor) -> None:
            if kind == "pre":
                self.stats[layer] = NeuronStats(t.shape[-1], device=t.device)
                self.stats[layer].calibrate(t.reshape(-1, t.shape[-1]))
            else:
                x = t[0].float()
                self.md[layer].calibrate(x[:k], x[k: 2 * k], self.weights[layer][0])

        with torch.inference_mode(), capture(loaded.model, what=("pre", "mlp_in"), fn=fn, keep=False,
                                             stop_after_last=True, sites=loaded.sites) as trace:
            trace.forward(window.reshape(1, -1).to(loaded.device))

    def start_batch(self, windows: list[int]) -> None:
        self.windows = windows

    def __call__(self, kind: str, layer: int, t: torch.Tensor) -> None:
        if kind == "pre":
            if self.stats[layer] is None:  # not calibrated: the first batch fixes the bin edges
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
                xb = x.index_select(0, pos_b).float()
                if layer in self.held:
                    self._add(layer, self.held.pop(layer), xb, second, W, b)
                else:  # the first window of a rank's block: the partner is on the previous rank
                    self.orphans[layer] = (xb, second)
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
            "orphans": {k: (v.cpu(), i) for k, (v, i) in self.orphans.items()},
        }

    def load(self, state: dict[str, Any], device: torch.device) -> int:
        self.stats = [None if s is None else NeuronStats.from_state_dict(s, device=device) for s in state["stats"]]
        self.md = [MDAccumulator.from_state_dict(m, device=device) for m in state["md"]]
        self.held = {k: v.to(device) for k, v in state["held"].items()}
        self.orphans = {k: (v.to(device), i) for k, (v, i) in state.get("orphans", {}).items()}
        return int(state["windows_done"])


def stream(loaded: LoadedModel, windows: torch.Tensor, streamer: Streamer, batch: int, start: int = 0,
           on_checkpoint=None, every: int = 0, block: range | None = None, show: bool = True) -> float:
    """Run windows ``block`` (default: all) from ``start`` through the model with the streamer attached.

    Returns the seconds spent. ``on_checkpoint(state)`` is called every ``every`` windows.
    """
    device = loaded.device
    block = block if block is not None else range(len(windows))
    start = max(start, block.start)
    t0 = time.perf_counter()
    seq = windows.shape[1]
    progress = bar(total=len(block) * seq, initial=(start - block.start) * seq, unit="tok", desc="scan",
                   disable=not show)
    # Everything runs in inference mode: accumulator tensors first touched inside a hook become inference
    # tensors, and a flush or checkpoint between batches must be allowed to update them.
    with torch.inference_mode(), capture(loaded.model, what=("pre", "mlp_in"), fn=streamer, keep=False,
                                         stop_after_last=True, sites=loaded.sites) as trace:
        for lo in range(start, block.stop, batch):
            ids = list(range(lo, min(lo + batch, block.stop)))
            streamer.start_batch(ids)
            trace.forward(windows[ids].to(device))
            progress.update(len(ids) * seq)
            done = ids[-1] + 1
            if on_checkpoint and every and done < block.stop and done // every != lo // every:
                on_checkpoint(streamer.state(done))
        streamer.flush()
    progress.close()
    return time.perf_counter() - t0


def merge_ranks(streamer: Streamer, r: distributed.Rank) -> None:
    """Merge every rank's accumulators into rank 0's streamer, one layer at a time (bounded memory).

    Pairs that straddle two ranks' blocks are completed here: rank k-1 holds their first inputs, rank k
    their second. After the call only rank 0's streamer is meaningful.
    """
    if not r.active:
        return
    with torch.inference_mode():  # the accumulators were created in inference mode
        _merge_ranks(streamer, r)


def _merge_ranks(streamer: Streamer, r: distributed.Rank) -> None:
    streamer.flush()
    for layer in range(len(streamer.sites)):
        st, md = streamer.stats[layer], streamer.md[layer]
        held = streamer.held.get(layer)
        orphan = streamer.orphans.get(layer)
        mine = {"stats": st.state_dict(), "md": md.state_dict(),
                "held": None if held is None else held.cpu(),
                "orphan": None if orphan is None else (orphan[0].cpu(), orphan[1])}
        parts = distributed.gather_to_main(mine, r)
        if not r.main:
            continue
        dev = st.device
        for part in parts[1:]:
            st.merge(NeuronStats.from_state_dict(part["stats"], device=dev))
            md.merge(MDAccumulator.from_state_dict(part["md"], device=dev))
        W, b = streamer.weights[layer]
        for prev, part in zip(parts[:-1], parts[1:]):
            if part["orphan"] is not None:
                xb, ids = part["orphan"]
                md.add(prev["held"].to(W.device), xb.to(W.device), W, b, meta={"pair_id": torch.as_tensor(ids)})
        streamer.held.pop(layer, None)
        streamer.orphans.pop(layer, None)


def nearest_md(loaded: LoadedModel, windows: torch.Tensor, streamer: Streamer, tokens: int) -> list[np.ndarray]:
    """The nearest-neighbour variant of mapping difficulty, per layer: pairs of the most cosine-similar MLP
    inputs among the first ``tokens`` tokens (disjoint, greedy; see :func:`nearest_pairs`), so it asks how
    far apart a neuron sends inputs that are *nearly the same*, rather than random ones. Quadratic in
    ``tokens``: a few thousand is the intended size. Returns each layer's MD array."""
    n_win = max(1, min(len(windows), -(-tokens // windows.shape[1])))
    held: dict[int, list[torch.Tensor]] = {}

    def keep(kind: str, layer: int, t: torch.Tensor) -> None:
        held.setdefault(layer, []).append(t.reshape(-1, t.shape[-1]).float())

    with torch.inference_mode(), capture(loaded.model, what=("mlp_in",), fn=keep, keep=False, stop_after_last=True,
                                         sites=loaded.sites) as trace:
        for w in range(n_win):
            trace.forward(windows[w: w + 1].to(loaded.device))
    out = []
    with torch.inference_mode():
        for site in loaded.sites:
            x = torch.cat(held.pop(site.layer))[:tokens]
            a, b, _ = nearest_pairs(x)
            W, bias = streamer.weights[site.layer]
            acc = MDAccumulator(site.width, top_k=0)
            acc.add(x[a.to(x.device)], x[b.to(x.device)], W, bias)
            out.append(np.asarray(acc.result()["md"], dtype=np.float64))
    return out
