"""Compare two reproduce run folders: every table and record number, ignoring timings, versions, paths, keys.

Why: a refactor must change no number
this is the recorded check (every JSON value, every parquet table
exactly, every Markdown table), run on the same preset before and after.

Usage: python bench/compare_runs.py RUN_A RUN_B [--rtol R]

Exact by default. With --rtol, float differences within a relative R (floats in JSON, float columns in parquet)
are counted and reported separately ("within rtol", with the largest), not as differences: a change of
summation order moves the last bits of a number without changing what it says.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

A, B = Path(sys.argv[1]), Path(sys.argv[2])
RTOL = float(sys.argv[sys.argv.index("--rtol") + 1]) if "--rtol" in sys.argv else 0.0
close = {"n": 0, "max_rel": 0.0, "where": None}


def near(a: float, b: float, where: str) -> bool:
    """Within --rtol (recorded), or not."""
    rel = abs(a - b) / max(abs(a), abs(b), 1e-300)
    if RTOL and rel <= RTOL:
        close["n"] += 1
        if rel > close["max_rel"]:
            close["max_rel"], close["where"] = rel, where
        return True
    return False
SKIP = {"seconds", "seconds_total", "seconds_per_condition", "timing", "versions", "started", "finished", "key", "date",
        "command", "elapsed", "tokens_per_s", "estimate_seconds", "path", "cache_dir", "created", "wall_s", "layer_cache",
        "record_format", "git_revision", "timings", "model_key"}  # the record header (docs/records.md)
diffs = []
def _data_key(k):
    """A data file keyed by its path (results' data_files): the same file under another NEGDIFF_DATA spelling."""
    return k.split("/data/", 1)[1] if isinstance(k, str) and "/data/" in k else k


def walk(a, b, where):
    if isinstance(a, dict) and isinstance(b, dict):
        a, b = {_data_key(k): v for k, v in a.items()}, {_data_key(k): v for k, v in b.items()}
        for k in sorted(set(a) | set(b)):
            if k in SKIP or "second" in k or k.endswith("_s"):
                continue
            if k not in a or k not in b:
                diffs.append(f"{where}/{k}: only in {'B' if k not in a else 'A'}")
                continue
            walk(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{where}: list length {len(a)} vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b)) or near(a, b, where)):
            diffs.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        if isinstance(a, str) and (str(A) in a or "/tmp/" in a or "runs/" in a):
            return
        diffs.append(f"{where}: {str(a)[:80]!r} vs {str(b)[:80]!r}")
n_json = n_pq = n_md = 0
for f in sorted(A.rglob("*")):
    rel = f.relative_to(A)
    g = B / rel
    if f.name in ("manifest.json", "report.html", "report.md") or not f.is_file() or ".scan_state" in f.name:
        continue
    if not g.exists():
        diffs.append(f"{rel}: missing in B")
        continue
    if f.suffix == ".json":
        walk(json.loads(f.read_text()), json.loads(g.read_text()), str(rel))
        n_json += 1
    elif f.suffix == ".parquet":
        x, y = pd.read_parquet(f), pd.read_parquet(g)
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True)
        except AssertionError as e:
            ok = RTOL > 0 and list(x.columns) == list(y.columns) and len(x) == len(y)
            for c in x.columns if ok else []:
                if x[c].dtype.kind == "f" and y[c].dtype.kind == "f":
                    u, v = x[c].to_numpy(), y[c].to_numpy()
                    same = (u == v) | (np.isnan(u) & np.isnan(v))
                    for i in np.flatnonzero(~same):
                        ok = near(float(u[i]), float(v[i]), f"{rel}:{c}[{i}]") and ok
                else:
                    ok = ok and x[c].equals(y[c])
            if not ok:
                diffs.append(f"{rel}: {str(e)[:200]}")
        n_pq += 1
    elif f.suffix == ".md":
        if f.read_text() != g.read_text():
            diffs.append(f"{rel}: text differs")
        n_md += 1
print(f"compared {n_json} JSON, {n_pq} parquet, {n_md} markdown files")
print("\n".join(diffs if "--all" in sys.argv else diffs[:60]) if diffs else "IDENTICAL (every number in every table and record)")
print(f"{len(diffs)} differences")
if RTOL:
    print(f"{close['n']} float values differ within rtol {RTOL:g} (largest relative {close['max_rel']:.2g} at {close['where']})")
