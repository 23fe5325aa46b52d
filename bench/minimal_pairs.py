"""Benchmark minimal-pair scoring: tokens and wall time of the prefix-tree engine vs the plain engine.

Rows:
  tokens (full BLiMP, full TSE; counted from the plans, no forward): the sentences the tasks score,
      plain engine (every sentence in full), plain after exact-duplicate removal, and the prefix tree
      (``real``: distinct prefixes the model runs; ``padded``: positions its MLPs compute, padding included)
  wall (a seeded subset of each, both engines on the same requests): seconds, the engines' agreement
      (max |log-prob difference|), and tokens/s of each engine against a plain forward of the same
      sentences (right-padded batches, no scoring)
  projected full BLiMP + TSE seconds per condition: full-set tokens / the measured tokens/s.

Usage: NEGDIFF_DATA=../shared/data python bench/minimal_pairs.py [--blimp-limit 40] [--tse-limit 200]
       [--threads N] [--out bench/results/minimal_pairs.json]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from negdiff.models import load_model
from negdiff.results import versions, write_json
from negdiff.scoring import ScoringConfig, batch_budget, counting, encode_text, length_buckets, score
from negdiff.scoring.prefix_tree import planned_counts, score_tree
from negdiff.tasks import load_blimp, load_tse
from negdiff.tasks.base import EvalConfig, limited


def texts_of(items: list[dict]) -> list[str]:
    """Every sentence a BLiMP / TSE run scores (good, bad, TSE's second bad), in the tasks' order."""
    out = [it["sentence_good"] for it in items] + [it["sentence_bad"] for it in items]
    return out + [it["sentence_bad_2"] for it in items if it.get("sentence_bad_2") is not None]


def plain_counts(reqs, cfg: ScoringConfig, dev: torch.device) -> dict[str, int]:
    lengths = [len(r.context) + len(r.target) - 1 for r in reqs]
    padded = sum(len(b) * lengths[b[0]] for b in length_buckets(lengths, batch_budget(cfg, dev)))
    return {"real": sum(lengths), "padded": padded}


def forward_only(model, reqs, cfg: ScoringConfig, dev: torch.device) -> float:
    """Seconds of a plain forward over the sentences (the plain engine's batches, no log-softmax, no gather)."""
    seqs = [[*r.context, *r.target][:-1] for r in reqs]
    lengths = [len(s) for s in seqs]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in length_buckets(lengths, batch_budget(cfg, dev)):
            ids = torch.zeros((len(b), lengths[b[0]]), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(b):
                ids[r, :lengths[i]] = torch.tensor(seqs[i])
                mask[r, :lengths[i]] = 1
            model(input_ids=ids.to(dev), attention_mask=mask.to(dev))
    return time.perf_counter() - t0


def timed(fn, *args, **kwargs):
    with counting() as c:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        return out, time.perf_counter() - t0, dict(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--blimp-limit", type=int, default=40, help="pairs per paradigm in the timed subset (seeded)")
    ap.add_argument("--tse-limit", type=int, default=200, help="pairs per TSE task in the timed subset (seeded)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--out", default="bench/results/minimal_pairs.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, tok, dev = loaded.model, loaded.tokenizer, loaded.device
    cfg = ScoringConfig()
    res: dict = {"model": loaded.info.name, "dtype": loaded.info.dtype, "device": str(dev),
                 "threads": torch.get_num_threads(), "budget": batch_budget(cfg, dev), "tasks": {}}
    lines = []
    for name, loader, key, lim in (("blimp", load_blimp, "UID", args.blimp_limit),
                                   ("tse", load_tse, "task", args.tse_limit)):
        items = loader(EvalConfig())
        reqs = [encode_text(tok, t, cfg.bos) for t in texts_of(items)]
        distinct = list(dict.fromkeys(reqs))
        full = {"sentences": len(reqs), "distinct": len(distinct), "plain": plain_counts(reqs, cfg, dev),
                "dedup": plain_counts(distinct, cfg, dev), "tree": planned_counts(model, distinct, cfg)}
        sub_items = limited(items, key, lim, "seeded", 0)
        sub = list(dict.fromkeys(encode_text(tok, t, cfg.bos) for t in texts_of(sub_items)))
        forward_s = forward_only(model, sub, cfg, dev)
        plain, plain_s, plain_c = timed(score, model, sub, cfg)
        tree, tree_s, tree_c = timed(score_tree, model, sub, replace(cfg, share_context=True))
        diff = max(float(np.abs(a.logprobs - b.logprobs).max()) for a, b in zip(plain, tree, strict=True))
        fwd_tps = plain_c["real"] / forward_s
        r = {"full": full, "subset": {"limit": lim, "sentences": len(sub), "forward_s": forward_s,
                                      "plain_s": plain_s, "tree_s": tree_s, "plain": plain_c, "tree": tree_c,
                                      "max_abs_diff": diff, "forward_tok_s": fwd_tps,
                                      "plain_tok_s": plain_c["real"] / plain_s, "tree_tok_s": tree_c["real"] / tree_s}}
        r["token_ratio_full"] = full["tree"]["real"] / full["plain"]["real"]
        r["padded_ratio_full"] = full["tree"]["padded"] / full["plain"]["padded"]
        r["wall_ratio_subset"] = tree_s / plain_s
        r["token_ratio_subset"] = tree_c["real"] / plain_c["real"]
        r["tree_tok_s_over_forward"] = r["subset"]["tree_tok_s"] / fwd_tps
        r["projected_full_s"] = {"plain": full["plain"]["real"] / r["subset"]["plain_tok_s"],
                                 "tree": full["tree"]["real"] / r["subset"]["tree_tok_s"]}
        r["wall_ratio_full_projected"] = r["projected_full_s"]["tree"] / r["projected_full_s"]["plain"]
        res["tasks"][name] = r
        lines += [
            f"{name}: full {full['sentences']:,} sentences ({full['distinct']:,} distinct): model tokens plain "
            f"{full['plain']['real']:,}, dedup {full['dedup']['real']:,}, tree {full['tree']['real']:,} "
            f"-> ratio {r['token_ratio_full']:.3f} (padded positions {r['padded_ratio_full']:.3f})",
            f"{name}: subset ({lim}/group seeded, {len(sub):,} distinct sentences): plain {plain_s:.1f} s, tree "
            f"{tree_s:.1f} s -> wall {r['wall_ratio_subset']:.3f} (tokens {r['token_ratio_subset']:.3f}); max |diff| "
            f"{diff:.1e}; tok/s forward {fwd_tps:.0f}, plain {r['subset']['plain_tok_s']:.0f}, tree "
            f"{r['subset']['tree_tok_s']:.0f} ({r['tree_tok_s_over_forward']:.2f}x forward)",
            f"{name}: projected full set per condition: plain {r['projected_full_s']['plain'] / 60:.1f} min, tree "
            f"{r['projected_full_s']['tree'] / 60:.1f} min ({r['wall_ratio_full_projected']:.3f})",
        ]
    both = {k: sum(res["tasks"][t]["projected_full_s"][k] for t in ("blimp", "tse")) for k in ("plain", "tree")}
    res["projected_full_blimp_tse_s"] = both
    res["versions"] = versions()
    print(f"{res['model']} ({res['dtype']}) on {res['device']}, {res['threads']} threads, budget {res['budget']} tokens")
    for line in lines:
        print(line)
    print(f"full BLiMP + TSE per condition: plain {both['plain'] / 60:.1f} min -> tree {both['tree'] / 60:.1f} min")
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
