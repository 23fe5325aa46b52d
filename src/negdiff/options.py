"""Command-line options every step shares (the model, its revision, dtype, device, threads) and the body
of a step command.

Why a module below the experiments: each step registers its own subcommand; taking these from the CLI
module would make every experiment import the module that imports every experiment (a cycle).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from negdiff import distributed
from negdiff.errors import NegdiffError


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """The model options every subcommand shares."""
    if positional:
        p.add_argument("model", help="hub id (gpt2, EleutherAI/pythia-160m, ...), local folder, .gguf file, or 'default'")
    p.add_argument("--revision", default=None, help="hub revision, e.g. step1000 for Pythia checkpoints")
    p.add_argument("--dtype", default="float32", help="float32 (default, honest on CPU), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (shard over GPUs with accelerate)")
    add_threads_arg(p)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """``--threads``: torch's CPU threads (main applies it; 1 is faster when another job shares 2 cores)."""
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a shared small machine)")


def check_out(out: str | Path, flag: str = "--out") -> Path:
    """Refuse an output path that is an existing file or lies in a folder we cannot write (before any work)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NegdiffError(f"{flag} {out} is an existing file, not a folder; choose a folder path")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NegdiffError(f"{flag} {out}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise NegdiffError(f"{flag} {out}: {probe} is not writable; choose a folder you can write to")
    return path


def check_task_data(tasks, config=None) -> None:
    """Read every requested task's data now (the loaders cache it), so a missing dataset fails before the model loads."""
    from negdiff.tasks import EvalConfig, get_task

    config = config or EvalConfig()
    for name in tasks:
        get_task(name).load(config)


def run_on_model(args: argparse.Namespace, run, wrote: str, lines=lambda record: record["summary_lines"],
                 preflight=None) -> int:
    """The body every experiment command shares: check the inputs, load the model, run, print the summary.

    ``--out`` is checked and ``preflight()`` (the step's data and upstream checks) runs before the model
    loads, so a user mistake fails in a second with one line. Under torchrun only rank 0 prints.
    """
    from negdiff.models import load_model

    if getattr(args, "out", None) is not None:
        check_out(args.out)
    if preflight is not None:
        preflight()
    loaded = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    record = run(loaded)
    if distributed.from_env().main:
        print("\n".join(lines(record)))
        print(f"wrote {args.out}/: {wrote}")
    return 0
