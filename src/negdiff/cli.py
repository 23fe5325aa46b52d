"""The ``negdiff`` command line: one subcommand per declared step (negdiff.steps), plus info, eval, data,
reproduce and report.

User mistakes surface as :class:`NegdiffError` and are printed as one line (exit code 2, no traceback);
Ctrl-C exits with 130. Subcommands live in the modules that implement them and register themselves
through a ``register(subparsers)`` function (a step's through its Step), so this file stays a table of
contents.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from negdiff import distributed
from negdiff.errors import NegdiffError
from negdiff.options import add_model_args

#: Modules that add subcommands besides the steps (negdiff.steps), in ``negdiff --help`` order around them.
COMMANDS_BEFORE = ("negdiff.reproduce", "negdiff.report")
COMMANDS_AFTER = ("negdiff.evaluate", "negdiff.datasets")


def _apply_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise NegdiffError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _cmd_info(args: argparse.Namespace) -> int:
    from negdiff.models import load_model

    loaded = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    info = loaded.info.to_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    s = info["sites"]
    rows = [
        ("model", info["name"]),
        ("source", f"{info['source']}" + (f" ({info['path']})" if info["path"] else "")),
        ("architecture", f"{info['architecture']} (model_type {info['model_type']})"),
        ("parameters", f"{info['n_params']:,}"),
        ("dtype / device", f"{info['dtype']} / {info['device']}"),
        ("weights", info["quantization"] or "as stored"),
        ("layers x neurons", f"{s['n_layers']} x {s['neurons_per_layer']} = {s['n_neurons']:,} neurons"),
        ("activation", f"{s['activation']}" + (" (gated MLP)" if s["gated"] else "")),
        ("hook site", f"input of {s['hook']}"),
        ("max length", str(info["max_length"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if not s["smooth"]:
        print(f"note: activation '{s['activation']}' is not smooth (gelu/silu); negdiff accepts it for contrast runs only")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="negdiff",
        description="Find Wasserstein neurons in a causal LM and test what their negative pre-activations do for syntax.",
    )
    parser.add_argument("--version", action="version", version=f"negdiff {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="architecture, activation sites, neurons per layer, parameter count")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the model info as JSON")
    p.set_defaults(func=_cmd_info)
    from negdiff.steps import all_steps

    for name in COMMANDS_BEFORE:
        importlib.import_module(name).register(sub)
    for s in all_steps():
        s.register(sub)
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
    try:
        _apply_threads(args)
        if rank.active and hasattr(args, "device"):  # torchrun: one process per device, joined in a group
            args.device = distributed.device_for(args.device, rank)
            distributed.init(args.device)
        return int(args.func(args) or 0)
    except NegdiffError as exc:
        print(f"negdiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negdiff: interrupted; finished steps are kept and a rerun resumes", file=sys.stderr)
        return 130
    finally:
        distributed.finish(rank)


if __name__ == "__main__":
    raise SystemExit(main())
