"""Data-parallel scan: 2 gloo processes under torchrun give the 1-process result (up to float tolerance)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from negdiff.distributed import Rank, from_env, shard

from conftest import DATA

WINDOW = 32
SHARED = DATA


def test_shard_covers_every_item_once():
    for n in (1, 5, 7, 64):
        for world in (1, 2, 3, 4):
            if n < world:
                continue
            blocks = [shard(n, Rank(r, world)) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_rank_from_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env() == Rank(0, 1, 0) and not from_env().active
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_env() == Rank(1, 2, 1) and not from_env().main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port())]


def _scan(cmd_prefix: list[str], model: str, corpus, out, env) -> subprocess.CompletedProcess:
    args = [*cmd_prefix, "-m", "negdiff", "scan", model, "--corpus", str(corpus), "--tokens", str(7 * WINDOW),
            "--window", str(WINDOW), "--md-pairs", "60", "--top-pairs", "3", "--fraction", "0.05",
            "--check-windows", "1", "--check-corpus", str(corpus), "--out", str(out)]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def corpus(word_corpus):
    return word_corpus


def test_two_process_gloo_scan_equals_one_process(tiny_model_dir, corpus, tmp_path):
    env = {**os.environ, "NEGDIFF_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    one = _scan([sys.executable], str(tiny_model_dir), corpus, tmp_path / "one", env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _scan(_torchrun(), str(tiny_model_dir), corpus, tmp_path / "two", env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("Wasserstein neurons") == 1  # only rank 0 reports

    a = pd.read_parquet(tmp_path / "one" / "neurons.parquet")
    b = pd.read_parquet(tmp_path / "two" / "neurons.parquet")
    assert len(a) == len(b) > 0
    for col in ("wd", "wd_below_mean", "wd_above_mean", "wd_neg_raw", "wd_pos_raw", "mean", "std", "skew", "kurtosis",
                "frac_negative", "min", "max", "frac_offgrid", "md"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-6, err_msg=col)
    assert (a.is_wn == b.is_wn).all()
    ra, rb = (json.loads((tmp_path / d / "scan.json").read_text()) for d in ("one", "two"))
    assert rb["timing"]["ranks"] == 2 and ra["timing"]["ranks"] == 1
    # the straddling pairs were joined on rank 0: the same number of MD pairs as one process
    assert rb["summary"]["md_pairs_per_layer"] == ra["summary"]["md_pairs_per_layer"] > 0
    pa = pd.read_parquet(tmp_path / "one" / "pairs.parquet").sort_values(["group", "layer", "neuron", "rank"])
    pb = pd.read_parquet(tmp_path / "two" / "pairs.parquet").sort_values(["group", "layer", "neuron", "rank"])
    np.testing.assert_allclose(pb.ratio.to_numpy(), pa.ratio.to_numpy(), rtol=1e-5)
    assert not list((tmp_path / "two").glob(".scan_state*"))
    assert rb["summary"]["check"]["wn_neg"] == pytest.approx(ra["summary"]["check"]["wn_neg"], rel=1e-5)


def test_two_process_eval_equals_one_process(tiny_model_dir, tmp_path):
    """Scoring shards length buckets over ranks and shares the scores: same items, same numbers."""
    env = {**os.environ, "NEGDIFF_PROGRESS": "0", "OMP_NUM_THREADS": "1", "NEGDIFF_DATA": str(SHARED)}
    args = ["-m", "negdiff", "eval", str(tiny_model_dir), "--tasks", "blimp,tse", "--blimp-limit", "2", "--tse-limit", "2"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*_torchrun(), *args, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    for task in ("blimp", "tse"):
        a = pd.read_parquet(tmp_path / "one" / f"items_{task}.parquet")
        b = pd.read_parquet(tmp_path / "two" / f"items_{task}.parquet")
        assert len(a) == len(b) > 10 and list(a.item_id) == list(b.item_id)
        np.testing.assert_allclose(b.lp_good, a.lp_good, rtol=1e-6)
        np.testing.assert_allclose(b.lp_bad, a.lp_bad, rtol=1e-6)
