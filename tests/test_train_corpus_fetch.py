"""The train-mini corpus rebuilt from its sources (negdiff.train_corpus), offline: every cleaning rule on
hand-worked text, passage splitting, the seeded shuffle, the TinyStories 2 MiB cut, the written files, and a
whole fetch from a local HTTP server (conftest's ``server``) that ``negdiff.data`` then reads; plus checks
against the staged copy (its paragraphs are fixed points of the normaliser; its document order is the one
:func:`shuffled` gives)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import textwrap

import pytest

from negdiff import NegdiffError
from negdiff import train_corpus as tc
from negdiff.data import check_corpus, corpus_documents
from negdiff.datasets import SOURCES, fetch
from negdiff.datastore import ensure
from negdiff.download import MANIFEST

from conftest import DATA

STAGED = DATA / "train_corpus"
needs_staged = pytest.mark.skipif(not (STAGED / "train.txt.gz").is_file(),
                                  reason=f"staged train_corpus not found at {DATA}")


# ---------------------------------------------------------------------------------------------- cleaning
def test_normalise_follows_the_documented_character_rules():
    raw = "\u201cIt\u2019s\u2014well\u2026\u201d  she\u00a0said,\u2009\u2018pages 3\u20135\u2019 \u00abok\u00bb so\u00adft\u200bly\tnow  "
    assert tc.normalise(raw) == "\"It's--well...\" she said, 'pages 3-5' \"ok\" softly now"
    assert tc.normalise("Cafe\u0301 at 5\u2032 3\u2033") == "Caf\u00e9 at 5' 3\""  # NFC; primes
    assert tc.normalise_chars("a  b\n  c") == "a  b\n  c"  # layout kept for the paragraph filters


def test_book_body_cuts_the_header_licence_and_blocks():
    raw = ("The Project Gutenberg eBook of X\r\n\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n"
           "Text one.[1] More[A] and[*] less [454a].\r\n[Illustration: a house\r\nby the sea]\r\n"
           "[Footnote 1: see [2] there.]\r\nText two.\r\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nLicence.\r\n")
    assert tc.book_body(raw) == "\nText one. More and less [454a].\n\n\nText two.\n"
    no_markers = "Story text.\n\nEnd of the Project Gutenberg EBook of Y\n\nLicence.\n"
    assert tc.book_body(no_markers) == "Story text.\n\n"
    assert tc.book_body("Story.\nEnd of Project Gutenberg's Z, by W.\n") == "Story.\n"


PROSE = ["It was the best of times, it was the worst of times, it was the age of",
         "wisdom, it was the age of foolishness."]


@pytest.mark.parametrize("lines, keep", [
    (PROSE, True),  # a 2-line paragraph: one short line of two is not "mostly short"
    (["He said:"], True),  # sentence-final punctuation includes ':' (and closing quotes)
    (['"Showing Off"'], True),
    (["_To Mrs. Saville, England._"], True),  # italic marks do not hide the final full stop
    (["Please see www.example.com for more books like this one, at no cost at all."], False),  # URL
    (["This etext was prepared from the 1865 edition and checked again by hand."], False),
    (["Produced by Jane Doe and the Online Distributed Proofreading Team."], False),
    (["A Project Gutenberg book, released to the public domain in the United States."], False),
    (["Transcriber's note: obvious printing errors have been corrected silently."], False),
    (["The frontispiece is the file images/cover.jpg in the HTML edition of the book."], False),
    (["PRIDE AND PREJUDICE."], False),  # no lower-case letter
    (["Chapter II. The Pool of Tears"], False),  # chapter heading
    (["Part civil and part military, the force was raised in the spring of that", "year."], True),  # not "Part C"
    (["CHAPTER IV. Making Our Bed--Assaults by the Unarmed--Fashions on the Overland",
      "Stage--A Mean Station--Chilly Comforts of the Night and of the Morning."], False),  # heading + synopsis
    (["Contents of the volume, with the pages on which each of the chapters begins:",
      "Down the Rabbit-Hole, being the first chapter of the story of Alice .... 1"], False),
    (["Ruskin       156. Charing", "House.        Cross Road."], False),  # columns
    (["Down the Rabbit-Hole goes Alice, and all the way down the well 1",
      "The Pool of Tears in which the mouse swims about in the hall 9"], False),  # page numbers
    (["Twinkle, twinkle, little star,", "How I wonder what you are!", "Up above the world so high,",
      "Like a diamond in the sky."], False),  # verse: most lines short
    (["Down the Rabbit-Hole"], False),  # a single line without sentence-final punctuation
    (['"Tom!"'], False),  # one word
    (["quoted Anne."], False),  # starts in lower case: the rest of a sentence broken by a verse
    (["(End of volume one.)"], False),
])
def test_each_paragraph_rule(lines, keep):
    assert tc.keep_paragraph(lines) is keep


RAW_BOOK = """The Project Gutenberg eBook of Test Book

*** START OF THE PROJECT GUTENBERG EBOOK TEST BOOK ***

                TEST BOOK

                by A. Writer

[Illustration: A picture of
the house at night]

CHAPTER I.

The Beginning

It was a dark and stormy night; the rain fell in torrents, except at
occasional intervals, when it was checked by a violent gust.[1]

\u201cIs it _you_?\u201d she   asked\u2014softly\u2026

    Twinkle, twinkle, little star,
    How I wonder what you are!

[Footnote 1: A famous opening line,
often quoted.]

He said:

\u201cYes.\u201d

quoted Anne.

Transcriber\u2019s note: spelling kept as printed in the first edition.

THE END

*** END OF THE PROJECT GUTENBERG EBOOK TEST BOOK ***

This text, after the end marker, must not appear in the corpus at all.
"""


def test_clean_book_hand_worked():
    assert tc.clean_book(RAW_BOOK) == [
        "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals, when it "
        "was checked by a violent gust.",
        '"Is it you?" she asked--softly...',
        "He said:",
    ]


def test_split_passages_counts_line_breaks_and_merges_a_short_tail():
    paras = ["aaaa", "bb", "cccccc", "d"]  # 5, 3, 7 and 2 characters with their line breaks
    assert tc.split_passages(paras, min_chars=6, min_tail=3) == [["aaaa", "bb"], ["cccccc", "d"]]
    assert tc.split_passages(paras, min_chars=6, min_tail=2) == [["aaaa", "bb"], ["cccccc"], ["d"]]
    assert tc.split_passages(paras, min_chars=100, min_tail=3) == [paras]  # a short book is one passage
    assert tc.split_passages([], min_chars=6) == []
    for passage in tc.split_passages(["x" * 9] * 10, min_chars=25, min_tail=25):
        assert len("\n".join(passage)) >= 24  # at least min_chars - 1 characters of text


def test_shuffle_is_deterministic_and_independent_of_the_input_order():
    docs = tc.story_documents(f"Story {i}." for i in range(8))
    docs += tc.book_documents(tc.Book(7, "Seven", "", "", 0), "\n\n".join([" ".join(PROSE)] * 12), min_chars=300)
    assert len(docs) > 8
    once = tc.shuffled(docs)
    assert once == tc.shuffled(list(reversed(docs))) == tc.shuffled(docs)
    assert sorted(once) == sorted(docs) and once != docs
    assert tc.shuffled(docs, seed=1) != once


# ---------------------------------------------------------------------------------------------- TinyStories
STORIES = ("Once upon a time, Tom\u2019s cat sat.\nThe end.\n<|endoftext|>\n\nLily   ran\u2014fast.\n\n\nShe smiled.\n"
           "<|endoftext|>\nA story the cut breaks off, caf\u00e9").encode()


def test_tinystories_takes_the_first_bytes_and_drops_the_cut_off_story():
    both = ["Once upon a time, Tom's cat sat.\nThe end.", "Lily ran--fast.\nShe smiled."]
    assert tc.tinystories(STORIES) == both
    assert tc.tinystories(STORIES, limit=len(STORIES) - 1) == both  # cut inside the last story's "é": no error
    second_sep = STORIES.rindex(b"<|endoftext|>")
    assert tc.tinystories(STORIES, limit=second_sep + 5) == both[:1]  # a broken separator ends no story
    assert tc.tinystories(STORIES, limit=10) == []
    assert tc.TINYSTORIES_BYTES == 2 * 1024 * 1024


def test_corpus_files_are_the_documented_format():
    docs = [tc.Document("tinystories", 0, tc.TINYSTORIES_TITLE, 0, "A b.\nC d."),
            tc.Document("gutenberg", 11, "Alice's Adventures in Wonderland", 3, "P one.")]
    files = tc.corpus_files(docs)
    assert gzip.decompress(files["train.txt.gz"]).decode() == "A b.\nC d.\n\nP one.\n"
    assert files["train.txt.gz"][4:8] == b"\0\0\0\0" and tc.corpus_files(docs) == files  # gzip mtime 0
    rows = [json.loads(line) for line in gzip.decompress(files["manifest.jsonl.gz"]).decode().splitlines()]
    assert rows == [{"doc": 0, "source": "tinystories", "id": 0, "title": "TinyStories-train.txt (head)", "part": 0,
                     "paragraphs": 2, "chars": 9},
                    {"doc": 1, "source": "gutenberg", "id": 11, "title": "Alice's Adventures in Wonderland", "part": 3,
                     "paragraphs": 1, "chars": 6}]
    with pytest.raises(NegdiffError, match="came out empty"):
        tc.corpus_files([])


def test_the_book_table_pins_every_source():
    ids = {11, 45, 47, 51, 544, 55, 33361, 22566, 26624, 74, 120, 421, 1450, 2788, 20781, 24022, 26654, 27200, 27805,
           30120, 43, 62, 84, 86, 105, 121, 1342, 159, 1013, 174, 209, 215, 910, 550, 730, 766, 963, 1023, 829, 1184,
           1661, 2097, 2350, 3289, 1695, 2226, 2554, 3177, 4517, 64317}  # the staged SOURCE.md's list
    assert len(tc.BOOKS) == 50 and {b.id for b in tc.BOOKS} == ids
    for b in tc.BOOKS:
        assert re.fullmatch(r"[0-9a-f]{40}", b.commit) and re.fullmatch(r"[0-9a-f]{64}", b.sha256) and b.size > 50_000
    assert tc.book_url(next(b for b in tc.BOOKS if b.id == 1342)) == (
        "https://raw.githubusercontent.com/gutenbergbooks/1342/041e520899f9a02af517d6cb253bc1fdfbf923e2/1342-0.txt")
    src = SOURCES["train_corpus"]
    assert src.exact and src.size == sum(b.size for b in tc.BOOKS) + 2_097_152 == 30_982_164
    assert "NOT byte-identical" in src.note


# ---------------------------------------------------------------------------------------------- fetching
def _paragraph(book: int, i: int) -> str:
    """A prose paragraph of exactly 399 characters (400 with its line break)."""
    text = f"Here paragraph {i:02d} of book {book} opens. " + "The cat sat on the warm mat and looked about it. " * 9
    return text[:398].rstrip().ljust(398, "a") + "."


def _raw_book(paras: list[str], title: str) -> str:
    """A Gutenberg-style file around ``paras``: header, title page, chapters, a verse, an illustration."""
    body = [f"  {title.upper()}", "  by A. Writer", "CHAPTER I.", "[Illustration: The cat on the mat]"]
    for i, p in enumerate(paras):
        if i == 3:
            body += ["    Sing a song of sixpence,\n    A pocket full of rye.", "CHAPTER II."]
        body.append(textwrap.fill(p.replace('"Hello,"', "\u201cHello,\u201d").replace("--", "\u2014"), width=70))
    return (f"The Project Gutenberg eBook of {title}\n\n*** START OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n"
            + "\n\n".join(body) + f"\n\n*** END OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\n\nLicence.\n")


@pytest.fixture
def fixture_sources(server, cache, monkeypatch):
    """Two small books and a TinyStories file served under the mirror, pinned in place of the real table.

    Book 1: 20 paragraphs -> a passage of 13 (5,199 chars) and the remaining 7 (2,799 >= 1,000: its own).
    Book 2: 15 paragraphs -> 13 and a tail of 2 (799 < 1,000: merged), one passage of 15.
    """
    www, url, hits = server
    paras = {1: [_paragraph(1, i) for i in range(20)], 2: [_paragraph(2, i) for i in range(15)]}
    paras[1][0] = paras[1][0][:-39] + ' "Hello," she said--and sat down again.'
    assert all(len(p) == 399 for ps in paras.values() for p in ps)
    books = []
    for bid, title in ((1, "First Book"), (2, "Second Book")):
        data = ("\ufeff" + _raw_book(paras[bid], title)).encode()
        book = tc.Book(bid, title, f"{bid:040d}", hashlib.sha256(data).hexdigest(), len(data))
        path = www / tc.book_url(book).split("://", 1)[1]
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        books.append(book)
    stories = www / tc.tinystories_url().split("://", 1)[1]
    stories.parent.mkdir(parents=True)
    stories.write_bytes(STORIES)
    monkeypatch.setattr(tc, "BOOKS", tuple(books))
    monkeypatch.setattr(tc, "TINYSTORIES_SHA256", hashlib.sha256(STORIES).hexdigest())
    monkeypatch.setenv("NEGDIFF_DATA_MIRROR", url)
    return paras, books, hits


def test_fetch_rebuilds_the_corpus_that_negdiff_data_reads(fixture_sources, cache):
    paras, books, hits = fixture_sources
    assert ensure(["train_corpus"]) == cache  # the cache fetches what it lacks
    folder = cache / "train_corpus"
    assert len(hits) == 3 and (folder / MANIFEST).is_file()
    rows = [json.loads(line) for line in gzip.decompress((folder / "manifest.jsonl.gz").read_bytes()).splitlines()]
    assert sorted((r["source"], r["id"], r["title"], r["part"], r["paragraphs"], r["chars"]) for r in rows) == [
        ("gutenberg", 1, "First Book", 0, 13, 5199), ("gutenberg", 1, "First Book", 1, 7, 2799),
        ("gutenberg", 2, "Second Book", 0, 15, 5999),
        ("tinystories", 0, "TinyStories-train.txt (head)", 0, 2, 41),
        ("tinystories", 1, "TinyStories-train.txt (head)", 0, 2, 27)]
    assert [r["doc"] for r in rows] == list(range(5))
    docs, path = corpus_documents("train-corpus")
    assert path == folder / "train.txt.gz" and [len(d.rstrip("\n")) for d in docs] == [r["chars"] for r in rows]
    text = gzip.decompress((folder / "train.txt.gz").read_bytes()).decode()
    lines = [line for line in text.split("\n") if line]
    assert sorted(lines) == sorted(paras[1] + paras[2] + ["Once upon a time, Tom's cat sat.", "The end.",
                                                          "Lily ran--fast.", "She smiled."])
    assert '"Hello," she said--and sat down again.' in text and not re.search(r"Gutenberg|CHAPTER|sixpence|cat on", text)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert len(manifest["downloads"]) == 3 and all(d["pinned"] for d in manifest["downloads"])
    source_md = (folder / "SOURCE.md").read_text()
    assert "rebuilt from the named sources by negdiff's cleaning" in source_md
    assert "NOT byte-identical to a staged train_corpus" in source_md
    assert "public domain (US) + CDLA-Sharing-1.0 (TinyStories)" in source_md
    check_corpus("train-corpus")  # verified against its manifest, not fetched again
    assert len(hits) == 3


def test_a_book_that_differs_from_its_pin_is_refused(fixture_sources, cache, monkeypatch):
    _paras, books, _hits = fixture_sources
    monkeypatch.setattr(tc, "BOOKS", (books[0]._replace(sha256="0" * 64), books[1]))
    with pytest.raises(NegdiffError, match=r"1-0\.txt: sha256 [0-9a-f]{64} differs from the pinned 0000"):
        fetch(cache, ["train_corpus"], quiet=True)
    assert not (cache / "train_corpus").exists()


# ---------------------------------------------------------------------------------------------- the staged copy
@needs_staged
def test_staged_paragraphs_are_fixed_points_of_the_cleaning():
    """Real paragraphs of the staged corpus (already clean) come out of the normaliser unchanged."""
    lines, non_ascii = [], 0
    with gzip.open(STAGED / "train.txt.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                lines.append(line.rstrip("\n"))
                non_ascii += not line.isascii()
            if len(lines) >= 3000 and non_ascii >= 5:
                break
    assert non_ascii >= 5
    for line in lines:
        assert tc.normalise(line) == line
        assert tc.reflow([line]) == line


@needs_staged
def test_staged_stories_and_document_order_are_reproduced():
    """The staged manifest's order is :func:`shuffled`'s (same pre-shuffle order, same seed); its stories are
    fixed points of :func:`tinystories`."""
    with gzip.open(STAGED / "manifest.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    docs = [tc.Document(r["source"], r["id"], r["title"], r["part"], "") for r in rows]
    mixed = sorted(docs, key=lambda d: (d.title, -d.part, d.id))
    assert tc.shuffled(mixed) == docs
    first = next(r["doc"] for r in rows if r["source"] == "tinystories")
    with gzip.open(STAGED / "train.txt.gz", "rt", encoding="utf-8") as fh:
        story = fh.read(200_000).split("\n\n")[first]
    assert tc.tinystories(story.encode() + tc.STORY_SEP) == [story]
