"""Data directory, corpora, token windows, JSONL and CoNLL-U readers."""

from __future__ import annotations

import gzip

import pytest

from negdiff import NegdiffError
from negdiff.data import corpus_documents, data_dir, read_conllu, read_jsonl, token_windows

from conftest import DATA

SHARED = DATA


class CharTokenizer:
    """One token per character: makes window arithmetic checkable by hand."""

    bos_token_id, eos_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 50) for c in text]}


def test_windows_are_one_stream_cut_without_overlap():
    tok = CharTokenizer()
    docs = ["abcd", "efgh"]  # stream "abcd\n\nefgh" = 10 tokens
    w = token_windows(tok, docs, window=3)
    assert w.shape == (3, 3)  # remainder (1 token) dropped
    stream = tok("abcd\n\nefgh")["input_ids"]
    assert w.flatten().tolist() == stream[:9]
    assert token_windows(tok, docs, window=3, max_tokens=7).shape == (2, 3)
    wb = token_windows(tok, docs, window=3, bos=True)
    assert wb[0, 0].item() == 0 and wb[1, 0].item() != 0  # one BOS at the start of the stream only


def test_window_errors():
    tok = CharTokenizer()
    with pytest.raises(NegdiffError, match="the corpus is empty"):
        token_windows(tok, ["", "  "], window=4)
    with pytest.raises(NegdiffError, match="fewer than one window of 100"):
        token_windows(tok, ["short"], window=100)
    with pytest.raises(NegdiffError, match="smaller than one window"):
        token_windows(tok, ["abcdefgh"], window=4, max_tokens=3)


def test_unknown_corpus_and_missing_data(tmp_path, monkeypatch):
    with pytest.raises(NegdiffError, match="unknown corpus 'wikitext-9'"):
        corpus_documents("wikitext-9")
    monkeypatch.setenv("NEGDIFF_DATA", str(tmp_path))
    monkeypatch.setenv("NEGDIFF_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "data" / "wikitext2_raw").mkdir(parents=True)  # in the cache, but NEGDIFF_DATA rules
    with pytest.raises(NegdiffError, match=f"dataset folder 'wikitext2_raw' not found in {tmp_path} .NEGDIFF_DATA"):
        data_dir(need="wikitext2_raw")
    monkeypatch.delenv("NEGDIFF_DATA")
    assert data_dir(need="wikitext2_raw") == tmp_path / "cache" / "data"  # unset: the cache, read at call time


def test_local_corpora(tmp_path):
    txt = tmp_path / "c.txt.gz"
    with gzip.open(txt, "wt") as fh:
        fh.write("first doc\nline two\n\nsecond doc\n")
    docs, path = corpus_documents(str(txt))
    assert docs == ["first doc\nline two", "second doc\n"] and path == txt
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert corpus_documents(str(jl))[0] == ["a", "b"]
    jl.write_text('{"text": "a"}\n{"text": oops}\n')
    with pytest.raises(NegdiffError, match=r"c\.jsonl:2: malformed JSON line"):
        list(read_jsonl(jl))


CONLLU = """# newdoc id = d1
# sent_id = s1
# text = I don't know, really.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
5\t,\t,\tPUNCT\t,\t_\t4\tpunct\t_\t_
5.1\tgone\tgo\tVERB\t_\t_\t_\t_\t_\t_
6\treally\treally\tADV\tRB\t_\t4\tadvmod\t_\tSpaceAfter=No
7\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = s2
# text = Yes.
1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\tSpaceAfter=No
2\t.\t.\tPUNCT\t.\t_\t1\tpunct\t_\t_
"""


def test_conllu_tokens_mwt_spaceafter(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(CONLLU)
    s1, s2 = read_conllu(path)
    assert s1.newdoc == "d1" and s2.newdoc is None and s1.text == "I don't know, really."
    assert [t.form for t in s1.tokens] == ["I", "don't", "know", ",", "really", "."]
    assert [w.upos for w in s1.tokens[1].words] == ["AUX", "PART"]
    assert [t.space_after for t in s1.tokens] == [True, True, False, True, False, True]
    rebuilt = "".join(t.form + (" " if t.space_after else "") for t in s1.tokens).strip()
    assert rebuilt == s1.text
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tonly\tthree\n")
    with pytest.raises(NegdiffError, match=r"bad\.conllu:1: CoNLL-U line has 3 columns"):
        read_conllu(bad)


@pytest.mark.skipif(not SHARED.is_dir(), reason="staged data not beside the repo")
def test_staged_corpora(monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    docs, path = corpus_documents("ewt-test")
    sents = read_conllu(path)
    assert len(sents) == 2077 and sum(len(w.words) for s in sents for w in s.tokens) == 25094
    assert sum(d.count(" ") + 1 for d in docs) > 20000
    (wiki,), _ = corpus_documents("wikitext2-valid")
    # HF rows: "" for blank lines, "<line>\n" otherwise; joined by blank lines as the authors do
    assert wiki.startswith("\n\n = Homarus gammarus = \n\n\n\n\n Homarus gammarus , known")
