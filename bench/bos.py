"""Compare the BOS policies on the syntactic read-outs, at baseline and under the WN ablation.

Why: on the embedded SmolLM2-Instruct the tokenizer's BOS is the chat-turn opener ``<|im_start|>``;
negdiff's ``prefix`` now detects the pretraining separator ``<|endoftext|>`` instead (negdiff.bos).
This reports what that choice does to BLiMP (overall and npi_licensing), TSE per group (agreement,
reflexives, npi; NPI also "good beats both") under ``prefix`` (new), ``tokenizer_default`` (the
authors) and ``bos_token`` (negdiff's earlier prefix, the literal ``<|im_start|>``), at baseline and
under ``--mode`` (default zero_negative) on a scan's WN set, with the paired margin changes
(sentence-score margin good minus rival, per item, ablated minus baseline; and each policy's baseline
margin minus prefix's). Without ``--scan`` only the baseline runs.

    NEGDIFF_DATA=../shared/data python bench/bos.py --scan runs/scan --blimp-limit 50 --tse-limit 100 \
        --out bench/results/bos.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import time
from typing import Any

import pandas as pd
import torch

from negdiff.evaluate import evaluate
from negdiff.hooks import MODES, intervene
from negdiff.models import load_model
from negdiff.results import versions, write_json
from negdiff.scoring import BOS_POLICIES, ScoringConfig
from negdiff.tasks import EvalConfig

POLICIES = ("prefix", "tokenizer_default", "bos_token")
#: (row label, task, metric key in that task's results)
METRICS = (("BLiMP overall", "blimp", "acc"), ("BLiMP npi_licensing", "blimp", "acc/term/npi_licensing"),
           ("TSE agreement", "tse", "acc/group/agreement"), ("TSE reflexives", "tse", "acc/group/reflexives"),
           ("TSE npi", "tse", "acc/group/npi"), ("TSE npi (beats both)", "tse", "acc_strict/group/npi"))


def margins(task: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Per item: the sentence-score margin of the good sentence over its rival, and the group label."""
    if task == "blimp":
        return pd.DataFrame({"margin": frame["lp_good"] - frame["lp_bad"], "group": "overall"}).set_axis(
            frame["item_id"])
    rival = frame["lp_bad_2"].where(frame["lp_bad_2"].notna(), frame["lp_bad"])
    return pd.DataFrame({"margin": frame["lp_good"] - rival, "group": frame["group"]}).set_axis(frame["item_id"])


def paired(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """Mean of b - a over items present in both, with its standard error."""
    d = (b - a.reindex(b.index)).dropna().to_numpy(dtype=float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()) if len(d) else float("nan"), "se": se, "n": int(len(d))}


def run_policy(loaded, policy: str, args: argparse.Namespace, neurons) -> dict[str, Any]:
    """BLiMP and TSE under one BOS policy, baseline and (with neurons) ablated."""
    base = EvalConfig(scoring=ScoringConfig(bos=policy, max_batch_tokens=args.batch_tokens), n_boot=args.n_boot,
                      data_root=args.data)
    out: dict[str, Any] = {}
    conditions = [("baseline", None)] + ([(args.mode, neurons)] if neurons is not None else [])
    for cond, ns in conditions:
        ctx = intervene(loaded.model, ns, args.mode, sites=loaded.sites) if ns is not None else contextlib.nullcontext()
        res: dict[str, Any] = {"metrics": {}, "margins": {}, "bos": None}
        t0 = time.perf_counter()
        with ctx:
            for task, limit in (("blimp", args.blimp_limit), ("tse", args.tse_limit)):
                r = evaluate(loaded, [task], config=dataclasses.replace(base, limit=limit))
                res["metrics"][task] = r["tasks"][task]["metrics"]
                res["margins"][task] = margins(task, r["items"][task])
                sc = r["tasks"][task]["config"]["scoring"]
                res["bos"] = {k: sc[k] for k in ("bos", "bos_token", "bos_id", "bos_reason")}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out[cond] = res
    return out


def summarize_runs(runs: dict[str, dict], mode: str | None) -> dict[str, Any]:
    """Accuracies per policy and condition, and the paired margin changes."""
    acc: dict[str, dict] = {}
    for label, task, key in METRICS:
        acc[label] = {}
        for pol, by_cond in runs.items():
            for cond, res in by_cond.items():
                m = res["metrics"][task].get(key)
                acc[label][f"{pol}/{cond}"] = None if m is None else {k: m[k] for k in ("value", "ci_low", "ci_high", "n")}
    margin: dict[str, dict] = {}
    for task, groups in (("blimp", ["overall"]), ("tse", ["agreement", "reflexives", "npi"])):
        for g in groups:
            row: dict[str, Any] = {}
            ref = runs["prefix"]["baseline"]["margins"][task]
            ref = ref.loc[ref["group"] == g, "margin"]
            for pol, by_cond in runs.items():
                mb = by_cond["baseline"]["margins"][task]
                mb = mb.loc[mb["group"] == g, "margin"]
                row[f"{pol}/baseline_mean"] = float(mb.mean())
                if pol != "prefix":
                    row[f"{pol}/baseline_minus_prefix"] = paired(ref, mb)
                if mode in by_cond:
                    ma = by_cond[mode]["margins"][task]
                    row[f"{pol}/{mode}_minus_baseline"] = paired(mb, ma.loc[ma["group"] == g, "margin"])
            margin[f"{task}/{g}"] = row
    return {"accuracy": acc, "margin": margin}


def fmt(m: dict | None) -> str:
    return "n/a" if m is None else f"{100 * m['value']:.1f}"


def print_tables(summary: dict, runs: dict, mode: str | None) -> None:
    conds = ["baseline"] + ([mode] if mode else [])
    for pol, by_cond in runs.items():
        b = by_cond["baseline"]["bos"]
        print(f"- `{pol}`: token {b['bos_token']!r} (id {b['bos_id']}): {b['bos_reason']}")
    head = ["metric (acc %)"] + [f"{p} {c}" for p in runs for c in conds] + ([f"{p} Δ" for p in runs] if mode else [])
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for label, row in summary["accuracy"].items():
        cells = [fmt(row.get(f"{p}/{c}")) for p in runs for c in conds]
        if mode:
            for p in runs:
                a, b = row.get(f"{p}/baseline"), row.get(f"{p}/{mode}")
                cells.append("n/a" if a is None or b is None else f"{100 * (b['value'] - a['value']):+.1f}")
        n = next((v["n"] for v in row.values() if v), 0)
        print(f"| {label} (n={n}) | " + " | ".join(cells) + " |")
    head = ["margin (nats)"] + [f"{p} base" for p in runs] + [f"{p} − prefix" for p in runs if p != "prefix"]
    head += [f"{p} Δ {mode}" for p in runs] if mode else []
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, row in summary["margin"].items():
        cells = [f"{row[f'{p}/baseline_mean']:.3f}" for p in runs]
        cells += [f"{row[f'{p}/baseline_minus_prefix']['mean']:+.3f} ± {row[f'{p}/baseline_minus_prefix']['se']:.3f}"
                  for p in runs if p != "prefix"]
        if mode:
            cells += [f"{row[f'{p}/{mode}_minus_baseline']['mean']:+.3f} ± {row[f'{p}/{mode}_minus_baseline']['se']:.3f}"
                      for p in runs]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--scan", default=None, help="a finished scan folder (its wn.json); omitted: baseline only")
    ap.add_argument("--mode", default="zero_negative", choices=list(MODES), help="the intervention on the WN set")
    ap.add_argument("--blimp-limit", type=int, default=50, help="pairs per BLiMP paradigm (first k)")
    ap.add_argument("--tse-limit", type=int, default=100, help="pairs per TSE task (seeded)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated BOS policies")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--data", default=None, help="data folder (default $NEGDIFF_DATA)")
    ap.add_argument("--out", default="bench/results/bos.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if "prefix" not in policies or not set(policies) <= set(BOS_POLICIES):
        ap.error(f"--policies must include prefix and come from {', '.join(BOS_POLICIES)}")

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    neurons = None
    if args.scan:
        from negdiff.experiments.scan import load_wn

        neurons = load_wn(loaded, args.scan)
    mode = args.mode if neurons is not None else None
    runs = {p: run_policy(loaded, p, args, neurons) for p in policies}
    summary = summarize_runs(runs, mode)
    print(f"{loaded.info.name}: BLiMP first {args.blimp_limit}/paradigm, TSE {args.tse_limit}/task"
          + (f", {mode} on {neurons.size} WN from {args.scan}" if neurons is not None else ", baseline only (no --scan)"))
    print_tables(summary, runs, mode)
    record = {"model": loaded.info.to_dict(), "scan": args.scan, "mode": mode, "n_neurons": None if neurons is None
              else neurons.size, "blimp_limit": args.blimp_limit, "tse_limit": args.tse_limit,
              "bos": {p: runs[p]["baseline"]["bos"] for p in runs},
              "seconds": {p: {c: r["seconds"] for c, r in runs[p].items()} for p in runs},
              **summary, "threads": torch.get_num_threads(), "versions": versions()}
    print(f"wrote {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
