"""Progress output on stderr: tqdm bars for long loops, one-line status messages.

Bars are disabled with ``NEGDIFF_PROGRESS=0`` (or when stderr is not a terminal and ``NEGDIFF_PROGRESS``
is unset in CI) so logs stay readable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

from negdiff import distributed

T = TypeVar("T")


def enabled() -> bool:
    if not distributed.from_env().main:  # under torchrun only rank 0 reports
        return False
    flag = os.environ.get("NEGDIFF_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty() or not os.environ.get("CI")


def bar(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that honours NEGDIFF_PROGRESS."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    disable = kwargs.pop("disable", False) or not enabled()
    return tqdm(iterable, disable=disable, **kwargs)


def status(msg: str) -> None:
    """A one-line status message on stderr (always shown, by rank 0 under torchrun: it explains a pause)."""
    if not distributed.from_env().main:
        return
    print(f"negdiff: {msg}", file=sys.stderr, flush=True)
