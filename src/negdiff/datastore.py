"""Where negdiff looks for data, and the fetch-or-refuse every command runs before it loads a model.

The rule, one place for it: the data directory is ``NEGDIFF_DATA`` if set (``--data`` sets it for one
command), else the cache folder ``$NEGDIFF_CACHE/data`` (default ``~/.cache/negdiff/data``). There is no
fall-through from one to the other: a folder the user named is the only one read, so a result never comes
from data the user did not choose. :func:`ensure` is the preflight: datasets missing from the cache are
fetched once (announced, hash-checked, recorded in a manifest); datasets missing from a folder the user
named are refused, and so is anything that cannot be downloaded, in one line naming every missing
dataset and how to get it. Fetched folders are checked against their manifest on every use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from negdiff.datasets import NOT_FETCHED, SOURCES, fetch, refetch_command
from negdiff.download import MANIFEST, DownloadError, verify_manifest
from negdiff.errors import NegdiffError

CACHE = "cache"
USER = "NEGDIFF_DATA"


def cache_data_dir() -> Path:
    """``$NEGDIFF_CACHE/data`` (default ``~/.cache/negdiff/data``), read now, so a test or a shell can move it."""
    return Path(os.environ.get("NEGDIFF_CACHE") or Path.home() / ".cache" / "negdiff").expanduser() / "data"


def data_root(path: str | Path | None = None) -> tuple[Path, str]:
    """The data directory and what chose it: ``path`` (an explicit argument) or ``NEGDIFF_DATA``, else the cache."""
    if path:
        return Path(path).expanduser(), "argument"
    env = os.environ.get("NEGDIFF_DATA")
    if env:
        return Path(env).expanduser(), USER
    return cache_data_dir(), CACHE


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def missing_message(names: list[str], base: Path, origin: str) -> str:
    """One line: which dataset folders are missing where, and how to get each of them."""
    what = f"dataset folder{'s' if len(names) > 1 else ''} {_quoted(names)} not found in {base}"
    if origin != CACHE:
        what += f" ({'NEGDIFF_DATA / --data' if origin == USER else 'the data folder given'}"
        what += ", which does not exist)" if not base.is_dir() else ")"
    fetchable = [n for n in names if n in SOURCES]
    how = []
    if fetchable:
        dest = "" if origin == CACHE else f" --dest {base}"
        how.append(f"online, `negdiff data fetch --only {','.join(fetchable)}{dest}` fetches "
                   f"{'them' if len(fetchable) > 1 else 'it'}")
    how += [f"{n}: {NOT_FETCHED[n]}" for n in names if n in NOT_FETCHED]
    if origin == CACHE:
        how.append("offline, set NEGDIFF_DATA to a folder that holds them (e.g. a staged copy: "
                   "NEGDIFF_DATA=../shared/data)")
    else:
        how.append(f"or copy them from a staged data folder; unset NEGDIFF_DATA to use the cache {cache_data_dir()}")
    return f"{what}; {'; '.join(how)}"


def missing(folders: Iterable[str], root: str | Path | None = None) -> list[str]:
    """The dataset folders not present (in the cache: not completely fetched); present fetched folders are
    verified against their manifest (a changed file is an error naming it and the fix)."""
    base, origin = data_root(root)
    out = []
    for name in dict.fromkeys(folders):
        folder = base / name
        if not folder.is_dir() or (origin == CACHE and not (folder / MANIFEST).is_file()):
            out.append(name)
            continue
        verify_manifest(folder, refetch_command([name], None if origin == CACHE else base))
    return out


def ensure(folders: Iterable[str], root: str | Path | None = None, mirror: str | None = None) -> Path:
    """Make sure every dataset folder in ``folders`` is there; returns the data directory.

    The cache fetches what it lacks (announced; ``mirror`` or ``$NEGDIFF_DATA_MIRROR`` redirects the URLs);
    a user-named folder never changes behind the user's back: what it lacks is refused. Offline, the error
    names every dataset still missing. Call it before loading a model.
    """
    folders = list(dict.fromkeys(folders))
    base, origin = data_root(root)
    lacking = missing(folders, root)
    if not lacking:
        return base
    if origin != CACHE or any(n not in SOURCES for n in lacking):
        raise NegdiffError(missing_message(lacking, base, origin))
    try:
        fetch(base, lacking, mirror=mirror)
    except DownloadError as exc:
        still = missing(lacking, root)
        raise NegdiffError(f"cannot download {exc}; {missing_message(still, base, origin)}") from None
    return base
