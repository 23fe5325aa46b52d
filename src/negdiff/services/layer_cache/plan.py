"""Which residual streams an experiment's conditions record and replay (:mod:`negdiff.services.layer_cache`).

Why a plan: conditions run one after another on the same items, and the hidden states entering decoder
layer B depend only on what was edited below B. So condition d can start at B from a store recorded by
an earlier condition c whenever c and d edit the same neurons below B in the same way (their *prefix key*
at B is equal; the baseline's is None). The baseline then serves every condition whose lowest edited layer
is >= B (single groups, cumulative from the top), and cumulative-from-the-bottom condition g1..k starts at
group k from the store g1..k-1 recorded there. Of the candidate layers (an experiment's group boundaries)
each condition replays from the deepest one some earlier condition shares, and that condition's first
holder records it. Which earlier condition holds a key first never itself replays from at or above B (it
would then not be the first), so it always runs layer B and can record it.

:class:`PrefixCache` carries a plan out: ``with cache.step(i):`` around condition i's evaluation opens the
planned replay and recordings, and frees each store after its last planned reader. A producer that did
not run (its results were resumed) leaves an empty store, and its readers then run in full.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from negdiff.neuronset import NeuronSet
from negdiff.progress import status
from negdiff.services.layer_cache import Budget, Store, record, replay

MIB = 1 << 20


def prefix_key(neurons: NeuronSet, mode: str, layer: int) -> str | None:
    """What an intervention does below ``layer``, as a short digest; None when it edits nothing there."""
    below = [(lay, neurons.indices(lay).tolist()) for lay in neurons.layers if lay < layer]
    if not below:
        return None
    return hashlib.sha256(repr((mode, below)).encode()).hexdigest()[:16]


@dataclass
class Step:
    """One condition's part: the store it replays from (layer, key), the layers it records, and the stores
    to free once it has run."""

    replay: tuple[int, str | None] | None = None
    record: dict[int, str | None] = field(default_factory=dict)  # layer -> this condition's key there
    free: list[tuple[int, str | None]] = field(default_factory=list)


def plan(conditions: list[tuple[NeuronSet, str]], boundaries: list[int]) -> list[Step]:
    """The steps of ``conditions`` (``(neurons, mode)`` in run order) over candidate layers ``boundaries``."""
    cands = sorted({int(b) for b in boundaries if b >= 1}, reverse=True)
    steps = [Step() for _ in conditions]
    first: dict[tuple[int, str | None], int] = {}
    last: dict[tuple[int, str | None], int] = {}
    for d, (neurons, mode) in enumerate(conditions):
        keys = {b: prefix_key(neurons, mode, b) for b in cands}
        for b in cands:  # deepest first
            if (b, keys[b]) in first:
                src = (b, keys[b])
                steps[d].replay = src
                producer = first[src]
                held = steps[producer].replay
                assert held is None or held[0] < b, "a first holder never replays from at or above its layer"
                steps[producer].record[b] = keys[b]
                last[src] = d
                break
        for b in cands:
            first.setdefault((b, keys[b]), d)
    for src, d in last.items():
        steps[d].free.append(src)
    for s in steps:
        s.record = dict(sorted(s.record.items()))
    return steps


class PrefixCache:
    """Runs a :func:`plan` over one model: records, replays and frees stores under one :class:`Budget`.

    ``memory_mb`` 0 disables it (every step is a no-op). Spilled entries go to a fresh temporary folder
    under ``spill_root`` (when ``disk_mb`` > 0), which :meth:`close` deletes.
    """

    def __init__(self, model: nn.Module, conditions: list[tuple[NeuronSet, str]], boundaries: list[int],
                 memory_mb: int, disk_mb: int = 0, spill_root: Path | None = None,
                 names: list[str] | None = None) -> None:
        self.model = model
        self.enabled = memory_mb > 0
        self.steps = plan(conditions, boundaries) if self.enabled else [Step() for _ in conditions]
        self.names = names or [str(i) for i in range(len(conditions))]
        self.spill_dir = None
        if self.enabled and disk_mb > 0 and spill_root is not None and any(s.record for s in self.steps):
            Path(spill_root).mkdir(parents=True, exist_ok=True)
            self.spill_dir = Path(tempfile.mkdtemp(prefix="layer_cache_tmp_", dir=spill_root))
        self.budget = Budget(memory_mb * MIB, disk_mb * MIB, self.spill_dir)
        self.stores: dict[tuple[int, str | None], Store] = {}
        self.log: list[dict[str, Any]] = []

    def __enter__(self) -> PrefixCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def step(self, i: int) -> Iterator[None]:
        """Evaluate condition ``i`` inside this: its replay and recordings are open, its frees follow."""
        s = self.steps[i]
        entry: dict[str, Any] = {"condition": self.names[i], "replay_from": None, "replayed_calls": 0,
                                 "full_calls": 0, "recorded": []}
        with ExitStack() as stack:
            stats = None
            store = self.stores.get(s.replay) if s.replay else None
            if store is not None and store.usable():
                stats = stack.enter_context(replay(self.model, s.replay[0], store, tag=s.replay[1]))
                entry["replay_from"] = s.replay[0]
                status(f"layer cache: {self.names[i]} starts at layer {s.replay[0]} "
                       f"({store.n_recorded}/{store.n_calls} calls recorded)")
            elif s.replay is not None:
                entry["note"] = f"store of layer {s.replay[0]} unavailable (its producer did not run): full pass"
            recorded = {}
            if s.record:
                recorded = stack.enter_context(record(self.model, list(s.record), self.budget, tags=s.record))
            yield
        if stats is not None:
            entry["replayed_calls"], entry["full_calls"] = stats.replayed, stats.full
        for b, st in recorded.items():
            self.stores[(b, st.tag)] = st
            entry["recorded"].append(st.summary())
        for src in s.free:
            if src in self.stores:
                self.stores.pop(src).free()
        entry["memory_mb"] = round(self.budget.used_memory / MIB, 1)
        entry["disk_mb"] = round(self.budget.used_disk / MIB, 1)
        self.log.append(entry)

    def close(self) -> None:
        """Free every store and delete the spill folder."""
        for st in self.stores.values():
            st.free()
        self.stores.clear()
        if self.spill_dir is not None and self.spill_dir.exists():
            shutil.rmtree(self.spill_dir)

    def summary(self) -> dict[str, Any]:
        """For the results: budgets, peaks and what each condition did."""
        return {"enabled": self.enabled, "memory_mb": self.budget.memory_bytes // MIB,
                "disk_mb": self.budget.disk_bytes // MIB if self.spill_dir else 0,
                "peak_memory_mb": round(self.budget.peak_memory / MIB, 1),
                "peak_disk_mb": round(self.budget.peak_disk / MIB, 1), "steps": self.log}
