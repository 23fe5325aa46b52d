"""The steps in pipeline order: the one list that ``reproduce``, the report and the CLI iterate.

Each name is an experiment package that exports ``STEP`` (a :class:`negdiff.runs.Step`). The order is
the pipeline's (a step comes after every step it reads) and the report's; ``dynamics`` and
``train_mini`` are steps with their own inputs (checkpoints, a corpus), so ``reproduce`` skips them.
"""

from __future__ import annotations

import importlib
from functools import cache

from negdiff.errors import NegdiffError
from negdiff.runs import Step

#: experiment packages, in pipeline order
STEP_PACKAGES = ("scan", "ablate", "pairs", "pos", "layers", "quadrants", "stability", "dynamics", "train_mini")


@cache
def all_steps() -> tuple[Step, ...]:
    """Every declared step, in pipeline order (imports the experiment packages)."""
    steps = tuple(importlib.import_module(f"negdiff.experiments.{name}").STEP for name in STEP_PACKAGES)
    seen: set[str] = set()
    for s in steps:
        missing = [u for u in s.upstream if u not in seen]
        if missing:  # a declaration bug, caught on first use
            raise NegdiffError(f"step '{s.name}' reads {', '.join(missing)}, which must come before it")
        seen.add(s.name)
    return steps


def pipeline() -> tuple[Step, ...]:
    """The steps ``negdiff reproduce`` runs, in order."""
    return tuple(s for s in all_steps() if s.in_pipeline)


def step(name: str) -> Step:
    """A step by name; an unknown name is a one-line error listing the known ones."""
    for s in all_steps():
        if s.name == name:
            return s
    raise NegdiffError(f"unknown step '{name}'; steps are {', '.join(s.name for s in all_steps())}")
