"""Scoring: the plain batched engine, the prefix-tree engine, and the read-outs every task uses.

Layout, bottom to top: :mod:`~negdiff.scoring.engine` (requests, the BOS policy, the batched plain
engine and its unbatched reference), :mod:`~negdiff.scoring.tree_plan` (the prefix tree's plan: trie,
segments, batch cuts; numpy only), :mod:`~negdiff.scoring.prefix_tree` (runs a plan: each distinct prefix once;
builds on the engine), :mod:`~negdiff.scoring.readouts` (token log-probs, continuation log-likelihoods,
perplexity windows; routes sentences through the tree). The names below are the package's public API.
"""

from negdiff.scoring.engine import (
    AUTO_BUDGET,
    BOS_POLICIES,
    Request,
    ScoringConfig,
    TokenScores,
    batch_budget,
    count_tokens,
    counting,
    encode_pair,
    encode_text,
    length_buckets,
    model_max_length,
    prefix_id,
    score,
    score_unbatched,
    scoring_record,
)
from negdiff.scoring.readouts import continuation_logliks, sequence_logprobs, token_logprobs, window_nlls

__all__ = [
    "AUTO_BUDGET", "BOS_POLICIES", "Request", "ScoringConfig", "TokenScores", "batch_budget", "continuation_logliks",
    "count_tokens", "counting", "encode_pair", "encode_text", "length_buckets", "model_max_length", "prefix_id",
    "score", "score_unbatched", "scoring_record", "sequence_logprobs", "token_logprobs", "window_nlls",
]
