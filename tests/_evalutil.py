"""Helpers for the evaluation tests: a bigram LM with known log-probs, a word tokenizer, tiny Llamas.

The bigram model's logits are log-probabilities, so every sentence score can be worked out by hand
from its probability table: the tests hold the whole evaluation layer to numbers computed without it.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as T
from torch import nn

from conftest import DATA  # noqa: E402  (the one data location: NEGDIFF_DATA)

needs_data = pytest.mark.skipif(not (DATA / "blimp").is_dir(), reason=f"staged datasets not found at {DATA}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tiny-model tests on one thread, restoring the setting afterwards.

    On a shared 2-core machine a 2-thread matmul waits for a preempted peer thread: a [300, 32] x
    [32, 64] product took 24 ms instead of 14 us, which made the suite minutes long under load.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class WordTokenizer:
    """Whitespace tokenizer over a fixed vocabulary; ``add_bos`` mimics Llama-style tokenizers."""

    def __init__(self, words: list[str], add_bos: bool = True):
        self.vocab = {"<s>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 0, 1, 1
        self.add_bos = add_bos

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [self.vocab[w] for w in text.split()]
        return {"input_ids": ([0] if add_special_tokens and self.add_bos else []) + ids}


class BigramLM(nn.Module):
    """logits[t] = log P[token_t, :]: the next-token distribution depends on the current token only."""

    def __init__(self, probs: np.ndarray, max_len: int = 64):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(np.log(probs), dtype=torch.float32), requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=max_len, model_type="bigram")

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def toy_bigram() -> tuple[BigramLM, WordTokenizer, np.ndarray]:
    """A 7-token bigram world: 'the cat runs' beats 'the cat run', 'cat runs' beats 'cats run'."""
    tok = WordTokenizer(["the", "cat", "cats", "runs", "run"])
    v = len(tok.vocab)
    p = np.full((v, v), 0.02)
    p[0, [2, 3, 4]] = [0.4, 0.3, 0.1]  # <s> -> the / cat / cats
    p[2, [3, 4]] = [0.5, 0.3]  # the -> cat / cats
    p[3, [5, 6]] = [0.6, 0.1]  # cat -> runs / run
    p[4, [5, 6]] = [0.2, 0.5]  # cats -> runs / run
    p /= p.sum(axis=1, keepdims=True)
    return BigramLM(p), tok, p


def bigram_logprob(p: np.ndarray, tok: WordTokenizer, text: str, first_scored: bool = True) -> np.ndarray:
    """Token log-probs of ``text`` straight from the table (float64), BOS-prefixed."""
    ids = [0] + tok(text, add_special_tokens=False)["input_ids"]
    lp = np.log([p[a, b] for a, b in zip(ids[:-1], ids[1:], strict=True)])
    return lp if first_scored else lp[1:]


def write_jsonl_gz(path: Path, rows: list[dict] | list[str]) -> Path:
    """Write rows (dicts, or raw lines for malformed-input tests) as a gzip JSON-lines file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def tiny_llama(vocab: int = 49152, seed: int = 0, max_len: int = 256, layers: int = 2) -> nn.Module:
    """A seeded random 2-layer Llama; the real vocab size lets it pair with the real tokenizer."""
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_len,
                        bos_token_id=1, eos_token_id=2)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the default init, so choices are not near-ties
        model.lm_head.weight.mul_(20)
    return model.requires_grad_(False)


@functools.lru_cache(maxsize=1)
def real_tokenizer():
    """The embedded SmolLM2 tokenizer: from negdiff's dequantized cache if present, else the GGUF."""
    from transformers import AutoTokenizer

    try:
        from negdiff.models import cache_root, default_gguf

        for folder in sorted((cache_root() / "models").glob("SmolLM2-135M-Instruct*")):
            if (folder / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(str(folder))
        gguf = default_gguf()
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # the embedded package is an optional dependency
        pytest.skip(f"embedded SmolLM2 tokenizer unavailable: {exc}")
