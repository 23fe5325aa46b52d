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
import math
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


def last_step(folder: Path) -> Path:
    """The latest ``step<N>`` folder in ``folder`` (by N, not by name: step1100 comes after step128)."""
    return max(folder.glob("step*"), key=lambda p: int(p.name[4:]))


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
        row["ablation"] = {c["id"]: {k: c.get(k) for k in ("verdict", "estimate", "ci", "unit", "n", "units", "note",
                                                           "readouts_disagree_in_sign")}
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

    row["minutes"] = minutes(folder)
    return row


def minutes(folder: Path) -> dict[str, float]:
    """Compute minutes per step as each step recorded it (a reused step keeps its first run's figures): training,
    scan, pairs, the ablation's conditions, and the dynamics' checkpoints."""
    def read(step: str, name: str) -> dict:
        f = folder / step / name
        return json.loads(f.read_text()) if f.is_file() else {}
    out = {"train": read("train", "train.json").get("timing", {}).get("seconds_train"),
           "scan": read("scan", "scan.json").get("timing", {}).get("total_s"),
           "pairs": read("pairs", "pairs.json").get("timing", {}).get("total_s"),
           "ablate": sum(read("ablate", "ablation.json").get("seconds_per_condition", {}).values()) or None,
           "dynamics": sum(read("dynamics", "dynamics.json").get("timing", {}).get("per_checkpoint", {}).values()) or None}
    return {k: round(v / 60, 1) for k, v in out.items() if v}


#: the deciding read-outs of the between-model comparison (accuracy beside), as the ablation decides them
COMPARED = (("perplexity", "nll"), ("blimp", "margin"), ("blimp", "acc"), ("tse", "margin"), ("tse", "acc"))


def final_items(folder: Path) -> dict[str, pd.DataFrame]:
    """The final checkpoint's baseline item tables, as `negdiff dynamics` scored them (same items for every model)."""
    base = last_step(folder / "dynamics" / "checkpoints") / "ablate" / "conditions" / "baseline"
    return {t: pd.read_parquet(base / f"items_{t}.parquet") for t, _ in COMPARED if (base / f"items_{t}.parquet").is_file()}


def between_models(out: Path, pairs: list[tuple[str, str]]) -> list[dict]:
    """Smooth minus ReLU on the final checkpoints' baselines, paired on the same items: perplexity as a per-window
    paired t (n - 1 df), BLiMP/TSE as a paired bootstrap over items stratified by paradigm/task. One training run per
    activation, so an interval covers item sampling only, not training-seed variation: it compares these two
    trained models, not the activations in general. Holm over the deciding read-outs (the NLL and the two margins)
    of every pair, two-sided (no direction was declared)."""
    from negdiff.contrasts import Contrasts
    from negdiff.result_stats import holm

    rows = []
    for smooth, relu in pairs:
        items = {relu: final_items(out / relu), smooth: final_items(out / smooth)}
        con = Contrasts(items, {}, reference=relu)
        for task, readout in COMPARED:
            if task not in items[relu] or task not in items[smooth]:
                continue
            iv = con.interval(task, readout, relu, smooth)
            p2 = None if iv.p_less is None else min(1.0, 2 * min(iv.p_less, iv.p_greater))
            rows.append({"pair": f"{smooth} - {relu}", "task": task, "readout": readout, "estimate": iv.estimate,
                         "ci": list(iv.ci) if iv.ci else None, "n": iv.n, "units": iv.units, "method": iv.method,
                         "p_two_sided": p2, "deciding": readout != "acc"})
    deciding = [r for r in rows if r["deciding"] and r["p_two_sided"] is not None]
    for r, adj in zip(deciding, holm([r["p_two_sided"] for r in deciding])):
        r["p_holm"] = float(adj)
    return rows


def between_table(rows: list[dict]) -> list[str]:
    """The between-model rows as Markdown: perplexity as a ratio, margins in nats, accuracies in points."""
    lines = ["| pair | read-out | smooth - ReLU [95% CI] | n | Holm p (two-sided) |", "|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci"] or (None, None)
        if r["readout"] == "nll":
            what = "perplexity ratio"
            val = f"x{math.exp(r['estimate']):.3f}" + (f" [{math.exp(lo):.3f}, {math.exp(hi):.3f}]" if lo is not None else "")
        elif r["readout"] == "acc":
            what = f"{r['task']} accuracy (pts)"
            val = f"{100 * r['estimate']:+.1f}" + (f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None else "")
        else:
            what = f"{r['task']} margin (nats{' per token' if r['task'] == 'tse' else ''})"
            val = f"{r['estimate']:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None else "")
        holm_p = f"{r['p_holm']:.2g}" if "p_holm" in r else "- (beside)"
        lines.append(f"| {r['pair']} | {what} | {val} | {r['n']} {r['units']} | {holm_p} |")
    return lines


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
        final = last_step(folder / "train")
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
    pairs = [(f"{a}-{act}", f"{a}-relu") for a, act in MODELS if act != "relu" and f"{a}-relu" in summary]
    between = between_models(out, pairs)
    (out / "summary.json").write_text(json.dumps({"models": summary, "between_models": between}, indent=1,
                                                 default=str) + "\n")
    lines, blines = table(summary), between_table(between)
    (out / "summary.md").write_text("\n".join(lines) + "\n\n" + "\n".join(blines) + "\n")
    (out / "index.html").write_text(index_html(summary, blines))
    print("\n".join(lines + [""] + blines))
    print(f"wrote {out / 'summary.json'}, {out / 'summary.md'} and {out / 'index.html'}")
    return 0


def qualified(claim: dict) -> str:
    """What follows a verdict in the tables: the report's qualifications of a "holds" (negdiff.report.claims), so a
    small effect never reads as a clean one."""
    from negdiff.report.claims import qualifiers

    return "".join(f" ({q})" for q in qualifiers(claim))


def index_html(summary: dict, blines: list[str]) -> str:
    """One page over the four models: the contrast table (each ablation claim on its own line with the report's
    verdict badge), what ReLU can and cannot show, each model's report with its compute minutes."""
    from negdiff.report.page import CSS, badge, esc, md_table

    body = []
    for name, r in summary.items():
        abl = (esc(r["ablation"]) if isinstance(r["ablation"], str) else "<br>".join(
            f"{badge(v['verdict'])} {esc(k)}{esc(qualified(v))}" for k, v in r["ablation"].items()))
        tds = [f'<td style="white-space:nowrap"><a href="{esc(name)}/report.html">{esc(name)}</a></td>']
        tds += [f'<td class="num">{esc(c)}</td>' for c in cells(r)] + [f"<td>{abl}</td>"]
        body.append("<tr>" + "".join(tds) + "</tr>")
    head = "".join(f"<th>{esc(c)}</th>" for c in HEADER)
    links = "".join(f'<li><a href="{esc(name)}/report.html">{esc(name)}</a>: {esc(minutes_text(r))}</li>'
                    for name, r in summary.items())
    notes = "".join(f"<li>{esc(name)}: {esc(r['dynamics_note'])}</li>" for name, r in summary.items()
                    if r.get("dynamics_note"))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>negdiff activation contrast</title>"
            f"<style>{CSS}</style></head><body><main><h1>The activation contrast from scratch</h1>"
            "<p class='facts'>train-mini models identical except the MLP activation (same initial weights, data order, "
            "width and steps); fp32. Both-negative pairs: 95% CI resampling neurons. Ablation verdicts: "
            "<code>negdiff ablate</code>, Holm over its claims; estimates and intervals in each model's report.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p>ReLU: zeroing the negative pre-activations is the identity by construction (ReLU already outputs 0 "
            "there), so the ReLU models' contrast is the WD structure and the pairs analysis; no ablation is run.</p>"
            + (f"<ul class='findings'>{notes}</ul>" if notes else "")
            + "<h2>Smooth against ReLU: the final checkpoints' baselines</h2><p>Paired on the same items (perplexity: "
            "t over windows, n - 1 df; BLiMP/TSE: bootstrap over items within paradigm/task). One training run per "
            "activation: the intervals cover item sampling, not training-seed variation, so they compare these "
            "trained models, not the activations in general. Holm, two-sided, over the NLL and margin rows.</p>"
            + md_table("\n".join(blines), numeric_from=2)
            + f"<h2>Each model's report (compute minutes per step)</h2><ul class='findings'>{links}</ul>"
            "</main></body></html>\n")


def minutes_text(row: dict) -> str:
    """'train 26.0, scan 1.2, ...' minutes."""
    return ", ".join(f"{k} {v:.1f}" for k, v in row.get("minutes", {}).items()) + " min"


#: the contrast table's columns: the model, the numeric cells of :func:`cells`, the ablation's verdicts
HEADER = ("model", "final ppl / BLiMP % / TSE % (dynamics sizes)", "WN", "median WD WN / rest", "share h<0 WN / rest",
          "both-negative pairs WN - random", "ablation")


def cells(r: dict) -> list[str]:
    """One model's numeric cells (between its name and its ablation), shared by the Markdown and the HTML table."""
    p = r["pairs_both_negative_wn_minus_random"]
    ci = (f" [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]" if not p.get("too_small") and p.get("ci_low")
          is not None and p["ci_low"] == p["ci_low"] else f" (n = {p.get('n_neurons')} neurons: no interval)")
    last = (r.get("dynamics") or [{}])[-1]
    base = (f"{last['perplexity_baseline']:.0f} / {100 * last['blimp_baseline']:.1f} / {100 * last['tse_baseline']:.1f}"
            if "tse_baseline" in last else "-")
    return [base, str(r["n_wn"]), f"{r['median_wd_wn']:.3f} / {r['median_wd_rest']:.3f}",
            f"{100 * r['frac_negative_wn']:.1f}% / {100 * r['frac_negative_rest']:.1f}%", f"{100 * p['value']:+.1f} pts{ci}"]


def table(summary: dict) -> list[str]:
    """The contrast as a Markdown table, one row per model."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name, r in summary.items():
        abl = r["ablation"] if isinstance(r["ablation"], str) else "; ".join(
            f"{k}: {v['verdict']}{qualified(v)}" for k, v in r["ablation"].items())
        lines.append("| " + " | ".join([name, *cells(r), abl]) + " |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
