"""Command-line options every step shares (the model, its revision, dtype, device, threads) and the body
of a step command.

Why a module below the experiments: each step registers its own subcommand; taking these from the CLI
module would make every experiment import the module that imports every experiment (a cycle).
"""

from __future__ import annotations

import argparse

from negdiff import distributed


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


def run_on_model(args: argparse.Namespace, run, wrote: str, lines=lambda record: record["summary_lines"]) -> int:
    """The body every experiment command shares: load the model the options name, run, print the summary.

    Under torchrun only rank 0 prints (every rank computes).
    """
    from negdiff.models import load_model

    loaded = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    record = run(loaded)
    if distributed.from_env().main:
        print("\n".join(lines(record)))
        print(f"wrote {args.out}/: {wrote}")
    return 0
