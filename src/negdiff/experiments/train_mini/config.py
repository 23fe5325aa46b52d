"""What decides train-mini's weights: :class:`TrainConfig`, whose fields are the flags of ``negdiff train-mini``
(torch-free, so the command line is built without the machinery), and the checkpoint schedule it implies."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from negdiff.errors import NegdiffError
from negdiff.options import opt

ARCHS = ("llama", "neox")
#: MLP activations a model can be trained with (relu: the OPT-like contrast; with --arch llama it is ReGLU)
ACTIVATIONS = ("silu", "gelu", "relu")
#: each architecture's own activation (Llama's SwiGLU, Pythia's GELU)
DEFAULT_ACTIVATION = {"llama": "silu", "neox": "gelu"}


def save_steps(steps: int, save: str, first: int = 16) -> list[int]:
    """Checkpoint steps: ``log`` = 0, first, 2 first, 4 first, ... below ``steps``, and ``steps``."""
    if save == "log":
        out, s = {0, steps}, first
        while s < steps:
            out.add(s)
            s *= 2
        return sorted(out)
    try:
        out = {steps if x.strip() == "final" else int(x) for x in save.split(",") if x.strip()}
    except ValueError:
        raise NegdiffError(f"--save: expected 'log' or a comma list of steps (e.g. 0,100,final), got '{save}'") from None
    bad = sorted(s for s in out if not 0 <= s <= steps)
    if bad or not out:
        raise NegdiffError(f"--save: steps must lie in 0..{steps} (--steps), got {bad or 'nothing'}")
    return sorted(out | {steps})


@dataclass
class TrainConfig:
    """Every setting that decides the weights (all hashed into the run's key).

    Defaults: 4.2M parameters (6 x 192, gated MLP width 512, tied 8,192-token embeddings), 128-token
    windows, batches of 32 (4,096 tokens), 1,100 steps (~4.5M tokens): about 15 minutes on 2 CPU cores.
    """

    corpus: str = opt("train-corpus", "train-corpus or a .txt/.txt.gz/.jsonl file")
    arch: str = opt("llama", "llama: gated MLP (act(gate) x up); neox: ungated, as Pythia", choices=ARCHS)
    activation: str | None = opt(None, "MLP activation (the activation contrast: same data order, seed, width and "
                                 "steps, only this differs)", choices=ACTIVATIONS,
                                 shown="silu for llama (SwiGLU), gelu for neox")
    tokenizer: str = opt("train", "train (a BPE on the corpus), default (the embedded model's 49,152 tokens; ~5x "
                         "slower) or a tokenizer folder")
    vocab: int = opt(8192, "BPE vocabulary size")
    tokenizer_chars: int = opt(8_000_000, "corpus characters the BPE is trained on")
    d_model: int = opt(192, "hidden size")
    layers: int = opt(6, "layers")
    heads: int = opt(6, "attention heads")
    ffn: int | None = opt(None, "MLP width", shown="8/3 d rounded to 64 for llama, 4 d for neox")
    seq_len: int = opt(128, "window length")
    batch: int = opt(32, "windows per step")
    steps: int = opt(1100, "optimizer steps")
    lr: float = opt(2e-3, "peak learning rate")
    min_lr: float = opt(2e-4, "final learning rate")
    warmup: int = opt(50, "warm-up steps")
    weight_decay: float = opt(0.1, "AdamW weight decay")
    grad_clip: float = opt(1.0, "gradient-norm clip")
    seed: int = opt(0, "initialisation and data-order seed")
    save: str = opt("log", "checkpoints: log (0, 16, 32, 64, ..., final) or a list such as 0,100,final")
    first_save: int = opt(16, "first log-spaced step")
    val_windows: int = opt(32, "held-out windows")

    @property
    def act(self) -> str:
        """The activation the model is built with."""
        return self.activation or DEFAULT_ACTIVATION[self.arch]

    def key_dict(self) -> dict[str, Any]:
        """The settings hashed into the run's key (an unset --activation leaves the key of earlier runs as it was)."""
        out = self.to_dict()
        if out["activation"] is None:
            del out["activation"]
        return out

    def __post_init__(self) -> None:
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise NegdiffError(f"--activation: unknown activation '{self.activation}'; choose {', '.join(ACTIVATIONS)}")
        if self.arch not in ARCHS:
            raise NegdiffError(f"--arch: unknown architecture '{self.arch}'; choose llama or neox")
        for name in ("vocab", "tokenizer_chars", "d_model", "layers", "heads", "seq_len", "batch", "steps",
                     "first_save", "val_windows"):
            if getattr(self, name) < 1:
                raise NegdiffError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise NegdiffError(f"--d-model {self.d_model} is not divisible by --heads {self.heads}")
        if self.tokenizer == "train" and self.vocab < 260:
            raise NegdiffError(f"--vocab {self.vocab} is too small for a byte-level BPE (at least 260)")
        if not 0 < self.min_lr <= self.lr:
            raise NegdiffError(f"--min-lr must be in (0, --lr], got {self.min_lr}")
        save_steps(self.steps, self.save, self.first_save)  # validates --save

    @property
    def ffn_width(self) -> int:
        if self.ffn:
            return self.ffn
        return 4 * self.d_model if self.arch == "neox" else 64 * math.ceil(8 * self.d_model / 3 / 64)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ffn_width": self.ffn_width}
