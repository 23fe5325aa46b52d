"""train-mini: checkpoints on schedule, loss goes down, reload is exact, seeds and resume are deterministic."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from negdiff import NegdiffError, load_model
from negdiff.cli import main
from negdiff.experiments.train_mini import TrainConfig, lr_at, train
from negdiff.experiments.train_mini import run as train_mini
from negdiff.experiments.train_mini.config import save_steps
from negdiff.experiments.train_mini.data import EOT, batch_rows, token_windows_with_sep

STEPS = 50


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Templated sentences with subject-verb agreement: something a 40k-parameter model can learn."""
    rng = np.random.default_rng(0)
    sing, plur = "cat dog bird girl boy teacher".split(), "cats dogs birds girls boys teachers".split()
    verbs = [("sees", "see"), ("likes", "like"), ("chases", "chase"), ("knows", "know")]
    docs = []
    for _ in range(160):
        sents = []
        for _ in range(6):
            k = int(rng.integers(len(verbs)))
            if rng.random() < 0.5:
                subj, verb = f"The {rng.choice(sing)}", verbs[k][0]
            else:
                subj, verb = f"The {rng.choice(plur)}", verbs[k][1]
            sents.append(f"{subj} {verb} the {rng.choice(sing + plur)}.")
        docs.append(" ".join(sents))
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n\n".join(docs))
    return path


def tiny(corpus, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), vocab=320, tokenizer_chars=200_000, d_model=32, layers=2, heads=4, seq_len=64,
                batch=8, steps=STEPS, lr=3e-3, min_lr=3e-4, warmup=5, val_windows=4)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("mini") / "a"
    return out, train(tiny(corpus), out)


def test_schedule_and_data_order():
    assert save_steps(50, "log", 16) == [0, 16, 32, 50]
    assert save_steps(1100, "log", 16) == [0, 16, 32, 64, 128, 256, 512, 1024, 1100]
    assert save_steps(20, "0,10,final") == [0, 10, 20]
    for bad in ("0,30", "x,1"):
        with pytest.raises(NegdiffError, match="--save"):
            save_steps(20, bad)
    # Every epoch visits each window exactly once, in a seeded order that differs between epochs.
    rows = np.concatenate([batch_rows(s, 5, 10, seed=3) for s in range(4)])
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert not np.array_equal(rows[:10], rows[10:20])
    assert np.array_equal(rows, np.concatenate([batch_rows(s, 5, 10, seed=3) for s in range(4)]))
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4) and lr_at(100, cfg) == pytest.approx(1e-4)


def test_stream_puts_separator_before_every_document(run_a):
    _, run = run_a
    docs = ["one two three", "four five", "six"]
    windows, used = token_windows_with_sep(run.tokenizer, docs, seq_len=4, need=100)
    flat = windows.flatten().tolist()
    sep = run.tokenizer.convert_tokens_to_ids(EOT)
    assert used == 3 and flat[0] == sep
    expected = [sep] + run.tokenizer(docs[0])["input_ids"] + [sep] + run.tokenizer(docs[1])["input_ids"]
    assert flat == (expected + [sep] + run.tokenizer(docs[2])["input_ids"])[: len(flat)]


def test_checkpoints_on_schedule(run_a):
    out, run = run_a
    assert sorted(p.name for p in out.glob("step*")) == ["step0", "step16", "step32", "step50"]
    for step in (0, 16, 32, 50):
        folder = out / f"step{step}"
        for name in ("config.json", "model.safetensors", "tokenizer.json", "checkpoint.json"):
            assert (folder / name).is_file(), f"{folder}/{name}"
        info = json.loads((folder / "checkpoint.json").read_text())
        assert info["step"] == step and info["tokens_seen"] == step * 8 * 64
    # Only the latest checkpoint carries the optimizer and RNG state.
    assert [p.parent.name for p in out.glob("step*/resume_state.pt")] == ["step50"]
    rec = json.loads((out / "train.json").read_text())
    assert rec["status"] == "done" and len(rec["losses"]) == STEPS and rec["tokens_seen"] == STEPS * 8 * 64
    assert [c["step"] for c in rec["checkpoints"]] == [0, 16, 32, 50]
    assert rec["model"]["n_params"] == sum(p.numel() for p in run.model.parameters())


def test_loss_goes_down(run_a):
    _, run = run_a
    rec = run.record
    vocab = rec["tokenizer"]["vocab_size"]
    val = {c["step"]: c["val_loss"] for c in rec["checkpoints"]}
    # A fresh model predicts nearly uniformly: its loss is ln(vocab).
    assert val[0] == pytest.approx(math.log(vocab), abs=0.1)
    assert val[50] < val[0] - 2.0 and val[50] < val[16]
    assert np.mean(rec["losses"][-10:]) < np.mean(rec["losses"][:5]) - 2.0


def test_reloaded_checkpoint_gives_identical_logits(run_a):
    out, run = run_a
    loaded = load_model(str(out / "step50"))
    assert loaded.info.source == "local" and loaded.info.max_length == 64
    assert len(loaded.sites) == 2 and loaded.sites[0].kind == "silu"
    ids = torch.randint(1, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, run.model(ids).logits)
    assert loaded.tokenizer("The cats see")["input_ids"] == run.tokenizer("The cats see")["input_ids"]


def test_same_seed_same_weights_other_seed_differs(run_a, corpus, tmp_path):
    out, _ = run_a
    for name, seed in (("b", 0), ("b2", 0), ("c", 1)):
        train(tiny(corpus, steps=16, save="0,final", seed=seed), tmp_path / name)
    b, b2, c = (load_file(tmp_path / n / "step16" / "model.safetensors") for n in ("b", "b2", "c"))
    assert all(torch.equal(b[k], b2[k]) for k in b)
    assert not any(torch.equal(b[k], c[k]) for k in b if k.endswith("proj.weight"))
    # The initialisation depends on the seed only (run_a trained 50 steps from the same step 0).
    a0, b0 = (load_file(p / "step0" / "model.safetensors") for p in (out, tmp_path / "b"))
    assert all(torch.equal(a0[k], b0[k]) for k in a0)


def test_resume_continues_to_the_same_weights(run_a, corpus, tmp_path, monkeypatch):
    out_a, run = run_a
    real = train_mini.write_checkpoint

    def interrupt_after_32(out, step, *args, **kw):
        path = real(out, step, *args, **kw)
        if step == 32:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_mini, "write_checkpoint", interrupt_after_32)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(corpus), tmp_path / "r")
    monkeypatch.setattr(train_mini, "write_checkpoint", real)
    assert (tmp_path / "r" / "step32" / "resume_state.pt").is_file() and not (tmp_path / "r" / "step50").exists()
    resumed = train(tiny(corpus), tmp_path / "r")
    assert resumed.record["resumed_from"] == 32
    assert resumed.record["losses"] == run.record["losses"]
    a = load_file(out_a / "step50" / "model.safetensors")
    r = load_file(tmp_path / "r" / "step50" / "model.safetensors")
    assert all(torch.equal(a[k], r[k]) for k in a)


def test_finished_run_is_reused_and_other_settings_refused(run_a, corpus):
    out, _ = run_a
    stamp = (out / "step50" / "model.safetensors").stat().st_mtime_ns
    again = train(tiny(corpus), out)
    assert again.record["status"] == "done"
    assert (out / "step50" / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(NegdiffError, match="--force"):
        train(tiny(corpus, lr=1e-3), out)


def test_neox_gelu_model_loads(corpus, tmp_path):
    run = train(tiny(corpus, arch="neox", steps=4, save="0,final"), tmp_path / "neox")
    loaded = load_model(str(tmp_path / "neox" / "step4"))
    assert loaded.info.model_type == "gpt_neox" and loaded.sites[0].kind == "gelu"
    assert loaded.sites[0].width == 4 * 32
    assert run.record["model"]["activation"] == "gelu"


def test_cli_train_and_bad_options(corpus, tmp_path, capsys):
    args = ["train-mini", "--corpus", str(corpus), "--vocab", "300", "--d-model", "16", "--layers", "1",
            "--heads", "2", "--seq-len", "32", "--batch", "4", "--steps", "3", "--val-windows", "2",
            "--save", "0,final", "--threads", "1", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    assert "held-out loss" in capsys.readouterr().out
    assert (tmp_path / "cli" / "step3" / "model.safetensors").is_file()
    assert main([*args[:-2], "--heads", "3", "--out", str(tmp_path / "x")]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main([*args[:-2], "--corpus", str(tmp_path / "none.txt"), "--out", str(tmp_path / "y")]) == 2
    assert "none.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-mini", "--arch", "gpt9", "--out", str(tmp_path / "z")])


@pytest.mark.parametrize("arch, act, other", [("llama", "relu", "silu"), ("neox", "relu", "gelu")])
def test_activation_contrast_differs_only_in_the_activation(corpus, tmp_path, arch, act, other):
    """--activation: same initial weights and data order as the default activation, the hooked kind is the new
    one, and training then diverges (the activation matters); the default keeps the key of earlier runs."""
    runs = {a: train(tiny(corpus, arch=arch, activation=a, steps=8, save="0,final"), tmp_path / a) for a in (act, other)}
    w0 = {a: load_file(tmp_path / a / "step0" / "model.safetensors") for a in runs}
    assert all(torch.equal(w0[act][k], w0[other][k]) for k in w0[act])
    w8 = {a: load_file(tmp_path / a / "step8" / "model.safetensors") for a in runs}
    assert not all(torch.equal(w8[act][k], w8[other][k]) for k in w8[act])
    assert load_model(str(tmp_path / act / "step8")).sites[0].kind == "relu"
    assert runs[act].record["model"]["activation"].startswith("relu")
    assert "activation" not in tiny(corpus, arch=arch).key_dict() and tiny(corpus, activation="relu").act == "relu"
    # the same batches in the same order: the first step's loss is computed on the same data by the same weights
    # except for the activation, so the two runs' loss curves start from comparable, not identical, values
    assert runs[act].record["losses"][0] != runs[other].record["losses"][0]
