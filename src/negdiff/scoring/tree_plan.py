"""The prefix tree's plan: which trie nodes exist, how they chain into segments, and which segments run together.

Why a module of its own: planning is pure bookkeeping over token ids (numpy, no model, no torch), it is
what decides the engine's cost (the batch cuts are a dynamic programme over forward cost and padding),
and it can be checked exhaustively on its own; :mod:`negdiff.scoring.prefix_tree` runs a plan through the
model. See that module for the method and its guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Past (gathered) tokens per forward, in multiples of the token budget: bounds the cache copy of a batch
#: of short continuations after a long shared context.
PAST_FACTOR = 16
#: The cost of one more forward, in padded token positions, when batches are cut (see _cut_batches):
#: the fixed Python/kernel-launch time of a forward plus the lower efficiency of a smaller batch.
FORWARD_COST = 32


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
    past_len = segment_depths(plan)
    levels = plan.seg_level if plan.seg_level is not None else np.empty(0, dtype=np.int64)
    return [batch for level in range(int(levels.max()) + 1 if len(levels) else 0)
            for batch in _cut_batches(plan, np.flatnonzero(levels == level), past_len, budget)]


def segment_past_slots(plan: Plan, slot: np.ndarray) -> dict[int, np.ndarray]:
    """Each segment's ancestors' store slots, in position order (parents are numbered first)."""
    past_slots: dict[int, np.ndarray] = {}
    for s, p in enumerate(plan.seg_parent):
        past_slots[s] = (np.concatenate([past_slots[p], slot[plan.segments[p]]]) if p >= 0
                         else np.empty(0, dtype=np.int64))
    return past_slots


def plan_counts(plan: Plan, budget: int) -> dict[str, int]:
    """What :func:`run_plan` will run, without a model: ``real``/``padded``/``past`` tokens, ``forwards``."""
    c = {"real": 0, "padded": 0, "past": 0, "forwards": 0}
    past_len = segment_depths(plan)
    for batch in schedule(plan, budget):
        width = len(plan.segments[batch[0]])
        c["real"] += sum(len(plan.segments[s]) for s in batch)
        c["padded"] += len(batch) * width
        c["past"] += len(batch) * max(past_len[s] for s in batch)
        c["forwards"] += 1
    return c


def segment_depths(plan: Plan) -> dict[int, int]:
    """Each segment's number of ancestor tokens (its first node's position)."""
    return {s: int(plan.depth[m[0]]) for s, m in enumerate(plan.segments)}


def edges_by_node(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Edge ids sorted by node, and each node's start offset into them (CSR)."""
    order = np.argsort(plan.edge_node, kind="stable")
    starts = np.searchsorted(plan.edge_node[order], np.arange(plan.n_nodes + 1))
    return order, starts
