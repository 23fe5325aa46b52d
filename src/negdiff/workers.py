"""Run per-layer accumulator updates side by side on CPU threads, one intra-op thread each.

Why: a scan's per-layer work (statistics, histograms, mapping-difficulty pairs) is a string of short
memory-bound passes and serial scatters. Run one layer at a time with torch's intra-op threads, the
scatters use one core and every pass pays a fork/join; run instead ``threads`` layers at once, each on
its own thread with one intra-op thread, and every core stays busy on independent work. The forward
pass waits while a group runs (the hooks submit; :meth:`LayerWorkers.submit` runs a full group before
returning), so accumulators and forward never compete for the same cores.

A worker thread sets its own intra-op thread count to 1 (OpenMP and MKL keep that per thread); torch
also records the value globally for threads not yet started, so the caller's count is put back
after each group. Autograd's inference and grad modes are per thread too: each job runs under the
modes its submitter had. With ``threads == 1`` (or work on a GPU, where kernels are asynchronous anyway)
jobs run inline, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import torch


def _one_thread() -> None:
    torch.set_num_threads(1)


def _in_mode(job: Callable[[], None], inference: bool, grad: bool) -> None:
    """Run ``job`` under the caller's autograd modes (they are per thread and not inherited)."""
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        job()


class LayerWorkers:
    """Groups of up to ``threads`` independent jobs, each group run in parallel before the caller goes on.

    Jobs of one group must not depend on each other (different layers); jobs of later groups see the
    effects of earlier ones. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, threads: int | None = None) -> None:
        self._caller_threads = torch.get_num_threads()  # put back after each group (not ``threads``: they may differ)
        self.threads = max(1, int(self._caller_threads if threads is None else threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="negdiff-layer",
                                        initializer=_one_thread) if self.threads > 1 else None
        self._queue: list[Callable[[], None]] = []

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; when ``threads`` jobs are queued, run them all and wait."""
        if self._pool is None:
            job()
            return
        self._queue.append(partial(_in_mode, job, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        if len(self._queue) >= self.threads:
            self.drain()

    def drain(self) -> None:
        """Run every queued job and wait for all of them; the first error is raised after all finished."""
        if not self._queue:
            return
        jobs, self._queue = self._queue, []
        futures: list[Future] = [self._pool.submit(job) for job in jobs]
        errors = [f.exception() for f in futures]
        torch.set_num_threads(self._caller_threads)  # the workers' set_num_threads(1) also changed torch's default
        for err in errors:
            if err is not None:
                raise err

    def close(self) -> None:
        """Run what is queued, then stop the threads."""
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> LayerWorkers:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            self._queue.clear()  # an error is on its way out: do not start more work
        self.close()
