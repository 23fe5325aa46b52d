"""The read-outs every task uses, on top of the engines: token log-probs, sequence sums, continuation
log-likelihoods and perplexity windows.

Why separate from the engine: a read-out of sentences scores each distinct sequence once and sends shared
prefixes through the prefix tree (:mod:`negdiff.scoring.prefix_tree`), which itself builds on the plain
engine (:mod:`negdiff.scoring.engine`); this module sits above both, so neither imports the other back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from negdiff.bos import context_needs_bos
from negdiff.errors import NegdiffError
from negdiff.scoring.engine import (
    Request,
    ScoringConfig,
    TokenScores,
    encode_pair,
    encode_text,
    score,
)
from negdiff.scoring.prefix_tree import score_tree


def _dedup_score(model, requests: list[Request], config: ScoringConfig, greedy=False, desc=None) -> list[TokenScores]:
    """Score each distinct request once (TSE repeats a sixth of its sentences) and fan results out.

    With ``share_context`` (the default) each distinct token prefix runs once too
    (:mod:`negdiff.scoring.prefix_tree`); otherwise every distinct sequence runs in full.
    """
    unique: dict[Request, int] = {}
    for r in requests:
        unique.setdefault(r, len(unique))
    if config.share_context:
        scored = score_tree(model, list(unique), config, greedy=greedy, desc=desc)
    else:
        scored = score(model, list(unique), config, greedy=greedy, desc=desc)
    return [scored[unique[r]] for r in requests]


def token_logprobs(
    model, tokenizer, texts: Sequence[str], config: ScoringConfig | None = None, desc: str | None = None
) -> list[TokenScores]:
    """Per-token log-probs of each text under the BOS policy (surprisal = minus these, in nats)."""
    config = config or ScoringConfig()
    reqs = [encode_text(tokenizer, t, config.bos) for t in texts]
    return _dedup_score(model, reqs, config, desc=desc)


def sequence_logprobs(
    model, tokenizer, texts: Sequence[str], reduction: str = "sum", config: ScoringConfig | None = None,
    desc: str | None = None,
) -> np.ndarray:
    """One log-prob per text: the ``sum`` over scored tokens, or their ``mean`` (per-token)."""
    if reduction not in ("sum", "mean"):
        raise NegdiffError(f"unknown reduction '{reduction}'; use sum or mean")
    scores = token_logprobs(model, tokenizer, texts, config, desc=desc)
    return np.array([s.total if reduction == "sum" else s.mean for s in scores], dtype=np.float64)


def continuation_logliks(
    model, tokenizer, pairs: Sequence[tuple[str, str]], config: ScoringConfig | None = None,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood of each continuation given its context, and whether it is the greedy one."""
    config = config or ScoringConfig()
    needs_bos = context_needs_bos(model)
    reqs = [encode_pair(tokenizer, c, x, config.bos, needs_bos) for c, x in pairs]
    scores = _dedup_score(model, reqs, config, greedy=True, desc=desc)
    ll = np.array([s.total for s in scores], dtype=np.float64)
    is_greedy = np.array([bool(s.greedy.all()) for s in scores], dtype=bool)
    return ll, is_greedy


def window_nlls(
    model, windows: torch.Tensor, config: ScoringConfig | None = None, desc: str | None = None
) -> np.ndarray:
    """Mean NLL of each ``[n, w]`` window over its ``w - 1`` predicted tokens (the first is context)."""
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise NegdiffError(f"windows must be [n, w] with w >= 2, got shape {tuple(windows.shape)}")
    reqs = [Request((int(w[0]),), tuple(w[1:].tolist())) for w in windows.cpu()]
    return np.array([-s.mean for s in score(model, reqs, config, desc=desc)], dtype=np.float64)
