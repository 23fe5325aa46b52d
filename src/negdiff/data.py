"""Where the data lives, the named corpora, and token windows.

Data is never bundled: it is read from one data directory, ``NEGDIFF_DATA`` if set, else the cache
folder that ``negdiff data fetch`` (and every command's preflight) fills (:mod:`negdiff.datastore`). Corpora are plain text
cut into fixed token windows the way the paper's authors do: the text is tokenized once as one stream,
cut into non-overlapping windows, and the remainder is dropped.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from negdiff.errors import NegdiffError

if TYPE_CHECKING:
    import torch

def data_dir(path: str | Path | None = None, need: str | None = None) -> Path:
    """The data directory (explicit ``path``, else ``$NEGDIFF_DATA``, else the cache; never a fall-through).

    ``need`` names a dataset folder that must exist inside it; the error says how to get it. Loaders call
    this; the commands' preflight (:func:`negdiff.datastore.ensure`) has fetched or refused before.
    """
    from negdiff.datastore import data_root, missing_message

    base, origin = data_root(path)
    if need is None:
        if not base.is_dir():
            raise NegdiffError(f"data directory {base} not found; set NEGDIFF_DATA to the folder that holds the "
                               "datasets (e.g. NEGDIFF_DATA=../shared/data), or run `negdiff data fetch` online")
        return base
    if not (base / need).is_dir():
        raise NegdiffError(missing_message([need], base, origin))
    return base


def open_text(path: str | Path):
    """Open a text file, transparently gunzipping ``.gz`` files; a clear error if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise NegdiffError(f"file not found: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield one dict per line; a malformed line is an error naming the file and line number."""
    for _, row in iter_jsonl(path):
        yield row


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` per non-blank line; malformed lines are errors naming file and line."""
    with open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise NegdiffError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise NegdiffError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                yield lineno, row
        except UnicodeDecodeError:
            raise NegdiffError(f"{path} is not UTF-8 text (or is gzip data not named .gz); convert or rename it") from None


# ---------------------------------------------------------------------------------------------- CoNLL-U
@dataclass
class Word:
    """One syntactic word of a CoNLL-U sentence (multi-word tokens are kept on the token)."""

    id: int
    form: str
    upos: str


@dataclass
class Token:
    """One surface token: a plain word, or a multi-word token ("don't" = do + n't) with its words."""

    form: str
    words: list[Word]
    space_after: bool = True


@dataclass
class Sentence:
    """A CoNLL-U sentence: its raw ``# text``, surface tokens, and the document it starts (if any)."""

    sent_id: str
    text: str
    tokens: list[Token] = field(default_factory=list)
    newdoc: str | None = None


def read_conllu(path: str | Path) -> list[Sentence]:
    """Parse CoNLL-U: surface tokens with gold UPOS, SpaceAfter=No, multi-word tokens; empty nodes skipped."""
    sents: list[Sentence] = []
    cur: Sentence | None = None
    mwt_end, mwt_tok = 0, None
    with open_text(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip("\n")
            if not line:
                if cur is not None:
                    sents.append(cur)
                cur, mwt_end, mwt_tok = None, 0, None
                continue
            if cur is None:
                cur = Sentence(sent_id="", text="")
            if line.startswith("#"):
                key, _, val = line[1:].partition("=")
                key, val = key.strip(), val.strip()
                if key == "sent_id":
                    cur.sent_id = val
                elif key == "text":
                    cur.text = val
                elif key.startswith("newdoc"):
                    cur.newdoc = val or key
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise NegdiffError(f"{path}:{lineno}: CoNLL-U line has {len(cols)} columns, expected 10")
            tid, form, upos, misc = cols[0], cols[1], cols[3], cols[9]
            space_after = "SpaceAfter=No" not in misc.split("|")
            if "." in tid:
                continue
            if "-" in tid:
                start, end = (int(x) for x in tid.split("-"))
                mwt_tok = Token(form=form, words=[], space_after=space_after)
                mwt_end = end
                cur.tokens.append(mwt_tok)
                continue
            word = Word(id=int(tid), form=form, upos=upos)
            if mwt_tok is not None and word.id <= mwt_end:
                mwt_tok.words.append(word)
                if word.id == mwt_end:
                    mwt_tok = None
            else:
                cur.tokens.append(Token(form=form, words=[word], space_after=space_after))
    if cur is not None:
        sents.append(cur)
    return sents


# ---------------------------------------------------------------------------------------------- corpora
def _wikitext_docs(name: str, root: Path | None) -> list[str]:
    """WikiText-2 raw as the authors join it: the dataset rows joined by blank lines.

    The Hugging Face rows are the raw file's lines (blank lines as empty rows), which the authors join
    with "\\n\\n"; we rebuild those rows from the staged raw file.
    """
    path = data_dir(root, need="wikitext2_raw") / "wikitext2_raw" / name
    with open_text(path) as fh:
        rows = [ln if ln.strip() else "" for ln in fh]
    return ["\n\n".join(rows)]


def _ewt_docs(split: str, root: Path | None) -> list[str]:
    path = data_dir(root, need="ud_ewt") / "ud_ewt" / f"en_ewt-ud-{split}.conllu.gz"
    docs: list[list[str]] = []
    for s in read_conllu(path):
        if s.newdoc is not None or not docs:
            docs.append([])
        docs[-1].append(s.text)
    return [" ".join(d) for d in docs]


def _train_docs(root: Path | None) -> list[str]:
    path = data_dir(root, need="train_corpus") / "train_corpus" / "train.txt.gz"
    return _file_docs(path)


def _file_docs(path: Path) -> list[str]:
    """A local corpus: .txt/.txt.gz split on blank lines, or .jsonl(.gz) with a "text" field."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        docs = []
        for i, row in enumerate(read_jsonl(path), 1):
            if not isinstance(row.get("text"), str):
                raise NegdiffError(f"{path}: record {i} has no string field 'text'")
            docs.append(row["text"])
        return docs
    return [d for d in read_text(path).split("\n\n") if d.strip()]


def read_text(path: str | Path) -> str:
    """A whole text file (gunzipped if .gz); gzip data under another name or non-UTF-8 bytes are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise NegdiffError(f"file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b" and path.suffix != ".gz":
        raise NegdiffError(f"{path} holds gzip-compressed data but is not named .gz; rename it to {path.name}.gz "
                           "or decompress it")
    try:
        with open_text(path) as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise NegdiffError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                           "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise NegdiffError(f"{path} cannot be read as {'gzip ' if path.suffix == '.gz' else ''}text ({exc}); "
                           "check the file") from None


CORPORA = {
    "wikitext2": lambda root: _wikitext_docs("wiki.test.raw.gz", root),
    "wikitext2-valid": lambda root: _wikitext_docs("wiki.valid.raw.gz", root),
    "ewt-dev": lambda root: _ewt_docs("dev", root),
    "ewt-test": lambda root: _ewt_docs("test", root),
    "train-corpus": _train_docs,
}


def corpus_documents(name_or_path: str, root: str | Path | None = None) -> tuple[list[str], Path | None]:
    """Documents of a named corpus or a local file, plus the file they came from (for hashing)."""
    if name_or_path in CORPORA:
        docs = CORPORA[name_or_path](Path(root) if root else None)
        return docs, corpus_file(name_or_path, root)
    path = Path(name_or_path)
    if path.is_file():
        return _file_docs(path), path
    raise NegdiffError(
        f"unknown corpus '{name_or_path}': not a file, and not one of {', '.join(CORPORA)}"
    )


def check_corpus(name_or_path: str, root: str | Path | None = None) -> None:
    """Fail now (one line) if a corpus is missing or unreadable as text; a named corpus missing from the cache is
    fetched first (:func:`negdiff.datastore.ensure`). Cheap, so commands call it before loading a model."""
    if name_or_path in CORPORA:
        from negdiff.datastore import ensure

        ensure(corpus_folders(name_or_path), root)
        path = corpus_file(name_or_path, root)
        if path is None or not path.is_file():
            raise NegdiffError(f"data file not found: {path} (see {path.parent / 'SOURCE.md' if path else 'negdiff data'})")
        return
    path = Path(name_or_path)
    if not path.is_file():
        raise NegdiffError(f"unknown corpus '{name_or_path}': not a file, and not one of {', '.join(CORPORA)}")
    if not path.name.removesuffix(".gz").endswith((".conllu", ".jsonl")):
        read_text(path)


#: The dataset folder and file behind each named corpus.
CORPUS_FILES = {
    "wikitext2": ("wikitext2_raw", "wiki.test.raw.gz"),
    "wikitext2-valid": ("wikitext2_raw", "wiki.valid.raw.gz"),
    "ewt-dev": ("ud_ewt", "en_ewt-ud-dev.conllu.gz"),
    "ewt-test": ("ud_ewt", "en_ewt-ud-test.conllu.gz"),
    "train-corpus": ("train_corpus", "train.txt.gz"),
}


def corpus_folders(name_or_path: str) -> list[str]:
    """The dataset folders a corpus needs (none for a local file): what a preflight must fetch or refuse."""
    return [CORPUS_FILES[name_or_path][0]] if name_or_path in CORPUS_FILES else []


def corpus_file(name: str, root: str | Path | None = None) -> Path | None:
    """The data file behind a named corpus (None for unknown names)."""
    if name not in CORPUS_FILES:
        return Path(name) if Path(name).is_file() else None
    folder, fname = CORPUS_FILES[name]
    return data_dir(root, need=folder) / folder / fname


def token_windows(
    tokenizer,
    docs: list[str],
    window: int,
    max_tokens: int | None = None,
    bos: bool = False,
    sep: str = "\n\n",
) -> torch.Tensor:
    """Tokenize ``docs`` as one stream (joined by ``sep``) and cut it into ``[n, window]`` windows.

    Documents are tokenized in order until ``max_tokens`` (rounded down to whole windows) is reached,
    so a 30 MB corpus is not tokenized in full for a 65k-token scan. Windows do not overlap and carry
    no per-window BOS; ``bos=True`` puts one BOS at the very start of the stream (the authors' habit).
    """
    if window < 2:
        raise NegdiffError(f"window must be at least 2 tokens, got {window}")
    if not any(d.strip() for d in docs):
        raise NegdiffError("the corpus is empty: no text to tokenize")
    key = (id(tokenizer), window, max_tokens, bos, sep, len(docs), hash(tuple(docs)))
    hit = _WINDOWS.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1].clone()
    out = _token_windows(tokenizer, docs, window, max_tokens, bos, sep)
    _WINDOWS[key] = (tokenizer, out)  # the tokenizer is kept, so its id cannot be reused while cached
    while len(_WINDOWS) > 4:
        _WINDOWS.pop(next(iter(_WINDOWS)))
    return out.clone()


#: The last few tokenized corpora: every condition of an experiment cuts the same perplexity windows, and
#: tokenizing WikiText-2 valid again costs ~2 s per condition (more than a quick condition's windows run).
_WINDOWS: dict[tuple, tuple] = {}


def _token_windows(tokenizer, docs: list[str], window: int, max_tokens: int | None, bos: bool, sep: str) -> torch.Tensor:
    budget = None if max_tokens is None else (max_tokens // window) * window
    if budget is not None and budget == 0:
        raise NegdiffError(f"--tokens {max_tokens} is smaller than one window of {window} tokens")
    ids: list[int] = []
    if bos:
        bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids.append(bos_id)
    chunk: list[str] = []
    chunk_chars = 0
    for i, doc in enumerate(docs):
        chunk.append(doc if i == 0 else sep + doc)
        chunk_chars += len(doc)
        if chunk_chars >= 200_000 or i == len(docs) - 1:
            ids.extend(tokenizer("".join(chunk), add_special_tokens=False)["input_ids"])
            chunk, chunk_chars = [], 0
            if budget is not None and len(ids) >= budget:
                break
    n = len(ids) // window
    if budget is not None:
        n = min(n, budget // window)
    if n == 0:
        raise NegdiffError(f"the corpus has {len(ids)} tokens, fewer than one window of {window}")
    import torch  # here, not at the top: the CLI and the presets read the data table without torch

    return torch.tensor(ids[: n * window], dtype=torch.long).view(n, window)
