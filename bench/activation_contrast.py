"""The activation contrast from scratch: four train-mini models identical except the MLP activation.

    python bench/activation_contrast.py --out runs/act [--steps 1100] [--tiny]

Models: the ungated GPT-NeoX variant with gelu (Pythia's) and relu (OPT's), and the gated Llama variant with
silu (SwiGLU) and relu (ReGLU); same corpus, tokenizer, seed, data order, width and steps (train-mini
--activation). Each final checkpoint is scanned (WD structure, the share of pre-activations below 0 by the raw
sign), its WN analysed with `negdiff pairs` (negative share of the top mapping-difficulty pairs, WN vs random),
and, for the smooth activations, ablated (`negdiff ablate --no-dose`: wn_neg vs random on perplexity and the
BLiMP/TSE margins, Holm over the ablation's claims). For ReLU, zeroing the negative pre-activations is the
identity by construction (ReLU already outputs 0 there), so its contrast is the WD structure and the pairs
analysis only: the script says so in the table instead of printing an empty ablation. `negdiff dynamics`
then follows each model's WN cohort over its checkpoints, and `negdiff report` renders each model's folder.

Every step is a negdiff command (resumable: rerun the script and finished steps are reused). Writes
OUT/summary.json and OUT/summary.md. `--tiny` is the test size (seconds per model), not a result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

MODELS = (("neox", "gelu"), ("neox", "relu"), ("llama", "silu"), ("llama", "relu"))
TINY = ["--vocab", "300", "--d-model", "32", "--layers", "2", "--heads", "4", "--seq-len", "128", "--batch", "8",
        "--steps", "40", "--val-windows", "2", "--tokenizer-chars", "200000"]


def negdiff(*args: str) -> None:
    """One negdiff command; a failure stops the script with that command's exit code."""
    print("+ negdiff " + " ".join(args), flush=True)
    rc = subprocess.run([sys.executable, "-m", "negdiff", *args]).returncode
    if rc:
        sys.exit(rc)


def summarize(folder: Path, act: str) -> dict:
    """The contrast's read-outs of one model, from its step folders."""
    table = pd.read_parquet(folder / "scan" / "neurons.parquet")
    wn, rest = table[table.is_wn], table[~table.is_wn]
    row = {"n_neurons": len(table), "n_wn": int(table.is_wn.sum()),
           "median_wd_wn": float(wn.wd.median()), "median_wd_rest": float(rest.wd.median()),
           "frac_negative_wn": float(wn.frac_negative.mean()), "frac_negative_rest": float(rest.frac_negative.mean()),
           "share_wd_neg_raw_gt_pos_wn": float((wn.wd_neg_raw > wn.wd_pos_raw).mean())}
    pairs = json.loads((folder / "pairs" / "pairs.json").read_text())["results"]["depth"]["all"]
    row["pairs_both_negative_wn_minus_random"] = pairs["wn_minus_random"]["both_negative"]
    if act == "relu":
        row["ablation"] = "not run: zero_negative is the identity under ReLU (its output is already 0 for h < 0)"
    else:
        rec = json.loads((folder / "ablate" / "ablation.json").read_text())
        row["ablation"] = {c["id"]: {k: c.get(k) for k in ("verdict", "estimate", "ci", "unit", "n", "units")}
                           for c in rec["claims"]}
    dyn = folder / "dynamics" / "dynamics.parquet"
    if dyn.is_file():
        t = pd.read_parquet(dyn)
        t = t[t.status == "ok"]
        keep = ["step", "wd_cohort_q50", "wd_all_q50", "perplexity_baseline", "blimp_baseline", "tse_baseline"]
        keep += [c for c in t if c.startswith("jaccard")]
        keep += [c for c in t if c.startswith(("d_tse_cohort_neg", "d_blimp_cohort_neg", "d_tse_random_neg",
                                               "d_blimp_random_neg"))]
        row["dynamics"] = t[[c for c in keep if c in t]].to_dict(orient="records")
        row["dynamics_summary"] = json.loads((folder / "dynamics" / "dynamics.json").read_text())["summary_lines"]
        if act == "relu":
            deltas = t[[c for c in t if c.startswith("d_") and c.endswith("_cohort_neg")]].abs().to_numpy()
            row["dynamics_note"] = ("baselines, WD and cohort overlap only: the cohort's negative-zeroing is the identity "
                                    f"under ReLU (largest |delta| over checkpoints: {deltas.max():.2g})")

    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", default=None, help="train-mini --steps (default: train-mini's)")
    ap.add_argument("--tiny", action="store_true", help="test sizes: seconds per model, not a result")
    args = ap.parse_args()
    out = Path(args.out)
    small = ["--tokens", "4096", "--md-pairs", "256"] if args.tiny else []
    sizes = ["--blimp-limit", "2", "--tse-limit", "2", "--nongram-limit", "10", "--ppl-tokens", "640", "--ppl-window",
             "64", "--calib-tokens", "512", "--seeds", "2"] if args.tiny else []
    summary = {}
    for arch, act in MODELS:
        folder = out / f"{arch}-{act}"
        train = ["train-mini", "--arch", arch, "--activation", act, "--out", str(folder / "train")]
        train += TINY if args.tiny else []
        train += ["--steps", args.steps] if args.steps else []
        negdiff(*train)
        final = sorted((folder / "train").glob("step*"), key=lambda p: int(p.name[4:]))[-1]
        negdiff("scan", str(final), "--out", str(folder / "scan"), *small)
        negdiff("pairs", str(final), "--scan", str(folder / "scan"), "--out", str(folder / "pairs"),
                *(["--tokens", "2048"] if args.tiny else []))
        if act != "relu":
            negdiff("ablate", str(final), "--scan", str(folder / "scan"), "--out", str(folder / "ablate"), "--no-dose",
                    "--tasks", "perplexity,blimp,tse", *sizes)
        # the cohort over training, at the same sizes for every model: the baseline BLiMP/TSE/perplexity per checkpoint
        # is the contrast's syntax-over-training read-out; for ReLU the cohort's negative-zeroing is the identity, so
        # its deltas must come out exactly 0 (a check, not a result)
        dyn_sizes = (["--tokens", "2048", "--blimp-limit", "2", "--tse-limit", "2", "--ppl-tokens", "640",
                      "--ppl-window", "64"] if args.tiny else [])
        negdiff("dynamics", "--checkpoints", str(folder / "train"), "--out", str(folder / "dynamics"), *dyn_sizes)
        negdiff("report", str(folder))  # each model's steps in one report.html (scan, pairs, ablate, dynamics)
        summary[f"{arch}-{act}"] = summarize(folder, act)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    lines = table(summary)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def table(summary: dict) -> list[str]:
    """The contrast as a Markdown table, one row per model."""
    lines = ["| model | final ppl / BLiMP % / TSE % | WN | median WD WN / rest | share h<0 WN / rest | "
             "both-negative pairs WN - random | ablation |", "|---|---|---|---|---|---|---|"]
    for name, r in summary.items():
        p = r["pairs_both_negative_wn_minus_random"]
        ci = (f" [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]" if not p.get("too_small") and p.get("ci_low")
              is not None and p["ci_low"] == p["ci_low"] else f" (n = {p.get('n_neurons')} neurons: no interval)")
        abl = r["ablation"] if isinstance(r["ablation"], str) else "; ".join(
            f"{k}: {v['verdict']}" for k, v in r["ablation"].items())
        last = (r.get("dynamics") or [{}])[-1]
        base = (f"{last['perplexity_baseline']:.0f} / {100 * last['blimp_baseline']:.1f} / {100 * last['tse_baseline']:.1f}"
                if "tse_baseline" in last else "-")
        lines.append(f"| {name} | {base} | {r['n_wn']} | {r['median_wd_wn']:.3f} / {r['median_wd_rest']:.3f} | "
                     f"{100 * r['frac_negative_wn']:.1f}% / {100 * r['frac_negative_rest']:.1f}% | "
                     f"{100 * p['value']:+.1f} pts{ci} | {abl} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
