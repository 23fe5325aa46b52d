"""The ``negdiff`` command line: one subcommand per declared step (negdiff.steps), plus info, models, eval,
tasks, data, reproduce and report.

User mistakes surface as :class:`NegdiffError` and are printed as one line (exit code 2, no traceback);
Ctrl-C exits with 130. Subcommands live in the modules that implement them and register themselves
through a ``register(subparsers)`` function (a step's through its Step), so this file stays a table of
contents. Building the parser imports no torch: every command's work is imported when it runs, so
``negdiff --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from negdiff import distributed
from negdiff.errors import NegdiffError
from negdiff.options import add_step_command, apply_data_arg

#: Modules that add subcommands besides the steps (negdiff.steps), in ``negdiff --help`` order around them.
COMMANDS_BEFORE = ("negdiff.cli.info", "negdiff.cli.models", "negdiff.reproduce", "negdiff.report")
COMMANDS_AFTER = ("negdiff.cli.eval", "negdiff.cli.tasks", "negdiff.cli.data")


def _apply_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise NegdiffError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="negdiff",
        description="Find Wasserstein neurons in a causal LM and test what their negative pre-activations do for syntax.",
    )
    parser.add_argument("--version", action="version", version=f"negdiff {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from negdiff.steps import all_steps

    for name in COMMANDS_BEFORE:
        importlib.import_module(name).register(sub)
    for s in all_steps():
        if s.command is not None:
            add_step_command(sub, s)
    for name in COMMANDS_AFTER:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("negdiff")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rank = distributed.from_env()
    data_before = os.environ.get("NEGDIFF_DATA")
    clean = False
    try:
        apply_data_arg(getattr(args, "data", None))
        _apply_threads(args)
        if rank.active and hasattr(args, "device"):  # torchrun: one process per device, joined in a group
            args.device = distributed.device_for(args.device, rank)
            distributed.init(args.device)
        code = int(args.func(args) or 0)
        clean = True
        return code
    except NegdiffError as exc:
        print(f"negdiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negdiff: interrupted; finished steps are kept and a rerun resumes", file=sys.stderr)
        return 130
    finally:
        distributed.finish(rank, clean)
        if data_before is None:  # --data holds for this command only (main may run many times in one process)
            os.environ.pop("NEGDIFF_DATA", None)
        else:
            os.environ["NEGDIFF_DATA"] = data_before


if __name__ == "__main__":
    raise SystemExit(main())
