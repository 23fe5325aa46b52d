"""Every user mistake of issue #21's bad-input table: one line on stderr (``negdiff: error: <problem>; <fix>``),
exit code 2, no traceback, and nothing written to --out; caught before the model loads wherever it can be.

One table, run in-process through ``negdiff.cli.main`` (and a few rows as real ``python -m negdiff``
processes), on tiny local models built here: the 2-layer Llama of ``tiny_model_dir``, a wider and a
reseeded one (a scan made on another model), an OPT (ReLU) one and a folder without tokenizer files.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T

from negdiff import cli

from conftest import DATA

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="staged data not beside the repo")
SRC = Path(__file__).resolve().parents[1] / "src"


def _llama(path: Path, tokenizer, width: int = 48, seed: int = 0, save_tokenizer: bool = True) -> Path:
    cfg = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=width, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
                        pad_token_id=2, max_position_embeddings=256)
    torch.manual_seed(seed)
    T.LlamaForCausalLM(cfg).save_pretrained(path)
    if save_tokenizer:
        tokenizer.save_pretrained(path)
    return path


def _opt(path: Path, tokenizer) -> Path:
    cfg = T.OPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=72, word_embed_proj_dim=32,
                      vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    T.OPTForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SCAN_ARGS = ["--tokens", "1024", "--window", "128", "--md-pairs", "200", "--fraction", "0.05", "--check-windows", "0"]


@pytest.fixture(scope="module")
def env(tiny_model_dir, real_tokenizer, tmp_path_factory):
    """Paths the rows name: models, a finished scan of ``model`` (and of the OPT), bad corpora, a partial data folder."""
    root = tmp_path_factory.mktemp("bad")
    words = "the a of to in cat dog sat ran on mat and was is it house tree".split()
    gen = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(len(words), (80,), generator=gen)) for _ in range(40)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(docs))
    latin1 = root / "latin1.txt"
    latin1.write_bytes(("café déjà vu " * 50).encode("latin-1"))
    gz_txt = root / "gz.txt"
    gz_txt.write_bytes(gzip.compress(corpus.read_bytes()))
    a_file = root / "a_file"
    a_file.write_text("not a folder\n")
    readonly = root / "readonly"
    readonly.mkdir(exist_ok=True)
    readonly.chmod(0o555)  # root writes anyway: the test then denies the write check for this folder only
    partial = root / "partial_data"  # BLiMP and WikiText only: no TSE, no UD EWT, no benchmarks
    partial.mkdir()
    if DATA.is_dir():
        for name in ("blimp", "wikitext2_raw"):
            (partial / name).symlink_to(DATA / name)
    blimp1 = root / "blimp1_data"  # one paradigm of 67
    (blimp1 / "blimp").mkdir(parents=True)
    if DATA.is_dir():
        first = sorted(p for p in (DATA / "blimp").iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))[0]
        (blimp1 / "blimp" / first.name).symlink_to(first)
    paths = {
        "model": str(tiny_model_dir),
        "wide": str(_llama(root / "wide", real_tokenizer, width=64)),
        "other": str(_llama(root / "other", real_tokenizer, seed=1)),
        "notok": str(_llama(root / "notok", real_tokenizer, save_tokenizer=False)),
        "opt": str(_opt(root / "opt", real_tokenizer)),
        "corpus": str(corpus), "latin1": str(latin1), "gz_txt": str(gz_txt), "file": str(a_file), "readonly": str(readonly),
        "partial": str(partial), "blimp1": str(blimp1), "root": str(root),
        "scan": str(root / "scan"), "opt_scan": str(root / "opt_scan"),
    }
    assert cli.main(["scan", paths["model"], "--corpus", str(corpus), *SCAN_ARGS, "--out", paths["scan"],
                     "--threads", "1"]) == 0
    sizes = root / "sizes.json"
    sizes.write_text(json.dumps({"scan": {"tokens": "many"}}))
    paths["sizes"] = str(sizes)
    return paths


M = "{model}"
C = ["--corpus", "{corpus}"]
SCAN = ["--scan", "{scan}"]
ROWS = [
    # 1. option ranges (checked in the configs' __post_init__, so presets and --sizes get them too)
    ("scan-tokens-0", ["scan", M, *C, "--tokens", "0"], "--tokens must be at least 1"),
    ("scan-fraction-1.5", ["scan", M, *C, "--fraction", "1.5"], "--fraction must be in (0, 1)"),
    ("scan-window-1", ["scan", M, *C, "--window", "1"], "--window must be at least 2"),
    ("scan-window-over-tokens", ["scan", M, *C, "--tokens", "64", "--window", "128"], "smaller than one window"),
    ("scan-md-pairs-neg", ["scan", M, *C, "--md-pairs", "-5"], "--md-pairs must be at least 1"),
    ("ablate-seeds-0", ["ablate", M, *SCAN, "--seeds", "0"], "--seeds must be at least 1"),
    ("ablate-fraction-0", ["ablate", M, *SCAN, "--fraction", "0"], "--fraction must be in (0, 1)"),
    ("ablate-blimp-limit-neg", ["ablate", M, *SCAN, "--blimp-limit", "-3"], "--blimp-limit must be at least 1"),
    ("ablate-n-boot", ["ablate", M, *SCAN, "--n-boot", "10"], "--n-boot must be >= 1000"),
    ("pairs-window-1", ["pairs", M, *SCAN, "--window", "1"], "--window must be at least 2"),
    ("pairs-md-pairs-0", ["pairs", M, *SCAN, "--md-pairs", "0"], "--md-pairs must be at least 1"),
    ("pos-seeds-0", ["pos", M, *SCAN, "--seeds", "0"], "--seeds must be at least 1"),
    ("layers-n-boot-0", ["layers", M, *SCAN, "--n-boot", "0"], "--n-boot must be at least 1"),
    ("layers-group-size-0", ["layers", M, *SCAN, "--group-size", "0"], "--group-size must be at least 1"),
    ("eval-limit-negative", ["eval", M, "--tasks", "blimp", "--blimp-limit", "-1"], "--blimp-limit must be at least 1"),
    ("eval-n-boot-0", ["eval", M, "--tasks", "blimp", "--n-boot", "0"], "--n-boot must be at least 1"),
    # 2. the output path
    ("scan-out-file", ["scan", M, *C], "is an existing file, not a folder", "{file}"),
    ("eval-out-file", ["eval", M, "--tasks", "blimp"], "is an existing file, not a folder", "{file}"),
    ("ablate-out-under-file", ["ablate", M, *SCAN], "is a file, not a folder", "{file}/sub"),
    ("reproduce-out-file", ["reproduce", M], "is an existing file, not a folder", "{file}"),
    ("scan-out-readonly", ["scan", M, *C], "is not writable", "{readonly}/sub"),
    ("reproduce-out-readonly", ["reproduce", M], "is not writable", "{readonly}/run"),
    ("eval-data-not-a-folder", ["eval", M, "--tasks", "blimp", "--data", "{root}/no_such_folder"], "is not a folder"),
    # 3. data presence, before the model loads (a partial data folder: BLiMP and WikiText only)
    ("eval-missing-tse", ["eval", M, "--tasks", "blimp,tse", "--data", "{partial}"], "dataset folder 'tse' not found"),
    ("ablate-missing-tse", ["ablate", M, *SCAN, "--tasks", "blimp,tse"], "dataset folder 'tse' not found"),
    ("layers-missing-tse", ["layers", M, *SCAN], "dataset folder 'tse' not found"),
    ("pos-missing-ewt", ["pos", M, *SCAN], "dataset folder 'ud_ewt' not found"),
    ("pairs-missing-ewt", ["pairs", M, *SCAN], "dataset folder 'ud_ewt' not found"),
    # 4. corpus encoding
    ("scan-latin1", ["scan", M, "--corpus", "{latin1}"], "is not UTF-8 text"),
    ("scan-gzip-as-txt", ["scan", M, "--corpus", "{gz_txt}"], "holds gzip-compressed data but is not named .gz"),
    ("eval-ppl-latin1", ["eval", M, "--tasks", "perplexity", "--ppl-corpus", "{latin1}"], "is not UTF-8 text"),
    # 5. upstream inputs made on another model (other widths, or other weights of the same shape)
    ("ablate-wide", ["ablate", "{wide}", *SCAN, "--no-dose"], "was made on"),
    ("ablate-other-weights", ["ablate", "{other}", *SCAN, "--no-dose"], "was made on"),
    ("pairs-wide", ["pairs", "{wide}", *SCAN], "was made on"),
    ("layers-wide", ["layers", "{wide}", *SCAN], "was made on"),
    ("pos-other-weights", ["pos", "{other}", *SCAN], "was made on"),
    ("eval-neurons-wide", ["eval", "{wide}", "--tasks", "blimp", "--neurons", "{scan}/wn.json"], "was made on"),
    # 6./7. a ReLU (OPT) model
    ("ablate-relu", ["ablate", "{opt}", "--scan", "{opt_scan}", "--no-dose"], "ReLU"),
    # 8. a model folder without tokenizer files
    ("eval-no-tokenizer", ["eval", "{notok}", "--tasks", "blimp"], "has no tokenizer files"),
    # 11. --mode mean cannot work from the command line
    ("eval-mode-mean", ["eval", M, "--tasks", "blimp", "--neurons", "{scan}/wn.json", "--mode", "mean"],
     "invalid choice: 'mean'"),
    ("layers-mode-mean", ["layers", M, *SCAN, "--mode", "mean"], "argument --mode: invalid choice: 'mean'"),
    # 12. reproduce --sizes with a wrong value type
    ("reproduce-sizes-type", ["reproduce", M, "--sizes", "{sizes}"], "tokens must be a whole number, got 'many'"),
]
#: rows whose data folder is the partial one (NEGDIFF_DATA too, so the lookup cannot fall back to the full one)
PARTIAL = {"eval-missing-tse", "ablate-missing-tse", "layers-missing-tse", "pos-missing-ewt", "pairs-missing-ewt"}
#: argparse's own refusals: its usage line comes first, then the one error line
ARGPARSE = {"eval-mode-mean", "layers-mode-mean"}
#: rows whose check needs the loaded model (its weights hash, widths or activation); every other row must fail
#: before the model loads (no "Loading weights" progress bar on stderr)
AFTER_LOAD = {"ablate-wide", "ablate-other-weights", "pairs-wide", "layers-wide", "pos-other-weights",
              "eval-neurons-wide", "ablate-relu"}
#: rows also run as real processes
SUBPROCESS = {"scan-tokens-0", "eval-missing-tse", "scan-gzip-as-txt"}


def _lines(err: str) -> list[str]:
    """stderr's lines but transformers' weight-loading progress bar (tqdm: carriage returns, it/s)."""
    return [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln and "\r" not in ln]


def _snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(path.rglob("*"))}


def _argv(row, env, out: str) -> list[str]:
    name, argv, _msg, *rest = row
    out_arg = rest[0] if rest else out
    return [a.format(**env) for a in argv] + ["--out", out_arg.format(**env), "--threads", "1"]


@pytest.fixture(scope="module")
def opt_scan(env):
    """A scan of the OPT (ReLU) model (case 6: it used to crash in mapping difficulty)."""
    assert cli.main(["scan", env["opt"], "--corpus", env["corpus"], *SCAN_ARGS, "--out", env["opt_scan"],
                     "--threads", "1"]) == 0
    return Path(env["opt_scan"])


@needs_data
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(row, env, opt_scan, tmp_path, capsys, monkeypatch):
    name, _argv_t, message, *_ = row
    out = str(tmp_path / "out")
    argv = _argv(row, env, out)
    out_path = Path(argv[argv.index("--out") + 1])
    before = _snapshot(out_path)
    monkeypatch.setenv("NEGDIFF_CACHE", str(tmp_path / "no-cache"))
    if name in PARTIAL:
        monkeypatch.setenv("NEGDIFF_DATA", env["partial"])
    if "readonly" in name and os.access(env["readonly"], os.W_OK):  # running as root: deny this folder only
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == Path(env["readonly"])
                            and mode & os.W_OK else real_access(p, mode, **k))
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = _lines(err)
    assert code == 2, err
    assert "Traceback" not in err
    assert ("Loading weights" in err) == (name in AFTER_LOAD), err
    assert message in err, err
    if name in ARGPARSE:
        assert lines[-1].startswith("negdiff ") and ": error: " in lines[-1]
    else:
        assert lines == [lines[-1]] and lines[-1].startswith("negdiff: error: "), err
    assert _snapshot(out_path) == before, f"{out_path} changed"
    if name in SUBPROCESS:
        run_env = {**os.environ, "PYTHONPATH": str(SRC), "NEGDIFF_PROGRESS": "0",
                   **({"NEGDIFF_DATA": env["partial"]} if name in PARTIAL else {})}
        proc = subprocess.run([sys.executable, "-m", "negdiff", *argv], capture_output=True, text=True, env=run_env,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        sub_lines = _lines(proc.stderr)
        assert len(sub_lines) == 1 and sub_lines[0].startswith("negdiff: error: ") and message in sub_lines[0], proc.stderr
        assert _snapshot(out_path) == before


@needs_data
def test_eval_says_partial_blimp_and_drops_stale_items(env, tmp_path, capsys):
    """Case 9: one staged BLiMP paradigm is scored but said so; case 10: a rerun with other tasks leaves no
    items file of the earlier run beside its results.json."""
    out = tmp_path / "eval"
    base = [env["model"], "--out", str(out), "--blimp-limit", "1", "--n-boot", "100", "--threads", "1"]
    assert cli.main(["eval", *base, "--tasks", "blimp", "--data", env["blimp1"]]) == 0
    captured = capsys.readouterr()
    assert "(1 of 67 BLiMP paradigms)" in captured.out and "holds 1 of BLiMP's 67 paradigms" in captured.err
    record = json.loads((out / "results.json").read_text())
    assert record["tasks"]["blimp"]["config"]["n_paradigms"] == 1
    assert (out / "items_blimp.parquet").is_file()
    assert cli.main(["eval", *base, "--tasks", "tse", "--tse-limit", "2"]) == 0
    assert sorted(p.name for p in out.glob("items_*.parquet")) == ["items_tse.parquet"]
    assert list(json.loads((out / "results.json").read_text())["item_files"]) == ["tse"]
