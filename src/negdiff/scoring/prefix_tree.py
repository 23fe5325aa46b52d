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
from negdiff.scoring.tree_plan import (
    Plan,
    build_plan,
    chunk_sequences,
    edges_by_node,
    plan_counts,
    schedule,
    segment_past_slots,
)

#: Keys/values kept per chunk when ``cache_mb`` is not set (the store of the branching prefixes).
AUTO_CACHE_MB = {"cpu": 512, "cuda": 4096}


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


# ---------------------------------------------------------------------------------------------- running
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
    edges_at = edges_by_node(plan)
    slot = np.full(plan.n_nodes, -1, dtype=np.int64)
    n_slots = 0
    for s in np.flatnonzero(plan.stored):
        m = plan.segments[s]
        slot[m] = np.arange(n_slots, n_slots + len(m))
        n_slots += len(m)
    store = _Store(max(n_slots, 1))
    past_slots = segment_past_slots(plan, slot)
    for batch in schedule(plan, budget) if batches is None else batches:  # the caller's, when it counted them
        _run_batch(model, plan, batch, past_slots, store, slot, edges_at, edge_lp, edge_top, config, dev,
                   DynamicCache)
        if progress is not None:
            progress.update(1)
    return edge_lp, edge_top


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
