"""Each distinct sentence once, each shared token prefix once: the prefix-tree scoring engine.

Why: minimal-pair benchmarks are templated. On the embedded model's tokenizer the distinct prefixes of
full TSE are 6.5% of the tokens the plain engine runs and those of full BLiMP 54%, because a good and a
bad sentence share everything before the word that differs and many items share a frame
("the author that the guards like ..."). The log-prob of a token depends only on the tokens before it,
so each distinct prefix needs one forward position, and the log-probs of every continuation of that
prefix come from its one logit row.

How: the distinct token sequences are sorted, which lays their token trie out in depth-first order, so
one pass with longest-common-prefix reuse numbers every trie node. Chains of nodes with one child
become *segments*; a segment ends where the trie branches (its keys/values are kept) or at a leaf. The
segments run level by level (a segment's parent ends one level up) in batched forwards of the model's
own code: each row is one segment, given its ancestors' keys/values gathered from a token store into
a fresh cache (left-aligned, padded, masked), its true positions (``position_ids``) and a mask that
hides both paddings. Interventions apply at every position as in the plain engine; nothing is kept
between calls, so no state crosses conditions. Sequences are processed in chunks whose stored
keys/values fit ``ScoringConfig.cache_mb`` (a prefix shared across a chunk boundary runs once per
chunk), so memory stays bounded on any benchmark size.

The results equal :func:`negdiff.scoring.score` within float rounding; the tests hold both to the
unbatched reference within 1e-4 in fp32 on every tiny architecture, under every intervention mode and
batch budget. Inputs longer than the model's maximum (which the plain engine left-truncates), models
without transformers 5's ``cache`` argument, and sequences longer than half a sliding attention window
(a padded past would shift the window) go through the plain engine.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from negdiff import distributed
from negdiff.errors import NegdiffError
from negdiff.progress import bar
from negdiff.scoring.engine import (
    Request,
    ScoringConfig,
    TokenScores,
    _fit,
    _gather,
    batch_budget,
    count_tokens,
    model_max_length,
    score,
)

#: Keys/values kept per chunk when ``cache_mb`` is not set (the store of the branching prefixes).
AUTO_CACHE_MB = {"cpu": 512, "cuda": 4096}
#: Past (gathered) tokens per forward, in multiples of the token budget: bounds the cache copy of a batch
#: of short continuations after a long shared context.
PAST_FACTOR = 16
#: The cost of one more forward, in padded token positions, when batches are cut (see _cut_batches):
#: the fixed Python/kernel-launch time of a forward plus the lower efficiency of a smaller batch.
FORWARD_COST = 32


def supports_tree(model: nn.Module) -> str | None:
    """None when the tree engine applies to ``model``; otherwise why it does not (the plain engine runs)."""
    if "cache" not in inspect.signature(model.forward).parameters:
        return f"{type(model).__name__} takes no `cache` argument (transformers 5's cache API)"
    return None


def sliding_window(model: nn.Module) -> int | None:
    """The attention window of a model with sliding-window layers (None: every layer sees everything).

    A padded past widens a row by at most its own length, so a sequence of n tokens is exact in the tree
    when ``2 n <= window``; longer ones go through the plain engine.
    """
    cfg = getattr(model, "config", None)
    kinds = getattr(cfg, "layer_types", None) or []
    window = getattr(cfg, "sliding_window", None)
    sliding = any("sliding" in str(k) for k in kinds) or getattr(cfg, "use_sliding_window", False)
    if isinstance(window, int) and window > 0 and (sliding or not kinds):
        return window
    return None


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """One chunk's trie: nodes (input positions), segments (one-child chains), edges (scored tokens)."""

    seqs: list[tuple[int, ...]]
    parent: np.ndarray  # node -> parent node (-1 at a root)
    token: np.ndarray  # node -> its input token
    depth: np.ndarray  # node -> position in its sequences
    segments: list[np.ndarray] = field(default_factory=list)  # node ids of each segment, in order
    seg_parent: np.ndarray | None = None  # segment -> the segment its first node continues (-1: none)
    seg_level: np.ndarray | None = None
    stored: np.ndarray | None = None  # segment -> whether its keys/values are kept (it ends at a branch)
    seq_edges: list[np.ndarray] = field(default_factory=list)  # sequence -> edge ids of tokens 1..n-1
    edge_node: np.ndarray | None = None
    edge_token: np.ndarray | None = None

    @property
    def n_nodes(self) -> int:
        return len(self.parent)


def chunk_sequences(seqs: Sequence[tuple[int, ...]], capacity: int) -> list[range]:
    """Ranges of the sorted ``seqs`` whose new trie nodes stay within ``capacity`` (at least one each)."""
    out, start, used, prev = [], 0, 0, ()
    for i, s in enumerate(seqs):
        new = len(s) - 1 - _lcp(prev, s, len(prev) - 1)
        if i > start and used + new > capacity:
            out.append(range(start, i))
            start, used, new = i, 0, len(s) - 1
        used += new
        prev = s
    if start < len(seqs):
        out.append(range(start, len(seqs)))
    return out


def _lcp(a: tuple[int, ...], b: tuple[int, ...], limit: int) -> int:
    n = min(limit, len(b) - 1)
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def build_plan(seqs: list[tuple[int, ...]]) -> Plan:
    """The trie of the sorted ``seqs``' inputs (all tokens but the last), its segments and its edges.

    Sorting puts every sequence next to the one it shares the longest prefix with, so a node is shared
    with an earlier sequence exactly when it is shared with the previous one.
    """
    parent: list[int] = []
    token: list[int] = []
    depth: list[int] = []
    nodes_of: list[list[int]] = []
    prev: tuple[int, ...] = ()
    prev_nodes: list[int] = []
    for s in seqs:
        keep = _lcp(prev, s, len(prev_nodes))
        nodes = prev_nodes[:keep]
        for k in range(keep, len(s) - 1):
            nodes.append(len(parent))
            parent.append(nodes[k - 1] if k else -1)
            token.append(s[k])
            depth.append(k)
        nodes_of.append(nodes)
        prev, prev_nodes = s, nodes
    plan = Plan(seqs, np.array(parent, dtype=np.int64), np.array(token, dtype=np.int64),
                np.array(depth, dtype=np.int64))
    _segment(plan)
    _edges(plan, nodes_of)
    return plan


def _segment(plan: Plan) -> None:
    """Split the trie into one-child chains; a chain's keys/values are stored when it ends at a branch."""
    n = plan.n_nodes
    children = np.bincount(plan.parent[plan.parent >= 0], minlength=n)
    seg_of = np.empty(n, dtype=np.int64)
    members: list[list[int]] = []
    seg_parent: list[int] = []
    for node in range(n):  # creation order is depth-first preorder: a parent precedes its children
        p = plan.parent[node]
        if p >= 0 and children[p] == 1:
            seg_of[node] = seg_of[p]
            members[seg_of[node]].append(node)
        else:
            seg_of[node] = len(members)
            members.append([node])
            seg_parent.append(int(seg_of[p]) if p >= 0 else -1)
    plan.segments = [np.array(m, dtype=np.int64) for m in members]
    plan.seg_parent = np.array(seg_parent, dtype=np.int64)
    level = np.zeros(len(members), dtype=np.int64)
    for s, p in enumerate(plan.seg_parent):  # parents are numbered before their children
        if p >= 0:
            level[s] = level[p] + 1
    plan.seg_level = level
    plan.stored = np.array([children[m[-1]] >= 2 for m in members], dtype=bool)


def _edges(plan: Plan, nodes_of: list[list[int]]) -> None:
    """One edge per distinct (node, next token): the log-probs to gather from that node's logits."""
    index: dict[tuple[int, int], int] = {}
    seq_edges = []
    for s, nodes in zip(plan.seqs, nodes_of, strict=True):
        ids = [index.setdefault((nodes[k - 1], s[k]), len(index)) for k in range(1, len(s))]
        seq_edges.append(np.array(ids, dtype=np.int64))
    keys = np.array(list(index), dtype=np.int64).reshape(-1, 2)
    plan.seq_edges, plan.edge_node, plan.edge_token = seq_edges, keys[:, 0], keys[:, 1]


# ---------------------------------------------------------------------------------------------- running
def _cut_batches(plan: Plan, segs: np.ndarray, past_len: dict[int, int], budget: int) -> list[list[int]]:
    """Ready segments, longest first, split into batches under ``rows x width <= budget`` and a past
    bound, at the cuts that minimise padded positions plus :data:`FORWARD_COST` per forward.

    Why not greedy filling: a level's segments vary in length, and filling each batch to the budget puts
    a 20-token segment beside 5-token ones (26% padding on a 5-per-paradigm BLiMP subset). The cuts come
    from a dynamic programme over the length-sorted segments (a batch is a contiguous run of them, its
    width the run's first length); on that subset it leaves 5% padding for 7 more forwards.
    """
    segs = np.asarray(segs)
    order = sorted(segs.tolist(), key=lambda s: (-len(plan.segments[s]), -past_len[s], s))
    width = [len(plan.segments[s]) for s in order]
    past = [past_len[s] for s in order]
    n = len(order)
    best = [0] + [0] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):  # best[i]: cost of the first i segments; the last batch is order[j:i]
        best[i], cut[i] = best[i - 1] + width[i - 1] + FORWARD_COST, i - 1  # a batch of one always fits
        widest_past = past[i - 1]
        for j in range(i - 2, -1, -1):
            rows = i - j
            widest_past = max(widest_past, past[j])
            if rows * width[j] > budget or rows * widest_past > PAST_FACTOR * budget:
                break  # a longer run only gets wider
            cost = best[j] + rows * width[j] + FORWARD_COST
            if cost < best[i]:
                best[i], cut[i] = cost, j
    batches: list[list[int]] = []
    i = n
    while i > 0:
        batches.append(order[cut[i]:i])
        i = cut[i]
    return batches[::-1]


def schedule(plan: Plan, budget: int) -> list[list[int]]:
    """The forwards that run ``plan``, in running order: each level's segments (whose parents ran one level
    up) cut into batches by :func:`_cut_batches`.

    Running a level's short last batch together with the next level (a ready-queue schedule) was tried:
    it saved no forwards (35 vs 33 on a 5-per-paradigm BLiMP subset), so levels stay the unit.
    """
    past_len = _depths(plan)
    levels = plan.seg_level if plan.seg_level is not None else np.empty(0, dtype=np.int64)
    return [batch for level in range(int(levels.max()) + 1 if len(levels) else 0)
            for batch in _cut_batches(plan, np.flatnonzero(levels == level), past_len, budget)]


class _Store:
    """Keys and values of the stored segments' tokens, one ``[slots, heads, head_dim]`` pair per layer."""

    def __init__(self, n_slots: int):
        self.n = n_slots
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def put(self, cache, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor, past: int) -> None:
        for li, layer in enumerate(cache.layers):
            k = layer.keys[rows, :, past + cols]  # [n, heads, dim]
            v = layer.values[rows, :, past + cols]
            if li == len(self.keys):
                self.keys.append(k.new_empty((self.n, *k.shape[1:])))
                self.values.append(v.new_empty((self.n, *v.shape[1:])))
            self.keys[li][slots] = k
            self.values[li][slots] = v

    def gather(self, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[B, W]`` slot indices -> per layer ``([B, heads, W, dim], ...)``."""
        return [(k[idx].transpose(1, 2), v[idx].transpose(1, 2)) for k, v in zip(self.keys, self.values, strict=True)]


def run_plan(model: nn.Module, plan: Plan, budget: int, config: ScoringConfig, greedy: bool,
             dev: torch.device, progress=None, batches: list[list[int]] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Log-prob (float64) of every edge of ``plan`` and, with ``greedy``, whether it was the argmax."""
    from transformers import DynamicCache

    n_edges = len(plan.edge_node)
    edge_lp = np.empty(n_edges, dtype=np.float64)
    edge_top = np.zeros(n_edges, dtype=bool) if greedy else None
    edges_at = _edges_by_node(plan)
    slot = np.full(plan.n_nodes, -1, dtype=np.int64)
    n_slots = 0
    for s in np.flatnonzero(plan.stored):
        m = plan.segments[s]
        slot[m] = np.arange(n_slots, n_slots + len(m))
        n_slots += len(m)
    store = _Store(max(n_slots, 1))
    past_slots = _past_slots(plan, slot)
    for batch in schedule(plan, budget) if batches is None else batches:  # the caller's, when it counted them
        _run_batch(model, plan, batch, past_slots, store, slot, edges_at, edge_lp, edge_top, config, dev,
                   DynamicCache)
        if progress is not None:
            progress.update(1)
    return edge_lp, edge_top


def _past_slots(plan: Plan, slot: np.ndarray) -> dict[int, np.ndarray]:
    """Each segment's ancestors' store slots, in position order (parents are numbered first)."""
    past_slots: dict[int, np.ndarray] = {}
    for s, p in enumerate(plan.seg_parent):
        past_slots[s] = (np.concatenate([past_slots[p], slot[plan.segments[p]]]) if p >= 0
                         else np.empty(0, dtype=np.int64))
    return past_slots


def plan_counts(plan: Plan, budget: int) -> dict[str, int]:
    """What :func:`run_plan` will run, without a model: ``real``/``padded``/``past`` tokens, ``forwards``."""
    c = {"real": 0, "padded": 0, "past": 0, "forwards": 0}
    past_len = _depths(plan)
    for batch in schedule(plan, budget):
        width = len(plan.segments[batch[0]])
        c["real"] += sum(len(plan.segments[s]) for s in batch)
        c["padded"] += len(batch) * width
        c["past"] += len(batch) * max(past_len[s] for s in batch)
        c["forwards"] += 1
    return c


def _depths(plan: Plan) -> dict[int, int]:
    """Each segment's number of ancestor tokens (its first node's position)."""
    return {s: int(plan.depth[m[0]]) for s, m in enumerate(plan.segments)}


def _edges_by_node(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Edge ids sorted by node, and each node's start offset into them (CSR)."""
    order = np.argsort(plan.edge_node, kind="stable")
    starts = np.searchsorted(plan.edge_node[order], np.arange(plan.n_nodes + 1))
    return order, starts


def _positions(n_past: int, width: int) -> torch.Tensor:
    """A segment's true positions: it starts right after its ``n_past`` real ancestor tokens."""
    return n_past + torch.arange(width)


def _row_mask(n_past: int, past_width: int, n_seg: int, width: int) -> torch.Tensor:
    """Attend to the real past (left-aligned in ``past_width``) and the real segment tokens, never padding."""
    mask = torch.zeros(past_width + width, dtype=torch.long)
    mask[:n_past] = 1
    mask[past_width:past_width + n_seg] = 1
    return mask


def _run_batch(model, plan: Plan, batch: list[int], past_slots, store: _Store, slot, edges_at, edge_lp, edge_top,
               config: ScoringConfig, dev, cache_cls) -> None:
    rows_n = len(batch)
    width = max(len(plan.segments[s]) for s in batch)
    past = max(len(past_slots[s]) for s in batch)
    ids = torch.zeros((rows_n, width), dtype=torch.long)
    mask = torch.zeros((rows_n, past + width), dtype=torch.long)
    pos = torch.zeros((rows_n, width), dtype=torch.long)
    pidx = torch.zeros((rows_n, max(past, 1)), dtype=torch.long)
    node_rc: list[tuple[np.ndarray, int]] = []
    for r, s in enumerate(batch):
        m = plan.segments[s]
        ps = past_slots[s]
        ids[r, :len(m)] = torch.from_numpy(plan.token[m])
        mask[r] = _row_mask(len(ps), past, len(m), width)
        pidx[r, :len(ps)] = torch.from_numpy(ps)
        pos[r] = _positions(len(ps), width)
        node_rc.append((m, r))
    count_tokens(real=sum(len(plan.segments[s]) for s in batch), padded=rows_n * width, past=rows_n * past)
    cache = cache_cls(config=model.config)
    if past:
        cache = cache_cls(ddp_cache_data=store.gather(pidx[:, :past].to(dev)), config=model.config)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), cache=cache,
                use_cache=True)
    order, starts = edges_at
    e_ids, e_rows, e_cols = [], [], []
    for m, r in node_rc:
        for c, node in enumerate(m):
            es = order[starts[node]:starts[node + 1]]
            if len(es):
                e_ids.append(es)
                e_rows.append(np.full(len(es), r))
                e_cols.append(np.full(len(es), c))
    if e_ids:
        eid = np.concatenate(e_ids)
        lp, top = _gather(out.logits, torch.from_numpy(np.concatenate(e_rows)).to(dev),
                          torch.from_numpy(np.concatenate(e_cols)).to(dev),
                          torch.from_numpy(plan.edge_token[eid]).to(dev), config.chunk_rows, edge_top is not None)
        edge_lp[eid] = lp.double().cpu().numpy()
        if edge_top is not None:
            edge_top[eid] = top.cpu().numpy()
    keep = [(r, s) for r, s in enumerate(batch) if plan.stored[s]]
    if keep:
        rr = np.concatenate([np.full(len(plan.segments[s]), r) for r, s in keep])
        cc = np.concatenate([np.arange(len(plan.segments[s])) for _, s in keep])
        sl = np.concatenate([slot[plan.segments[s]] for _, s in keep])
        store.put(out.cache, torch.from_numpy(rr).to(dev), torch.from_numpy(cc).to(dev),
                  torch.from_numpy(sl).to(dev), past)
    del out


def bytes_per_token(model: nn.Module) -> int:
    """Bytes of keys + values one token keeps across all layers (from the model's config)."""
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1)
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return 2 * layers * kv * head_dim * next(model.parameters()).element_size()


def capacity_tokens(model: nn.Module, config: ScoringConfig, dev: torch.device) -> int:
    """Trie tokens per chunk: the stored keys/values of a chunk stay within ``cache_mb``."""
    mb = config.cache_mb or AUTO_CACHE_MB.get(dev.type, 1024)
    return max(1, mb * 2**20 // bytes_per_token(model))


def _split(model: nn.Module, requests: Sequence[Request], config: ScoringConfig, dev: torch.device):
    """Requests for the plain engine (too long), distinct sequences -> their requests, sorted chunks."""
    max_len = config.max_length or model_max_length(model)
    window = sliding_window(model)
    by_seq: dict[tuple[int, ...], list[int]] = {}
    rest = []
    for i, r in enumerate(requests):
        seq = tuple(_fit(r, None))
        if (max_len is not None and len(seq) - 1 > max_len) or (window is not None and 2 * len(seq) > window):
            rest.append(i)
        else:
            by_seq.setdefault(seq, []).append(i)
    seqs = sorted(by_seq)
    return rest, by_seq, seqs, chunk_sequences(seqs, capacity_tokens(model, config, dev))


def planned_counts(model: nn.Module, requests: Sequence[Request], config: ScoringConfig | None = None,
                   device: torch.device | None = None) -> dict[str, int]:
    """The token counts :func:`score_tree` will run on ``requests`` (tree part only), without a forward."""
    config = config or ScoringConfig()
    dev = device or next(model.parameters()).device
    _, _, seqs, chunks = _split(model, requests, config, dev)
    total = {"real": 0, "padded": 0, "past": 0, "forwards": 0}
    for rng in chunks:
        for k, v in plan_counts(build_plan([seqs[j] for j in rng]), batch_budget(config, dev)).items():
            total[k] += v
    return total


def score_tree(
    model: nn.Module,
    requests: Sequence[Request],
    config: ScoringConfig | None = None,
    greedy: bool = False,
    desc: str | None = None,
) -> list[TokenScores]:
    """Like :func:`negdiff.scoring.score`, running each distinct token prefix of ``requests`` once."""
    config = config or ScoringConfig()
    why = supports_tree(model)
    if why is not None:
        warnings.warn(f"{why}: every sentence runs in full (same scores, slower)", stacklevel=2)
        return score(model, requests, config, greedy=greedy, desc=desc)
    dev = next(model.parameters()).device
    out: list[TokenScores | None] = [None] * len(requests)
    rest, by_seq, seqs, chunks = _split(model, requests, config, dev)
    if rest:
        for i, s in zip(rest, score(model, [requests[i] for i in rest], config, greedy=greedy, desc=desc), strict=True):
            out[i] = s
    rank = distributed.current()
    mine = chunks[rank.rank::rank.world] if rank.active else chunks
    done: dict[int, TokenScores] = {}
    budget = batch_budget(config, dev)
    plans = [build_plan([seqs[j] for j in rng]) for rng in mine]
    schedules = [schedule(p, budget) for p in plans]  # cut once: the bar's total and the run use the same
    progress = bar(total=sum(len(s) for s in schedules), desc=desc or "scoring", unit="batch")
    with torch.inference_mode(), progress:
        for plan, batches in zip(plans, schedules, strict=True):
            lp, top = run_plan(model, plan, budget, config, greedy, dev, progress, batches)
            for seq, edges in zip(plan.seqs, plan.seq_edges, strict=True):
                for i in by_seq[seq]:
                    k = len(requests[i].target)
                    e = edges[len(edges) - k:]
                    done[i] = TokenScores(lp[e], None if top is None else top[e])
    if rank.active:
        for part in distributed.all_gather(done, rank):
            done.update(part)
    for i, s in done.items():
        out[i] = s
    if any(s is None for s in out):
        raise NegdiffError("prefix-tree scoring left a request unscored (a bug: please report it)")
    return out  # type: ignore[return-value]
