"""``negdiff eval MODEL --tasks ...``: score tasks on a model, optionally under an intervention on a neuron file.

The options are :class:`EvalOptions`, declared once (the flags are generated from it) and named as the
steps name theirs: ``--blimp-limit``, ``--tse-limit``, ``--nongram-limit`` (each task family its own
subsample, as in ``negdiff ablate``), ``--ppl-tokens``, ``--ppl-window``, ``--seed``, ``--n-boot``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from negdiff.bos import BOS_POLICIES
from negdiff.choices import SET_MODES
from negdiff.errors import NegdiffError
from negdiff.options import add_config_args, add_data_arg, add_model_args, config_from_args, opt


@dataclass
class EvalOptions:
    """What ``negdiff eval`` is asked (the evaluation itself is :class:`negdiff.tasks.EvalConfig`)."""

    neurons: str | None = opt(None, "neuron set JSON (a scan's wn.json, an ablation's sets/*.json) to intervene on",
                              shown="none: the unedited model")
    mode: str = opt("zero_negative", "the edit on --neurons", choices=SET_MODES)
    blimp_limit: int | None = opt(None, "pairs per BLiMP paradigm", zero_all=True, shown="all")
    blimp_sample: str = opt("first", "which BLiMP pairs a limit keeps: the first or a seeded subset",
                            choices=("first", "seeded"))
    tse_limit: int | None = opt(None, "pairs per TSE task (seeded)", zero_all=True, shown="all")
    nongram_limit: int | None = opt(None, "items per non-grammatical benchmark (the first)", zero_all=True,
                                    shown="all")
    ppl_tokens: int | None = opt(None, "perplexity: tokens in a seeded subset of windows", zero_all=True,
                                 shown="all")
    ppl_window: int = opt(2048, "tokens per perplexity window (capped at the model's length)")
    ppl_corpus: str = opt("wikitext2-valid", "perplexity corpus: a name or a local text file")
    batch_tokens: int | None = opt(None, "padded tokens per forward pass", shown="256 on CPU, 16384 on CUDA")
    bos: str = opt("prefix", "BOS policy: prefix (document-start token, detected), tokenizer_default (the "
                   "authors'), bos_token (literally tokenizer.bos_token)", choices=BOS_POLICIES)
    share_context: bool = opt(True, "multiple choice: score the shared context once for every answer (off: rerun "
                              "it per answer, a check)")
    tse_reduction: str = opt("mean", "TSE sentence score", choices=("mean", "sum"))
    seed: int = opt(0, "seed of the subsets and the bootstrap")
    n_boot: int = opt(1000, "bootstrap replicates for the CIs")

    def __post_init__(self) -> None:
        from negdiff.runs import check_counts

        check_counts(self, (("--blimp-limit", "blimp_limit"), ("--tse-limit", "tse_limit"),
                            ("--nongram-limit", "nongram_limit"), ("--ppl-tokens", "ppl_tokens"),
                            ("--ppl-window", "ppl_window"), ("--batch-tokens", "batch_tokens"), ("--n-boot", "n_boot")))
        if self.mode != "zero_negative" and self.neurons is None:
            raise NegdiffError("--mode needs --neurons (the neuron set to intervene on)")

    def limit(self, task: str) -> int | None:
        """The subsample of one task: its family's limit (perplexity: --ppl-tokens instead)."""
        from negdiff.tasks.base import family_limit

        return family_limit(task, self.blimp_limit, self.tse_limit, self.nongram_limit)


def register(sub: Any) -> None:
    """Add ``negdiff eval``."""
    p = sub.add_parser("eval", help="run BLiMP, TSE, perplexity and the non-grammatical suite",
                       description="Evaluate a model (optionally under an intervention) and write results.json plus "
                                   "per-item parquet tables to --out.")
    add_model_args(p)
    p.add_argument("--tasks", required=True, help="comma-separated task names or aliases (blimp, tse, perplexity, "
                   "nongrammatical, arc_easy, ...; an unknown name lists them all)")
    add_config_args(p, EvalOptions)
    p.add_argument("--out", required=True, help="output folder for results.json and items_<task>.parquet")
    add_data_arg(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Check everything, load the model, evaluate each task family at its own subsample, write the results."""
    from negdiff.evaluate import evaluate, summary_lines, write_results
    from negdiff.hooks import Intervention, intervene
    from negdiff.models import load_model
    from negdiff.neuronset import NeuronSet
    from negdiff.options import check_out, check_task_data
    from negdiff.progress import status
    from negdiff.tasks import expand_tasks

    opts = config_from_args(EvalOptions, args)
    names = expand_tasks(args.tasks)  # fail on a typo before loading the model
    config = eval_config(opts)
    neurons = NeuronSet.from_json(opts.neurons) if opts.neurons else None
    check_out(args.out)
    check_task_data(names, config)  # a missing dataset fails before the model loads
    loaded = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    condition: dict[str, Any] = {"intervention": None}
    ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    if neurons is not None:
        neurons.check_model(loaded.key(), f"--neurons {opts.neurons}")
        neurons.validate(loaded.sites)
        condition = {**Intervention(opts.mode, neurons).describe(), "neurons_file": str(opts.neurons)}
        ctx = intervene(loaded.model, neurons, opts.mode, sites=loaded.sites)
    status(f"evaluating {', '.join(names)} on {loaded.info.name} ({loaded.info.dtype}, {loaded.info.device})"
           + (f" with {opts.mode} on {neurons.size} neurons" if neurons is not None else ""))
    groups: dict[int | None, list[str]] = {}
    for name in names:  # one evaluate() per distinct limit: a family's aggregates come from one call
        groups.setdefault(opts.limit(name), []).append(name)
    with ctx:
        parts = [evaluate(loaded, group, config=dataclasses.replace(config, limit=limit), condition=condition)
                 for limit, group in groups.items()]
    results = _merge(parts, names, opts)
    path = write_results(args.out, results, {"command": sys.argv})
    for line in summary_lines(results):
        print(line)
    status(f"wrote {path}")
    return 0


def eval_config(opts: EvalOptions) -> Any:
    """The :class:`negdiff.tasks.EvalConfig` the options ask for.

    With no flags given it equals ``EvalConfig()``, the Python API's default (tests/test_api.py holds the
    two to it), so ``negdiff eval`` and ``evaluate()`` score under the same BOS policy and settings.
    """
    from negdiff.scoring import ScoringConfig
    from negdiff.tasks import EvalConfig

    scoring = ScoringConfig(bos=opts.bos, max_batch_tokens=opts.batch_tokens, share_context=opts.share_context)
    return EvalConfig(scoring=scoring, seed=opts.seed, max_tokens=opts.ppl_tokens, ppl_window=opts.ppl_window,
                      ppl_corpus=opts.ppl_corpus, blimp_sample=opts.blimp_sample, tse_reduction=opts.tse_reduction,
                      n_boot=opts.n_boot)


def _merge(parts: list[dict], names: list[str], opts: EvalOptions) -> dict:
    """One results dict from the per-limit calls, tasks in the order asked, the limits recorded per family."""
    out = dict(parts[0])
    tasks = {k: v for p in parts for k, v in p["tasks"].items()}
    out["tasks"] = {n: tasks[n] for n in names}
    out["items"] = {k: v for p in parts for k, v in p["items"].items()}
    out["aggregates"] = {k: v for p in parts for k, v in p["aggregates"].items()}
    out["seconds"] = round(sum(p["seconds"] for p in parts), 3)
    out["config"] = {**out["config"], "limit": None, "limits": {"blimp": opts.blimp_limit, "tse": opts.tse_limit,
                                                                "nongrammatical": opts.nongram_limit}}
    from negdiff.evaluate import harness_fields

    out.update(harness_fields(out["tasks"], out["aggregates"]))
    return out
