"""From tagged sentences to scored model tokens and back: the token-to-word alignment of ``negdiff pos``.

A part-of-speech read-out needs every model (subword) token tied to the gold word it spells. The
chain is: sentences (CoNLL-U, or spaCy for untagged text) are grouped into documents; a document's text
is its sentences' raw ``# text`` joined by one space, cut into chunks of whole sentences when it is too
long for one sequence; each surface token gets its character span by walking the raw text (the token
forms appear in order, so each is searched for at or after a cursor: this handles SpaceAfter=No, odd
whitespace and punctuation without trusting the MISC column); the tokenizer's offsets then give every
subword token the *unit* (a span, see below) it overlaps most. Subword tokens that overlap nothing (a
lone space or newline token) go to the *next* unit: predicting that whitespace is part of starting that
word, and no surprisal is lost. A unit's surprisal is the sum of its subword tokens' surprisals.

Units are surface tokens, except for multi-word tokens ("don't" = do + n't, "it's" = it + 's), which
the ``mwt`` rule decides:

- ``chars`` (default): when the words' forms spell the token (case-insensitive, true of all but a
  handful in EWT), each word is its own unit with its own character span, so subword tokens go to the
  word they overlap most, exactly as for plain words: "Google's" -> " Google" | "'s" gives PROPN and
  PART their own surprisal, as the paper's spaCy tokens would. Where the tokenizer cuts across the word
  boundary ("don't" -> " don" + "'t") each piece still goes to the word holding most of its
  characters. A token its words do not spell falls back to ``split``.
- ``split``: the token is one unit and each of its k words gets 1/k of its surprisal (keeps the total,
  independent of the tokenizer).
- ``first``: the token is one unit and its first word gets all of it (the whole-token convention).

Either way the words keep an ``is_mwt`` flag so they can be excluded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from negdiff.bos import PREFIXING, prefix_id
from negdiff.choices import MWT_RULES
from negdiff.data import Sentence, Token, Word, corpus_documents, corpus_file, read_conllu
from negdiff.errors import NegdiffError
from negdiff.scoring import Request

GOLD_CORPORA = ("ewt-test", "ewt-dev")
SPACY_HINT = "pip install spacy && python -m spacy download en_core_web_sm"


@dataclass
class Chunk:
    """One scored sequence: whole sentences of one document, joined by single spaces."""

    doc: int
    text: str
    spans: np.ndarray  # [n_units, 2] character span of each unit in ``text``
    first_unit: int  # global index of the chunk's first unit (they are consecutive)
    mwt: str = "chars"  # the multi-word-token rule the units were cut by


@dataclass
class Encoded:
    """A chunk as a scoring request, with the unit that owns each target token."""

    request: Request
    owner: np.ndarray  # [len(target)] global unit index, or -1 for a special token
    context_owner: int = -1  # unit of a real token used only as context (tokenizer_default)


# ---------------------------------------------------------------------------------------------- spans
def token_spans(sent: Sentence, where: str = "") -> np.ndarray:
    """Character span of each surface token in ``sent.text``, searched in order from a cursor.

    The raw text is the truth (it shows doubled spaces, no-break spaces and SpaceAfter=No exactly); a
    form that cannot be found after the previous one is a malformed sentence, reported by its id.
    """
    spans = np.zeros((len(sent.tokens), 2), dtype=np.int64)
    cursor = 0
    for i, tok in enumerate(sent.tokens):
        start = sent.text.find(tok.form, cursor)
        if start < 0 or not tok.form:
            raise NegdiffError(
                f"{where}sentence '{sent.sent_id}': token {i + 1} '{tok.form}' not found in its # text after "
                f"character {cursor} ('{sent.text}')"
            )
        spans[i] = (start, start + len(tok.form))
        cursor = start + len(tok.form)
    return spans


def spells(tok: Token) -> bool:
    """Whether a multi-word token's word forms, concatenated, are its form (case-insensitive)."""
    return len(tok.words) > 1 and "".join(w.form for w in tok.words).lower() == tok.form.lower()


def sentence_units(sent: Sentence, mwt: str = "chars", where: str = "") -> tuple[np.ndarray, list[list[tuple[int, float]]]]:
    """The units of a sentence: their spans in ``sent.text`` and, per unit, ``(word position, weight)`` pairs.

    Word positions count the sentence's words in order (multi-word tokens expanded); see the module
    docstring for the rules.
    """
    if mwt not in MWT_RULES:
        raise NegdiffError(f"unknown multi-word-token rule '{mwt}'; choose one of {', '.join(MWT_RULES)}")
    spans: list[tuple[int, int]] = []
    members: list[list[tuple[int, float]]] = []
    w = 0
    for (start, end), tok in zip(token_spans(sent, where).tolist(), sent.tokens):
        k = len(tok.words)
        if k > 1 and mwt == "chars" and spells(tok):
            for j, word in enumerate(tok.words):
                spans.append((start, start + len(word.form)))
                members.append([(w + j, 1.0)])
                start += len(word.form)
        else:
            spans.append((start, end))
            members.append([(w + j, float(j == 0) if mwt == "first" else 1.0 / k) for j in range(k)])
        w += k
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2), members


def documents(sents: Sequence[Sentence]) -> list[list[int]]:
    """Sentence indices grouped by document: a ``# newdoc`` line starts a new one."""
    docs: list[list[int]] = []
    for i, s in enumerate(sents):
        if s.newdoc is not None or not docs:
            docs.append([])
        docs[-1].append(i)
    return docs


def limit_documents(sents: list[Sentence], limit_docs: int | None, max_words: int | None,
                    seed: int | None = None) -> list[Sentence]:
    """Whole documents: at most ``limit_docs`` of them, stopping once ``max_words`` is reached.

    Documents are taken in file order, or with ``seed`` in a seeded random order (EWT's file is sorted
    by genre, so its first documents are all weblogs and e-mails); the kept ones stay in file order.
    """
    docs = documents(sents)
    order = range(len(docs)) if seed is None else np.random.default_rng(seed).permutation(len(docs)).tolist()
    keep: list[int] = []
    words = 0
    for d in order:
        if (limit_docs is not None and len(keep) >= limit_docs) or (max_words is not None and words >= max_words):
            break
        keep.append(d)
        words += sum(len(t.words) for i in docs[d] for t in sents[i].tokens)
    return [sents[i] for d in sorted(keep) for i in docs[d]]


# ---------------------------------------------------------------------------------------------- chunks
def _encode(tokenizer, text: str, special: bool) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Token ids, character offsets ``[n, 2]`` and a special-token mask (offsets need a fast tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        raise NegdiffError("negdiff pos needs a fast (Rust) tokenizer: it maps tokens to words by character offsets")
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True, return_special_tokens_mask=True)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return list(enc["input_ids"]), offsets, np.asarray(enc["special_tokens_mask"], dtype=bool)


def _join(sents: Sequence[Sentence], mwt: str, where: str) -> tuple[str, np.ndarray]:
    """Sentences joined by one space, with every unit's span in the joined text."""
    parts, spans, at = [], [], 0
    for s in sents:
        spans.append(sentence_units(s, mwt, where)[0] + at)
        parts.append(s.text)
        at += len(s.text) + 1
    return " ".join(parts), (np.concatenate(spans) if spans else np.zeros((0, 2), dtype=np.int64))


def plan_chunks(tokenizer, sents: Sequence[Sentence], max_tokens: int, mwt: str = "chars",
                where: str = "") -> list[Chunk]:
    """Each document as one chunk, or, when longer than ``max_tokens``, as runs of whole sentences.

    Sentence lengths are read from one tokenization of the whole document (a token belongs to the
    sentence its first character falls in); a single sentence longer than ``max_tokens`` is a chunk
    of its own (the caller checks it against the model's limit).
    """
    chunks: list[Chunk] = []
    unit = 0
    for d, doc in enumerate(documents(sents)):
        text, spans = _join([sents[i] for i in doc], mwt, where)
        _, offsets, _ = _encode(tokenizer, text, special=False)
        starts = np.cumsum([0] + [len(sents[i].text) + 1 for i in doc])
        last = np.maximum(offsets[:, 1] - 1, 0)  # a token's last character lies in its own sentence
        per_sent = np.bincount(np.searchsorted(starts, last, side="right") - 1, minlength=len(doc))
        groups: list[list[int]] = [[]]
        used = 0
        for k, n in enumerate(per_sent[: len(doc)]):
            if groups[-1] and used + n > max_tokens:
                groups.append([])
                used = 0
            groups[-1].append(doc[k])
            used += int(n)
        for g in groups:
            ctext, cspans = _join([sents[i] for i in g], mwt, where) if len(groups) > 1 else (text, spans)
            chunks.append(Chunk(doc=d, text=ctext, spans=cspans, first_unit=unit, mwt=mwt))
            unit += len(cspans)
    return chunks


# ---------------------------------------------------------------------------------------------- owners
def assign_owners(offsets: np.ndarray, spans: np.ndarray, special: np.ndarray | None = None) -> np.ndarray:
    """For each subword token, the index of the unit (span) it overlaps most.

    Ties go to the earlier span (a merged '."' counts for the full stop). A token that overlaps
    no span (whitespace) goes to the next span starting at or after its end, or the last span when none
    follows; special tokens (offsets (0, 0)) get -1.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(spans) == 0:
        return np.full(len(offsets), -1, dtype=np.int64)
    lo = np.maximum(offsets[:, None, 0], spans[None, :, 0])
    hi = np.minimum(offsets[:, None, 1], spans[None, :, 1])
    overlap = np.clip(hi - lo, 0, None)  # [n_tokens, n_spans]
    owner = overlap.argmax(axis=1)  # first maximum: ties go to the earlier span
    none = overlap.max(axis=1) == 0
    nxt = np.searchsorted(spans[:, 0], offsets[:, 1], side="left")
    owner[none] = np.minimum(nxt[none], len(spans) - 1)
    if special is not None:
        owner[np.asarray(special, dtype=bool)] = -1
    return owner


def encode_chunk(tokenizer, chunk: Chunk, bos: str = "prefix") -> Encoded:
    """The chunk as a request scored under the BOS policy, with the owner of every target token.

    The ids are exactly those of :func:`negdiff.scoring.encode_text` (the tests check it). Under
    ``tokenizer_default`` the first token is context only; when it is a real token (no BOS added), its
    unit is recorded as ``context_owner``: its words are not fully scored.
    """
    ids, offsets, special = _encode(tokenizer, chunk.text, special=bos not in PREFIXING)
    owner = assign_owners(offsets, chunk.spans, special)
    owner = np.where(owner >= 0, owner + chunk.first_unit, -1)
    if bos in PREFIXING:
        return Encoded(Request((prefix_id(tokenizer, bos),), tuple(ids)), owner)
    return Encoded(Request(tuple(ids[:1]), tuple(ids[1:])), owner[1:], int(owner[0]) if len(owner) else -1)


def encode_corpus(tokenizer, sents: Sequence[Sentence], max_tokens: int, model_limit: int | None,
                  mwt: str = "chars", bos: str = "prefix", where: str = "") -> tuple[list[Chunk], list[Encoded]]:
    """Chunks of at most ``max_tokens`` (capped by the model's limit) and their requests.

    A single sentence longer than the model's limit is an error: scoring would silently cut its context.
    """
    cap = min(max_tokens, model_limit - 1) if model_limit else max_tokens
    chunks = plan_chunks(tokenizer, sents, cap, mwt, where)
    encoded = [encode_chunk(tokenizer, c, bos) for c in chunks]
    for c, e in zip(chunks, encoded):
        n = len(e.request.context) + len(e.request.target) - 1
        if model_limit and n > model_limit:
            raise NegdiffError(f"{where}a sentence run of {n} tokens in document {c.doc} exceeds the model's maximum "
                               f"length {model_limit}: {c.text[:60]!r}...")
    return chunks, encoded


def tokens_digest(encoded: Sequence[Encoded]) -> str:
    """A hash of every scored token id: cached scores are void when the tokenization changes."""
    h = hashlib.sha256()
    for e in encoded:  # lengths too: the same ids cut into other chunks are scored differently
        h.update(np.asarray([len(e.request.context), len(e.request.target)], dtype=np.int64).tobytes())
        h.update(np.asarray(e.request.context + e.request.target, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def unit_sums(values: Sequence[np.ndarray], encoded: Sequence[Encoded], n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-target-token ``values`` into their units; also count the subword tokens of each."""
    owner = np.concatenate([e.owner for e in encoded]) if encoded else np.zeros(0, dtype=np.int64)
    vals = np.concatenate([np.asarray(v, dtype=np.float64) for v in values]) if values else np.zeros(0)
    if len(vals) != len(owner):
        raise NegdiffError(f"internal: {len(vals)} scored tokens for {len(owner)} aligned tokens")
    keep = owner >= 0
    sums = np.bincount(owner[keep], weights=vals[keep], minlength=n_units)
    counts = np.bincount(owner[keep], minlength=n_units)
    return sums, counts


# ---------------------------------------------------------------------------------------------- words
def word_frame(sents: Sequence[Sentence], mwt: str = "chars") -> pd.DataFrame:
    """One row per syntactic word: where it sits, its tag, its unit and its share of the unit's surprisal.

    ``weight`` is 1 for a word that is its own unit; inside a multi-word token kept whole it is 1/k
    (``split``) or first-takes-all (``first``). Units are numbered as :func:`plan_chunks` numbers them.
    """
    rows = []
    unit = 0
    for d, doc in enumerate(documents(sents)):
        for si in doc:
            s = sents[si]
            flat = [(ti, tok, w) for ti, tok in enumerate(s.tokens) for w in tok.words]
            _, members = sentence_units(s, mwt)
            for group in members:
                for pos, weight in group:
                    ti, tok, w = flat[pos]
                    rows.append((d, s.sent_id, si, w.id, w.form, w.upos, len(tok.words) > 1, tok.form, ti, unit, weight))
                unit += 1
    cols = ["doc", "sent_id", "sentence", "word", "form", "upos", "is_mwt", "token_form", "token", "unit", "weight"]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------- spaCy
def load_spacy(model: str = "en_core_web_sm"):
    """spaCy's pipeline, or a NegdiffError that says what to install."""
    try:
        import spacy
    except ImportError:
        raise NegdiffError(f"tagging untagged text needs spaCy and an English model: {SPACY_HINT}") from None
    try:
        return spacy.load(model)
    except OSError:
        raise NegdiffError(f"spaCy is installed but its model '{model}' is not: python -m spacy download {model}") from None


def spacy_sentences(docs: Sequence[str], nlp) -> list[Sentence]:
    """Tag raw documents with spaCy's coarse (UPOS) tags, as Sentences behind the gold-data interface.

    Each spaCy token becomes a one-word surface token; whitespace tokens are dropped (the raw text
    keeps the spacing). The tags are a tagger's, not gold: results say which.
    """
    out: list[Sentence] = []
    for d, text in enumerate(docs):
        first = True
        for j, span in enumerate(nlp(text).sents):
            toks = [t for t in span if not t.is_space]
            if not toks:
                continue
            start = toks[0].idx
            end = toks[-1].idx + len(toks[-1].text)
            sent = Sentence(sent_id=f"doc{d}-s{j}", text=text[start:end], newdoc=f"doc{d}" if first else None)
            sent.tokens = [Token(form=t.text, words=[Word(k + 1, t.text, t.pos_)], space_after=bool(t.whitespace_))
                           for k, t in enumerate(toks)]
            out.append(sent)
            first = False
    return out


# ---------------------------------------------------------------------------------------------- sources
def load_sentences(corpus: str, data: str | Path | None = None) -> tuple[list[Sentence], Path | None, str]:
    """Tagged sentences of a corpus, the file they came from, and who tagged them.

    EWT names and ``.conllu(.gz)`` files carry gold UPOS; any other text file goes through spaCy
    (``en_core_web_sm``), or fails with what to install.
    """
    if corpus in GOLD_CORPORA:
        path = corpus_file(corpus, data)
        return read_conllu(path), path, "gold UPOS (UD English EWT)"
    if Path(corpus).name.removesuffix(".gz").endswith(".conllu"):
        return read_conllu(corpus), Path(corpus), "gold UPOS (CoNLL-U file)"
    if not Path(corpus).is_file():
        raise NegdiffError(f"--corpus: '{corpus}' is neither {' nor '.join(GOLD_CORPORA)} nor an existing file")
    nlp = load_spacy()
    docs, path = corpus_documents(corpus)
    return spacy_sentences(docs, nlp), path, f"spaCy {getattr(nlp, 'meta', {}).get('name', 'en_core_web_sm')} (predicted UPOS)"


def words_table(sents: Sequence[Sentence], chunks: Sequence[Chunk], encoded: Sequence[Encoded],
                surprisal: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per word: position, tag, MWT flag, subword count and surprisal per run (``surprisal_<run>``).

    ``surprisal`` maps a run name to its per-target-token values, concatenated over ``encoded``. A
    word's surprisal is its unit's sum times its ``weight``; ``n_tokens`` is its share of subword tokens
    the same way; ``scored`` is False for a word whose unit has a subword that served only as context.
    The multi-word-token rule is the one the chunks were planned with.
    """
    words = word_frame(sents, chunks[0].mwt if chunks else "chars")
    total = sum(len(c.spans) for c in chunks)
    if total != (words.unit.max() + 1 if len(words) else 0):
        raise NegdiffError(f"internal: the chunks hold {total} units but the sentences {words.unit.max() + 1}")
    counts = unit_sums([np.zeros(len(e.owner)) for e in encoded], encoded, total)[1]
    unscored = {e.context_owner for e in encoded if e.context_owner >= 0}
    doc_ids = [sents[d[0]].newdoc or f"doc{i}" for i, d in enumerate(documents(sents))]
    words.insert(1, "doc_id", [doc_ids[d] for d in words["doc"]])
    words["n_subword_tokens"] = counts[words["unit"]]
    words["n_tokens"] = words["weight"] * words["n_subword_tokens"]
    words["scored"] = ~words["unit"].isin(unscored)
    ends = np.cumsum([len(e.owner) for e in encoded]).tolist()
    for run, values in surprisal.items():
        sums = unit_sums([values[a:b] for a, b in zip([0, *ends[:-1]], ends)], encoded, total)[0]
        words[f"surprisal_{run}"] = words["weight"] * sums[words["unit"]]
    return words


def alignment_stats(sents: Sequence[Sentence], chunks: Sequence[Chunk], encoded: Sequence[Encoded],
                    words: pd.DataFrame) -> dict[str, Any]:
    """How the text was cut and aligned: what a reader needs to trust the mapping."""
    units = words.drop_duplicates("unit")
    mwt = words[words.is_mwt]
    return {"documents": len(documents(sents)), "sentences": len(sents), "chunks": len(chunks),
            "surface_tokens": sum(len(s.tokens) for s in sents), "units": int(len(units)), "words": int(len(words)),
            "subword_tokens": int(sum(len(e.owner) for e in encoded)), "mwt_words": int(len(mwt)),
            "mwt_words_sharing_a_unit": int(mwt.unit.duplicated(keep=False).sum()),
            "units_without_own_subword": int((units.n_subword_tokens == 0).sum()),
            "words_not_fully_scored": int((~words.scored).sum())}
