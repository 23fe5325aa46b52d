"""Multiple-choice scoring that runs each shared context once (a key/value cache per context).

Why: a multiple-choice item asks for ``P(answer_i | context)`` for 2-4 answers after one long context
(HellaSwag, SciQ's support passage, BoolQ's passage), and the plain engine runs that context once per
answer. Here the distinct contexts run once, batched and right-padded, with the model's own cache; the
cache rows are then repeated for each answer and the answers run as one more batched forward, given
their true positions (``position_ids``) and a mask that hides the context padding. On the full
non-grammatical suite that halves the tokens the model sees (5.8M -> 3.0M on the embedded model's
tokenizer; BoolQ's one-token answers cost nothing beyond their context).

The model's own forward still runs every token, so interventions apply as in :func:`negdiff.scoring.score`;
the results equal the plain engine's within float rounding (the tests hold both to the unbatched
reference within 1e-4 in fp32). Requests whose context is not shared, inputs longer than the model's
maximum (which the plain engine left-truncates), and models without transformers 5's ``cache``
argument (with a warning) go through the plain engine.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from negdiff import distributed
from negdiff.errors import NegdiffError
from negdiff.progress import bar
from negdiff.scoring import (
    Request,
    ScoringConfig,
    TokenScores,
    _gather,
    batch_budget,
    length_buckets,
    model_max_length,
    score,
)


def context_groups(requests: Sequence[Request], max_len: int | None) -> tuple[list[list[int]], list[int]]:
    """Indices of requests that share a context (2 or more, fitting the model), and the rest."""
    by_ctx: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        by_ctx.setdefault(r.context, []).append(i)
    groups, rest = [], []
    for ctx, idx in by_ctx.items():
        longest = len(ctx) + max(len(requests[i].target) for i in idx) - 1
        if len(idx) > 1 and (max_len is None or longest <= max_len) and all(requests[i].target for i in idx):
            groups.append(idx)
        else:
            rest.extend(idx)
    return groups, sorted(rest)


def supports_shared(model: nn.Module) -> bool:
    """Whether the model takes a ``cache`` argument (transformers 5's cache API, which this path uses)."""
    return "cache" in inspect.signature(model.forward).parameters


def _expanded(cache, rows: torch.Tensor):
    """A copy of ``cache`` whose batch rows are ``rows`` (repeats allowed); the original stays intact."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.reorder_cache(rows)
    return out


def _run_group_batch(model, requests: Sequence[Request], groups: list[list[int]], budget: int, config,
                     greedy: bool, dev) -> dict[int, TokenScores]:
    """Score every request of ``groups`` (one prefix forward, then the answers in budgeted chunks)."""
    ctx_len = [len(requests[g[0]].context) for g in groups]
    width = max(ctx_len)
    ids = torch.zeros((len(groups), width), dtype=torch.long)
    mask = torch.zeros((len(groups), width), dtype=torch.long)
    for b, g in enumerate(groups):
        ids[b, :ctx_len[b]] = torch.tensor(requests[g[0]].context, dtype=torch.long)
        mask[b, :ctx_len[b]] = 1
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=True)
    cache = getattr(out, "cache", None)
    if cache is None or not hasattr(cache, "layers"):
        raise NegdiffError(f"{type(model).__name__} returned no key/value cache; use --no-share-context")
    members = [(b, i) for b, g in enumerate(groups) for i in g]
    # every answer's first token is predicted by its context's last position
    rows = torch.tensor([b for b, _ in members])
    cols = torch.tensor([ctx_len[b] - 1 for b, _ in members])
    first = torch.tensor([requests[i].target[0] for _, i in members])
    lp0, top0 = _gather(out.logits, rows.to(dev), cols.to(dev), first.to(dev), config.chunk_rows, greedy)
    lp0, top0 = lp0.double().cpu(), None if top0 is None else top0.cpu()
    del out
    parts: dict[int, list] = {i: [lp0[k:k + 1], None if top0 is None else top0[k:k + 1]]
                              for k, (_, i) in enumerate(members)}
    rest = [(b, i) for b, i in members if len(requests[i].target) > 1]
    rest.sort(key=lambda m: -len(requests[m[1]].target))
    start = 0
    while start < len(rest):
        s_width = len(requests[rest[start][1]].target) - 1
        chunk = rest[start:start + max(1, budget // s_width)]
        start += len(chunk)
        n = len(chunk)
        s_ids = torch.zeros((n, s_width), dtype=torch.long)
        s_mask = torch.zeros((n, s_width), dtype=torch.long)
        pos = torch.zeros((n, s_width), dtype=torch.long)
        r_rows, r_cols, r_tgts = [], [], []
        for r, (b, i) in enumerate(chunk):
            tgt = requests[i].target
            m = len(tgt) - 1
            s_ids[r, :m] = torch.tensor(tgt[:-1], dtype=torch.long)
            s_mask[r, :m] = 1
            pos[r] = ctx_len[b] + torch.arange(s_width)
            r_rows.append(torch.full((m,), r, dtype=torch.long))
            r_cols.append(torch.arange(m))
            r_tgts.append(torch.tensor(tgt[1:], dtype=torch.long))
        sel = torch.tensor([b for b, _ in chunk])
        full_mask = torch.cat([mask[sel], s_mask], dim=1)
        logits = model(input_ids=s_ids.to(dev), attention_mask=full_mask.to(dev), position_ids=pos.to(dev),
                       cache=_expanded(cache, sel.to(dev)), use_cache=True).logits
        lp, top = _gather(logits, torch.cat(r_rows).to(dev), torch.cat(r_cols).to(dev), torch.cat(r_tgts).to(dev),
                          config.chunk_rows, greedy)
        lp, top = lp.double().cpu(), None if top is None else top.cpu()
        at = 0
        for _, i in chunk:
            k = len(requests[i].target) - 1
            parts[i][0] = torch.cat([parts[i][0], lp[at:at + k]])
            if top is not None:
                parts[i][1] = torch.cat([parts[i][1], top[at:at + k]])
            at += k
        del logits
    return {i: TokenScores(p[0].numpy(), None if p[1] is None else p[1].numpy()) for i, p in parts.items()}


def score_shared(
    model: nn.Module,
    requests: Sequence[Request],
    config: ScoringConfig | None = None,
    greedy: bool = False,
    desc: str | None = None,
) -> list[TokenScores]:
    """Like :func:`negdiff.scoring.score`, running each context shared by several requests once."""
    config = config or ScoringConfig()
    if not supports_shared(model):
        warnings.warn(f"{type(model).__name__} takes no `cache` argument (transformers 5's cache API): "
                      "every answer reruns its context (same scores, slower)", stacklevel=2)
        return score(model, requests, config, greedy=greedy, desc=desc)
    dev = next(model.parameters()).device
    max_len = config.max_length or model_max_length(model)
    groups, rest = context_groups(requests, max_len)
    out: list[TokenScores | None] = [None] * len(requests)
    if rest:
        for i, s in zip(rest, score(model, [requests[i] for i in rest], config, greedy=greedy, desc=desc),
                        strict=True):
            out[i] = s
    budget = batch_budget(config, dev)
    batches = length_buckets([len(requests[g[0]].context) for g in groups], budget)
    rank = distributed.current()
    if rank.active:
        batches = batches[rank.rank::rank.world]
    done: dict[int, TokenScores] = {}
    with torch.inference_mode():
        for batch in bar(batches, desc=desc or "scoring", unit="batch"):
            done.update(_run_group_batch(model, requests, [groups[j] for j in batch], budget, config, greedy, dev))
    if rank.active:
        for part in distributed.all_gather(done, rank):
            done.update(part)
    for i, s in done.items():
        out[i] = s
    return out  # type: ignore[return-value]
