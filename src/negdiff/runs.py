"""A step of the pipeline, declared once by the experiment that implements it.

Why one object: the pipeline used to be described in four tables (the CLI's command modules, reproduce's
upstream map and runners, the report's record files and headings) that drifted apart. Each experiment
package now exports one :class:`Step`; :mod:`negdiff.steps` lists them in pipeline order, and
``reproduce``, the report, preset validation and the CLI read only that list.

A step's config is its dataclass: a preset or ``--sizes`` entry is checked against the dataclass's fields
(and the dataclass's own checks run) before any model loads, so a typo fails in a second, not when the
step starts an hour later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from negdiff.errors import NegdiffError


def check_counts(cfg: Any, names, least: int = 1) -> None:
    """Refuse a count below ``least`` (or not an integer), naming the flag: ``names`` are (flag, field) pairs."""
    for flag, name in names:
        val = getattr(cfg, name)
        if val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, int):
            raise NegdiffError(f"{flag} must be a whole number, got {val!r}")
        if val < least:
            raise NegdiffError(f"{flag} must be at least {least}, got {val}")


def check_perplexity_sizes(ppl_tokens: int | None, ppl_window: int, need_interval: bool = True) -> None:
    """Refuse a perplexity window under 16 tokens, and (``need_interval``) a token budget giving fewer windows
    than an interval needs, naming the flags and the fix."""
    from negdiff.bootstrap import MIN_UNITS

    if ppl_window < 16:
        raise NegdiffError(f"--ppl-window must be >= 16 tokens, got {ppl_window}")
    if need_interval and ppl_tokens is not None and ppl_tokens // ppl_window < MIN_UNITS:
        raise NegdiffError(f"--ppl-tokens {ppl_tokens} gives {ppl_tokens // ppl_window} windows of {ppl_window}; "
                           f"perplexity intervals need >= {MIN_UNITS}: raise --ppl-tokens to {MIN_UNITS * ppl_window} "
                           "or shorten --ppl-window")


def check_n_boot(n_boot: int) -> None:
    """Refuse fewer than 1,000 bootstrap replicates (decisions use N_BOOT)."""
    from negdiff.bootstrap import N_BOOT

    if n_boot < 1000:
        raise NegdiffError(f"--n-boot must be >= 1000 (decisions use >= {N_BOOT}), got {n_boot}")


def check_fraction(flag: str, val: Any) -> None:
    """Refuse a fraction outside (0, 1), naming the flag."""
    if isinstance(val, bool) or not isinstance(val, int | float):
        raise NegdiffError(f"{flag} must be a number in (0, 1), got {val!r}")
    if not 0 < val < 1:
        raise NegdiffError(f"{flag} must be in (0, 1) (e.g. 0.01 for 1%), got {val}")


def _type_error(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a field whose default is ``default`` (None: it can, or we cannot tell)."""
    if default is None or isinstance(default, tuple | list):
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


@dataclass(frozen=True)
class Command:
    """How a step appears on the command line; :func:`negdiff.options.add_step_command` builds it.

    The step's options are not listed here: they are its config's fields (:func:`negdiff.options.opt`).
    """

    help: str  #: the one line in ``negdiff --help``
    force: str  #: what ``--force`` redoes
    inputs: tuple[tuple[str, str], ...] = ()  #: required flags besides the options: (flag, help), e.g. --scan
    #: "positional": MODEL, --revision, --dtype, --device, --threads; "runtime": no MODEL, no --revision;
    #: "threads": --threads and a --device that defaults to cuda when present
    model: str = "positional"
    description: str | None = None
    out: str = "output folder"
    #: step-specific switches that are not config fields: (flag, help), each a store_true
    switches: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Step:
    """One step: what it is called, what it reads and writes, how it runs inside a run folder."""

    name: str  #: the subcommand and the run's sub-folder
    config: type  #: the config dataclass (its fields are the preset keys; ``seed`` is the run's)
    record: str  #: the step's record file in its folder; present means finished
    upstream: tuple[str, ...] = ()  #: steps whose folders (siblings in the run folder) it reads
    section: str | None = None  #: report heading over its summary lines (None: the report builds its own)
    #: the module that does the work: ``command(args)`` for the subcommand, ``run_step(loaded, run_dir, cfg,
    #: force)`` inside a run folder; imported only when the step runs (it imports torch)
    module: str = ""
    command: Command | None = None  #: the subcommand (None: none)
    in_pipeline: bool = True  #: whether ``negdiff reproduce`` runs it (dynamics and train-mini take other inputs)

    def run(self, loaded: Any, run_dir: str | Path, cfg: Any, force: bool = False) -> dict:
        """The step inside a run folder (``force``: redo, the settings changed)."""
        import importlib

        return importlib.import_module(self.module).run_step(loaded, Path(run_dir), cfg, force=force)

    def data_needs(self, cfg: Any) -> list[str]:
        """The dataset folders the step reads under ``cfg`` (its module's ``data_needs``; none if it declares none),
        so ``negdiff reproduce`` can fetch or refuse every step's data in one go before any model loads."""
        import importlib

        needs = getattr(importlib.import_module(self.module), "data_needs", None)
        return list(needs(cfg)) if needs is not None else []

    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config)]

    def check_sizes(self, values: dict[str, Any], where: str = "--sizes") -> None:
        """Refuse keys the config does not have, naming the valid ones (one line, before any work)."""
        unknown = sorted(set(values) - set(self.fields()))
        if unknown:
            raise NegdiffError(f"{where}: step '{self.name}' has no setting {', '.join(map(repr, unknown))}; "
                               f"its settings are {', '.join(k for k in self.fields() if k != 'seed')}")

    def make_config(self, values: dict[str, Any], seed: int, where: str = "--sizes") -> Any:
        """The step's config from a preset's values (lists become tuples); runs the config's own checks."""
        self.check_sizes(values, where)
        defaults = {f.name: f.default for f in dataclasses.fields(self.config)}
        for k, v in values.items():
            want = _type_error(v, defaults.get(k))
            if want is not None and v is not None:
                raise NegdiffError(f"{where}: step '{self.name}': {k} must be {want}, got {v!r}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return self.config(**{**values, "seed": seed})
        except TypeError as exc:  # a wrong type that the dataclass itself did not check
            raise NegdiffError(f"{where}: step '{self.name}': {exc}") from None

    def folder(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / self.name

    def finished(self, run_dir: str | Path) -> bool:
        return (self.folder(run_dir) / self.record).is_file()


# ------------------------------------------------------------------------------------------------ records
#: The schema every step's record file follows (docs/records.md); bump on an incompatible change.
RECORD_FORMAT = "negdiff.record/1"
#: The fields every record carries, whatever its step adds.
RECORD_FIELDS = ("record_format", "step", "format", "model_key", "config", "timings", "versions", "git_revision",
                 "date", "summary_lines")
_MODEL_KEY = ("name", "spec", "revision", "weights_hash", "quantization", "dtype", "device")


def git_revision() -> str | None:
    """The commit negdiff runs from (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def _strict(obj: Any) -> Any:
    """NaN and infinities -> null, so the file is strict JSON (other tools refuse NaN); None means 'no value'."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / torch values
        return _strict(obj.tolist())
    return obj


def write_record(path: str | Path, record: dict[str, Any], step: str, seconds: float | None = None) -> Path:
    """Write a step's record with the common fields of :data:`RECORD_FIELDS`, as strict JSON.

    Why one writer: a reader (the report, a reviewer's script, the evaluation harness's tooling) finds the
    same header in every step's file: which model (key, not just a name), which settings, when, with which
    code (package versions and git revision), how long, and the summary lines. The step's own fields stay.
    """
    import datetime
    import json

    from negdiff.results import _json_default, atomic_write_bytes, versions

    model = record.get("model") if isinstance(record.get("model"), dict) else {}
    record.setdefault("format", f"negdiff.{step}/1")
    record.setdefault("config", {})
    record.setdefault("summary_lines", [])
    record.setdefault("versions", versions())
    record.update({
        "record_format": RECORD_FORMAT, "step": step,
        "model_key": {k: model.get(k) for k in _MODEL_KEY} if model else None,
        "timings": {**record.get("timings", {}), **({"seconds": seconds} if seconds is not None else {})},
        "git_revision": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    text = json.dumps(_strict(json.loads(json.dumps(record, default=_json_default))), indent=2, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def forward_to(module: str) -> Callable[[str], Any]:
    """A package ``__getattr__`` answering with ``module``'s names, imported on first use (PEP 562).

    A step package holds the declaration and the command line (torch-free); its work lives in a ``run``
    module that imports torch. Forwarding keeps ``from negdiff.experiments.scan import run_scan`` working
    without making ``negdiff --help`` import torch.
    """
    import importlib

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module(module), name)  # a half-imported module raises AttributeError
    return __getattr__
