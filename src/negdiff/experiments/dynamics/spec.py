"""Which checkpoints ``negdiff dynamics`` reads: the SPEC grammar, Pythia's schedule, step numbers.

A SPEC is a hub model at revisions (``EleutherAI/pythia-160m@step0,step512,step143000``, or a
shorthand for Pythia's public schedule: ``@pythia-log``, ``@pythia-coarse``, ``@pythia-all``) or local
folders (a train-mini output folder holding ``step<N>/``, a comma list, or a quoted glob). Checkpoints
are sorted by the step number in their revision or folder name when every one has one, else kept in
the given order. A folder in the list that does not exist is kept: ``dynamics`` reports it as missing.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from negdiff.errors import NegdiffError
from negdiff.results import read_json

PYTHIA_LOG_STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Revision shorthands for Pythia's public checkpoints (step0, the log-spaced step1..512, every 1000 after).
SHORTHANDS: dict[str, tuple[int, ...]] = {
    # 20 checkpoints, log-spaced over the whole run (the paper's WD rise happens before ~25k steps)
    "pythia-log": PYTHIA_LOG_STEPS + (1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 143000),
    "pythia-coarse": (0, 64, 512, 2000, 8000, 32000, 143000),  # 7 checkpoints: a quick look
    "pythia-all": PYTHIA_LOG_STEPS + tuple(range(1000, 143001, 1000)),  # all 154
}
PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1024 sequences x 2048 tokens
_STEP = re.compile(r"step[_-]?(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: a local model folder, or a hub id at a revision."""

    label: str
    step: int | None
    spec: str
    revision: str | None = None

    @property
    def name(self) -> str:
        return f"{self.spec}@{self.revision}" if self.revision else self.spec

    def identity(self) -> dict[str, Any]:
        """What names these weights in a resume key (a local folder: its weight files' sizes and times)."""
        out: dict[str, Any] = {"spec": self.spec, "revision": self.revision, "label": self.label}
        if self.revision is None and Path(self.spec).is_dir():
            out["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                  for p in Path(self.spec).glob("*.safetensors"))
        return out

    def tokens_seen(self) -> float:
        """Training tokens behind the checkpoint: train-mini's checkpoint.json, or Pythia's 2M per step."""
        if self.revision is None:
            info = Path(self.spec) / "checkpoint.json"
            if info.is_file():
                return float(read_json(info).get("tokens_seen", np.nan))
        elif "pythia" in self.spec.lower() and self.step is not None:
            return float(self.step * PYTHIA_TOKENS_PER_STEP)
        return float("nan")


def step_of(name: str) -> int | None:
    """The step number in a revision or folder name (``step1000``, ``step_64``), else None."""
    m = _STEP.search(name.rstrip("/"))
    return int(m.group(1)) if m else None


def parse_spec(spec: str) -> list[Checkpoint]:
    """``HUB_ID@REV1,REV2,...`` (or ``HUB_ID@pythia-log`` etc.), or local folders: a comma list, a glob,
    or one folder holding ``step<N>/`` checkpoints (a train-mini output). Sorted by step when all have one."""
    spec = spec.strip()
    if not spec:
        raise NegdiffError("--checkpoints: empty; give HUB_ID@REV,REV,... or local checkpoint folders")
    if "@" in spec and not Path(spec).exists():
        return _hub_checkpoints(spec)
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            hits = sorted(Path(h) for h in glob.glob(part) if Path(h).is_dir())
            if not hits:
                raise NegdiffError(f"--checkpoints: no folder matches '{part}'")
            paths += hits
        elif Path(part).is_dir() and not (Path(part) / "config.json").is_file():
            subs = [p for p in Path(part).iterdir() if p.is_dir() and step_of(p.name) is not None]
            if not subs:
                raise NegdiffError(f"--checkpoints: {part} is neither a model folder (no config.json) nor a folder "
                                   "of step<N>/ checkpoints")
            paths += subs
        else:
            paths.append(Path(part))  # a model folder, or one that is missing (reported as missing)
    unique = list(dict.fromkeys(paths))
    return _ordered([Checkpoint(p.name or str(p), step_of(p.name), str(p)) for p in unique])


def _hub_checkpoints(spec: str) -> list[Checkpoint]:
    repo, _, revs = spec.rpartition("@")
    repo = repo.strip()
    if not repo or re.search(r"[\s,@]", repo) or repo.count("/") > 1:
        raise NegdiffError(f"--checkpoints '{spec}': expected HUB_ID@REV1,REV2,... "
                           "(e.g. EleutherAI/pythia-160m@step0,step512,step143000 or EleutherAI/pythia-160m@pythia-log)")
    names = [r.strip() for r in revs.split(",") if r.strip()]
    if not names:
        raise NegdiffError(f"--checkpoints '{spec}': no revisions after '@'")
    if len(names) == 1 and names[0] in SHORTHANDS:
        names = [f"step{s}" for s in SHORTHANDS[names[0]]]
    elif any(n.startswith("pythia-") for n in names):
        raise NegdiffError(f"--checkpoints '{spec}': unknown shorthand; known: {', '.join(SHORTHANDS)}")
    return _ordered([Checkpoint(n, step_of(n), repo, n) for n in dict.fromkeys(names)])


def _ordered(ckpts: list[Checkpoint]) -> list[Checkpoint]:
    """Sort by step when every checkpoint has one (else keep the given order); make labels unique and safe."""
    if all(c.step is not None for c in ckpts):
        ckpts = sorted(ckpts, key=lambda c: c.step)
    seen: dict[str, int] = {}
    out = []
    for c in ckpts:
        label = re.sub(r"[^A-Za-z0-9._-]", "_", c.label) or "checkpoint"
        k = seen.get(label, 0)
        seen[label] = k + 1
        out.append(dataclasses.replace(c, label=f"{label}_{k}" if k else label))
    return out
