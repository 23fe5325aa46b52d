"""One batched log-likelihood engine for every read-out: sentences, surprisal, answers, windows.

Every task reduces to the same request: score the ``target`` tokens given the ``context`` tokens
before them. The engine sorts requests by length into buckets under a token budget, right-pads them
with an attention mask (left padding would score a real token from a pad position), runs the model's
own forward (so an active :func:`negdiff.hooks.intervene` applies), and gathers the target tokens'
log-probs from a float32 log-softmax computed only at the scored positions (logsumexp + gather, never
a ``[B, T, V]`` float32 copy). Results do not depend on batch size or padding; ``score_unbatched`` is
the independent one-at-a-time reference the tests hold it to (within 1e-4 in fp32).

The BOS policy is explicit and recorded (:mod:`negdiff.bos`): ``prefix`` (default) puts the
document-start token (BOS, EOS when there is none, the pretraining separator where those are chat-role
tokens) before every sentence and scores every real token, while multiple-choice contexts follow the
evaluation harness (no BOS before a non-empty context unless the model requires one);
``tokenizer_default`` uses the tokenizer's own special tokens and leaves the first token unscored, which
is what the paper's authors did (so Qwen and Pythia never score a sentence's first word); ``bos_token``
puts the literal ``tokenizer.bos_token`` before every text (negdiff's earlier ``prefix``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from negdiff import distributed
from negdiff.bos import BOS_POLICIES, PREFIXING, bos_record, prefix_id
from negdiff.errors import NegdiffError
from negdiff.progress import bar


@dataclass(frozen=True)
class ScoringConfig:
    """How sequences are scored; written into every result so a number says how it was made."""

    bos: str = "prefix"
    max_batch_tokens: int | None = None  # padded tokens per forward; None: auto (see batch_budget)
    max_length: int | None = None  # None: the model's own maximum; longer inputs lose context on the left
    chunk_rows: int = 1024  # scored positions per float32 log-softmax chunk
    share_context: bool = True  # run each distinct token prefix once (prefix tree with a KV cache)
    cache_mb: int | None = None  # keys/values the prefix tree keeps per chunk; None: auto (512 CPU, 4096 CUDA)

    def __post_init__(self) -> None:
        if self.bos not in BOS_POLICIES:
            raise NegdiffError(f"unknown BOS policy '{self.bos}'; choose one of {', '.join(BOS_POLICIES)}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise NegdiffError(f"max_batch_tokens must be positive, got {self.max_batch_tokens}")
        if self.cache_mb is not None and self.cache_mb < 1:
            raise NegdiffError(f"cache_mb must be a positive number of MiB, got {self.cache_mb}")

    def to_dict(self) -> dict:
        return {**asdict(self), "padding": "right", "logprob_dtype": "float32", "sum_dtype": "float64"}


@dataclass(frozen=True)
class Request:
    """Score ``target`` (at least one token) given ``context`` (at least one token)."""

    context: tuple[int, ...]
    target: tuple[int, ...]


@dataclass
class TokenScores:
    """Log-probs (natural log, float64) of a request's target tokens, and whether each was the argmax."""

    logprobs: np.ndarray
    greedy: np.ndarray | None = None

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())

    @property
    def mean(self) -> float:
        return float(self.logprobs.mean()) if len(self.logprobs) else float("nan")

    @property
    def n(self) -> int:
        return len(self.logprobs)


# ---------------------------------------------------------------------------------------------- encoding
def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_text(tokenizer, text: str, bos: str = "prefix") -> Request:
    """A whole text as one request: every real token scored (prefix, bos_token), or all but the first (default)."""
    if bos in PREFIXING:
        return Request((prefix_id(tokenizer, bos),), tuple(_ids(tokenizer, text, False)))
    ids = _ids(tokenizer, text, True)
    return Request(tuple(ids[:1]), tuple(ids[1:]))


def encode_pair(tokenizer, context: str, continuation: str, bos: str = "prefix", context_bos: bool = False) -> Request:
    """A continuation given a context, split the evaluation harness's way.

    Trailing spaces of the context move to the continuation; the joined string is tokenized once and
    the continuation is whatever follows the context's own token count, so the tokens are the ones the
    model sees in running text. Under ``prefix`` a non-empty context starts with the document-start
    token only when ``context_bos`` (the model requires a BOS, see :func:`negdiff.bos.context_needs_bos`),
    as in the harness; ``bos_token`` puts its token before every context; an empty context always
    gets the policy's token, since the first continuation token needs something to be predicted from.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    special = bos == "tokenizer_default"
    whole = _ids(tokenizer, context + continuation, special)
    ctx = _ids(tokenizer, context, special)
    cont = whole[len(ctx):]
    if not cont:  # the continuation merged into the context's last token: score it separately
        cont = _ids(tokenizer, continuation, False)
    if not ctx or bos == "bos_token" or (bos == "prefix" and context_bos):
        ctx = [prefix_id(tokenizer, bos), *ctx]
    return Request(tuple(ctx), tuple(cont))


def scoring_record(config: ScoringConfig, tokenizer, model=None) -> dict:
    """``config.to_dict()`` plus the token the BOS policy used (``bos_token``, ``bos_id``, ``bos_reason``)
    and, given the model, what multiple-choice contexts start with (``context_bos``): what a task records."""
    return {**config.to_dict(), **bos_record(tokenizer, config.bos, model)}


# ---------------------------------------------------------------------------------------------- counting
_COUNTERS: list[dict[str, int]] = []


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count what the engines run inside the block: ``real`` input tokens, ``padded`` positions (real +
    padding: what the MLPs compute), ``past`` cache positions attended to, and ``forwards``. For benchmarks."""
    c = {"real": 0, "padded": 0, "past": 0, "forwards": 0}
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def count_tokens(real: int, padded: int, past: int = 0) -> None:
    """Add one forward's token counts to every open :func:`counting` block."""
    for c in _COUNTERS:
        c["real"] += real
        c["padded"] += padded
        c["past"] += past
        c["forwards"] += 1


# ---------------------------------------------------------------------------------------------- engine
def model_max_length(model: nn.Module) -> int | None:
    """The longest input the model's positions allow (None when the config does not say)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        val = getattr(cfg, key, None)
        if isinstance(val, int) and val > 0:
            return val
    return None


def _fit(req: Request, max_len: int | None) -> list[int]:
    """The full token sequence, left-truncated so that its input (all but the last token) fits."""
    if not req.target:
        raise NegdiffError("a scoring request has no target tokens (empty text or continuation)")
    if not req.context:
        raise NegdiffError("a scoring request has no context token: the first token cannot be scored")
    seq = [*req.context, *req.target]
    if max_len is not None and len(seq) - 1 > max_len:
        if len(req.target) > max_len:
            raise NegdiffError(f"a target of {len(req.target)} tokens exceeds the model's maximum length {max_len}")
        seq = seq[len(seq) - 1 - max_len:]
    return seq


#: Auto token budgets per forward. On CPU small batches keep the [B, T, V] logits near the cache:
#: on the embedded model (1 thread, BLiMP) 256 padded tokens gave 15.7 pairs/s, 1024 gave 14.0 and
#: 4096 gave 9.4. A GPU wants big batches.
AUTO_BUDGET = {"cpu": 256, "cuda": 16384}


def batch_budget(config: ScoringConfig, device: torch.device) -> int:
    """The padded-token budget per forward: the configured one, or the device's auto default."""
    return config.max_batch_tokens or AUTO_BUDGET.get(device.type, 4096)


def length_buckets(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that ``batch size x longest length <= max_batch_tokens``.

    Sorting by length keeps the padding small; a sequence longer than the budget gets a batch alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _gather(
    logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, tgts: torch.Tensor, chunk: int, greedy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target log-probs at the scored positions, log-softmax in float32, ``chunk`` positions at a time.

    Dense batches (sentences: most positions scored) take logsumexp over whole rows of the logits in
    place; sparse ones (answers after a long prompt) first copy out only the scored positions.
    """
    n = len(rows)
    bsz, width, _ = logits.shape
    if 2 * n >= bsz * width:
        step = max(1, chunk // width)
        lse = torch.empty((bsz, width), dtype=torch.float32, device=logits.device)
        top_ids = torch.empty((bsz, width), dtype=torch.long, device=logits.device) if greedy else None
        for b in range(0, bsz, step):
            part = logits[b:b + step].float()
            lse[b:b + step] = torch.logsumexp(part, dim=-1)
            if top_ids is not None:
                top_ids[b:b + step] = part.argmax(dim=-1)
        lp = logits[rows, cols, tgts].float() - lse[rows, cols]
        return lp, None if top_ids is None else top_ids[rows, cols] == tgts
    lp = torch.empty(n, dtype=torch.float32, device=logits.device)
    top = torch.empty(n, dtype=torch.bool, device=logits.device) if greedy else None
    for s in range(0, n, chunk):
        sel = logits[rows[s:s + chunk], cols[s:s + chunk]].float()  # [c, V]
        t = tgts[s:s + chunk]
        lp[s:s + chunk] = sel.gather(-1, t[:, None]).squeeze(-1) - torch.logsumexp(sel, dim=-1)
        if top is not None:
            top[s:s + chunk] = sel.argmax(dim=-1) == t
    return lp, top


def score(
    model: nn.Module,
    requests: Sequence[Request],
    config: ScoringConfig | None = None,
    greedy: bool = False,
    desc: str | None = None,
) -> list[TokenScores]:
    """Score every request's target tokens; results come back in the order of ``requests``.

    ``greedy=True`` also reports whether each target token was the model's argmax (LAMBADA accuracy).
    """
    config = config or ScoringConfig()
    param = next(model.parameters())
    dev = param.device
    max_len = config.max_length or model_max_length(model)
    seqs = [_fit(r, max_len) for r in requests]
    n_tgt = [min(len(r.target), len(s) - 1) for r, s in zip(requests, seqs, strict=True)]
    inputs_len = [len(s) - 1 for s in seqs]
    pad = 0
    out: list[TokenScores | None] = [None] * len(seqs)
    batches = length_buckets(inputs_len, batch_budget(config, dev))
    rank = distributed.current()
    if rank.active:  # data-parallel under torchrun: every rank scores every world-th batch, then all share
        batches = batches[rank.rank::rank.world]
    with torch.inference_mode():
        for batch in bar(batches, desc=desc or "scoring", unit="batch"):
            width = inputs_len[batch[0]]
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols, tgts = [], [], []
            for r, i in enumerate(batch):
                s, m = seqs[i], inputs_len[i]
                ids[r, :m] = torch.tensor(s[:-1], dtype=torch.long)
                mask[r, :m] = 1
                rows.append(torch.full((n_tgt[i],), r, dtype=torch.long))
                cols.append(torch.arange(m - n_tgt[i], m))
                tgts.append(torch.tensor(s[-n_tgt[i]:], dtype=torch.long))
            count_tokens(real=sum(inputs_len[i] for i in batch), padded=len(batch) * width)
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
            lp, top = _gather(logits, torch.cat(rows).to(dev), torch.cat(cols).to(dev), torch.cat(tgts).to(dev),
                              config.chunk_rows, greedy)
            lp = lp.double().cpu().numpy()
            top = top.cpu().numpy() if top is not None else None
            at = 0
            for i in batch:
                k = n_tgt[i]
                out[i] = TokenScores(lp[at:at + k], None if top is None else top[at:at + k])
                at += k
            del logits
    if rank.active:
        for part in distributed.all_gather({i: s for i, s in enumerate(out) if s is not None}, rank):
            for i, s in part.items():
                out[i] = s
    return out  # type: ignore[return-value]


def score_unbatched(model: nn.Module, request: Request) -> TokenScores:
    """The reference: one sequence, no padding, no mask, a full float64 log-softmax.

    Deliberately shares nothing with :func:`score` beyond the model call, so the tests can hold the
    batched engine to it.
    """
    seq = [*request.context, *request.target]
    dev = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([seq[:-1]], device=dev)).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        k = len(request.target)
        tgt = torch.tensor(seq[-k:], device=dev)
        pos = logp[-k:]
        lp = pos.gather(-1, tgt[:, None]).squeeze(-1)
        top = pos.argmax(-1) == tgt
    return TokenScores(lp.cpu().numpy(), top.cpu().numpy())


# ---------------------------------------------------------------------------------------------- read-outs
