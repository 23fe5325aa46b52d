"""The top mapping-difficulty pairs of chosen neurons, as a table a reader can check token by token.

Why a service: the scan writes this table for its WN and random sets, and the pairs step writes it for its
panels; both read the same :class:`~negdiff.services.streaming.Streamer` state.
"""

from __future__ import annotations

import pandas as pd
import torch

from negdiff.neuronset import NeuronSet
from negdiff.services.streaming import Streamer


def pairs_table(streamer: Streamer, tokenizer, windows: torch.Tensor, groups: dict[str, NeuronSet],
                context: int = 4) -> pd.DataFrame:
    """For each neuron of each group: its top-ratio MD pairs with tokens, a few words of context, both
    pre-activations and their sign class (both negative / mixed / both positive)."""
    plan = streamer.plan
    flat = windows.flatten()
    seq = windows.shape[1]

    def ctx(w: int, p: int) -> str:
        off = w * seq + p
        return tokenizer.decode(flat[max(0, off - context): off].tolist()) + "[[" + tokenizer.decode([int(flat[off])]) + "]]"

    rows = []
    results = {layer: streamer.md[layer].result() for g in groups.values() for layer in g.layers}
    for group, neurons in groups.items():
        for layer, n in neurons:
            res = results[layer]
            for rank in range(res["top_pair_id"].shape[1]):
                pid = int(res["top_pair_id"][n, rank])
                if pid < 0:
                    continue
                wa, pa, wb, pb = (int(v) for v in plan[pid])
                ya, yb = float(res["top_y_i"][n, rank]), float(res["top_y_j"][n, rank])
                sign = "both_negative" if max(ya, yb) < 0 else ("both_positive" if min(ya, yb) > 0 else "mixed")
                rows.append({
                    "group": group, "layer": layer, "neuron": n, "rank": rank + 1,
                    "ratio": float(res["top_score"][n, rank]), "d_norm": float(res["top_d"][n, rank]) / res["max_d"],
                    "pair_id": pid, "window_a": wa, "pos_a": pa, "window_b": wb, "pos_b": pb,
                    "token_a": int(windows[wa, pa]), "token_b": int(windows[wb, pb]),
                    "text_a": tokenizer.decode([int(windows[wa, pa])]), "text_b": tokenizer.decode([int(windows[wb, pb])]),
                    "context_a": ctx(wa, pa), "context_b": ctx(wb, pb), "y_a": ya, "y_b": yb, "sign_class": sign,
                })
    return pd.DataFrame(rows)
