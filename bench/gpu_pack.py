"""Pack the few data files and the tokenizer that bench/gpu_check.py needs into one small folder.

Why: the GPU machine is bare (no package index, no network) and takes only tens of MiB from here, while
``$NEGDIFF_DATA`` holds ~22 MiB and the embedded GGUF 98 MB. The check reads ``NEGDIFF_DATA=bench/gpu_data``
with the same loaders as a normal run, so the folder mirrors the data layout with each file cut down:

* ``wikitext2_raw/``  the test file whole (scan and calibration corpus: a run reads only its start) and the
  first ``--valid-lines`` lines of the validation file (~71k tokens: 34 windows of 2048). Perplexity
  tokenizes its whole corpus on every call, ~2 s for the full 268k tokens on one core, once per condition
  and side: cut, that cost no longer hides the device's. The seeded windows then differ from a full-data
  run's, identically on every side;
* ``blimp/``          the first ``--blimp`` pairs of every paradigm (runs take the first k: the same pairs);
* ``tse/``            a seeded ``--tse`` pairs per task, chosen by negdiff's own ``limited`` rule;
* the eight multiple-choice benchmarks, the first ``--mc`` items each (runs take the first k);
* ``tokenizer/``      the embedded model's tokenizer as ``save_pretrained`` writes it, tokenizer.json gzipped
  (3.4 MiB -> ~0.8 MiB): a random-init model of the embedded shape then reads real text the real way.

It writes ``MANIFEST.json`` (file sizes and sha256) and a ``.gitignore`` of ``*`` (the folder is built, not
committed: hand it to the device run with ``carry=["bench/gpu_data"]``).

Usage: NEGDIFF_DATA=../shared/data python3 bench/gpu_pack.py [--out bench/gpu_data]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
from pathlib import Path

from negdiff.data import data_dir, iter_jsonl, open_text
from negdiff.results import file_sha256
from negdiff.tasks.base import limited
from negdiff.tasks.multiple_choice import FORMATS

LIMIT_MIB = 5.0


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def pack_tokenizer(out: Path) -> None:
    """The embedded model's tokenizer files (read offline from the GGUF), tokenizer.json gzipped."""
    from transformers import AutoTokenizer

    from negdiff.models import default_gguf

    gguf = default_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for f in Path(tmp).iterdir():
            if f.name == "tokenizer.json":
                with open(f, "rb") as src, gzip.open(out / "tokenizer.json.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(f, out / f.name)
    probe = "The keys to the cabinet are on the table.\n\nA second document."
    (out / "PROBE.json").write_text(json.dumps({"text": probe, "ids": tok(probe, add_special_tokens=False)["input_ids"]}))


def pack(src: Path, out: Path, blimp: int, tse: int, mc: int, valid_lines: int = 1000,
         tokenizer: bool = True) -> dict:
    """Write the cut-down data folder ``out`` from the data folder ``src``; returns the manifest."""
    if out.exists():
        shutil.rmtree(out)
    (out / "wikitext2_raw").mkdir(parents=True)
    shutil.copy(src / "wikitext2_raw" / "wiki.test.raw.gz", out / "wikitext2_raw" / "wiki.test.raw.gz")
    with open_text(src / "wikitext2_raw" / "wiki.valid.raw.gz") as fh:
        head = fh.readlines()[:valid_lines]
    with gzip.open(out / "wikitext2_raw" / "wiki.valid.raw.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(head)
    for path in sorted((src / "blimp").glob("*.jsonl.gz")):
        rows = [row for _, row in iter_jsonl(path)][:blimp]
        _write_jsonl(out / "blimp" / path.name, rows)
    rows = [row for _, row in iter_jsonl(src / "tse" / "marvin_linzen_2018.jsonl.gz")]
    _write_jsonl(out / "tse" / "marvin_linzen_2018.jsonl.gz", limited(rows, "task", tse, "seeded", 0))
    for fmt in {(f.folder, f.file) for f in FORMATS.values()} | {("lambada_openai", "lambada_openai_test.jsonl.gz")}:
        folder, name = fmt
        rows = [row for _, row in iter_jsonl(src / folder / name)][:mc]
        _write_jsonl(out / folder / name, rows)
    if tokenizer:
        pack_tokenizer(out / "tokenizer")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {"source": str(src), "limits": {"blimp_per_paradigm": blimp, "tse_per_task": tse, "mc_items": mc,
                                               "wikitext2_valid_lines": valid_lines},
                "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}}
    manifest["total_mib"] = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / ".gitignore").write_text("*\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/gpu_data")
    ap.add_argument("--blimp", type=int, default=20, help="pairs per BLiMP paradigm (default %(default)s)")
    ap.add_argument("--tse", type=int, default=20, help="pairs per TSE task (default %(default)s)")
    ap.add_argument("--mc", type=int, default=50, help="items per multiple-choice benchmark (default %(default)s)")
    ap.add_argument("--valid-lines", type=int, default=1000, help="lines of WikiText-2 valid kept (default %(default)s)")
    ap.add_argument("--no-tokenizer", action="store_true", help="leave the tokenizer out (the embedded model is there)")
    args = ap.parse_args()
    manifest = pack(data_dir(), Path(args.out), args.blimp, args.tse, args.mc, args.valid_lines,
                    not args.no_tokenizer)
    print(f"wrote {args.out}: {len(manifest['files'])} files, {manifest['total_mib']:.2f} MiB")
    if manifest["total_mib"] > LIMIT_MIB:
        raise SystemExit(f"the pack is {manifest['total_mib']:.1f} MiB, over the {LIMIT_MIB} MiB meant for an upload")


if __name__ == "__main__":
    main()
