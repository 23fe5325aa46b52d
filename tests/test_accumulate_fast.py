"""The fast accumulation paths give the numbers of the plain ones: CPU block kernels of NeuronStats, MD from
pre-activations, layer-parallel workers, and a scan streamed on 1 vs 2 threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from negdiff.errors import NegdiffError
from negdiff.mapdiff import MDAccumulator
from negdiff.stats import NeuronStats
from negdiff.workers import LayerWorkers


def _heavy(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    """Neurons of mixed shapes and offsets, some values far off the grid, a few exact zeros and -0.0."""
    rng = np.random.default_rng(seed)
    kinds = [rng.standard_normal((rows, width)), rng.standard_t(2, (rows, width)) * 3 + 7,
             rng.exponential(1, (rows, width)) - 0.3, rng.standard_cauchy((rows, width)) * 1e3]
    x = np.stack(kinds, 2)[np.arange(rows)[:, None], np.arange(width)[None, :], np.arange(width) % 4]
    x[rng.random((rows, width)) < 0.01] = 0.0
    x[rng.random((rows, width)) < 0.01] = -0.0
    return torch.tensor(x, dtype=torch.float32)


def _pair(x: torch.Tensor, cuts: list[int], monkeypatch) -> tuple[NeuronStats, NeuronStats]:
    fast, plain = NeuronStats(x.shape[1]), NeuronStats(x.shape[1])
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        fast.add(x[lo:hi])
        with monkeypatch.context() as m:
            m.setattr(NeuronStats, "cpu_fast_path", False)
            plain.add(x[lo:hi])
    return fast, plain


def _same(fast: NeuronStats, plain: NeuronStats) -> None:
    """Counts, extremes, signs and off-grid sums identical; moments to float32 rounding (the two paths may
    sum 64-row blocks in another order, and the generic one takes a whole batch to float64 when one
    neuron's 4th powers could overflow float32, the block path only that neuron's block)."""
    f, p = fast.state_dict(), plain.state_dict()
    assert fast.n == plain.n
    for key in ("counts", "min", "max", "neg", "center", "scale", "under_sum", "over_sum"):
        assert torch.equal(f[key], p[key]), key
    std = np.sqrt(p["m2"].numpy() / plain.n)
    assert (np.abs(f["mean"].numpy() - p["mean"].numpy()) <= 1e-7 * std + 1e-12 * np.abs(p["mean"].numpy())).all()
    for key in ("m2", "m3", "m4"):  # M3 can be near zero: its scale is std^3 per value
        scale = plain.n * std ** int(key[1])
        assert (np.abs(f[key].numpy() - p[key].numpy()) <= 2e-6 * np.maximum(np.abs(p[key].numpy()), scale)).all(), key


def test_cpu_blocks_equal_the_generic_path(monkeypatch):
    x = _heavy(3000, 600)  # 600 neurons: three blocks of columns; one batch with a 1e9-wide neuron
    fast, plain = _pair(x, [0, 17, 2048, 3000], monkeypatch)
    _same(fast, plain)
    assert fast._state["under_sum"].abs().sum() > 0 and fast._state["over_sum"].abs().sum() > 0  # off-grid seen
    np.testing.assert_allclose(fast.result()["wd"], plain.result()["wd"], rtol=1e-6)


def test_batches_beyond_one_row_block_merge_exactly(monkeypatch):
    x = _heavy(9000, 40, seed=1)  # > 4096 rows: row blocks merged with the shift formulas
    _same(*_pair(x, [0, 2000, 9000], monkeypatch))
    _same(*_pair(x[:3000].to(torch.bfloat16), [0, 3000], monkeypatch))


def test_nonfinite_in_a_late_block_takes_back_the_counts():
    x = _heavy(512, 600, seed=2)
    acc = NeuronStats(600)
    acc.add(x)
    before = {k: v.clone() for k, v in acc._state.items()}
    bad = x.clone()
    bad[100, 590] = float("nan")  # in the last block of columns, after two blocks were scattered
    with pytest.raises(NegdiffError, match="1 non-finite"):
        acc.add(bad)
    assert acc.n == 512 and all(torch.equal(acc._state[k], v) for k, v in before.items())


def test_md_from_pre_activations_equals_the_matmul_path():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.standard_normal((4000, 24)) @ rng.standard_normal((24, 24)), dtype=torch.float64)
    W = torch.tensor(rng.standard_normal((40, 24)), dtype=torch.float64)
    b = torch.tensor(rng.standard_normal(40), dtype=torch.float64)
    x_a, x_b = x[:2000], x[2000:]
    x_b[5] = x_a[5]  # a skipped pair (d = 0)
    y_a, y_b = x_a @ W.T + b, x_b @ W.T + b
    d = (x_a - x_b).norm(dim=1)
    mm, pre = (MDAccumulator(40, top_k=4, compute_dtype=torch.float64) for _ in range(2))
    for lo in range(0, 2000, 700):  # the second and third batches take the threshold path for the top-k
        sl = slice(lo, lo + 700)
        ids = {"pair_id": np.arange(2000)[sl]}
        mm.add(x_a[sl], x_b[sl], W, b, meta=ids)
        pre.add_outputs(y_a[sl], y_b[sl], d[sl], meta=ids)
    r1, r2 = mm.result(), pre.result()
    assert r1["n_pairs"] == r2["n_pairs"] == 1999 and r1["n_skipped"] == r2["n_skipped"] == 1
    np.testing.assert_allclose(r2["md"], r1["md"], rtol=1e-9)
    np.testing.assert_array_equal(r2["top_pair_id"], r1["top_pair_id"])
    for key in ("top_ratio", "top_y_i", "top_y_j", "top_d"):
        np.testing.assert_allclose(r2[key], r1[key], rtol=1e-9, atol=1e-12, err_msg=key)
    with pytest.raises(NegdiffError, match="non-finite"):
        pre.add_outputs(y_a[:3], y_b[:3], torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64))


def test_top_k_through_many_small_batches_equals_brute_force():
    """Late batches have candidates for a few neurons only (the column-subset branch of top_candidates)."""
    rng = np.random.default_rng(4)
    y_a, y_b = (torch.tensor(rng.standard_cauchy((2000, 50))) for _ in range(2))
    d = torch.tensor(rng.uniform(0.5, 2.0, 2000), dtype=torch.float64)
    acc = MDAccumulator(50, top_k=3, compute_dtype=torch.float64)
    for lo in range(0, 2000, 50):
        acc.add_outputs(y_a[lo:lo + 50], y_b[lo:lo + 50], d[lo:lo + 50])
    ratio = ((y_a - y_b).abs() / d[:, None]).numpy()
    order = np.argsort(-ratio, axis=0, kind="stable")[:3].T
    got = acc.result()
    np.testing.assert_array_equal(got["top_pair_id"], order)
    np.testing.assert_array_equal(got["top_y_i"], y_a.numpy()[order, np.arange(50)[:, None]])


def test_layer_workers_run_groups_in_parallel_with_one_intra_op_thread():
    threads = torch.get_num_threads()
    seen: list[tuple[str, int, bool]] = []
    gate = threading.Barrier(2, timeout=30)  # both jobs of a group must be running at the same time
    with LayerWorkers(2) as workers, torch.inference_mode():
        acc = torch.zeros(3)  # an inference tensor: jobs may update it only under the submitter's mode

        def job(i: int) -> None:
            gate.wait()
            seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_inference_mode_enabled()))
            acc[i] += 1

        workers.submit(lambda: job(0))
        workers.submit(lambda: job(1))  # the group is full: both run, the call returns when both are done
        assert acc.tolist() == [1, 1, 0] and len({name for name, _, _ in seen}) == 2
        assert all(n == 1 and mode for _, n, mode in seen)
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="boom"), LayerWorkers(2) as workers:
        workers.submit(lambda: None)
        workers.submit(lambda: (_ for _ in ()).throw(ValueError("boom")))
    ran = []
    with LayerWorkers(1) as inline:
        inline.submit(lambda: ran.append(threading.current_thread() is threading.main_thread()))
    assert ran == [True]


def test_scan_on_two_threads_equals_one_thread(tiny_model_dir, word_corpus):
    from negdiff.data import corpus_documents, token_windows
    from negdiff.experiments.scan import Streamer, neuron_table, plan_pairs, stream
    from negdiff.models import load_model

    loaded = load_model(str(tiny_model_dir))
    windows = token_windows(loaded.tokenizer, corpus_documents(str(word_corpus))[0], 64, 6 * 64)
    tables, tops = [], []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            streamer = Streamer(loaded, plan_pairs(len(windows), 64, 60, 0), top_k=3)
            stream(loaded, windows, streamer, batch=2, show=False)
            tables.append(neuron_table(streamer))
            tops.append([m.result()["top_pair_id"] for m in streamer.md])
    finally:
        torch.set_num_threads(threads)
    assert tables[0].equals(tables[1])
    assert all(np.array_equal(a, b) for a, b in zip(*tops, strict=True))
    assert streamer.md[0].n_pairs == 60 and not streamer.held and not streamer.staged
