"""Token-to-word alignment on hand-made CoNLL-U: spans, multi-word tokens, owners, chunks, spaCy adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from negdiff import NegdiffError, align
from negdiff.data import Sentence, read_conllu
from negdiff.scoring import encode_text

from conftest import DATA

SHARED = DATA

# (id, form, upos, SpaceAfter=No?) rows; "2-3" ids are multi-word tokens (their upos is "_").
DOC1 = [
    ("d1", "I don't like GoogleOS.", [("1", "I", "PRON", 0), ("2-3", "don't", "_", 0), ("2", "do", "AUX", 0),
                                      ("3", "n't", "PART", 0), ("4", "like", "VERB", 0),
                                      ("5", "GoogleOS", "PROPN", 1), ("6", ".", "PUNCT", 0)]),
    (None, "Hello, world!  It's an e-mail.", [("1", "Hello", "INTJ", 1), ("2", ",", "PUNCT", 0),
                                              ("3", "world", "NOUN", 1), ("4", "!", "PUNCT", 0),
                                              ("5-6", "It's", "_", 0), ("5", "It", "PRON", 0), ("6", "'s", "AUX", 0),
                                              ("7", "an", "DET", 0), ("8", "e-mail", "NOUN", 1), ("9", ".", "PUNCT", 0)]),
]
DOC2 = [
    ("d2", 'He said "go." Then Mary\'s cat left', [
        ("1", "He", "PRON", 0), ("2", "said", "VERB", 0), ("3", '"', "PUNCT", 1), ("4", "go", "VERB", 1),
        ("5", ".", "PUNCT", 1), ("6", '"', "PUNCT", 0), ("7", "Then", "ADV", 0), ("8-9", "Mary's", "_", 0),
        ("8", "Mary", "PROPN", 0), ("9", "'s", "PART", 0), ("10", "cat", "NOUN", 0), ("11", "left", "VERB", 0)]),
    (None, "It won't.", [("1", "It", "PRON", 0), ("2-3", "won't", "_", 1), ("2", "will", "AUX", 0),
                         ("3", "n't", "PART", 0), ("4", ".", "PUNCT", 0)]),
    (None, "Supercalifragilisticexpialidocious", [("1", "Supercalifragilisticexpialidocious", "ADJ", 0)]),
]


def write_conllu(path: Path, docs) -> Path:
    """Render the compact sentence specs above as a CoNLL-U file."""
    lines, n = [], 0
    for doc in docs:
        for newdoc, text, rows in doc:
            n += 1
            if newdoc:
                lines.append(f"# newdoc id = {newdoc}")
            lines += [f"# sent_id = s{n}", f"# text = {text}"]
            for tid, form, upos, no_space in rows:
                misc = "SpaceAfter=No" if no_space else "_"
                lines.append("\t".join([tid, form, form.lower(), upos, "_", "_", "_", "_", "_", misc]))
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def sents(tmp_path) -> list[Sentence]:
    return read_conllu(write_conllu(tmp_path / "mini.conllu", [DOC1, DOC2]))


def _unit_texts(chunks) -> list[str]:
    return [c.text[a:b] for c in chunks for a, b in c.spans.tolist()]


# ---------------------------------------------------------------------------------------------- spans and units
def test_token_spans_follow_the_raw_text(sents):
    s = sents[1]  # "Hello, world!  It's an e-mail." (a double space, SpaceAfter=No, a multi-word token)
    spans = align.token_spans(s).tolist()
    assert spans == [[0, 5], [5, 6], [7, 12], [12, 13], [15, 19], [20, 22], [23, 29], [29, 30]]
    assert [s.text[a:b] for a, b in spans] == [t.form for t in s.tokens]


def test_token_spans_error_names_the_sentence():
    bad = read_conllu_text("# sent_id = x7\n# text = a cat\n1\tdog\tdog\tNOUN\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(NegdiffError, match=r"mini: sentence 'x7': token 1 'dog' not found"):
        align.token_spans(bad[0], where="mini: ")


def read_conllu_text(text: str) -> list[Sentence]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.conllu"
        p.write_text(text)
        return read_conllu(p)


def test_units_per_mwt_rule(sents):
    s = sents[0]  # I | don't = do + n't | like | GoogleOS | .
    spans, members = align.sentence_units(s, "chars")
    assert spans.tolist() == [[0, 1], [2, 4], [4, 7], [8, 12], [13, 21], [21, 22]]
    assert members == [[(0, 1.0)], [(1, 1.0)], [(2, 1.0)], [(3, 1.0)], [(4, 1.0)], [(5, 1.0)]]
    spans, members = align.sentence_units(s, "split")
    assert spans.tolist() == [[0, 1], [2, 7], [8, 12], [13, 21], [21, 22]]
    assert members[1] == [(1, 0.5), (2, 0.5)]
    assert align.sentence_units(s, "first")[1][1] == [(1, 1.0), (2, 0.0)]
    # "won't" = will + n't does not spell its form: it stays one unit, shared equally, even under chars.
    spans, members = align.sentence_units(sents[3], "chars")
    assert spans.tolist() == [[0, 2], [3, 8], [8, 9]] and members[1] == [(1, 0.5), (2, 0.5)]
    with pytest.raises(NegdiffError, match="unknown multi-word-token rule 'both'"):
        align.sentence_units(s, "both")


# ---------------------------------------------------------------------------------------------- owners
def test_assign_owners_hand_worked():
    # text: "ab  cd.e" ; spans: ab (0,2), cd (4,6), . (6,7), e (7,8)
    spans = np.array([[0, 2], [4, 6], [6, 7], [7, 8]])
    offsets = np.array([[0, 0],  # special token
                        [0, 1], [1, 2],  # a word split in two
                        [2, 3],  # a lone space: goes to the next span (cd)
                        [3, 5],  # " c": overlaps cd by 1
                        [5, 7],  # "d.": ties cd / . -> the earlier (cd)
                        [7, 8],
                        [8, 9]])  # trailing whitespace after the last span: the last span
    special = np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert align.assign_owners(offsets, spans, special).tolist() == [-1, 0, 0, 1, 1, 1, 3, 3]
    assert align.assign_owners(offsets[:2], np.zeros((0, 2))).tolist() == [-1, -1]


# ---------------------------------------------------------------------------------------------- with the real tokenizer
def test_documents_and_chunks(sents, real_tokenizer):
    assert align.documents(sents) == [[0, 1], [2, 3, 4]]
    chunks = align.plan_chunks(real_tokenizer, sents, max_tokens=1000)
    assert [c.text for c in chunks] == [sents[0].text + " " + sents[1].text,
                                        " ".join(s.text for s in sents[2:])]
    assert [c.first_unit for c in chunks] == [0, 15]
    small = align.plan_chunks(real_tokenizer, sents, max_tokens=10)  # cut at sentence boundaries only
    assert [c.text for c in small] == [s.text for s in sents]
    assert [c.doc for c in small] == [0, 0, 1, 1, 1]
    assert _unit_texts(small) == _unit_texts(chunks)
    assert align.limit_documents(sents, 1, None) == sents[:2]
    assert align.limit_documents(sents, None, 3) == sents[:2]  # whole documents until 3 words are reached
    assert align.limit_documents(sents, None, 17) == sents
    picked = []
    for seed in range(4):  # a seeded order picks whole documents, kept in file order
        first = int(np.random.default_rng(seed).permutation(2)[0])
        assert align.limit_documents(sents, 1, None, seed) == [sents[:2], sents[2:]][first]
        picked.append(first)
    assert set(picked) == {0, 1} and align.limit_documents(sents, 2, None, 5) == sents


def test_requests_match_the_scorer_encoding(sents, real_tokenizer):
    for c in align.plan_chunks(real_tokenizer, sents, 1000):
        for bos in ("prefix", "tokenizer_default", "bos_token"):
            assert align.encode_chunk(real_tokenizer, c, bos).request == encode_text(real_tokenizer, c.text, bos)


# Doc 1's tokens and the word each belongs to under the chars rule (the space token goes to "It").
DOC1_TOKENS = ["I", " don", "'t", " like", " Google", "OS", ".", " Hello", ",", " world", "!", " ", " It", "'s",
               " an", " e", "-", "mail", "."]
DOC1_WORDS = {"I": [0], "do": [1], "n't": [2], "like": [3], "GoogleOS": [4, 5], ".": [6], "Hello": [7], ",": [8],
              "world": [9], "!": [10], "It": [11, 12], "'s": [13], "an": [14], "e-mail": [15, 16, 17], ".#2": [18]}


def test_word_surprisal_hand_worked(sents, real_tokenizer):
    doc1 = sents[:2]
    vals = 2.0 ** np.arange(len(DOC1_TOKENS))  # every subset of tokens has its own sum
    got = {}
    for mwt in align.MWT_RULES:
        chunks = align.plan_chunks(real_tokenizer, doc1, 1000, mwt)
        enc = [align.encode_chunk(real_tokenizer, c) for c in chunks]
        assert [real_tokenizer.decode([t]) for t in enc[0].request.target] == DOC1_TOKENS
        w = align.words_table(doc1, chunks, enc, {"x": vals})
        got[mwt] = dict(zip(w.form + np.where(w.duplicated("form"), "#2", ""), w.surprisal_x))
        assert w.surprisal_x.sum() == vals.sum()  # nothing lost, nothing counted twice
    assert got["chars"] == {k: sum(vals[i] for i in v) for k, v in DOC1_WORDS.items()}
    assert got["split"]["do"] == got["split"]["n't"] == (vals[1] + vals[2]) / 2
    assert (got["first"]["do"], got["first"]["n't"]) == (vals[1] + vals[2], 0.0)
    assert {k: v for k, v in got["split"].items() if k not in ("do", "n't", "It", "'s")} == \
        {k: v for k, v in got["chars"].items() if k not in ("do", "n't", "It", "'s")}
    chunks = align.plan_chunks(real_tokenizer, doc1, 1000)
    enc = [align.encode_chunk(real_tokenizer, c) for c in chunks]
    w = align.words_table(doc1, chunks, enc, {"x": vals})
    assert w.set_index("form").n_subword_tokens.to_dict()["e-mail"] == 3
    assert w.is_mwt.tolist() == [False, True, True] + [False] * 7 + [True, True] + [False] * 3
    assert w.scored.all()


def test_word_split_into_many_tokens_and_merged_punctuation(sents, real_tokenizer):
    chunks = align.plan_chunks(real_tokenizer, sents, 1000)
    enc = [align.encode_chunk(real_tokenizer, c) for c in chunks]
    w = align.words_table(sents, chunks, enc, {"one": np.ones(sum(len(e.owner) for e in enc))})
    long = w[w.form.str.startswith("Supercal")].iloc[0]
    n = len(real_tokenizer(" Supercalifragilisticexpialidocious", add_special_tokens=False)["input_ids"])
    assert n > 5 and long.n_subword_tokens == n and long.surprisal_one == n
    # '."' is one subword token: the full stop owns it (earlier span), the quote gets none of its own.
    doc2 = w[w.doc == 1].reset_index(drop=True)
    assert doc2.loc[4, ["form", "n_subword_tokens"]].tolist() == [".", 1]
    assert doc2.loc[5, ["form", "n_subword_tokens", "surprisal_one"]].tolist() == ['"', 0, 0.0]
    stats = align.alignment_stats(sents, chunks, enc, w)
    assert stats["units_without_own_subword"] >= 1 and stats["mwt_words"] == 8
    assert stats["mwt_words_sharing_a_unit"] == 2  # won't
    assert stats["subword_tokens"] == w.surprisal_one.sum()


def test_tokenizer_default_leaves_the_first_word_unscored(sents, real_tokenizer):
    chunks = align.plan_chunks(real_tokenizer, sents, 1000)
    enc = [align.encode_chunk(real_tokenizer, c, "tokenizer_default") for c in chunks]
    assert [e.context_owner for e in enc] == [0, 15]  # SmolLM2 adds no BOS: "I" and "He" are context only
    w = align.words_table(sents, chunks, enc, {})
    assert w.loc[~w.scored, "form"].tolist() == ["I", "He"]


@pytest.mark.skipif(not (SHARED / "ud_ewt").is_dir(), reason="staged UD EWT not found")
def test_every_ewt_unit_spells_its_word(real_tokenizer):
    sents = read_conllu(SHARED / "ud_ewt" / "en_ewt-ud-test.conllu.gz")
    chunks, enc = align.encode_corpus(real_tokenizer, sents, 512, 8192)
    assert max(len(e.request.target) for e in enc) <= 512
    w = align.words_table(sents, chunks, enc, {"one": np.ones(sum(len(e.owner) for e in enc))})
    texts = np.array(_unit_texts(chunks), dtype=object)[w.unit]
    whole = w.weight == 1
    assert (texts[~w.is_mwt] == w.form[~w.is_mwt]).all()
    assert (np.char.lower(texts[whole & w.is_mwt].astype(str)) == w.form[whole & w.is_mwt].str.lower()).all()
    assert len(w) == 25094 and w.surprisal_one.sum() == sum(len(e.owner) for e in enc)


# ---------------------------------------------------------------------------------------------- spaCy adapter
class _Tok:
    def __init__(self, text, pos, idx, ws):
        self.text, self.pos_, self.idx, self.whitespace_, self.is_space = text, pos, idx, ws, text.isspace()


class _Doc:
    """The slice of spaCy's Doc API the adapter reads: ``sents`` of tokens with text/pos_/idx/whitespace_."""

    def __init__(self, text, sents):
        self.sents = [[_Tok(t, p, i, " " if text[i + len(t):i + len(t) + 1] == " " else "") for t, p, i in s]
                      for s in sents]


def test_spacy_adapter_builds_sentences_behind_the_same_interface(real_tokenizer):
    text = "Hi there.\nIt's ok."
    doc = _Doc(text, [[("Hi", "INTJ", 0), ("there", "ADV", 3), (".", "PUNCT", 8), ("\n", "SPACE", 9)],
                      [("It", "PRON", 10), ("'s", "AUX", 12), ("ok", "ADJ", 15), (".", "PUNCT", 17)]])
    got = align.spacy_sentences([text], lambda t: doc)
    assert [s.text for s in got] == ["Hi there.", "It's ok."] and got[0].newdoc == "doc0" and got[1].newdoc is None
    assert [w.upos for s in got for t in s.tokens for w in t.words] == ["INTJ", "ADV", "PUNCT", "PRON", "AUX", "ADJ", "PUNCT"]
    chunks = align.plan_chunks(real_tokenizer, got, 100)
    assert _unit_texts(chunks) == ["Hi", "there", ".", "It", "'s", "ok", "."]


def test_missing_spacy_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    txt = tmp_path / "plain.txt"
    txt.write_text("Some text without tags.\n")
    with pytest.raises(NegdiffError, match=r"pip install spacy && python -m spacy download en_core_web_sm"):
        align.load_sentences(str(txt))
    with pytest.raises(NegdiffError, match="neither ewt-test nor ewt-dev nor an existing file"):
        align.load_sentences(str(tmp_path / "nope.txt"))
