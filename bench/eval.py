"""Benchmark the scoring engine on BLiMP: batched vs a per-sentence loop, and vs a plain forward.

Targets (issue): the batched scorer is >= 5x faster than a per-sentence loop on 2,000 BLiMP pairs,
and its tokens/s is >= 0.8 of a plain forward over the same batches (the physical floor: the
log-softmax gather should cost little next to the model). Also records pairs/s and the (extrapolated
unless --full) time of a full 67,000-pair BLiMP pass per condition (baseline, zero_negative), and
multiple choice (HellaSwag's first --mc-items items) with each context run once vs once per answer.

    python bench/eval.py [--model default] [--pairs 2000] [--loop-pairs 200] [--mc-items 200] [--out bench/eval.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from negdiff.hooks import intervene
from negdiff.models import load_model
from negdiff.neuronset import NeuronSet
from negdiff.results import versions, write_json
from negdiff.scoring import (
    ScoringConfig,
    batch_budget,
    encode_text,
    length_buckets,
    prefix_id,
    score,
    sequence_logprobs,
)
from negdiff.tasks import TASKS, EvalConfig
from negdiff.tasks.base import subset

FULL_BLIMP = 67_000


def blimp_sentences(n_pairs: int, seed: int) -> list[str]:
    items = TASKS["blimp"].load(EvalConfig())
    idx = subset(len(items), n_pairs, "seeded", seed)
    return [items[i]["sentence_good"] for i in idx] + [items[i]["sentence_bad"] for i in idx]


def per_sentence_loop(model, tokenizer, texts: list[str]) -> np.ndarray:
    """What a script without batching does: one forward and one full log-softmax per sentence."""
    dev = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for t in texts:
            ids = [prefix_id(tokenizer), *tokenizer(t, add_special_tokens=False)["input_ids"]]
            x = torch.tensor([ids], device=dev)
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
            out.append(float(logp[:-1].gather(-1, x[0, 1:, None]).sum()))
    return np.array(out)


def plain_forward(model, tokenizer, texts: list[str], cfg: ScoringConfig) -> tuple[float, int]:
    """The floor: the same length-sorted, padded batches through ``model(...).logits`` and nothing else."""
    reqs = [encode_text(tokenizer, t, cfg.bos) for t in texts]
    seqs = [[*r.context, *r.target][:-1] for r in reqs]
    dev = next(model.parameters()).device
    batches = length_buckets([len(s) for s in seqs], batch_budget(cfg, dev))
    tensors = []
    for b in batches:
        width = len(seqs[b[0]])
        ids = torch.zeros((len(b), width), dtype=torch.long)
        mask = torch.zeros((len(b), width), dtype=torch.long)
        for r, i in enumerate(b):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = 1
        tensors.append((ids.to(dev), mask.to(dev)))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in tensors:
            model(input_ids=ids, attention_mask=mask).logits  # noqa: B018
    return time.perf_counter() - t0, sum(len(s) for s in seqs)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def multiple_choice(model, tokenizer, n_items: int, cfg: ScoringConfig) -> dict:
    """HellaSwag answers scored with each context run once (KV cache) vs once per answer."""
    from negdiff.scoring import continuation_logliks
    from negdiff.tasks.multiple_choice import FORMATS

    items = TASKS["hellaswag"].load(EvalConfig())[:n_items]
    pairs = [p for it in items for p in FORMATS["hellaswag"].prompt(it).pairs]
    out: dict = {"task": "hellaswag", "items": len(items), "answers": len(pairs)}
    lls = {}
    for share in (True, False):
        lls[share], dt = timed(continuation_logliks, model, tokenizer, pairs, replace(cfg, share_context=share))
        out["shared" if share else "plain"] = {"seconds": dt, "items_per_s": len(items) / dt}
    out["speedup"] = out["plain"]["seconds"] / out["shared"]["seconds"]
    out["max_abs_diff"] = float(np.abs(lls[True][0] - lls[False][0]).max())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--loop-pairs", type=int, default=200, help="pairs timed in the per-sentence loop")
    ap.add_argument("--rounds", type=int, default=10, help="interleave the measurements over this many rounds")
    ap.add_argument("--batch-tokens", type=int, default=None, help="scorer budget (default: the auto one)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="time a real full BLiMP pass per condition")
    ap.add_argument("--mc-items", type=int, default=200, help="HellaSwag items for shared vs plain contexts (0: skip)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    cfg = ScoringConfig(max_batch_tokens=args.batch_tokens)
    texts = blimp_sentences(args.pairs, args.seed)
    n_pairs = len(texts) // 2
    score(model, [encode_text(tok, t) for t in texts[:32]], cfg)  # warm-up
    rng = torch.Generator().manual_seed(args.seed)
    neurons = NeuronSet({s.layer: torch.randperm(s.width, generator=rng)[: max(1, s.width // 100)]
                         for s in loaded.sites}, {"rule": "random 1% per layer (bench)", "seed": args.seed})
    report: dict = {"bench": "eval", "model": loaded.info.to_dict(), "device": args.device, "dtype": args.dtype,
                    "threads": torch.get_num_threads(), "platform": platform.platform(), "versions": versions(),
                    "pairs": n_pairs, "loop_pairs": args.loop_pairs, "rounds": args.rounds,
                    "scoring": cfg.to_dict(), "loadavg_start": os.getloadavg()}

    # Contention from other jobs drifts over minutes: interleave every measurement round by round so
    # that the ratios compare like with like.
    t = {"score": 0.0, "forward": 0.0, "loop": 0.0, "zero_negative": 0.0}
    fwd_tokens, diffs = 0, []
    per_round, loop_per_round = -(-n_pairs // args.rounds), -(-args.loop_pairs // args.rounds)
    for r in range(args.rounds):
        lo, hi = r * per_round, min(n_pairs, (r + 1) * per_round)
        if lo >= hi:
            break
        chunk = texts[lo:hi] + texts[n_pairs + lo: n_pairs + hi]
        lp, dt = timed(sequence_logprobs, model, tok, chunk, "sum", cfg)
        t["score"] += dt
        dt, ntok = plain_forward(model, tok, chunk, cfg)
        t["forward"] += dt
        fwd_tokens += ntok
        k = min(loop_per_round, hi - lo)
        loop, dt = timed(per_sentence_loop, model, tok, texts[lo:lo + k] + texts[n_pairs + lo: n_pairs + lo + k])
        t["loop"] += dt
        diffs.append(float(np.abs(np.r_[lp[:k], lp[hi - lo: hi - lo + k]] - loop).max()))
        with intervene(model, neurons, "zero_negative"):
            _, dt = timed(sequence_logprobs, model, tok, chunk, "sum", cfg)
        t["zero_negative"] += dt
        print(f"round {r + 1}/{args.rounds}: {json.dumps({k: round(v, 1) for k, v in t.items()})}", file=sys.stderr)

    loop_pairs = min(args.loop_pairs, n_pairs)
    pps, loop_pps = n_pairs / t["score"], loop_pairs / t["loop"]
    report["batched"] = {"seconds": t["score"], "pairs_per_s": pps, "tokens_per_s": fwd_tokens / t["score"]}
    report["per_sentence_loop"] = {"pairs": loop_pairs, "seconds": t["loop"], "pairs_per_s": loop_pps}
    report["plain_forward"] = {"seconds": t["forward"], "tokens_per_s": fwd_tokens / t["forward"]}
    report["speedup_vs_loop"] = pps / loop_pps
    report["ratio_vs_forward"] = t["forward"] / t["score"]
    report["max_abs_diff_vs_loop_fp32_sum"] = max(diffs)
    report["conditions"] = {
        "baseline": {"pairs_per_s": pps, "full_blimp_seconds_est": FULL_BLIMP / pps},
        "zero_negative": {"pairs_per_s": n_pairs / t["zero_negative"], "neurons": neurons.size,
                          "full_blimp_seconds_est": FULL_BLIMP * t["zero_negative"] / n_pairs},
    }
    if args.full:
        for name in ("baseline", "zero_negative"):
            ctx = intervene(model, neurons, name) if name != "baseline" else contextlib.nullcontext()
            with ctx:
                _, dt = timed(TASKS["blimp"].run, model, tok, EvalConfig(scoring=cfg))
            report["conditions"][name]["full_blimp_seconds"] = dt
    if args.mc_items:
        report["multiple_choice"] = multiple_choice(model, tok, args.mc_items, cfg)
    report["targets"] = {"speedup_vs_loop>=5": report["speedup_vs_loop"] >= 5,
                         "ratio_vs_forward>=0.8": report["ratio_vs_forward"] >= 0.8}
    report["loadavg_end"] = os.getloadavg()  # other jobs on the machine distort CPU timings
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
