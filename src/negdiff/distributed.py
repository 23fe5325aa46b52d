"""Data parallelism under ``torchrun``: who am I, which windows are mine, and how results come back together.

negdiff's accumulators are mergeable by design (:meth:`NeuronStats.merge`, :meth:`MDAccumulator.merge`), so
a scan parallelizes by giving each rank a contiguous block of windows and merging the ranks' accumulators
on rank 0, which then writes every output exactly as a single process would. Launch with::

    torchrun --nproc_per_node 4 -m negdiff scan MODEL --device cuda --out DIR

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them everything here
degrades to a single process (rank 0 of 1) and no process group is created. The backend is gloo on CPU
and nccl on CUDA; objects travel through ``all_gather_object`` after being moved to the CPU, so the
same code runs on both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from negdiff.errors import NegdiffError


@dataclass(frozen=True)
class Rank:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes outputs and shows progress; the others only compute."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Rank:
    """The rank torchrun gave this process (rank 0 of 1 outside torchrun)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise NegdiffError(f"malformed torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    return Rank(rank, world, local)


_LOCAL = [False]


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within the block this process works alone (rank 0 finishing a merged result while the others are done)."""
    _LOCAL[0] = True
    try:
        yield
    finally:
        _LOCAL[0] = False


def current() -> Rank:
    """The rank in an initialized process group (rank 0 of 1 when there is none): what collectives may assume."""
    import torch.distributed as dist

    if not _LOCAL[0] and dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size(), from_env().local_rank)
    return Rank()


def device_for(requested: str, r: Rank) -> str:
    """Under torchrun, ``cuda`` means this rank's own GPU (cuda:LOCAL_RANK)."""
    if r.active and requested == "cuda":
        return f"cuda:{r.local_rank}"
    return requested


def init(device: Any) -> Rank:
    """Join the process group when launched by torchrun (idempotent); returns this process's rank."""
    import torch  # here, not at the top: the CLI reads the rank before deciding to import torch
    import torch.distributed as dist

    r = from_env()
    if not r.active or (dist.is_available() and dist.is_initialized()):
        return r
    if not dist.is_available():
        raise NegdiffError("this torch build has no torch.distributed; run without torchrun")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(r.local_rank)
    dist.init_process_group(backend=backend)
    return r


def shard(n: int, r: Rank) -> range:
    """Rank ``r``'s contiguous block of ``n`` items (block sizes differ by at most one)."""
    base, extra = divmod(n, r.world)
    lo = r.rank * base + min(r.rank, extra)
    return range(lo, lo + base + (1 if r.rank < extra else 0))


def gather_to_main(obj: Any, r: Rank) -> list[Any]:
    """Every rank's ``obj`` in rank order on rank 0 (an empty list elsewhere; ``[obj]`` outside torchrun).

    Only rank 0 receives, so a merge holds one copy per rank of one piece at a time. Tensors should be
    on the CPU (objects are pickled).
    """
    if not r.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * r.world if r.main else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def all_gather(obj: Any, r: Rank) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` outside a process group)."""
    import torch.distributed as dist

    if not r.active or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * r.world
    dist.all_gather_object(out, obj)
    return out


def finish(r: Rank, clean: bool = True) -> None:
    """Leave the process group (so torchrun sees a clean exit).

    After a clean run every rank first meets at a barrier: a rank that tore its group down while a
    peer's last send (``gather_object`` to rank 0) was still in flight aborted gloo's I/O thread
    ("terminate called without an active exception", exit -6) about once in ten runs. After an error
    there is no barrier: the peer may never arrive, and torchrun stops it anyway.
    """
    if r.active:
        import torch.distributed as dist

        if dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()
