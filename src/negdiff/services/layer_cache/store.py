"""Where :mod:`negdiff.services.layer_cache` keeps recorded hidden states: per-layer stores under one byte budget.

Why a budget with a spill: perplexity windows dominate (window x hidden x 4 bytes per window per recorded
layer), so a large model's stores outgrow memory. Past the memory budget an entry goes to disk, past the
disk budget the store stops and the replay runs the remaining calls in full. A store is always a prefix of
the recorded calls, and never ends inside a chain of calls that share key/value caches (an unrecorded call
would read a cache whose skipped layers hold only length stubs): see :meth:`Store.append`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Budget:
    """Bytes the stores may hold in memory, then on disk under ``spill_dir``; shared by every store."""

    memory_bytes: int
    disk_bytes: int = 0
    spill_dir: Path | None = None
    used_memory: int = 0
    used_disk: int = 0
    peak_memory: int = 0
    peak_disk: int = 0

    def take(self, nbytes: int) -> str | None:
        """Reserve ``nbytes``: ``"memory"``, ``"disk"`` or None (the budget is spent)."""
        if self.used_memory + nbytes <= self.memory_bytes:
            self.used_memory += nbytes
            self.peak_memory = max(self.peak_memory, self.used_memory)
            return "memory"
        if self.spill_dir is not None and self.used_disk + nbytes <= self.disk_bytes:
            self.used_disk += nbytes
            self.peak_disk = max(self.peak_disk, self.used_disk)
            return "disk"
        return None

    def give(self, where: str, nbytes: int) -> None:
        if where == "memory":
            self.used_memory -= nbytes
        else:
            self.used_disk -= nbytes


@dataclass
class _Entry:
    shape: tuple[int, ...]
    nbytes: int
    tensor: torch.Tensor | None = None
    path: Path | None = None


@dataclass
class Store:
    """The hidden states entering decoder layer ``layer``, one entry per recorded forward call.

    ``keys``/``sigs`` cover every call the recording saw; ``entries`` is a prefix of them (the rest were
    beyond the budget). ``tag`` names what ran below ``layer`` while recording (None: nothing).
    """

    layer: int
    budget: Budget
    tag: Any = None
    keys: list[bytes] = field(default_factory=list)
    sigs: list[tuple] = field(default_factory=list)
    continues: list[bool] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)
    stopped: bool = False
    chain_start: int = 0
    invalid: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _serial: int = 0

    @property
    def n_calls(self) -> int:
        return len(self.keys)

    @property
    def n_recorded(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def usable(self) -> bool:
        """Whether a replay can use this store: valid, and at least one call recorded."""
        return self.invalid is None and self.n_recorded > 0

    def append(self, key: bytes, sig: tuple, continues: bool, hidden: torch.Tensor | None) -> None:
        """Add one forward call: its key and hook signature always, its hidden states while the budget lasts.

        ``continues``: the call reads a key/value cache that earlier calls built. A *chain* starts at a call
        that does not continue right after one that did (or at the first call) and holds every call up to the
        next such start: a shared-context item (context, then its answers) or a prefix-tree chunk (its level
        0 batches, then the deeper levels that read their keys/values). A continuing call that is not recorded
        must not find a recorded (replayed, hence stubbed) call in its chain, so the store then drops back to
        the chain's start.
        """
        index = self.n_calls
        if not continues and (index == 0 or self.continues[-1]):
            self.chain_start = index
        self.keys.append(key)
        self.sigs.append(sig)
        self.continues.append(continues)
        if self.stopped or hidden is None:
            self.stopped = True
            if continues and self.chain_start < self.n_recorded:
                self._truncate(self.chain_start)
            return
        nbytes = hidden.numel() * hidden.element_size()
        where = self.budget.take(nbytes)
        if where is None:  # spent: stop here, or at the start of the chain this call continues
            self._truncate(self.chain_start if continues else index)
            self.stopped = True
            return
        entry = _Entry(tuple(hidden.shape), nbytes)
        if where == "memory":
            entry.tensor = hidden
        else:
            self._serial += 1
            entry.path = self.budget.spill_dir / f"L{self.layer}_{id(self):x}_{self._serial}.pt"
            entry.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(hidden, entry.path)
        self.entries.append(entry)

    def _truncate(self, n: int) -> None:
        for entry in self.entries[n:]:
            self._drop(entry)
        del self.entries[n:]

    def _drop(self, entry: _Entry) -> None:
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)
            self.budget.give("disk", entry.nbytes)
        else:
            self.budget.give("memory", entry.nbytes)
        entry.tensor = entry.path = None

    def load(self, index: int, device: torch.device) -> torch.Tensor:
        """Entry ``index`` on ``device`` as a fresh tensor (the store itself never reaches the model)."""
        entry = self.entries[index]
        if entry.path is not None:
            return torch.load(entry.path, weights_only=True).to(device)
        t = entry.tensor
        return t.clone() if t.device == device else t.to(device)

    def free(self) -> None:
        """Give back every entry's memory or disk space (the keys stay, for the summary)."""
        self._truncate(0)
        self.stopped = True

    def summary(self) -> dict[str, Any]:
        return {"layer": self.layer, "calls": self.n_calls, "recorded": self.n_recorded,
                "on_disk": sum(e.path is not None for e in self.entries), "bytes": self.nbytes,
                "invalid": self.invalid}


