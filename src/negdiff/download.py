"""Downloading a dataset's files: one HTTP GET per file, a progress bar, sha256 checked and recorded.

Why a module of its own: every fetched dataset goes through the same three guarantees, and tests drive them
against a local HTTP server. (1) Every URL can be redirected to a mirror (``NEGDIFF_DATA_MIRROR`` or the
``mirror`` argument: ``https://host/path`` is read from ``<mirror>/host/path``), so nothing needs patching to
test it, and users behind a proxy cache can point negdiff at it. (2) Every download's sha256 is computed while
it streams and compared with the pinned value where one is known; a mismatch is refused, not written. (3) Each
dataset folder gets a manifest (:data:`MANIFEST`) listing the sha256 of every download and of every file
written from them; :func:`verify_manifest` checks the written files on reuse, so a damaged or edited file is
refused with the command that fetches it again instead of silently changing a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negdiff.errors import NegdiffError

#: The manifest file in every fetched dataset folder (written last: its presence means the folder is complete).
MANIFEST = "fetch-manifest.json"
MANIFEST_FORMAT = "negdiff-fetch/1"
#: Read every URL from this base instead (``https://host/path`` -> ``<base>/host/path``).
MIRROR_ENV = "NEGDIFF_DATA_MIRROR"
CHUNK = 1 << 16


class DownloadError(NegdiffError):
    """The server could not be reached or refused the file: the caller names what is missing (offline)."""


def mirror_base(mirror: str | None = None) -> str | None:
    """The mirror in force: the argument, else ``$NEGDIFF_DATA_MIRROR``, else None (the real hosts)."""
    return (mirror if mirror is not None else os.environ.get(MIRROR_ENV)) or None


def resolve_url(url: str, mirror: str | None = None) -> str:
    """``url``, or its copy under ``mirror`` (argument, else ``$NEGDIFF_DATA_MIRROR``)."""
    base = mirror_base(mirror)
    if not base:
        return url
    rest = url.split("://", 1)[-1]
    return f"{base.rstrip('/')}/{rest}"


def human_bytes(n: float) -> str:
    """``18.9 MB`` style sizes (decimal units, as the announcement and tqdm's unit_scale show them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Downloader:
    """Fetches URLs for one dataset and remembers what it fetched (url, bytes, sha256, pinned) for the manifest."""

    mirror: str | None = None
    timeout: float = 60.0
    fetched: list[dict[str, Any]] = field(default_factory=list)

    def get(self, url: str, sha256: str | None = None) -> bytes:
        """The bytes at ``url`` (streamed with a progress bar); a pinned ``sha256`` that differs is refused."""
        from negdiff.progress import bar

        real = resolve_url(url, self.mirror)
        try:
            with urllib.request.urlopen(real, timeout=self.timeout) as resp:
                total = resp.headers.get("Content-Length")
                digest, parts = hashlib.sha256(), []
                with bar(total=int(total) if total else None, unit="B", unit_scale=True,
                         desc=real.rsplit("/", 1)[-1]) as progress:
                    while chunk := resp.read(CHUNK):
                        digest.update(chunk)
                        parts.append(chunk)
                        progress.update(len(chunk))
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{real}: HTTP {exc.code} {exc.reason}") from None
        except (OSError, ValueError) as exc:  # URLError, refused connection, DNS failure, timeout, bad URL
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"{real}: {reason}") from None
        data, got = b"".join(parts), digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise NegdiffError(f"{real}: sha256 {got} differs from the pinned {sha256}: the file changed upstream or "
                               "in transit; nothing was written (report it if it persists)")
        self.fetched.append({"url": url, "from": real, "bytes": len(data), "sha256": got, "pinned": sha256 is not None})
        return data


def write_manifest(folder: Path, dataset: str, origin: str, downloads: list[dict[str, Any]],
                   files: dict[str, bytes]) -> dict[str, Any]:
    """Record the downloads and the sha256 of every written file; written atomically, last of all."""
    from negdiff.results import atomic_write_bytes

    manifest = {
        "format": MANIFEST_FORMAT, "dataset": dataset, "origin": origin,
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "downloads": downloads,
        "files": {name: {"bytes": len(data), "sha256": sha256_bytes(data)} for name, data in sorted(files.items())},
    }
    atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def verify_manifest(folder: Path, refetch: str) -> bool:
    """Check every file the manifest lists (False: no manifest). A missing or changed file is a one-line error
    naming the file and ``refetch``, the command that fetches the dataset again."""
    path = folder / MANIFEST
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise NegdiffError(f"{path} is not a negdiff fetch manifest (damaged?); fetch the dataset again with "
                           f"`{refetch}`") from None
    for name, want in files.items():
        f = folder / name
        if not f.is_file():
            raise NegdiffError(f"{f} is missing (listed in {MANIFEST}); fetch the dataset again with `{refetch}`")
        digest = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK * 16):
                digest.update(chunk)
        if digest.hexdigest() != want["sha256"]:
            raise NegdiffError(f"{f} is corrupt: sha256 {digest.hexdigest()[:16]}... differs from "
                               f"{want['sha256'][:16]}... recorded when it was fetched; fetch it again with `{refetch}`")
    return True
