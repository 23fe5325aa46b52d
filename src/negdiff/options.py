"""Command-line options, declared once: flags generated from the config dataclasses, the options every
command shares (model, revision, dtype, device, threads, out, force, data), and the body of a step command.

Why generated: every option used to be written three times (the dataclass field, an argparse line, a hand
copy from one to the other), and the copies drifted (names, defaults, "0 = all" done three ways, options
without help). Now a config field declared with :func:`opt` carries its help (and choices); its flag is
the field name with dashes (``blimp_limit`` -> ``--blimp-limit``, the same key a preset or ``--sizes``
uses), its type comes from the annotation, and ``--help`` shows its default.

Why a module below the experiments, and torch-free: each step registers its own subcommand from its light
package (``negdiff --help`` must not import torch); taking these from the CLI module would make every
experiment import the module that imports every experiment (a cycle).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from negdiff.errors import NegdiffError


# ------------------------------------------------------------------------------ config fields as flags
def opt(default: Any, help: str, *, choices: Any = None, zero_all: bool = False, shown: str | None = None) -> Any:
    """A config field that is also a flag: its default, help (the default is appended) and choices.

    ``zero_all``: a count where 0 on the command line means "all" (stored as None); ``shown``: the words
    for a default that is None or computed later (e.g. "min(2048, the model's max length)").
    """
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "zero_all": zero_all,
                                                        "shown": shown})


def flag_of(name: str) -> str:
    """The flag of a config field: ``blimp_limit`` -> ``--blimp-limit``."""
    return "--" + name.replace("_", "-")


def _kind(hint: Any) -> tuple[type, type | None]:
    """(base type, element type of a tuple) of a field's annotation, None removed from a union."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
        args = list(typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return tuple, (args[0] if args else str)
    return hint, None


def _parse(kind: type, zero_all: bool = False) -> Callable[[str], Any]:
    """argparse ``type=``: one value of ``kind``; a wrong value is argparse's one-line error naming the flag."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
        return None if zero_all and value == 0 else value
    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def _parse_list(kind: type) -> Callable[[str], tuple]:
    one = _parse(kind)

    def convert(text: str) -> tuple:
        return tuple(one(x.strip()) for x in text.split(",") if x.strip())
    convert.__name__ = "list"
    return convert


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def add_config_args(p: argparse.ArgumentParser, config: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per :func:`opt` field of the dataclass ``config`` (fields without help are preset-only)."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        md = f.metadata
        if "help" not in md or f.name in skip:
            continue
        flag = flag_of(f.name)
        kind, element = _kind(hints[f.name])
        shown = md["shown"] if md["shown"] is not None else _shown(f.default)
        text = f"{md['help']} (default: {shown}{'; 0 = all' if md['zero_all'] else ''})"
        if kind is bool:  # a switch that turns the default around
            if f.default:
                p.add_argument(f"--no-{flag[2:]}", dest=f.name, action="store_false", help=md["help"] + " (default: on)")
            else:
                p.add_argument(flag, dest=f.name, action="store_true", help=md["help"] + " (default: off)")
        elif kind is tuple:
            p.add_argument(flag, dest=f.name, type=_parse_list(element), default=f.default, help=text,
                           metavar="A,B,...")
        else:
            p.add_argument(flag, dest=f.name, type=_parse(kind, md["zero_all"]), default=f.default, help=text,
                           choices=md["choices"], metavar=None if md["choices"] else f.name.upper())


def config_from_args(config: type, args: argparse.Namespace, **changes: Any) -> Any:
    """The config dataclass from parsed flags (fields without a flag keep their defaults), then ``changes``."""
    given = vars(args)
    values = {f.name: given[f.name] for f in dataclasses.fields(config) if f.name in given}
    values.update(changes)
    return config(**values)


def deferred(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported when first called: a command or a step's run without importing torch to parse."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    call.__qualname__ = call.__name__ = f"{module}.{name}"
    return call


# ------------------------------------------------------------------------------ options every command shares


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """The model options every model command shares: the model, its revision, then :func:`add_runtime_args`."""
    if positional:
        p.add_argument("model", help="hub id (gpt2, EleutherAI/pythia-160m, ...), local folder, .gguf file, or 'default'")
    p.add_argument("--revision", default=None, help="hub revision, e.g. step1000 for Pythia checkpoints")
    add_runtime_args(p)


def add_runtime_args(p: argparse.ArgumentParser, device: str | None = "cpu") -> None:
    """``--dtype``, ``--device``, ``--threads``: where and how the model runs."""
    p.add_argument("--dtype", default="float32", help="float32 (default, honest on CPU), bfloat16 or float16")
    p.add_argument("--device", default=device, help="cpu, cuda, cuda:N, or auto (shard over GPUs with accelerate) "
                   f"(default: {device or 'cuda when present, else cpu'})")
    add_threads_arg(p)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """``--threads``: torch's CPU threads (main applies it; 1 is faster when another job shares 2 cores)."""
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a shared small machine)")


def add_run_args(p: argparse.ArgumentParser, force: str, out: str = "output folder") -> None:
    """``--out``, ``--force`` and ``--data``: the same three on every step."""
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--force", action="store_true", help=force)
    add_data_arg(p)


def add_data_arg(p: argparse.ArgumentParser) -> None:
    """``--data``: the datasets folder for this command (main sets $NEGDIFF_DATA from it before anything runs)."""
    p.add_argument("--data", default=None, metavar="DIR",
                   help="datasets folder (default: $NEGDIFF_DATA, else the cache ~/.cache/negdiff/data, "
                   "where missing datasets are fetched)")


def apply_data_arg(data: str | None) -> None:
    """Point every loader at ``--data`` (checked now: a wrong folder fails before any work)."""
    if data is None:
        return
    if not Path(data).is_dir():
        raise NegdiffError(f"--data {data} is not a folder; give the folder that holds blimp/, tse/, ... "
                           "(or fill one with `negdiff data fetch`)")
    os.environ["NEGDIFF_DATA"] = str(Path(data).resolve())


def add_step_command(sub: Any, step: Any) -> None:
    """A step's subcommand: its model options, required inputs, config fields as flags, switches, out/force/data."""
    cmd = step.command
    p = sub.add_parser(step.name, help=cmd.help, description=cmd.description)
    if cmd.model == "positional":
        add_model_args(p)
    elif cmd.model == "runtime":
        add_runtime_args(p)
    else:
        add_threads_arg(p)
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    for flag, text in cmd.inputs:
        p.add_argument(flag, required=True, help=text, metavar=flag[2:].upper())
    add_config_args(p, step.config)
    for flag, text in cmd.switches:
        p.add_argument(flag, action="store_true", help=text)
    add_run_args(p, force=cmd.force, out=cmd.out)
    p.set_defaults(func=deferred(step.module, "command"))


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
    """Fetch-or-refuse every requested task's datasets (:func:`negdiff.datastore.ensure`: one line naming all
    that are missing), then read them (the loaders cache it), so missing data fails before the model loads."""
    from negdiff.datastore import ensure
    from negdiff.tasks import EvalConfig, get_task, task_folders

    config = config or EvalConfig()
    ensure(task_folders(list(tasks), config), config.data_root)
    for name in tasks:
        get_task(name).load(config)


def run_on_model(args: argparse.Namespace, run, wrote: str, lines=lambda record: record["summary_lines"],
                 preflight=None) -> int:
    """The body every experiment command shares: check the inputs, load the model, run, print the summary.

    ``--out`` is checked and ``preflight()`` (the step's data and upstream checks) runs before the model
    loads, so a user mistake fails in a second with one line. Under torchrun only rank 0 prints.
    """
    from negdiff import distributed
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
