"""Is the prefix tree's gap to the plain engine on the real model rounding? Both engines and the one-at-a-time
reference, in float32 and in float64, on the same BLiMP sentences.

If the tree were wrong (a position, a mask, a stale cache), the gap would stay in float64; rounding shrinks
with the precision. (Llama-style RMSNorm computes in float32 whatever the model's dtype, so float64 runs
are not fully float64: the reference gap there is that of the float32 norms.)

Usage: NEGDIFF_DATA=../shared/data python bench/tree_exactness.py [--pairs 40] [--out bench/results/tree_exactness.json]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from negdiff.models import load_model
from negdiff.results import versions, write_json
from negdiff.scoring import ScoringConfig, encode_text, score, score_unbatched
from negdiff.scoring.prefix_tree import score_tree
from negdiff.tasks import load_blimp
from negdiff.tasks.base import EvalConfig, limited


def max_diff(a, b) -> float:
    return max(float(np.abs(x.logprobs - y.logprobs).max()) for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--pairs", type=int, default=40, help="BLiMP pairs (1 per paradigm, seeded; both sentences scored)")
    ap.add_argument("--reference", type=int, default=20, help="sentences also scored one at a time")
    ap.add_argument("--out", default="bench/results/tree_exactness.json")
    args = ap.parse_args()
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    items = limited(load_blimp(EvalConfig()), "UID", 1, "seeded", 0)[:args.pairs]
    texts = [it["sentence_good"] for it in items] + [it["sentence_bad"] for it in items]
    reqs = list(dict.fromkeys(encode_text(tok, t, "prefix") for t in texts))
    cfg = ScoringConfig()
    res = {"model": loaded.info.name, "sentences": len(reqs), "reference_sentences": args.reference, "rows": {}}
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        with torch.inference_mode():
            plain = score(model, reqs, cfg)
            tree = score_tree(model, reqs, replace(cfg, share_context=True))
            ref = [score_unbatched(model, r) for r in reqs[:args.reference]]
        row = {"tree_vs_plain": max_diff(tree, plain), "plain_vs_reference": max_diff(plain[:args.reference], ref),
               "tree_vs_reference": max_diff(tree[:args.reference], ref)}
        res["rows"][str(dtype).replace("torch.", "")] = row
        print(f"{dtype}: {len(reqs)} sentences: max |log-prob difference| tree vs plain {row['tree_vs_plain']:.1e}; "
              f"vs the one-at-a-time reference ({args.reference} sentences): plain {row['plain_vs_reference']:.1e}, "
              f"tree {row['tree_vs_reference']:.1e}")
    res["versions"] = versions()
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
