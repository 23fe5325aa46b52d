"""The paper's headline experiment: sign-specific ablation of Wasserstein neurons against controls.

Conditions (each evaluated on the same items): ``baseline``; ``wn_neg`` (zero_negative on the WN);
``random_neg_s<k>`` (as many layer-matched random non-WN neurons, seeds 0..K-1); ``ppl_matched_neg`` (the
lowest-WD m% of every layer, m searched until the perplexity increase matches wn_neg's); ``wn_pos``,
``wn_zero`` and the sign-versus-magnitude controls ``wn_identity_pos`` and ``wn_abs_neg``. Each
condition's results are written atomically as it finishes, so a rerun resumes; a changed parameter
changes that condition's key and only it is redone. Statistics and verdicts live in ``ablate_stats``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from negdiff.bootstrap import MIN_UNITS, N_BOOT
from negdiff.bos import BOS_POLICIES
from negdiff.data import corpus_documents, token_windows
from negdiff.errors import NegdiffError
from negdiff.hooks import intervene
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.results import config_key, read_json, write_json
from negdiff.runs import Step, check_counts, check_fraction
from negdiff.scoring import ScoringConfig, window_nlls
from negdiff.select import CLI_CRITERIA, check_criterion, random_like, select_lowest, select_wasserstein
from negdiff.services import conditions
from negdiff.services.conditions import Condition
from negdiff.services.scan_outputs import load_scan
from negdiff.tasks import expand_tasks
from negdiff.tasks.base import EvalConfig

SYNTAX_TASKS = ("perplexity", "blimp", "tse")
#: The perplexity-matched search runs on at least this many calibration windows.
MIN_CALIB_WINDOWS = 8


@dataclass
class AblateConfig:
    """Sizes and rules of the ablation (defaults: the quick 2-core run; --full for the paper's sizes)."""

    tasks: tuple[str, ...] = ("perplexity", "blimp", "tse", "nongrammatical")
    criterion: str = "wd"
    scope: str = "per_layer"
    fraction: float = 0.01
    seeds: int = 5  # random layer-matched sets (paper.md: >= 5; their spread is inside every interval)
    blimp_limit: int | None = 40  # pairs per paradigm (67 paradigms)
    tse_limit: int | None = 100  # pairs per task (22 tasks)
    control_blimp_limit: int | None = None  # sign/magnitude controls: pairs per paradigm (None: as blimp_limit)
    control_tse_limit: int | None = None  # sign/magnitude controls: pairs per task (None: as tse_limit)
    nongram_limit: int | None = 50  # items per benchmark
    ppl_tokens: int | None = 20_480  # reported perplexity: a seeded subset of WikiText-2 valid windows (>= 10)
    ppl_window: int = 2048  # tokens per perplexity window (capped at the model's maximum); presets may shorten it
    calib_corpus: str = "wikitext2"  # perplexity matching runs here (test split), disjoint from the reported windows
    calib_tokens: int = 16_384  # >= 8 windows of ppl_window
    match_tol: float = 0.02
    controls_on_nongram: bool = False  # sign/magnitude controls on the 8 benchmarks too (slow)
    dose_fractions: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.05)
    dose_blimp_limit: int | None = 5
    dose_ppl_tokens: int | None = 8192
    seed: int = 0
    n_boot: int = N_BOOT
    batch_tokens: int | None = None  # None: the scorer's device default (256 tokens on CPU, 16384 on CUDA)
    bos: str = "prefix"

    def __post_init__(self) -> None:
        """Refuse sizes whose statistics would mean nothing, and removed criteria, before any model work."""
        check_criterion(self.criterion)
        check_counts(self, (("--seeds", "seeds"), ("--blimp-limit", "blimp_limit"), ("--tse-limit", "tse_limit"),
                            ("--control-blimp-limit", "control_blimp_limit"), ("--control-tse-limit", "control_tse_limit"),
                            ("--nongram-limit", "nongram_limit"), ("--ppl-tokens", "ppl_tokens"),
                            ("--ppl-window", "ppl_window"), ("calib_tokens", "calib_tokens"),
                            ("dose_blimp_limit", "dose_blimp_limit"), ("dose_ppl_tokens", "dose_ppl_tokens"),
                            ("--n-boot", "n_boot"), ("--batch-tokens", "batch_tokens")))
        check_fraction("--fraction", self.fraction)
        for p in self.dose_fractions:
            check_fraction("dose_fractions", p)
        if self.scope not in ("per_layer", "global"):
            raise NegdiffError(f"--scope must be per_layer or global, got '{self.scope}'")
        if not self.match_tol > 0:
            raise NegdiffError(f"match_tol must be > 0, got {self.match_tol}")
        if self.ppl_window < 16:
            raise NegdiffError(f"--ppl-window must be >= 16 tokens, got {self.ppl_window}")
        if self.ppl_tokens is not None and self.ppl_tokens // self.ppl_window < MIN_UNITS:
            raise NegdiffError(f"--ppl-tokens {self.ppl_tokens} gives {self.ppl_tokens // self.ppl_window} windows of "
                               f"{self.ppl_window}; perplexity intervals need >= {MIN_UNITS}: raise --ppl-tokens to "
                               f"{MIN_UNITS * self.ppl_window} or shorten --ppl-window")
        if self.calib_tokens // self.ppl_window < MIN_CALIB_WINDOWS:
            raise NegdiffError(f"calib_tokens {self.calib_tokens} gives {self.calib_tokens // self.ppl_window} windows of "
                               f"{self.ppl_window}; the perplexity-matched search needs >= {MIN_CALIB_WINDOWS}")
        if self.n_boot < 1000:
            raise NegdiffError(f"--n-boot must be >= 1000 (decisions use >= {N_BOOT}), got {self.n_boot}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The sign/magnitude controls (they may run on fewer BLiMP/TSE items than the headline conditions).
CONTROLS = ("wn_pos", "wn_zero", "wn_identity_pos", "wn_abs_neg")


def eval_config(cfg: AblateConfig, task: str, dose: bool = False, control: bool = False) -> EvalConfig:
    """The EvalConfig of one task: each task family gets its own subsample size."""
    blimp = cfg.dose_blimp_limit if dose else cfg.blimp_limit
    tse = cfg.tse_limit
    if control:
        blimp = blimp if cfg.control_blimp_limit is None else cfg.control_blimp_limit
        tse = tse if cfg.control_tse_limit is None else cfg.control_tse_limit
    limit = {"blimp": blimp, "tse": tse, "perplexity": None}.get(task, cfg.nongram_limit)
    return EvalConfig(scoring=ScoringConfig(bos=cfg.bos, max_batch_tokens=cfg.batch_tokens), limit=limit,
                      seed=cfg.seed, n_boot=min(cfg.n_boot, 1000), ppl_window=cfg.ppl_window,
                      max_tokens=(cfg.dose_ppl_tokens if dose else cfg.ppl_tokens) if task == "perplexity" else None)


def calibration_windows(loaded: LoadedModel, cfg: AblateConfig) -> torch.Tensor:
    window = min(cfg.ppl_window, loaded.info.max_length or cfg.ppl_window)
    windows = token_windows(loaded.tokenizer, corpus_documents(cfg.calib_corpus)[0], window, cfg.calib_tokens)
    if len(windows) < MIN_CALIB_WINDOWS:
        raise NegdiffError(f"the calibration corpus {cfg.calib_corpus} gives {len(windows)} windows of {window} tokens; "
                           f"the perplexity-matched search needs >= {MIN_CALIB_WINDOWS}")
    return windows


def calib_ppl(loaded: LoadedModel, windows: torch.Tensor, neurons: NeuronSet, cfg: AblateConfig) -> float:
    """Perplexity of the calibration windows with ``neurons`` negative-zeroed."""
    with intervene(loaded.model, neurons, "zero_negative", sites=loaded.sites):
        nll = window_nlls(loaded.model, windows, ScoringConfig(bos=cfg.bos, max_batch_tokens=cfg.batch_tokens))
    return float(np.exp(nll.mean()))


def match_perplexity(loaded, table: pd.DataFrame, target_increase: float, base_ppl: float, windows, cfg: AblateConfig,
                     max_steps: int = 14) -> dict[str, Any]:
    """Search m (bottom-m% WD per layer, negative-zeroed) until ppl increase matches ``target_increase``.

    Bracketing (doubling m from 1%) then bisection, to a relative tolerance ``cfg.match_tol`` on the
    increase (ppl - base). Returns m, the set and the whole trace; a search that cannot reach the target
    (even at 95%) or runs out of steps reports ``matched: False`` and the closest point.
    """
    trace: list[dict[str, float]] = []
    if target_increase <= 0:  # nothing to match: report it and fall back to a WN-sized bottom set
        neurons = select_lowest(table, cfg.fraction, cfg.criterion)
        neurons.rule.update(matched_to="wn_neg", target_increase=target_increase, fallback="wn_neg did not raise perplexity")
        status(f"ppl-matched search skipped: wn_neg changed calibration perplexity by {target_increase:+.3f}, not an increase")
        return {"m": cfg.fraction, "n_neurons": neurons.size, "increase": None, "target": target_increase,
                "matched": False, "reason": "wn_neg did not raise calibration perplexity; bottom set of the WN's size used",
                "trace": trace, "neurons": neurons, "base_ppl": base_ppl}

    def at(m: float) -> float:
        neurons = select_lowest(table, m, cfg.criterion)
        inc = calib_ppl(loaded, windows, neurons, cfg) - base_ppl
        trace.append({"m": m, "n_neurons": neurons.size, "increase": inc, "target": target_increase})
        status(f"ppl-matched search: m={100 * m:.2f}% ({neurons.size} neurons) -> increase {inc:.3f} (target {target_increase:.3f})")
        return inc

    def close(inc: float) -> bool:
        return abs(inc - target_increase) <= cfg.match_tol * abs(target_increase)

    lo, hi, m = 0.0, None, 0.01
    while hi is None and len(trace) < max_steps:
        inc = at(m)
        if close(inc):
            hi = lo = m
        elif inc < target_increase:
            lo, m = m, min(0.95, 2 * m)
            if lo == 0.95:
                break
        else:
            hi = m
    while hi is not None and lo != hi and len(trace) < max_steps:
        m = (lo + hi) / 2
        inc = at(m)
        if close(inc):
            lo = hi = m
        elif inc < target_increase:
            lo = m
        else:
            hi = m
    best = min(trace, key=lambda t: abs(t["increase"] - target_increase))
    neurons = select_lowest(table, best["m"], cfg.criterion)
    neurons.rule.update(matched_to="wn_neg", target_increase=target_increase)
    return {"m": best["m"], "n_neurons": neurons.size, "increase": best["increase"], "target": target_increase,
            "matched": close(best["increase"]), "trace": trace, "neurons": neurons, "base_ppl": base_ppl}


def build_conditions(table: pd.DataFrame, loaded: LoadedModel, cfg: AblateConfig, tasks: list[str]) -> list[Condition]:
    """Every condition but the perplexity-matched one (which needs a search first)."""
    wn = select_wasserstein(table, cfg.fraction, cfg.scope, cfg.criterion)
    widths = {s.layer: s.width for s in loaded.sites}
    syntax = [t for t in tasks if t in SYNTAX_TASKS]
    ctrl = tasks if cfg.controls_on_nongram else syntax
    out = [Condition("baseline", NeuronSet.empty(), tasks=tasks), Condition("wn_neg", wn, tasks=tasks)]
    out += [Condition(f"random_neg_s{k}", random_like(wn, widths, seed=k), tasks=tasks) for k in range(cfg.seeds)]
    modes = ("zero_positive", "zero", "identity_positive", "abs_negative_output")
    out += [Condition(name, wn, mode, ctrl) for name, mode in zip(CONTROLS, modes, strict=True)]
    return out


def run_condition(loaded: LoadedModel, cond: Condition, cfg: AblateConfig, out: Path, key: str,
                  force: bool, dose: bool = False) -> dict[str, Any]:
    """Evaluate one condition (or reuse its finished results) with this run's per-task EvalConfigs."""
    folder = out / ("dose" if dose else "conditions") / cond.name
    configs = {t: eval_config(cfg, t, dose, control=cond.name in CONTROLS) for t in cond.tasks}
    return conditions.run_condition(loaded, cond, configs, folder, out / "sets", key, force)


def dose_response(loaded, table, cfg: AblateConfig, out: Path, key: str, force: bool) -> list[dict[str, Any]]:
    """Perplexity and subsampled BLiMP as the per-layer fraction p of top-WD neurons grows, with random beside."""
    widths = {s.layer: s.width for s in loaded.sites}
    base = run_condition(loaded, Condition("baseline", NeuronSet.empty(), tasks=["perplexity", "blimp"]), cfg, out, key,
                         force, dose=True)
    rows = [{"p": 0.0, "set": "baseline", "n_neurons": 0, "ppl": base["tasks"]["perplexity"]["metrics"]["ppl"]["value"],
             "blimp": base["tasks"]["blimp"]["metrics"]["acc"]["value"]}]
    for p in cfg.dose_fractions:
        top = select_wasserstein(table, p, cfg.scope, cfg.criterion)
        for name, neurons in ((f"top_{p:g}", top), (f"random_{p:g}", random_like(top, widths, seed=cfg.seed))):
            res = run_condition(loaded, Condition(name, neurons, tasks=["perplexity", "blimp"]), cfg, out, key, force, dose=True)
            rows.append({"p": p, "set": name.split("_")[0], "n_neurons": neurons.size,
                         "ppl": res["tasks"]["perplexity"]["metrics"]["ppl"]["value"],
                         "blimp": res["tasks"]["blimp"]["metrics"]["acc"]["value"]})
    return rows


def check_sign_meaningful(loaded: LoadedModel) -> None:
    """Refuse a model whose activation already outputs 0 for every h < 0 (ReLU): zero_negative is then a no-op,
    so every wn_neg-versus-control verdict would be 'no effect' by construction, not by measurement."""
    kinds = sorted({s.kind for s in loaded.sites})
    if "relu" in kinds:
        raise NegdiffError(f"'{loaded.info.spec}' uses a ReLU activation, where zero_negative changes nothing (ReLU "
                           "already outputs 0 for h < 0), so the ablation's verdicts would be empty; run ablate on a "
                           "gelu/silu model (scan and eval --mode zero/zero_positive still work on ReLU)")


def run_ablate(loaded: LoadedModel, scan_dir: str | Path, cfg: AblateConfig, out: str | Path,
               force: bool = False) -> dict[str, Any]:
    """Run every condition, the perplexity-matched search and the dose response; write ablation.json."""
    from negdiff.experiments.ablate.stats import analyze, write_outputs

    out = Path(out)
    check_sign_meaningful(loaded)
    table, scan = load_scan(scan_dir, loaded)
    tasks = expand_tasks(list(cfg.tasks))
    if "perplexity" not in tasks:
        tasks.insert(0, "perplexity")  # the matching criterion of the control; always reported
    key = config_key({"model": {k: loaded.info.to_dict()[k] for k in ("spec", "revision", "weights_hash", "dtype")},
                      "scan": scan.get("key"), "criterion": cfg.criterion, "scope": cfg.scope, "fraction": cfg.fraction})
    t0 = time.time()
    if not (out / "ablation.json").is_file() or force:
        from negdiff.estimate import describe, estimate_step, forward_tokens_per_second

        tok_s = forward_tokens_per_second(loaded.model)
        status(f"ablate: {describe({'ablate': estimate_step('ablate', cfg, len(loaded.sites), tok_s)}, tok_s)}")
    conditions = build_conditions(table, loaded, cfg, tasks)
    results = {}
    for cond in conditions[:2]:  # baseline and wn_neg first: the search needs wn_neg's perplexity increase
        results[cond.name] = run_condition(loaded, cond, cfg, out, key, force)
    calib = calibration_windows(loaded, cfg)
    search_key = config_key({"base": key, "calib": [cfg.calib_corpus, cfg.calib_tokens, cfg.match_tol, cfg.bos]})
    search_file = out / "ppl_matched_search.json"
    if not force and search_file.is_file() and read_json(search_file).get("key") == search_key:
        search = read_json(search_file)
        search["neurons"] = NeuronSet.from_json(out / "sets" / "ppl_matched_neg.json")
    else:
        base_ppl = calib_ppl(loaded, calib, NeuronSet.empty(), cfg)
        target = calib_ppl(loaded, calib, conditions[1].neurons, cfg) - base_ppl
        search = match_perplexity(loaded, table, target, base_ppl, calib, cfg)
        search["neurons"].to_json(out / "sets" / "ppl_matched_neg.json")
        write_json(search_file, {**{k: v for k, v in search.items() if k != "neurons"}, "key": search_key,
                                 "calib": {"corpus": cfg.calib_corpus, "tokens": int(calib.numel())}})
    conditions.insert(2 + cfg.seeds, Condition("ppl_matched_neg", search["neurons"], tasks=tasks))
    for cond in conditions[2:]:
        results[cond.name] = run_condition(loaded, cond, cfg, out, key, force)
    dose = dose_response(loaded, table, cfg, out, key, force) if cfg.dose_fractions else []
    record = analyze(results, conditions, search, dose, cfg)
    record.update(model=loaded.info.to_dict(), scan={"dir": str(scan_dir), "key": scan.get("key")},
                  config=cfg.to_dict(), seconds_total=time.time() - t0,
                  seconds_per_condition={c.name: results[c.name].get("seconds") for c in conditions})
    write_outputs(record, results, out)
    return record


# ------------------------------------------------------------------------------------------------ CLI
def _cmd_ablate(args) -> int:
    from negdiff.experiments.ablate.stats import table_lines
    from negdiff.options import run_on_model

    cfg = AblateConfig(tasks=tuple(args.tasks.split(",")), criterion=args.criterion, scope=args.scope,
                       fraction=args.fraction, seeds=args.seeds, seed=args.seed, bos=args.bos, n_boot=args.n_boot,
                       ppl_window=args.ppl_window,
                       batch_tokens=args.batch_tokens, controls_on_nongram=args.controls_on_nongram)
    if args.full:
        cfg = dataclasses.replace(cfg, blimp_limit=None, tse_limit=None, nongram_limit=None, ppl_tokens=None,
                                  calib_tokens=16_384, dose_blimp_limit=50, dose_ppl_tokens=None, controls_on_nongram=True)
    for name in ("blimp_limit", "tse_limit", "nongram_limit", "ppl_tokens", "control_blimp_limit", "control_tse_limit"):
        value = getattr(args, name)
        if value is not None:
            cfg = dataclasses.replace(cfg, **{name: None if value == 0 else value})
    if args.no_dose:
        cfg = dataclasses.replace(cfg, dose_fractions=())
    def preflight() -> None:
        from negdiff.data import check_corpus
        from negdiff.options import check_task_data
        from negdiff.services.scan_outputs import check_scan_dir

        check_scan_dir(args.scan)
        tasks = expand_tasks(list(cfg.tasks))
        check_task_data(tasks if "perplexity" in tasks else ["perplexity", *tasks])
        check_corpus(cfg.calib_corpus)

    return run_on_model(args, lambda loaded: run_ablate(loaded, args.scan, cfg, args.out, force=args.force),
                        "ablation.json table.md items/ figures/", lines=table_lines, preflight=preflight)


def register(sub) -> None:
    """Add ``negdiff ablate``."""
    from negdiff.options import add_model_args

    p = sub.add_parser("ablate", help="sign-specific ablation of Wasserstein neurons vs controls, with statistics")
    add_model_args(p)
    d = AblateConfig()
    p.add_argument("--scan", required=True, help="folder of a finished `negdiff scan`")
    p.add_argument("--tasks", default=",".join(d.tasks), help="tasks or aliases (default %(default)s)")
    p.add_argument("--criterion", choices=CLI_CRITERIA, default=d.criterion)
    p.add_argument("--scope", choices=("per_layer", "global"), default=d.scope)
    p.add_argument("--fraction", type=float, default=d.fraction)
    p.add_argument("--seeds", type=int, default=d.seeds, help="random layer-matched control sets (default %(default)s)")
    p.add_argument("--n-boot", dest="n_boot", type=int, default=d.n_boot, help="bootstrap replicates (default %(default)s)")
    p.add_argument("--ppl-window", dest="ppl_window", type=int, default=d.ppl_window,
                   help="tokens per perplexity window, reported and calibration (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="subsampling and bootstrap seed")
    p.add_argument("--blimp-limit", dest="blimp_limit", type=int, help=f"pairs per paradigm (default {d.blimp_limit}; 0 = all)")
    p.add_argument("--tse-limit", dest="tse_limit", type=int, help=f"pairs per TSE task (default {d.tse_limit}; 0 = all)")
    p.add_argument("--control-blimp-limit", dest="control_blimp_limit", type=int,
                   help="pairs per paradigm for the sign/magnitude controls (unset or 0: as --blimp-limit)")
    p.add_argument("--control-tse-limit", dest="control_tse_limit", type=int,
                   help="pairs per TSE task for the sign/magnitude controls (unset or 0: as --tse-limit)")
    p.add_argument("--nongram-limit", dest="nongram_limit", type=int, help=f"items per benchmark (default {d.nongram_limit}; 0 = all)")
    p.add_argument("--ppl-tokens", dest="ppl_tokens", type=int, help=f"reported perplexity tokens (default {d.ppl_tokens}; 0 = all)")
    p.add_argument("--controls-on-nongram", action="store_true", help="score the sign/magnitude controls on the 8 benchmarks too")
    p.add_argument("--no-dose", action="store_true", help="skip the dose-response sweep")
    p.add_argument("--full", action="store_true", help="paper-size run: every item of every task (GPU advised)")
    p.add_argument("--bos", choices=BOS_POLICIES, default=d.bos)
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens,
                   help="padded tokens per forward (default: 256 on CPU, 16384 on CUDA)")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="redo finished conditions")
    p.set_defaults(func=_cmd_ablate)


# ------------------------------------------------------------------------------------------------ step
def _run_step(loaded: LoadedModel, run_dir: Path, cfg: AblateConfig, force: bool = False) -> dict[str, Any]:
    return run_ablate(loaded, Path(run_dir) / "scan", cfg, Path(run_dir) / "ablate", force=force)


STEP = Step('ablate', AblateConfig, 'ablation.json', upstream=("scan",), section=None, run=_run_step, register=register)
