"""``negdiff reproduce``: the whole paper on one model, in one command, resumable, with a report.

Steps run in order (scan -> ablate -> pos), each in its own sub-folder and each reusing its finished
results (keyed by model, data and settings), so an interrupted run picks up where it stopped. A
``manifest.json`` records the command, presets, model, data hashes, versions, device and each step's
status and timing; ``report.md`` and a self-contained ``report.html`` are rebuilt at the end.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from negdiff.data import data_dir
from negdiff.results import file_sha256, read_json, versions, write_json

#: Presets are data: the quick one finishes on 2 CPU cores; the full one is the paper-size run for a GPU.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {"scan": {"tokens": 65_536}, "ablate": {}, "pos": {"max_words": 12_000}},
    "full": {"scan": {"tokens": 262_144}, "ablate": {"blimp_limit": None, "tse_limit": None, "nongram_limit": None,
                                                      "ppl_tokens": None, "calib_tokens": 16_384, "dose_blimp_limit": 50,
                                                      "dose_ppl_tokens": None, "controls_on_nongram": True},
             "pos": {"max_words": None}},
}


def _data_hashes() -> dict[str, str]:
    """SHA-256 of every staged data file (the manifest's data identity)."""
    root = data_dir()
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.glob("*/*.gz"))}


def run_reproduce(loaded, out: str | Path, preset: str = "quick", seed: int = 0, command: str | None = None) -> dict:
    from negdiff.experiments.ablate import AblateConfig, run_ablate
    from negdiff.experiments.scan import ScanConfig, run_scan
    from negdiff.report import write_report

    out = Path(out)
    sizes = PRESETS[preset]
    manifest_path = out / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    manifest.update({
        "command": command or " ".join(sys.argv), "preset": preset, "sizes": sizes, "seed": seed,
        "model": loaded.info.to_dict(), "versions": versions(), "device": str(loaded.device),
        "data": manifest.get("data") or _data_hashes(), "started": manifest.get("started") or time.time(),
    })
    steps = manifest.setdefault("steps", {})

    def step(name: str, fn) -> None:
        t0 = time.time()
        steps[name] = {"status": "running", "started": t0}
        write_json(manifest_path, manifest)
        try:
            fn()
        except BaseException as exc:
            steps[name].update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                               error=f"{type(exc).__name__}: {exc}", seconds=time.time() - t0)
            write_json(manifest_path, manifest)
            raise
        steps[name].update(status="done", seconds=time.time() - t0)
        write_json(manifest_path, manifest)

    step("scan", lambda: run_scan(loaded, ScanConfig(seed=seed, **sizes["scan"]), out / "scan"))
    step("ablate", lambda: run_ablate(loaded, out / "scan",
                                      dataclasses.replace(AblateConfig(seed=seed), **sizes["ablate"]), out / "ablate"))
    if "pos" in sizes:
        from negdiff.experiments.pos import PosConfig, run_pos

        step("pos", lambda: run_pos(loaded, out / "scan", PosConfig(seed=seed, sets=str(out / "ablate"), **sizes["pos"]),
                                    out / "pos"))
    manifest["finished"] = time.time()
    write_json(manifest_path, manifest)
    write_report(out)
    return manifest


def _cmd_reproduce(args) -> int:
    from negdiff.models import load_model

    loaded = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    run_reproduce(loaded, args.out, "full" if args.full else "quick", args.seed, " ".join(["negdiff", *sys.argv[1:]]))
    print(f"wrote {args.out}/report.html and report.md (manifest.json lists every step)")
    return 0


def register(sub) -> None:
    """Add ``negdiff reproduce``."""
    from negdiff.cli import add_model_args

    p = sub.add_parser("reproduce", help="scan -> ablate -> pos on one model, with an HTML report (resumable)")
    add_model_args(p, positional=False)
    p.add_argument("model", nargs="?", default="default", help="model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", required=True)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2-CPU-core sizes (default)")
    size.add_argument("--full", action="store_true", help="paper sizes (GPU advised)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_reproduce)
