"""train-mini's inputs: the checkpoint schedule, the data order, the tokenizer and the token stream.

Pure functions of the settings and the corpus, kept apart from the training loop so each is tested on
its own: the batch of a step depends only on ``(seed, step)``, which is what makes a resumed run
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from negdiff.errors import NegdiffError
from negdiff.progress import status
from negdiff.scoring import prefix_id

EOT = "<|endoftext|>"


def batch_rows(step: int, batch: int, n_windows: int, seed: int) -> np.ndarray:
    """The training windows of ``step``: a fresh seeded permutation of all windows per epoch."""
    flat = np.arange(step * batch, (step + 1) * batch)
    epochs, pos = flat // n_windows, flat % n_windows
    perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(n_windows) for e in np.unique(epochs)}
    return np.array([perms[int(e)][p] for e, p in zip(epochs, pos)], dtype=np.int64)


def train_bpe(docs: list[str], vocab: int, max_chars: int):
    """A byte-level BPE (GPT-2 style pre-tokenization) trained on the first ``max_chars`` of ``docs``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sample, chars = [], 0
    for d in docs:
        sample.append(d)
        chars += len(d)
        if chars >= max_chars:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT)


def get_tokenizer(kind: str, docs: list[str], folder: Path, vocab: int, max_chars: int, corpus: str = "the corpus"):
    """The run's tokenizer: reused from ``folder`` (a resumed run), else trained / loaded and saved there.

    ``kind``: ``train`` (a byte-level BPE of ``vocab`` tokens), ``default`` (the embedded model's) or a
    tokenizer folder.
    """
    from transformers import AutoTokenizer

    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    if kind == "train":
        status(f"training a {vocab}-token byte-level BPE on {max_chars:,} characters of {corpus}")
        tok = train_bpe(docs, vocab, max_chars)
    elif kind == "default":
        from negdiff.models import default_gguf

        gguf = default_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    elif Path(kind).is_dir():
        tok = AutoTokenizer.from_pretrained(kind)
    else:
        raise NegdiffError(f"--tokenizer: expected train, default or a tokenizer folder, got '{kind}'")
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tokenizer."))
    os.chmod(tmp, 0o755)
    tok.save_pretrained(tmp)
    os.replace(tmp, folder)
    return tok


def token_windows_with_sep(tokenizer, docs: list[str], seq_len: int, need: int) -> tuple[torch.Tensor, int]:
    """``[n, seq_len]`` windows of one stream ``sep doc sep doc ...`` (at most ``need`` windows);
    also the number of documents used. The separator is the scorer's prefix token."""
    sep = prefix_id(tokenizer)
    ids: list[int] = []
    used = 0
    for lo in range(0, len(docs), 256):
        chunk = docs[lo:lo + 256]
        for row in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
            ids.append(sep)
            ids.extend(row)
        used = lo + len(chunk)
        if len(ids) >= need * seq_len:
            break
    n = min(len(ids) // seq_len, need)
    return torch.tensor(ids[:n * seq_len], dtype=torch.long).view(n, seq_len), used
