"""Which token starts a document: the BOS policies and the detection behind ``bos="prefix"``.

Why a detection at all: ``prefix`` wants the token the model saw between pretraining documents, so
that a sentence's first word is scored as the start of a text. That is the BOS token (EOS where there
is none) for base models, but instruction-tuned tokenizers often rename BOS/EOS to chat-turn tokens:
SmolLM2-Instruct's BOS ``<|im_start|>`` opens a turn and its EOS ``<|im_end|>`` closes one, while its
pretraining separator is ``<|endoftext|>``. Prefixing the turn opener measurably changes BLiMP on the
embedded model (72.0% vs 78.4% on 50 pairs per paradigm), so where the token ``prefix`` would use
appears literally in the tokenizer's chat template, the first known document separator that is in the
vocabulary and not in the template is used instead. No model names are hard-coded.

Policies (see ../shared/paper.md, "Read-outs", BOS):

* ``prefix`` (default): the detected document-start token before every sentence; multiple-choice
  contexts follow lm-evaluation-harness (nothing before a non-empty context unless the model requires
  a BOS: Gemma, by ``model_type``, as the harness decides; an empty context gets the token).
* ``tokenizer_default``: the tokenizer's own special tokens, first token context only (the authors).
* ``bos_token``: literally ``tokenizer.bos_token`` (EOS when none) before every text, contexts
  included: negdiff's behaviour before the detection, kept to measure what the detection changes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from negdiff.errors import NegdiffError

BOS_POLICIES = ("prefix", "tokenizer_default", "bos_token")
PREFIXING = ("prefix", "bos_token")  # policies that put one token before the text and score every real token

#: Pretraining document separators, in order of preference: GPT-2 / SmolLM / Qwen / Pythia, Llama 3,
#: Llama 2 / Mistral / OPT, Gemma.
SEPARATORS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


@dataclass(frozen=True)
class DocStart:
    """The token a policy puts before a text (``None`` when it puts none), and why; recorded in results."""

    token: str | None
    id: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"bos_token": self.token, "bos_id": self.id, "bos_reason": self.reason}


def _template(tokenizer) -> str:
    """The chat template as one string ('' when none; named templates are joined)."""
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        return "\n".join(str(v) for v in tpl.values())
    if isinstance(tpl, list | tuple):
        return "\n".join(str(t.get("template", "")) if isinstance(t, dict) else str(t) for t in tpl)
    return tpl if isinstance(tpl, str) else ""


def _token_str(tokenizer, tid: int, name: str) -> str | None:
    tok = getattr(tokenizer, name, None)
    if isinstance(tok, str):
        return tok
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    return convert(int(tid)) if callable(convert) else None


def _vocabulary(tokenizer) -> dict[str, int]:
    """Token string -> id, added tokens included; a missing token is absent (never the unk id)."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        return dict(get_vocab())
    vocab = getattr(tokenizer, "vocab", None)
    return dict(vocab) if isinstance(vocab, dict) else {}


def literal_bos(tokenizer) -> DocStart:
    """``tokenizer.bos_token``, or its EOS where it has no BOS (an error when it has neither)."""
    if getattr(tokenizer, "bos_token_id", None) is not None:
        tid = int(tokenizer.bos_token_id)
        return DocStart(_token_str(tokenizer, tid, "bos_token"), tid, "the tokenizer's BOS token")
    if getattr(tokenizer, "eos_token_id", None) is not None:
        tid = int(tokenizer.eos_token_id)
        return DocStart(_token_str(tokenizer, tid, "eos_token"), tid, "no BOS token: the tokenizer's EOS token")
    raise NegdiffError("the tokenizer has neither a BOS nor an EOS token; use --bos tokenizer_default")


def detect_document_start(tokenizer) -> DocStart:
    """The ``prefix`` token: BOS (or EOS), unless it is a chat-role token; then the document separator.

    A chat-role token is one whose string appears in ``tokenizer.chat_template`` (a turn opener or
    closer such as ``<|im_start|>``); templates that insert BOS through the ``bos_token`` variable
    (Llama 3, Gemma, Mistral) do not name it, so their BOS stays.
    """
    plain = literal_bos(tokenizer)
    template = _template(tokenizer)
    if plain.token is None or not template or plain.token not in template:
        return plain
    vocab = _vocabulary(tokenizer)
    for sep in SEPARATORS:
        if sep in vocab and sep not in template:
            roles = " and ".join(f"'{t}'" for t in (getattr(tokenizer, "bos_token", None),
                                                     getattr(tokenizer, "eos_token", None))
                                 if isinstance(t, str) and t in template)
            return DocStart(sep, int(vocab[sep]), f"{roles}: chat-role token(s) of the chat template; "
                                                  "the pretraining document separator instead")
    raise NegdiffError(f"the tokenizer's BOS/EOS '{plain.token}' is a chat-role token and no document separator "
                       f"({', '.join(SEPARATORS)}) is in its vocabulary; use --bos tokenizer_default")


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(tokenizer) -> tuple:
    return (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None),
            getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None), _template(tokenizer))


def document_start(tokenizer) -> DocStart:
    """:func:`detect_document_start`, cached per tokenizer (every sentence asks; the vocabulary is large)."""
    sig = _signature(tokenizer)
    try:
        hit = _CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: detect every time
        return detect_document_start(tokenizer)
    if hit is not None and hit[0] == sig:
        return hit[1]
    found = detect_document_start(tokenizer)
    _CACHE[tokenizer] = (sig, found)
    return found


def policy_token(tokenizer, policy: str = "prefix") -> DocStart:
    """The token ``policy`` puts before a text (before an empty context only, for ``tokenizer_default``)."""
    if policy == "prefix":
        return document_start(tokenizer)
    if policy == "bos_token":
        plain = literal_bos(tokenizer)
        return DocStart(plain.token, plain.id, f"bos_token policy: {plain.reason}, before every text")
    if policy == "tokenizer_default":
        try:
            plain = literal_bos(tokenizer)
        except NegdiffError:
            return DocStart(None, None, "tokenizer_default: the tokenizer's own special tokens")
        return DocStart(plain.token, plain.id, f"tokenizer_default: the tokenizer's own special tokens; "
                                               f"{plain.reason} before an empty context")
    raise NegdiffError(f"unknown BOS policy '{policy}'; choose one of {', '.join(BOS_POLICIES)}")


def prefix_id(tokenizer, policy: str = "prefix") -> int:
    """The id of :func:`policy_token` (an error where the policy has none)."""
    found = policy_token(tokenizer, policy)
    if found.id is None:
        raise NegdiffError("the tokenizer has neither a BOS nor an EOS token; use --bos tokenizer_default")
    return found.id


def context_needs_bos(model) -> bool:
    """Whether a non-empty multiple-choice context starts with the document-start token under ``prefix``.

    lm-evaluation-harness adds no BOS before a context except for Gemma-family models (its rule:
    ``"gemma" in config.model_type``), which are trained to need one. The tokenizer's
    ``add_bos_token`` is not used: Llama 2 and Mistral tokenizers set it, yet the harness adds none there.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return isinstance(model_type, str) and "gemma" in model_type.lower()


def context_rule(policy: str, needs_bos: bool) -> str:
    """What a non-empty multiple-choice context starts with under ``policy`` (recorded in results)."""
    if policy == "bos_token":
        return "bos_token before every context"
    if policy == "tokenizer_default":
        return "the tokenizer's own special tokens"
    return ("document-start token (the model requires a BOS, as lm-evaluation-harness decides)" if needs_bos
            else "none (lm-evaluation-harness); an empty context gets the document-start token")


def bos_record(tokenizer, policy: str, model=None) -> dict[str, Any]:
    """``bos_token``, ``bos_id`` and ``bos_reason`` for a result; with ``model``, also ``context_bos``."""
    out = policy_token(tokenizer, policy).to_dict()
    if model is not None:
        out["context_bos"] = context_rule(policy, context_needs_bos(model))
    return out
