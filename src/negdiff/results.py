"""Run directories: atomic writes, environment facts, and resume keys.

Every result negdiff writes goes through :func:`atomic_write_bytes`: a temp file in the same folder,
fsync, then ``os.replace``. An interrupted run therefore leaves either the old file or the new one,
never a truncated result that a later resume would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from negdiff import distributed


def _file_mode() -> int:
    """0666 minus the umask: what open() would give, since mkstemp's private 0600 is wrong for results."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()
_PACKAGES = ("negdiff", "torch", "transformers", "accelerate", "gguf", "numpy", "scipy", "pandas", "pyarrow")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one (fsynced)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write_with(path, write)


def atomic_write_with(path: str | Path, writer: Callable[[Path], None], all_ranks: bool = False) -> Path:
    """Let ``writer(tmp_path)`` produce a file (parquet, PNG, safetensors...), then move it into place.

    Under ``torchrun`` every rank computes the same results but only rank 0 writes them (two ranks
    replacing one file would race); ``all_ranks=True`` is for per-rank files such as scan checkpoints.
    """
    path = Path(path)
    if not all_ranks and not distributed.from_env().main:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    """JSON text with numpy/torch scalars and arrays converted, NaN kept as null-safe floats."""
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_bytes(path, to_json(obj).encode())


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> Path:
    """Atomically write a CSV table (``None`` and NaN as empty cells): the machine-readable twin of a Markdown
    table, so a spreadsheet or pandas reads the numbers without parsing "value (diff [lo, hi])" cells."""
    import csv
    import io
    import math

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row])
    return atomic_write_bytes(path, buf.getvalue().encode())


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def write_parquet(path: str | Path, frame: Any) -> Path:
    """Atomically write a pandas DataFrame as parquet."""
    return atomic_write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hash a file in chunks (data files are hashed into every manifest)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_key(obj: Any, length: int = 16) -> str:
    """A short content hash of a JSON-able config: the resume/caching key of a step."""
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide a result, plus Python and the platform."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
