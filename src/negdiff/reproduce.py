"""``negdiff reproduce``: the whole paper on one model, in one command, resumable, with a report.

Steps run in order (scan -> ablate -> pairs -> pos -> layers), each in its own sub-folder. A step is
content-addressed: its key hashes the model identity (spec, revision, weights hash, dtype), the step's
sizes, the seed, the keys of the steps it reads and negdiff's version; a step whose key and output match
the manifest is skipped without touching the model, and each step also reuses its own finished pieces
(scan checkpoints, per-condition results), so an interrupted run picks up where it stopped. No result
file is ever written in place: every writer is atomic. ``manifest.json`` records the command, presets,
model, data hashes, versions, device and each step's status, key and timing; ``report.md`` and a
self-contained ``report.html`` are rebuilt at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from negdiff.data import data_dir
from negdiff.results import config_key, file_sha256, read_json, versions, write_json
from negdiff.steps import pipeline, step

#: Presets are data. ``quick`` is sized to finish on 2 CPU cores in about 25-30 minutes on the embedded
#: 135M model (item subsets: the report says n in every cell; >= 5 random sets and >= 10 perplexity
#: windows come first, then BLiMP/TSE items as the prefix-tree engine allows); ``standard`` runs full
#: BLiMP (67,000 pairs) and full TSE (158,084 pairs) for the headline conditions (baseline, wn_neg, the
#: random sets, the perplexity-matched set) with the controls on subsets (hours on CPU, minutes on a
#: GPU); ``full`` is the paper-size run for a GPU. Each prints its estimated time before it starts.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "scan": {"tokens": 32_768, "md_pairs": 12_288},
        "ablate": {"seeds": 5, "blimp_limit": 20, "tse_limit": 30, "nongram_limit": 20, "ppl_tokens": 5120,
                   "ppl_window": 512, "calib_tokens": 4096, "dose_fractions": (0.01, 0.05), "dose_blimp_limit": 2,
                   "dose_ppl_tokens": 2048},
        "pairs": {"tokens": 8192, "md_pairs": 4096},
        "pos": {"max_words": 2000, "seeds": 5},
        "layers": {"group_size": 10, "blimp_limit": 10, "tse_limit": 10, "ppl_tokens": 5120, "ppl_window": 512},
    },
    "standard": {
        "scan": {"tokens": 65_536},
        "ablate": {"blimp_limit": None, "tse_limit": None, "control_blimp_limit": 40, "control_tse_limit": 100},
        "pairs": {},
        "pos": {},
        "layers": {"blimp_limit": 20, "tse_limit": 30},
    },
    "full": {
        "scan": {"tokens": 262_144},
        "ablate": {"blimp_limit": None, "tse_limit": None, "nongram_limit": None, "ppl_tokens": None,
                   "calib_tokens": 16_384, "dose_blimp_limit": 50, "dose_ppl_tokens": None,
                   "controls_on_nongram": True},
        "pairs": {},
        "pos": {"max_words": None},
        "layers": {"blimp_limit": 100, "tse_limit": 100, "ppl_tokens": None, "ppl_window": 2048},
    },
}

def _data_hashes() -> dict[str, str]:
    """SHA-256 of every staged data file (the manifest's data identity)."""
    root = data_dir()
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.glob("*/*.gz"))}


def check_data(sizes: dict[str, dict[str, Any]], seed: int) -> Path:
    """Every step's datasets, fetched into the cache or refused in one line naming all that are missing, before
    the first step (and any model) runs: a run must not fail at its third step for want of a file."""
    from negdiff.datastore import ensure

    needs = [f for name, cfg in step_configs(sizes, seed).items() for f in step(name).data_needs(cfg)]
    return ensure(needs)


def step_keys(model_id: dict[str, Any], sizes: dict[str, dict[str, Any]], seed: int) -> dict[str, str]:
    """Content address of every step: model, sizes, seed, upstream keys and negdiff's version."""
    from negdiff import __version__

    keys: dict[str, str] = {}
    for s in pipeline():
        if s.name in sizes:
            upstream = {u: keys.get(u) for u in s.upstream}
            keys[s.name] = config_key({"step": s.name, "model": model_id, "sizes": sizes[s.name], "seed": seed,
                                       "upstream": upstream, "negdiff": __version__})
    return keys


def _model_id(spec: str, revision: str | None, dtype: str) -> dict[str, Any]:
    """Identity of a model before loading it; a local folder or file adds its files' sizes and mtimes."""
    ident: dict[str, Any] = {"spec": spec, "revision": revision, "dtype": dtype}
    path = Path(spec)
    if spec != "default" and path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        ident["files"] = {str(p): [p.stat().st_size, int(p.stat().st_mtime)] for p in files}
    return ident


def preset_sizes(preset: str, overrides: dict[str, dict[str, Any]] | None = None,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """The preset's sizes with per-step ``overrides`` applied (a step mapped to null is left out), each
    step's values checked against its config (unknown keys, the config's own range checks) before any
    model loads."""
    from negdiff.errors import NegdiffError

    if preset not in PRESETS:
        raise NegdiffError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    steps = {s.name: s for s in pipeline()}
    sizes = {k: dict(v) for k, v in PRESETS[preset].items()}
    for name, values in (overrides or {}).items():
        if name not in steps:
            raise NegdiffError(f"--sizes: unknown step '{name}'; steps are {', '.join(steps)}")
        if values is None:
            sizes.pop(name, None)
        elif not isinstance(values, dict):
            raise NegdiffError(f"--sizes: step '{name}' needs an object of settings or null")
        else:
            sizes.setdefault(name, {}).update({k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    for name, s in steps.items():
        missing = [u for u in s.upstream if u not in sizes]
        if name in sizes and missing:
            raise NegdiffError(f"--sizes: step '{name}' needs {', '.join(missing)}")
        if name in sizes:
            s.make_config(sizes[name], seed, where="--sizes" if overrides else f"preset {preset}")
    return sizes


def run_reproduce(loaded_or_factory: Any, out: str | Path, preset: str = "quick", seed: int = 0,
                  command: str | None = None, model_id: dict[str, Any] | None = None,
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict:
    """Run (or resume) every step of ``preset`` into ``out``; returns the manifest.

    ``loaded_or_factory`` is a LoadedModel or a zero-argument function returning one (called only if a
    step has work to do). ``model_id`` identifies the model for the step keys without loading it (default:
    the loaded model's spec, revision and dtype).
    """
    from negdiff.report import write_report

    out = Path(out)
    sizes = preset_sizes(preset, overrides, seed)
    check_data(sizes, seed)
    cache: dict[str, Any] = {}

    def loaded():
        if "m" not in cache:
            cache["m"] = loaded_or_factory() if callable(loaded_or_factory) else loaded_or_factory
        return cache["m"]

    if model_id is None:
        info = loaded().info
        model_id = _model_id(info.spec, info.revision, info.dtype)
    keys = step_keys(model_id, sizes, seed)
    manifest_path = out / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    manifest.update({
        "command": command or " ".join(sys.argv), "preset": preset, "sizes": sizes, "seed": seed,
        "model_id": model_id, "versions": versions(), "data": manifest.get("data") or _data_hashes(),
        "started": manifest.get("started") or time.time(),
    })
    steps = manifest.setdefault("steps", {})
    runners = {s.name: s for s in pipeline() if s.name in sizes}
    todo = [n for n, s in runners.items() if not (steps.get(n, {}).get("status") == "done"
                                                  and steps[n].get("key") == keys[n] and s.finished(out))]
    eta = _eta_bar(loaded, sizes, seed, todo, preset) if todo else None
    for name, s in runners.items():
        if name not in todo:
            continue
        model = loaded()
        manifest.update(model=model.info.to_dict(), device=str(model.device))
        t0 = time.time()
        changed = steps.get(name, {}).get("key") not in (None, keys[name])  # other settings: redo, do not resume
        steps[name] = {"status": "running", "started": t0, "key": keys[name]}
        write_json(manifest_path, manifest)
        try:
            s.run(model, out, s.make_config(sizes[name], seed), force=changed)
        except BaseException as exc:
            steps[name].update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                               error=f"{type(exc).__name__}: {exc}", seconds=time.time() - t0)
            write_json(manifest_path, manifest)
            raise
        steps[name].update(status="done", seconds=time.time() - t0, finished=time.time())
        write_json(manifest_path, manifest)
        if eta is not None:
            eta[0].update(eta[1][name])
    if eta is not None:
        manifest["estimate_seconds"] = {**eta[1], "total": sum(eta[1].values())}
        eta[0].close()
    manifest["finished"] = time.time()
    write_json(manifest_path, manifest)
    write_report(out)
    return manifest


def step_configs(sizes: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    """Each step's config as the run builds it (its defaults, the preset's sizes, the run's seed)."""
    return {name: step(name).make_config(values, seed) for name, values in sizes.items()}


def _eta_bar(loaded, sizes: dict[str, dict[str, Any]], seed: int, todo: list[str], preset: str):
    """Print the estimated time of the steps to run; a bar over estimated seconds gives the pipeline an ETA."""
    from negdiff.estimate import describe, estimate, forward_tokens_per_second
    from negdiff.progress import status

    model = loaded()
    tok_s = forward_tokens_per_second(model.model)
    secs = estimate(step_configs({k: v for k, v in sizes.items() if k in todo}, seed), len(model.sites), tok_s)
    status(f"{preset} preset, steps {', '.join(todo)}: {describe(secs, tok_s)}")
    return eta_progress({k: v for k, v in secs.items() if k != "total"}, preset)


def eta_progress(step_seconds: dict[str, float], preset: str):
    """A bar over the steps' estimated seconds (advanced by a step's estimate when it finishes) and the
    rounded estimates. The total is the sum of the rounded steps, so the last update lands on it exactly;
    the format uses tqdm's string fields, which stay valid if a total is ever exceeded (tqdm then drops it)."""
    from negdiff.progress import bar

    rounded = {k: round(v) for k, v in step_seconds.items()}
    progress = bar(total=sum(rounded.values()), desc=f"reproduce ({preset})", unit="est-s",
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} estimated s [{elapsed}<{remaining}]")
    return progress, rounded


def _read_sizes(path: str) -> dict:
    import json

    from negdiff.errors import NegdiffError

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NegdiffError(f"--sizes: no such file {path}") from None
    except json.JSONDecodeError as exc:
        raise NegdiffError(f"--sizes: {path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise NegdiffError(f"--sizes: {path} must hold an object mapping steps to settings")
    return data


def _cmd_reproduce(args) -> int:
    from negdiff.models import load_model
    from negdiff.options import check_out

    check_out(args.out)  # an unwritable or wrong --out fails before the presets are read or the model loads

    def factory():
        return load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)

    overrides = _read_sizes(args.sizes) if args.sizes else None
    preset = "full" if args.full else "standard" if args.standard else "quick"
    run_reproduce(factory, args.out, preset, args.seed,
                  " ".join(["negdiff", *sys.argv[1:]]), model_id=_model_id(args.model, args.revision, args.dtype),
                  overrides=overrides)
    print(f"wrote {args.out}/report.html and report.md (manifest.json lists every step)")
    return 0


def register(sub) -> None:
    """Add ``negdiff reproduce``."""
    from negdiff.options import add_data_arg, add_model_args

    p = sub.add_parser("reproduce", help="scan -> ablate -> pairs -> pos -> layers on one model, with an HTML "
                       "report (resumable)")
    add_model_args(p, positional=False)
    p.add_argument("model", nargs="?", default="default", help="model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", required=True, help="the run folder (one sub-folder per step, manifest.json, report.html)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2-CPU-core sizes, ~25-30 min on the default (default)")
    size.add_argument("--standard", action="store_true", help="full BLiMP and TSE for the headline conditions "
                      "(hours on CPU; prints its estimate first)")
    size.add_argument("--full", action="store_true", help="paper sizes (GPU advised)")
    p.add_argument("--seed", type=int, default=0, help="every step's seed (default: 0)")
    add_data_arg(p)
    p.add_argument("--sizes", default=None, help="JSON file of per-step overrides of the preset, e.g. "
                   '{"scan": {"tokens": 65536}, "layers": null} (null leaves a step out)')
    p.set_defaults(func=_cmd_reproduce)
