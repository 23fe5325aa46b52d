"""The scan's streaming machinery: which token pairs to sample, the hook consumer, the pass, and the merge.

Split from :mod:`negdiff.experiments.scan` (which holds the config, the tables and the runner) because this
is the part that runs inside the forward pass and across ranks. Data-parallel scans give each rank a
contiguous block of windows; a mapping-difficulty pair that straddles two blocks has its first input held
by one rank and its second by the next, and :func:`merge_ranks` joins them on rank 0, so the merged
accumulators see the same pairs as a single process.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import torch

from negdiff import distributed
from negdiff.hooks import capture
from negdiff.mapdiff import MDAccumulator, nearest_pairs
from negdiff.models import LoadedModel
from negdiff.progress import bar
from negdiff.stats import NeuronStats
from negdiff.stats_kernels import buffer, release_buffers
from negdiff.workers import LayerWorkers


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
    """The hook consumer: routes each layer's tensors to its accumulators as they are produced.

    A layer's work (statistics, then its mapping-difficulty pairs) is one job: run inline, or, during
    :func:`stream` on CPU, handed to :class:`~negdiff.workers.LayerWorkers` so that several layers are
    accumulated at once. MLP inputs are staged when they arrive and the pairs are completed when the
    layer's pre-activations follow: e = |y_a - y_b| is then read off the pre-activations (float32/64
    models; ``MDAccumulator.add_outputs``). A consumer that never forwards pre-activations (or a
    low-precision model) gets the matmul path, ``MDAccumulator.add`` with the projection weight.
    """

    FLUSH_PAIRS = 2048

    def __init__(self, loaded: LoadedModel, plan: np.ndarray, top_k: int, flush_pairs: int | None = None):
        self.sites = loaded.sites
        self.weights = [tuple(None if t is None else t.float() for t in s.proj_weight()) for s in self.sites]
        self.stats: list[NeuronStats | None] = [None] * len(self.sites)
        self.md = [MDAccumulator(s.width, top_k=top_k) for s in self.sites]
        self.plan = plan
        self.held: dict[int, torch.Tensor] = {}  # layer -> MLP inputs of pairs waiting for their partner
        self.held_y: dict[int, torch.Tensor] = {}  # layer -> their pre-activations (when the layer's were seen)
        # layer -> (second inputs, pair ids) of pairs whose first input lies before this rank's block
        self.orphans: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        self.orphans_y: dict[int, torch.Tensor] = {}
        self.windows: list[int] = []
        self._sel: list[tuple] = []
        # layer -> per window of the batch: (selection, first-side inputs, second-side inputs), until its "pre"
        self.staged: dict[int, list[tuple]] = {}
        # Complete pairs without pre-activations are buffered and added in batches of ~flush_pairs:
        # MDAccumulator.add has a fixed cost per call that would otherwise be paid per layer per window.
        self.flush_pairs = flush_pairs or self.FLUSH_PAIRS
        self.pending: dict[int, list[tuple]] = {}
        self.workers: LayerWorkers | None = None
        # An in-place activation would overwrite the pre-activations before a deferred job reads them.
        self._inplace = [bool(getattr(s.act_module, "inplace", False)) for s in self.sites]

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
                workers.submit(partial(self.stats[layer].calibrate, t.reshape(-1, t.shape[-1])))
            else:
                x = t[0].float()
                self.md[layer].calibrate(x[:k], x[k: 2 * k], self.weights[layer][0])

        with LayerWorkers(torch.get_num_threads() if loaded.device.type == "cpu" else 1) as workers, \
                torch.inference_mode(), capture(loaded.model, what=("pre", "mlp_in"), fn=fn, keep=False,
                                                stop_after_last=True, sites=loaded.sites) as trace:
            trace.forward(window.reshape(1, -1).to(loaded.device))
        release_buffers()

    def start_batch(self, windows: list[int]) -> None:
        """Note the windows of the next forward pass and which planned pair sides lie in each."""
        self.windows = windows
        self._sel = []
        for row, w in enumerate(windows):
            first = np.flatnonzero(self.plan[:, 0] == w)  # pairs whose side a lies in this window
            second = np.flatnonzero(self.plan[:, 2] == w)
            one = bool(len(first) and len(second) and self.plan[second[0], 0] == w)  # a one-window plan
            self._sel.append((row, torch.as_tensor(self.plan[first, 1]) if len(first) else None,
                              torch.as_tensor(self.plan[second, 3]) if len(second) else None, second, one))

    def __call__(self, kind: str, layer: int, t: torch.Tensor) -> None:
        if kind == "mlp_in":
            self._complete(layer)  # inputs staged earlier whose pre-activations never came
            self.staged[layer] = [(sel, _rows(t[sel[0]], sel[1], True), _rows(t[sel[0]], sel[2], True))
                                  for sel in self._sel]
            return
        if self.stats[layer] is None:  # not calibrated: the first batch fixes the bin edges
            self.stats[layer] = NeuronStats(t.shape[-1], device=t.device)
        staged = self.staged.pop(layer, None)
        if self._inplace[layer]:
            t = t.clone()

        def job() -> None:
            self.stats[layer].add(t.reshape(-1, t.shape[-1]))
            if staged is not None:
                self._pairs(layer, staged, t if t.dtype in (torch.float32, torch.float64) else None)

        if self.workers is not None:
            self.workers.submit(job)
        else:
            job()

    def _complete(self, layer: int | None = None) -> None:
        for lyr in [layer] if layer is not None else list(self.staged):
            staged = self.staged.pop(lyr, None)
            if staged is not None:
                self._pairs(lyr, staged, None)

    def _pairs(self, layer: int, staged: list[tuple], pre: torch.Tensor | None) -> None:
        """Join this batch's pair sides with the ones held from the previous window (the pairing rules of
        :func:`plan_pairs`); ``pre`` adds each side's pre-activations, else the pairs take the matmul path."""
        for (row, pos_a, pos_b, second, one), xa, xb in staged:
            y = None if pre is None else pre[row]
            if one:  # both sides in this window
                self._add(layer, (xa, _rows(y, pos_a)), (xb, _rows(y, pos_b)), second)
                continue
            spare = None  # the consumed held pre-activations, reused for the next ones (no fresh 6 MB per window)
            if pos_b is not None:
                if layer in self.held:
                    held_y = self.held_y.pop(layer, None)
                    scratch = None if held_y is None or y is None or y.device.type != "cpu" else buffer(
                        "pair_y", (len(pos_b), y.shape[-1]), y.dtype)  # added at once, then free
                    yb = None if held_y is None else _rows(y, pos_b, out=scratch)
                    self._add(layer, (self.held.pop(layer), held_y), (xb, yb), second)
                    spare = held_y if yb is not None else None  # added at once (see _add), so free again
                else:  # the first window of a rank's block: the partner is on the previous rank
                    self.orphans[layer] = (xb, second)
                    _put(self.orphans_y, layer, _rows(y, pos_b))
            if pos_a is not None:
                self.held[layer] = xa
                reuse = spare is not None and y is not None and spare.shape == (len(pos_a), y.shape[-1])
                _put(self.held_y, layer, _rows(y, pos_a, out=spare if reuse else None))

    def _add(self, layer: int, a: tuple, b: tuple, ids: np.ndarray) -> None:
        self.pending.setdefault(layer, []).append((*a, *b, ids))
        # Pairs with pre-activations go in at once (their buffer would be width/d_in times larger).
        if (a[1] is not None and b[1] is not None) or sum(len(p[-1]) for p in self.pending[layer]) >= self.flush_pairs:
            self.flush(layer)

    def flush(self, layer: int | None = None) -> None:
        """Add the buffered pairs of ``layer`` (or of every layer) to the MD accumulators."""
        self._complete(layer)
        for lyr in [layer] if layer is not None else list(self.pending):
            parts = self.pending.pop(lyr, [])
            with_y = [p for p in parts if p[1] is not None and p[3] is not None]
            without = [p for p in parts if p[1] is None or p[3] is None]
            if with_y:
                xa, ya, xb, yb = (_cat([p[i] for p in with_y]) for i in range(4))
                ids = torch.as_tensor(np.concatenate([p[4] for p in with_y]))
                d = (xa.double() - xb.double()).norm(dim=1)
                self.md[lyr].add_outputs(ya, yb, d, meta={"pair_id": ids})
            if without:
                W, b = self.weights[lyr]
                ids = torch.as_tensor(np.concatenate([p[4] for p in without]))
                self.md[lyr].add(torch.cat([p[0] for p in without]), torch.cat([p[2] for p in without]), W, b,
                                 meta={"pair_id": ids})

    def state(self, windows_done: int) -> dict[str, Any]:
        self.flush()
        return {
            "windows_done": windows_done,
            "stats": [None if s is None else s.state_dict() for s in self.stats],
            "md": [m.state_dict() for m in self.md],
            "held": {k: v.cpu() for k, v in self.held.items()},
            "held_y": {k: v.cpu() for k, v in self.held_y.items()},
            "orphans": {k: (v.cpu(), i) for k, (v, i) in self.orphans.items()},
            "orphans_y": {k: v.cpu() for k, v in self.orphans_y.items()},
        }

    def load(self, state: dict[str, Any], device: torch.device) -> int:
        self.stats = [None if s is None else NeuronStats.from_state_dict(s, device=device) for s in state["stats"]]
        self.md = [MDAccumulator.from_state_dict(m, device=device) for m in state["md"]]
        self.held = {k: v.to(device) for k, v in state["held"].items()}
        self.held_y = {k: v.to(device) for k, v in state.get("held_y", {}).items()}
        self.orphans = {k: (v.to(device), i) for k, (v, i) in state.get("orphans", {}).items()}
        self.orphans_y = {k: v.to(device) for k, v in state.get("orphans_y", {}).items()}
        return int(state["windows_done"])


def _rows(t: torch.Tensor | None, pos: torch.Tensor | None, as_float32: bool = False,
          out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Rows ``pos`` of one window's [seq, dim] tensor (into ``out`` if given, of t's dtype), or None: float32
    (MLP inputs, as always), or float32 unless float64 (pre-activations of a float64 model keep theirs)."""
    if t is None or pos is None:
        return None
    if out is not None and out.dtype == t.dtype and out.device == t.device:
        return torch.index_select(t, 0, pos.to(t.device), out=out)
    rows = t.index_select(0, pos.to(t.device))
    return rows if rows.dtype == torch.float64 and not as_float32 else rows.float()


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _put(store: dict[int, torch.Tensor], layer: int, value: torch.Tensor | None) -> None:
    if value is None:
        store.pop(layer, None)
    else:
        store[layer] = value


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
    try:
        with LayerWorkers(torch.get_num_threads() if device.type == "cpu" else 1) as workers, \
                torch.inference_mode(), capture(loaded.model, what=("pre", "mlp_in"), fn=streamer, keep=False,
                                                stop_after_last=True, sites=loaded.sites) as trace:
            if isinstance(streamer, Streamer):
                streamer.workers = workers
            for lo in range(start, block.stop, batch):
                ids = list(range(lo, min(lo + batch, block.stop)))
                streamer.start_batch(ids)
                trace.forward(windows[ids].to(device))
                workers.drain()  # every layer of this batch is accumulated before the next batch starts
                progress.update(len(ids) * seq)
                done = ids[-1] + 1
                if on_checkpoint and every and done < block.stop and done // every != lo // every:
                    on_checkpoint(streamer.state(done))
            streamer.flush()
    finally:
        if isinstance(streamer, Streamer):
            streamer.workers = None
        release_buffers()
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
        held, held_y = streamer.held.get(layer), streamer.held_y.get(layer)
        orphan, orphan_y = streamer.orphans.get(layer), streamer.orphans_y.get(layer)
        mine = {"stats": st.state_dict(), "md": md.state_dict(),
                "held": None if held is None else held.cpu(), "held_y": None if held_y is None else held_y.cpu(),
                "orphan": None if orphan is None else (orphan[0].cpu(), orphan[1]),
                "orphan_y": None if orphan_y is None else orphan_y.cpu()}
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
                xa, meta = prev["held"].to(W.device), {"pair_id": torch.as_tensor(ids)}
                if prev.get("held_y") is not None and part.get("orphan_y") is not None:  # as one process would
                    d = (xa.double() - xb.to(W.device).double()).norm(dim=1)
                    md.add_outputs(prev["held_y"].to(W.device), part["orphan_y"].to(W.device), d, meta=meta)
                else:
                    md.add(xa, xb.to(W.device), W, b, meta=meta)
        for store in (streamer.held, streamer.held_y, streamer.orphans, streamer.orphans_y):
            store.pop(layer, None)


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
