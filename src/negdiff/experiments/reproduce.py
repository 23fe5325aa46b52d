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

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from negdiff.data import data_dir
from negdiff.results import config_key, file_sha256, read_json, versions, write_json

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

#: step -> the steps whose outputs it reads (each step's record file, which says it finished, is report.STEPS's)
UPSTREAM: dict[str, tuple[str, ...]] = {
    "scan": (),
    "ablate": ("scan",),
    "pairs": ("scan",),
    "pos": ("scan", "ablate"),
    "layers": ("scan",),
}


def _data_hashes() -> dict[str, str]:
    """SHA-256 of every staged data file (the manifest's data identity)."""
    root = data_dir()
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.glob("*/*.gz"))}


def _runners(out: Path, seed: int, sizes: dict[str, dict[str, Any]]) -> dict[str, Callable[[Any], Any]]:
    """Each step as a function of the loaded model (imports deferred: a finished run loads nothing)."""

    def scan(loaded):
        from negdiff.experiments.scan import ScanConfig, run_scan

        return run_scan(loaded, ScanConfig(seed=seed, **sizes["scan"]), out / "scan")

    def ablate(loaded):
        from negdiff.experiments.ablate import AblateConfig, run_ablate

        return run_ablate(loaded, out / "scan", dataclasses.replace(AblateConfig(seed=seed), **sizes["ablate"]),
                          out / "ablate")

    def pairs(loaded):
        from negdiff.experiments.pairs import PairsConfig, run_pairs

        return run_pairs(loaded, out / "scan", PairsConfig(seed=seed, **sizes["pairs"]), out / "pairs")

    def pos(loaded):
        from negdiff.experiments.pos import PosConfig, run_pos

        return run_pos(loaded, out / "scan", PosConfig(seed=seed, sets=str(out / "ablate"), **sizes["pos"]),
                       out / "pos")

    def layers(loaded):
        from negdiff.experiments.layers import LayersConfig, run_layers

        return run_layers(loaded, out / "scan", LayersConfig(seed=seed, **sizes["layers"]), out / "layers")

    all_steps = {"scan": scan, "ablate": ablate, "pairs": pairs, "pos": pos, "layers": layers}
    return {name: fn for name, fn in all_steps.items() if name in sizes}


def step_keys(model_id: dict[str, Any], sizes: dict[str, dict[str, Any]], seed: int) -> dict[str, str]:
    """Content address of every step: model, sizes, seed, upstream keys and negdiff's version."""
    from negdiff import __version__

    keys: dict[str, str] = {}
    for name in UPSTREAM:
        if name in sizes:
            upstream = {u: keys.get(u) for u in UPSTREAM[name]}
            keys[name] = config_key({"step": name, "model": model_id, "sizes": sizes[name], "seed": seed,
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


def preset_sizes(preset: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The preset's sizes with per-step ``overrides`` applied (a step mapped to null is left out)."""
    from negdiff.errors import NegdiffError

    if preset not in PRESETS:
        raise NegdiffError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    sizes = {k: dict(v) for k, v in PRESETS[preset].items()}
    for step, values in (overrides or {}).items():
        if step not in UPSTREAM:
            raise NegdiffError(f"--sizes: unknown step '{step}'; steps are {', '.join(UPSTREAM)}")
        if values is None:
            sizes.pop(step, None)
        elif not isinstance(values, dict):
            raise NegdiffError(f"--sizes: step '{step}' needs an object of settings or null")
        else:
            sizes.setdefault(step, {}).update({k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    for step, upstream in UPSTREAM.items():
        missing = [u for u in upstream if u not in sizes]
        if step in sizes and missing:
            raise NegdiffError(f"--sizes: step '{step}' needs {', '.join(missing)}")
    return sizes


def run_reproduce(loaded_or_factory: Any, out: str | Path, preset: str = "quick", seed: int = 0,
                  command: str | None = None, model_id: dict[str, Any] | None = None,
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict:
    """Run (or resume) every step of ``preset`` into ``out``; returns the manifest.

    ``loaded_or_factory`` is a LoadedModel or a zero-argument function returning one (called only if a
    step has work to do). ``model_id`` identifies the model for the step keys without loading it (default:
    the loaded model's spec, revision and dtype).
    """
    from negdiff.report import STEPS, write_report

    out = Path(out)
    sizes = preset_sizes(preset, overrides)
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
    runners = _runners(out, seed, sizes)
    todo = [n for n in runners if not (steps.get(n, {}).get("status") == "done" and steps[n].get("key") == keys[n]
                                       and (out / n / STEPS[n]).is_file())]
    eta = _eta_bar(loaded, sizes, seed, todo, preset) if todo else None
    for name, fn in runners.items():
        if name not in todo:
            continue
        model = loaded()
        manifest.update(model=model.info.to_dict(), device=str(model.device))
        t0 = time.time()
        steps[name] = {"status": "running", "started": t0, "key": keys[name]}
        write_json(manifest_path, manifest)
        try:
            fn(model)
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
        manifest["estimate_seconds"] = eta[1]
        eta[0].close()
    manifest["finished"] = time.time()
    write_json(manifest_path, manifest)
    write_report(out)
    return manifest


def _eta_bar(loaded, sizes: dict[str, dict[str, Any]], seed: int, todo: list[str], preset: str):
    """Print the estimated time of the steps to run; a bar over estimated seconds gives the pipeline an ETA."""
    from negdiff.experiments.estimate import describe, estimate, forward_tokens_per_second
    from negdiff.progress import bar, status

    model = loaded()
    tok_s = forward_tokens_per_second(model.model)
    secs = estimate({k: v for k, v in sizes.items() if k in todo}, seed, len(model.sites), tok_s)
    status(f"{preset} preset, steps {', '.join(todo)}: {describe(secs, tok_s)}")
    progress = bar(total=round(secs["total"]), desc=f"reproduce ({preset})", unit="est-s",
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} estimated s [{elapsed}<{remaining}]")
    return progress, {k: round(v) for k, v in secs.items()}


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
    from negdiff.cli import add_model_args

    p = sub.add_parser("reproduce", help="scan -> ablate -> pairs -> pos -> layers on one model, with an HTML "
                       "report (resumable)")
    add_model_args(p, positional=False)
    p.add_argument("model", nargs="?", default="default", help="model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", required=True)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2-CPU-core sizes, ~25-30 min on the default (default)")
    size.add_argument("--standard", action="store_true", help="full BLiMP and TSE for the headline conditions "
                      "(hours on CPU; prints its estimate first)")
    size.add_argument("--full", action="store_true", help="paper sizes (GPU advised)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default=None, help="JSON file of per-step overrides of the preset, e.g. "
                   '{"scan": {"tokens": 65536}, "layers": null} (null leaves a step out)')
    p.set_defaults(func=_cmd_reproduce)
