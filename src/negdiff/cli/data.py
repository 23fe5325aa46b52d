"""``negdiff data list|fetch``: what the data directory holds, and fetching every dataset into it.

Why here and not beside the sources: the command reads the data directory rule (:mod:`negdiff.datastore`),
which itself fetches through :mod:`negdiff.datasets`, so the command sits above both.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from negdiff.errors import NegdiffError


def command(args: argparse.Namespace) -> int:
    """List the datasets (present, fetched and verified, or missing), or fetch them."""
    from negdiff.datasets import NOT_FETCHED, SOURCES, fetch, refetch_command
    from negdiff.datastore import cache_data_dir, data_root
    from negdiff.download import DownloadError, verify_manifest

    if args.action == "fetch":
        dest = Path(args.dest).expanduser() if args.dest else cache_data_dir()
        only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
        try:
            done = fetch(dest, only, args.force)
        except DownloadError as exc:
            raise NegdiffError(f"cannot download {exc}; are you online? (`negdiff data list` shows what is "
                               "missing)") from None
        hint = "" if dest == cache_data_dir() else f"; export NEGDIFF_DATA={dest}"
        print(f"fetched {', '.join(done) or 'nothing new'} into {dest}{hint}")
        return 0
    root, origin = data_root(args.dest)
    print(f"data directory: {root} ({'NEGDIFF_DATA' if origin != 'cache' else 'cache; NEGDIFF_DATA is unset'})")
    for name in [*SOURCES, *NOT_FETCHED]:
        folder = root / name
        if not folder.is_dir():
            state = "missing"
        else:
            try:
                state = "fetched, verified" if verify_manifest(folder, refetch_command([name])) else "present"
            except NegdiffError as exc:
                state = f"CORRUPT: {exc}"
        print(f"  {name:<16} {state}")
    return 0


def register(sub: Any) -> None:
    """Add ``negdiff data fetch|list``."""
    p = sub.add_parser("data", help="list the data directory, or fetch every dataset from its public source")
    p.add_argument("action", choices=("list", "fetch"))
    p.add_argument("--dest", help="data directory (default: $NEGDIFF_DATA, else the cache, for list; the cache "
                   "~/.cache/negdiff/data, or $NEGDIFF_CACHE/data, for fetch)")
    p.add_argument("--only", help="comma-separated dataset folders, e.g. blimp,tse")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(func=command)
