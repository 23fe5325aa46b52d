"""The GPU check's comparison (bench/gpu_check.py, bench/gpu_compare.py) on a tiny random model on CPU.

Why: the check itself runs only where a GPU is lent, so here we make sure it can tell: two identical runs
pass every fp32 check, a run of a slightly perturbed model fails them, and near-ties (a neuron at its
layer's WN cut, an item with a margin near 0) are allowed while the same differences away from a tie fail.
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from negdiff.experiments import scan
from negdiff.experiments.ablate import figures
from negdiff.models import random_init_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_check  # noqa: E402
from gpu_compare import Tolerances, compare  # noqa: E402

from conftest import DATA

SHARED = DATA
needs_data = pytest.mark.skipif(not (SHARED / "blimp").is_dir(), reason="staged data not beside the repo")


def _head(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def _word_tokenizer(texts: list[str]):
    """A whitespace word-level tokenizer over ``texts`` (a tiny vocabulary keeps the model's LM head small)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    vocab = {"<unk>": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _side(model, tok, label: str, work: Path, sizes: gpu_check.Sizes) -> dict:
    side = {"label": label, "device": "cpu", "dtype": "float32", "timing": {}}
    loaded = gpu_check.side_model(model, tok, "cpu", "float32")
    gpu_check.run_side(side, loaded, ["scan", "eval"], sizes, work, work / "scan", ("perplexity", "blimp", "tse"), 0)
    return side


@pytest.fixture(scope="module")
def runs(tmp_path_factory, word_corpus):
    """A tiny model run twice, and once with its first layer's weights rounded to bf16 (the defect of a stray
    bf16 cast in the fp32 path). Data: 3 BLiMP paradigms x 2 pairs, 40 TSE pairs, a 1,800-word corpus."""
    root = tmp_path_factory.mktemp("gpu-check")
    data = root / "data"
    rows = {p.name: _head(p, 2) for p in sorted((SHARED / "blimp").glob("*.jsonl.gz"))[:3]}
    for name, r in rows.items():
        _write(data / "blimp" / name, r)
    tse = _head(SHARED / "tse" / "marvin_linzen_2018.jsonl.gz", 40)
    _write(data / "tse" / "marvin_linzen_2018.jsonl.gz", tse)
    texts = [word_corpus.read_text()] + [v for r in [*sum(rows.values(), []), *tse] for k, v in r.items()
                                         if k.startswith("sentence") and isinstance(v, str)]
    tok = _word_tokenizer(texts)
    sizes = gpu_check.Sizes(scan={"corpus": str(word_corpus), "check_corpus": str(word_corpus), "tokens": 512,
                                  "window": 64, "md_pairs": 128, "fraction": 0.05, "check_windows": 1},
                            ablate={}, eval={"limit": 2, "ppl_window": 64, "max_tokens": 640,
                                             "ppl_corpus": str(word_corpus)})
    mp = pytest.MonkeyPatch()
    mp.setenv("NEGDIFF_DATA", str(data))
    for module, name in ((scan, "scan_figures"), (figures, "ablation_figures"), (scan, "negative_region")):
        mp.setattr(module, name, getattr(module, name))  # skip_summaries patches them: undone below
    gpu_check.skip_summaries()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = {**json.loads(gpu_check.CONFIG.read_text()), **gpu_check.TINY_MODEL, "vocab_size": len(tok),
              "max_position_embeddings": 128}
    model = random_init_model(config, seed=0)
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        for p in nudged.model.layers[0].parameters():
            p.copy_(p.to(torch.bfloat16).float())
    try:
        return [_side(m, tok, name, root / name, sizes) for m, name in ((model, "a"), (model, "b"), (nudged, "c"))]
    finally:
        mp.undo()
        torch.set_num_threads(threads)


@needs_data
def test_identical_runs_pass_every_fp32_check(runs):
    a, b, _ = runs
    res = compare(a, b, Tolerances(), gate=True)
    assert res["pass"] and len(res["checks"]) == 8
    assert res["scan"]["wd_max_abs"] == 0 and res["scan"]["wn_jaccard"] == 1
    assert set(res["readouts"]) == {"eval/perplexity", "eval/blimp", "eval/tse"}


@needs_data
def test_a_perturbed_model_fails(runs):
    a, _, c = runs
    res = compare(a, c, Tolerances(), gate=True)
    failed = {k["check"] for k in res["checks"] if not k["pass"]}
    assert not res["pass"]
    assert {"scan: max |dWD|", "scan: held-out perplexity, max relative diff", "read-outs: max |d NLL| per window"} <= failed
    assert compare(a, c, Tolerances().scaled(1e4), gate=True)["pass"]  # the same run passes loose enough limits


def _synthetic(wd: np.ndarray, is_wn: np.ndarray, lp_good: np.ndarray, lp_bad: np.ndarray) -> dict:
    cols = {"lp_good": lp_good, "lp_bad": lp_bad, "correct": (lp_good > lp_bad).astype(float)}
    return {"label": "x", "scan": {"wd": wd, "md": wd, "layer": np.zeros(len(wd), int), "is_wn": is_wn, "check": {}},
            "eval": {"readouts": {"eval/blimp": {"ids": "h", "n": len(lp_good), "cols": cols}}}}


def test_near_ties_pass_and_the_same_differences_away_from_a_tie_fail():
    wd = np.array([0.50, 0.40, 0.30, 0.29999, 0.10])  # cut between 0.30 (WN) and 0.29999 at 0.299995
    wn = np.array([True, True, True, False, False])
    good, bad = np.array([-10.0, -12.0, -20.0]), np.array([-11.0, -12.0005, -19.0])
    ref = _synthetic(wd, wn, good, bad)
    tie = _synthetic(wd, np.array([True, True, False, True, False]), good, bad - np.array([0, 0.001, 0]))
    assert compare(ref, tie, Tolerances(), gate=True)["pass"]  # neuron 2/3 swap at the cut; item 1 flips at a tie
    far_set = _synthetic(wd, np.array([False, True, True, True, False]), good, bad)
    assert not compare(ref, far_set, Tolerances(), gate=True)["pass"]  # neuron 0 (far above the cut) left
    far_flip = copy.deepcopy(ref)
    far_flip["eval"]["readouts"]["eval/blimp"]["cols"]["correct"][0] = 0.0  # margin 1 nat: no tie
    assert not compare(ref, far_flip, Tolerances(), gate=True)["pass"]
    shifted = _synthetic(wd, wn, good - 2e-3, bad)  # every sentence 2e-3 nats off: no flip, over lp_abs
    res = compare(ref, shifted, Tolerances(), gate=True)
    assert [k["check"] for k in res["checks"] if not k["pass"]] == ["read-outs: max |d log-prob| per item"]


def test_random_init_is_seeded_and_ignores_the_global_rng():
    config = {**json.loads(gpu_check.CONFIG.read_text()), **gpu_check.TINY_MODEL, "vocab_size": 97}
    torch.manual_seed(123)
    a = random_init_model(config, seed=3).state_dict()
    torch.manual_seed(456)
    b = random_init_model(config, seed=3).state_dict()
    c = random_init_model(config, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    assert torch.equal(a["model.norm.weight"], torch.ones_like(a["model.norm.weight"]))
