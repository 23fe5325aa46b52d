"""Self-contained reports (``report.html`` with embedded figures, ``report.md`` beside it), built from run folders only.

A report never recomputes anything: it reads ``scan/scan.json``, ``ablate/ablation.json`` and their
figures, so it can be rebuilt, and read, without negdiff or a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from negdiff.report.page import page
from negdiff.results import atomic_write_bytes, read_json


def _steps():
    """The declared steps, in report order (:mod:`negdiff.steps`)."""
    from negdiff.steps import all_steps

    return all_steps()


def _load(run: Path) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    for s in _steps():
        if s.finished(run):
            parts[s.name] = read_json(s.folder(run) / s.record)
    if (run / "manifest.json").is_file():
        parts["manifest"] = read_json(run / "manifest.json")
    return parts


def _figures(run: Path) -> list[Path]:
    return [p for s in _steps() for p in sorted((s.folder(run) / "figures").glob("*.png"))]


def markdown(run: str | Path) -> str:
    """The report as Markdown (figures linked by relative path)."""
    from negdiff.experiments.ablate.stats import claim_lines, table_lines, table_markdown

    run = Path(run)
    parts = _load(run)
    model = (parts.get("scan") or parts.get("ablate") or {}).get("model", {})
    lines = [f"# negdiff report: {model.get('name', '?')}", ""]
    if model.get("quantization"):
        lines += [f"**Weights: {model['quantization']}.** Results are for these weights.", ""]
    lines += [f"dtype {model.get('dtype')}, device {model.get('device')}, {model.get('n_params', 0):,} parameters, "
              f"{model.get('sites', {}).get('n_layers')} layers x {model.get('sites', {}).get('neurons_per_layer')} "
              f"{model.get('sites', {}).get('activation')} neurons.", ""]
    if "ablate" in parts:
        a = parts["ablate"]
        lines += ["## Headline table", "", table_markdown(a), "", "## The paper's claims on this model", ""]
        lines += [f"One family of {len(a['claims'])} claims, Holm-adjusted one-sided p at alpha = "
                  f"{a['protocol']['alpha']}; CIs are 95% and unadjusted; the deciding read-outs, margins and states are "
                  "declared in docs/protocol.md.", ""]
        lines += [x.replace("- ", "- **", 1).replace(": ", "**: ", 1) for x in claim_lines(a["claims"])]
        pm = a.get("ppl_matched", {})
        lines += ["", f"Perplexity-matched control: m = {100 * pm.get('m', 0):.2f}% of each layer ({pm.get('n_neurons')} "
                  f"neurons), search matched on the calibration windows: {pm.get('matched')}."]
        lines += [x for x in table_lines(a) if x.startswith("ppl-matched control on the reported windows")] + [""]
        if a["dose"]["rows"]:
            dd = a["dose"]["ppl_doubles_at"]
            lines.append(f"Dose response: perplexity doubles at p = {100 * dd:.2f}% per layer." if dd else
                         "Dose response: perplexity does not double within the sweep.")
            lines.append("")
    for s in _steps():
        if s.section and s.name in parts:
            lines += [f"## {s.section}", "", *[f"    {x}" for x in parts[s.name].get("summary_lines", [])], ""]
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.relative_to(run)})" for p in _figures(run)] + [""]
    if "manifest" in parts:
        m = parts["manifest"]
        lines += ["## Run", "", f"command: `{m.get('command')}`", "", "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {k} | {v.get('status')} | {v.get('seconds', 0):.0f} |" for k, v in m.get("steps", {}).items()]
        lines += ["", "versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()), ""]
    return "\n".join(lines)


def write_report(run: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` into the run folder."""
    run = Path(run)
    md = markdown(run)
    atomic_write_bytes(run / "report.md", md.encode())
    atomic_write_bytes(run / "report.html", page(run, _load(run), list(_steps())).encode())
    return run / "report.md", run / "report.html"


def _cmd_report(args) -> int:
    from negdiff.errors import NegdiffError

    run = Path(args.run)
    if not run.is_dir():
        raise NegdiffError(f"{run} is not a folder; give a run folder written by `negdiff reproduce` or the step commands")
    if not any(s.finished(run) for s in _steps()):
        names = ", ".join(f"{s.name}/{s.record}" for s in _steps())
        raise NegdiffError(f"{run} holds no finished step (looked for {names}); nothing to report")
    md, page = write_report(run)
    print(f"wrote {md} and {page}")
    return 0


def register(sub) -> None:
    """Add ``negdiff report RUN_DIR``."""
    p = sub.add_parser("report", help="rebuild report.md and report.html from a run folder (no model, no recomputation)")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder: step sub-folders (scan/, ablate/, ...) as reproduce writes")
    p.set_defaults(func=_cmd_report)
