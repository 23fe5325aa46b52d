"""The train-mini training corpus, rebuilt from its public sources: 50 Gutenberg books + a TinyStories slice.

Why a module of its own: the staged ``train_corpus`` folder was made by a staging script that is not part of
negdiff, so a user without the staged copy could not train ``train-mini`` on the same kind of text. This module
downloads the same sources (each Gutenberg book from its GitHub repository ``gutenbergbooks/<id>`` at a pinned
commit, and the first 2 MiB of TinyStories from GitHub gusjengis/toy-RNN at a pinned commit; every file
sha256-pinned) and applies the cleaning documented in the staged SOURCE.md with pure, tested functions.

The result is NOT byte-identical to the staged copy, and is not meant to be: the staging script also made a few
hand-set cuts of front/back matter (Oz book advertisements, Monte Cristo footnotes, an edition note, a list of
illustrations) that are not reproduced here, and its paragraph filters are re-implemented from their
description (checked against the staged file, which also dropped every paragraph with "pretext" or "produced
by" in it; here only "etext" and "Produced by ..." credit lines are). Measured on the pinned files: 114,735
of the staged file's 114,736 paragraph lines come out identical, plus 129 more lines (mostly those cuts), so
the rebuilt corpus has 7,549 documents (5,233 passages + the same 2,316 stories) against the staged 7,536. The
format (one paragraph per line, documents separated by one empty line), the manifest columns and the document
order (the same seeded shuffle of the same pre-shuffle order) are the staged ones.
"""

from __future__ import annotations

import gzip
import random
import re
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from negdiff.errors import NegdiffError
from negdiff.tse_pickles import jsonl_text

RAW = "https://raw.githubusercontent.com"
SEED = 20250601  #: the documents are shuffled with this seed, so any prefix has the same mix of sources
MIN_PASSAGE = 5000  #: a Gutenberg document is consecutive paragraphs of one book of at least this many chars
MIN_TAIL = 1000  #: a book's last remainder shorter than this is merged into the passage before it
TINYSTORIES_BYTES = 2_097_152  #: exactly the first 2 MiB of TinyStories-train.txt
TINYSTORIES_REPO = "gusjengis/toy-RNN"
TINYSTORIES_COMMIT = "e4c7ff8bba4ff7989e69a3a816ebe4b14813b41e"
TINYSTORIES_PATH = "data/tinystories_sample.txt"
TINYSTORIES_SHA256 = "5352b299dcb1a32898b2d779b145b5a05f3e1265953fd21c264c9f9f9c9ae33d"
TINYSTORIES_TITLE = "TinyStories-train.txt (head)"
STORY_SEP = b"<|endoftext|>"


class Book(NamedTuple):
    """One Project Gutenberg ebook: its number, title, the pinned commit of ``gutenbergbooks/<id>`` and the
    sha256 and size of ``<id>-0.txt`` at that commit."""

    id: int
    title: str
    commit: str
    sha256: str
    size: int


# Every commit is the newest one that changed <id>-0.txt in the repository (read from a snapshot of each; the file
# is the same at its HEAD there), not HEAD itself, so a later upstream edit cannot change the corpus silently.
# These versions are the ones the staged corpus was made from as far as can be told: for every book, of all the
# versions of its file, this one's cleaned paragraphs overlap the staged corpus most, and 1342 @041e520 is the
# pin the staged SOURCE.md names. sha256 and size are those of the file at that commit (28,885,012 bytes in all).
BOOKS: tuple[Book, ...] = (
    # children's books (20)
    Book(11, "Alice's Adventures in Wonderland", "5e5120e12a58a10254e0e6a42661d887e61c2aac",
         "f17aa0bf7466424a8b357b688678666bad7a0148963ef349016a3098faa6bd1e", 151095),
    Book(45, "Anne of Green Gables", "22ac952e9942f38b002daed0e3510cf7a275044c",
         "e3ee77c88ecdb4a51d7aab86f2d73cfebbc35c0af2e075208125a7769a1473a6", 575879),
    Book(47, "Anne of Avonlea", "82c8841fff2831ee8aa027d9062a434c4b2049ff",
         "e582d45610335d079e2cf1b3acf2f9f1438ff2825b9108ca041ca0bfec898d0f", 502516),
    Book(51, "Anne of the Island", "42a59d9e8c6923393ea1d4037e81b7fe7281b00f",
         "92c84addd37c71252c97b9771feae1c770ab39dd824cbbf9889e94c37c19526d", 440050),
    Book(544, "Anne's House of Dreams", "0c6d86670abcf4142d93a3812061fe518832ef79",
         "0be4271098926cb421c621cbb21299b25486eca456d04c800bf1949613d94ba1", 451929),
    Book(55, "The Wonderful Wizard of Oz", "a79134822f4e5130da66b14d3574faa571fc7c89",
         "3d4a52fee8d4756f35e64013efa9ab0eff918d90d8416a62cd9aa34c6cb1dc65", 212801),
    Book(33361, "Ozma of Oz", "63562630da76257dcff4c9d4427c2154ef587cfc",
         "ab3604aad1e926146f6349f887861273b25a04f54216d5713f2eef6134ee152a", 220642),
    Book(22566, "Dorothy and the Wizard in Oz", "8e7fc89ea67a5848332cd0ce52f6a1642721027c",
         "50fce799cad6b38b131a9842d1769ef2a219e34934b49e0976a7b8befc50ea1b", 232492),
    Book(26624, "The Road to Oz", "dcddb1d0a60a0f07b83b19601b4b1c8204c4323b",
         "7b8d29362d5f4813659884513ec31660c597d7eabeea90229d6414f88af1eeba", 225244),
    Book(74, "The Adventures of Tom Sawyer", "972a29e29e34eb11bb645cc36954600c1bf6c26a",
         "fe74f3e43a7c0a0d0189b40ce966ce73795559b63076ccc0ea2e8ba2b9a9b213", 405783),
    Book(120, "Treasure Island", "e89155f2bb5ead1c0007ec1abcf9008fbfe0e40e",
         "26bbda47e0066a884b1706e2b1bf7bc4b427f0889c47a4b2511274b3cff145d3", 372620),
    Book(421, "Kidnapped", "92490891b41153ed808704c27e3a799d6eed9b6a",
         "36a17dd72be3b4f27246b5215f1557ba8ae9c36454907c86bf5df17afa678b93", 431660),
    Book(1450, "Pollyanna", "cb8b6cd2fcac6d3fbba4aef2496dd1475d81f7bf",
         "24d03c2f841acd2779c605d3472c5b0a1cdd6153cb8893fd43d78cb57dc80154", 321632),
    Book(2788, "Little Men", "86a5954236eacc74f1770a50dd9bd7b9ff234d0d",
         "1343c2c00c079e73a9617bed557e61750345aed37ba0340567a0dbfbef51d3df", 568142),
    Book(20781, "Heidi", "8b497fe6afd0ad8b922acfc58c1139f85c8dd34d",
         "aea233ab954988cd69275b9a1d3cc3836d960b9e300085d665664fd9fc5cdf42", 284501),
    Book(24022, "A Christmas Carol", "ef99e05cf8169e9d0732ab9b92b2669362666403",
         "4d8667566b7846f231d91c2b8ebc4221fe5248fe47f842bff4d963a43b3aa9c1", 165613),
    Book(26654, "Peter and Wendy", "2a69ccfb20328a7d7650ece3150323b02296d69d",
         "cc5cdc99c107d33b4348c1e1a09883ac04a8dad3ec97b704d4cbda4c9d4904b4", 256541),
    Book(27200, "Fairy Tales of Hans Christian Andersen", "9bb7aef9b85cb6b4f1df3d85de25339f33355d12",
         "1417da59cd0b64149f7597a2ad1b2f94133f0a5139776e5b81eec0d9b169470c", 1996183),
    Book(27805, "The Wind in the Willows", "91f55c20ce3cc0ff784d930ff6f2e64cb617a1fc",
         "56180b4a7433acf1c5846c276a2b2ba9bfea388bcc37dff23396614d8b6b9cce", 328928),
    Book(30120, "The Happy Prince and Other Tales", "540a811f26daa458b724a42608483c0e00ed3141",
         "0250ace2bf3f1f9e078b5e1a413473a0ba7e07633e1e79a725d56576cf940f69", 89283),
    # novels and narratives (30)
    Book(43, "The Strange Case of Dr. Jekyll and Mr. Hyde", "80805b3b9520b27bbdbe9af29347f409331ecea9",
         "afe16ff5b3645124f24e9dc6a7ab4dbc487d688b5f07b9ae71685101a5b05065", 141160),
    Book(62, "A Princess of Mars", "b76371b4636d4587a8188032e2fdc3f158647405",
         "b6379540efed30ed4a1e0ff0f267445a91bae39209d8173e3567f665eb6b872d", 373066),
    Book(84, "Frankenstein", "8bd92d5ea00b020a3b1224f3558019e5b4024f94",
         "f572837d92b31a857df4f6d0612e54f4bd8003d134367ae6a35ef444b9a8336b", 421530),
    Book(86, "A Connecticut Yankee in King Arthur's Court", "9ab52657adb20202ca8d7ee2724c77585fd871ec",
         "d38377af9fbf6dc7ceb6795325f7a5b8490fcbb77af81389595eb3f6aa6c1e57", 648629),
    Book(105, "Persuasion", "c147484231e06ce7eae25ad9519f8a4dc3f0cd37",
         "87c92ea4efda1cf3a7fd04bde5467a4474cabd1614e58cc90a4804d7aa369afa", 469409),
    Book(121, "Northanger Abbey", "d750660f1dea8a213fbcc0c709aee17022f5033d",
         "37170ef0cd43b853e1a478af650af428d48fd62c383849ead495830e6f578274", 440231),
    Book(1342, "Pride and Prejudice", "041e520899f9a02af517d6cb253bc1fdfbf923e2",
         "86dab871eec9c0cef97f4cb6313f86c6cc48f6f7809534e65cd3f1c1d486d247", 737944),
    Book(159, "The Island of Doctor Moreau", "7a59d6b958fe582a83387a0b4e061b56e097de35",
         "6a4f2cf9baa048ca2bab9c7e166c3b1ad242eb72978e78fcde9774c9c37936b8", 245008),
    Book(1013, "The First Men in the Moon", "261cbdb1ca19370b76dd42e81567c906e0c6f5b7",
         "481ccc2096f5dd872e352f3999bbcffd3545ebe74c6fe307a0eb8699af6361f4", 386526),
    Book(174, "The Picture of Dorian Gray", "ea0f8c412c0c08c51360827bf12fbca5c4bea5b9",
         "aa8346331b9532dab86d8ab25a4a4ad598dc1c79e7ec2ed66157db9881861236", 437456),
    Book(209, "The Turn of the Screw", "257a19e71d6eabb22131571fba7897d387177966",
         "e2e069846d0f261bc54313e34049572310b9b91140106357bcd6f8b9051339ed", 234872),
    Book(215, "The Call of the Wild", "f33202980b37d78635543c942a997e63903e6efc",
         "d4833aa8bcfcbe2512fde65ebdbbbb617b05a6bf0fb4c84c74d07f6cf601a3dc", 176875),
    Book(910, "White Fang", "a1d706660465da1d9d9c6caf4a96110da9c93454",
         "094ebb9ba3ff6f5ac25b1b633e4a5337508c254845398d05f8d1e4fb97bd257b", 401667),
    Book(550, "Silas Marner", "32e43efda3e31db9b82f886bfb183d1d3357a6b8",
         "ba03dd688b9b337eeb5072f6ac2a6efea454872eeda6dcd2d0b0b304d5086c06", 402558),
    Book(730, "Oliver Twist", "032dbf63ed9fefb297d2a06772255b69ef7ce1af",
         "ed6843e69f29aee6606a1fcdeae401d9c6131b2a7f308b912ffa789dbdcc30f5", 917251),
    Book(766, "David Copperfield", "0950fdac84098e10974104f1ebe4f7baef69dd5f",
         "b69b9be72fcb832f05e9e0f6069c6f8e6affe575b5320ace36de253fd13a82a5", 1975227),
    Book(963, "Little Dorrit", "6cb6b55b36cd7d2e8024d7d47702bf30dc869858",
         "9006dfdc680974f441b3c0c98329a8eff7c32fe00e9596f63e6f2128fa885a34", 1916627),
    Book(1023, "Bleak House", "69a95de452c1eb31e93f1b15214585e464e19bce",
         "1befc0792604eef39b04ecb7aee0e7b3ad9dbaaf21b6d42fe0eac6fa69db80c9", 1985097),
    Book(829, "Gulliver's Travels", "6275703e86512dc829eac1be52b009f606817ed2",
         "1f67774a12b7132438f53c57057e91f2c786e346fb3eeb238aabc0c31bb3244f", 584574),
    Book(1184, "The Count of Monte Cristo", "718a6a7716bad5ef4006320a8e708c393bda3dc1",
         "6475fe2dc44facaa9435f88866d0c6e32097a96077893285da684c2f1f90607c", 2767288),
    Book(1661, "The Adventures of Sherlock Holmes", "376014745d5384398cb3041740bebd617cd23875",
         "e21895308fe6da6919abc53e2cf77d81f914887897546153cc5d49b2eadefe50", 575796),
    Book(2097, "The Sign of the Four", "35f80c0416fc38c2b7d1b565f9714ef0fb55b060",
         "1213c9ad08d95865f917b178e783b9980304a44949029141103076e376ffd71f", 236850),
    Book(2350, "His Last Bow", "8c07ab5c4f1bf98bce38b3925f0ae3f706826e17",
         "9d4f0eee7c35ffe86829f5fa9dec9ea08f28d22326d7eea461fdd0d8d90bf645", 337951),
    Book(3289, "The Valley of Fear", "45e206d65e7f8d10c01c11d92d5c1282373c71bc",
         "1bb15041b62cea8b2a808424c4753551f2b32c9bccc053322100efb4973c13f3", 322591),
    Book(1695, "The Man Who Was Thursday", "fb2f1bda35a46cd2fa45f355e398543e89aeb516",
         "6ef891219be47806632983723e467b0c0ede7f86b63e64b7d89b2f76f47cbb30", 328939),
    Book(2226, "Kim", "d73a8799b2045698491a6491e0195afb27d92d89",
         "3ea7f18664f22aeb15053054f89fd426d69155f700da2c8a0dbbb4863578c59c", 594924),
    Book(2554, "Crime and Punishment", "6fc35af73a6c40aaebb42ce173062a6293eb2133",
         "aa82644391f0a38f46b06f77f69eedc28d40055be4c2338ccee0448c6be9d8a3", 1159924),
    Book(3177, "Roughing It", "4fc0d40deedd5cec79ce958a98f63ec1ad21896b",
         "f029225fc0d8d86b99b3a256ba8320497758cd3b03e808a946a3559e147c459b", 958342),
    Book(4517, "Ethan Frome", "e46406f3c228d4d2bcf7070c8b27269711b372aa",
         "8a6dc3fd74f4a5116c4a2d395d8d50930ae7971eecccd13b6f858c2e758851b9", 192794),
    Book(64317, "The Great Gatsby", "653801a8485640c1c44ae5cc55ebf4f198766419",
         "4a1d4acb31593be9582b392572b08f7aa9f5ee0587ad50b2a0adbcc3712a951a", 280372),
)


def book_url(book: Book) -> str:
    """The raw file at the pinned commit (a mirror redirects it: :mod:`negdiff.download`)."""
    return f"{RAW}/gutenbergbooks/{book.id}/{book.commit}/{book.id}-0.txt"


def tinystories_url() -> str:
    """The TinyStories sample (exactly the first 2 MiB of TinyStories-train.txt) at its pinned commit."""
    return f"{RAW}/{TINYSTORIES_REPO}/{TINYSTORIES_COMMIT}/{TINYSTORIES_PATH}"


def download_size() -> int:
    """Bytes downloaded by a fetch (exact: every file is pinned)."""
    return sum(b.size for b in BOOKS) + TINYSTORIES_BYTES


# ---------------------------------------------------------------------------------------------- normalising
_CHARS = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",  # curly single quotes (BLiMP writes ')
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2032": "'", "\u2033": '"', "\u00ab": '"', "\u00bb": '"',  # primes and guillemets too, as in the staged copy
    "\u2014": "--", "\u2013": "-", "\u2026": "...",
    "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2007": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ",
    "\u00ad": None, "\u200b": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None,
})
_SPACES = re.compile(r"[ \t]+")


def normalise_chars(text: str) -> str:
    """Curly quotes to straight, em dash to ``--``, en dash to ``-``, ellipsis to ``...``, no-break and thin
    spaces to spaces, soft hyphens and zero-width characters removed, NFC. Line layout is kept (the Gutenberg
    filters read it), so runs of spaces are collapsed later, by :func:`normalise`."""
    return unicodedata.normalize("NFC", text.translate(_CHARS))


def normalise(line: str) -> str:
    """One output line (both sources): :func:`normalise_chars`, runs of spaces collapsed, ends stripped."""
    return _SPACES.sub(" ", normalise_chars(line)).strip()


# ---------------------------------------------------------------------------------------------- Gutenberg
_START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_END_OF = re.compile(r"^[ \t]*End of (?:the )?Project Gutenberg", re.I | re.M)
#: [Illustration ...], [Footnote ...] and similar blocks, over several lines, with one level of [..] inside.
_BLOCK = re.compile(r"\[(?:Illustration|Footnote|Sidenote|Decoration|Transcriber's Note|Note\b)"
                    r"(?:[^\[\]]|\[[^\[\]]*\])*\]", re.I)
_MARK = re.compile(r"\[(?:\d+|[A-Z]|\*)\]")  #: footnote marks: [1], [A], [*]
_BOILERPLATE = re.compile(r"gutenberg|\be-?texts?\b|transcriber|^produced by|https?://|www\.|\.(?:jpe?g|png|gif)\b",
                          re.I)
_NUMBER = (r"(?:[IVXLC]+|\d+|(?i:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|first|second|"
           r"third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last))")  # roman numerals in capitals only
_HEADING = re.compile(rf"^(?i:chapter|book|part|volume|stave|canto|section)\s+{_NUMBER}\b")
_CONTENTS = re.compile(r"^(?:(?:table of )?contents|list of illustrations)\b", re.I)
_PAGE_NUMBER = re.compile(r"(?:\s|\.)\d+$")  #: a contents line ending in its page number
_COLUMNS = re.compile(r"\S {3,}\S")  #: text laid out in columns
_FINAL = re.compile(r"[.!?:;\"')\]-]$")  #: sentence-final punctuation (as the staged corpus counts it)
SHORT_LINE = 50  #: a line shorter than this is short (Gutenberg wraps prose at 60-75 characters)


def book_body(text: str) -> str:
    """The text between the ``*** START/END OF THE PROJECT GUTENBERG EBOOK`` lines where present, before any
    "End of (the) Project Gutenberg..." line, with [Illustration ...]/[Footnote ...] blocks and [n] marks
    removed and the characters normalised (:func:`normalise_chars`; CRLF to LF)."""
    text = normalise_chars(text.replace("\r\n", "\n").replace("\r", "\n"))
    if m := _START.search(text):
        text = text[m.end():]
    if m := _END.search(text):
        text = text[:m.start()]
    if m := _END_OF.search(text):
        text = text[:m.start()]
    return _MARK.sub("", _BLOCK.sub("", text))


def keep_paragraph(lines: list[str]) -> bool:
    """Whether a paragraph (its lines as laid out in the book, non-empty) is prose to keep.

    Dropped: mentions of Project Gutenberg, transcribers, URLs or image files; no lower-case letter
    (headings, title pages); chapter headings and tables of contents; text laid out in columns; verse and
    lists (several lines, most of them short); a single line without sentence-final punctuation (titles,
    "by ..." lines), or of one word, or starting in lower case or with "(" (the staged corpus keeps none of
    these: a lone '"Tom!"', "quoted Anne." after a verse, "(End of volume one.)").
    """
    body = [line.strip().replace("_", "") for line in lines]
    text = " ".join(body)
    if _BOILERPLATE.search(text) or not any(c.islower() for c in text):
        return False
    if _HEADING.match(body[0]) or _CONTENTS.match(body[0]):
        return False
    if len(body) == 1:
        return bool(_FINAL.search(text)) and len(text.split()) > 1 and not (text[0].islower() or text[0] == "(")
    if sum(bool(_COLUMNS.search(b) or _PAGE_NUMBER.search(b) or _HEADING.match(b)) for b in body) * 2 >= len(body):
        return False
    return sum(len(b) < SHORT_LINE for b in body) * 2 <= len(body)


def reflow(lines: list[str]) -> str:
    """A kept paragraph on one line: lines joined by spaces, _italic_ marks removed, spaces collapsed."""
    return normalise(" ".join(lines).replace("_", ""))


def clean_book(text: str) -> list[str]:
    """A book's raw ``<id>-0.txt`` text -> its kept paragraphs, one line each (the documented cleaning, less
    the staging script's hand-set cuts of front/back matter, which are not reproduced)."""
    out = []
    for block in re.split(r"\n[ \t]*\n", book_body(text)):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if lines and keep_paragraph(lines) and (para := reflow(lines)):
            out.append(para)
    return out


def split_passages(paragraphs: list[str], min_chars: int = MIN_PASSAGE, min_tail: int = MIN_TAIL) -> list[list[str]]:
    """Consecutive paragraphs grouped into passages of at least ``min_chars`` characters, each paragraph
    counted with its line break (so a passage's text is at least ``min_chars - 1`` characters, as in the
    staged manifest); the last remainder is merged into the passage before it when shorter than ``min_tail``
    (the staged corpus keeps book-final passages of 1,034 characters and more as their own)."""
    passages: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for para in paragraphs:
        cur.append(para)
        size += len(para) + 1
        if size >= min_chars:
            passages.append(cur)
            cur, size = [], 0
    if cur:
        if passages and size < min_tail:
            passages[-1].extend(cur)
        else:
            passages.append(cur)
    return passages


# ---------------------------------------------------------------------------------------------- TinyStories
def tinystories(data: bytes, limit: int = TINYSTORIES_BYTES) -> list[str]:
    """The complete stories in the first ``limit`` bytes of a ``<|endoftext|>``-separated file: the text after
    the last separator (the story the cut broke off, or nothing) is dropped; each story's lines normalised,
    empty lines dropped (a story is one document; its paragraphs are lines)."""
    parts = data[:limit].split(STORY_SEP)[:-1]
    stories = []
    for i, raw in enumerate(parts):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NegdiffError(f"TinyStories story {i} is not UTF-8 ({exc}); the file changed") from None
        story = "\n".join(line for line in map(normalise, text.split("\n")) if line)
        if story:
            stories.append(story)
    return stories


# ---------------------------------------------------------------------------------------------- the corpus
class Document(NamedTuple):
    """One document of the corpus and its manifest fields."""

    source: str  #: "gutenberg" or "tinystories"
    id: int  #: ebook number or story index
    title: str
    part: int  #: passage number within the book (0 for a story)
    text: str  #: paragraphs, one per line


def book_documents(book: Book, raw: str, min_chars: int = MIN_PASSAGE, min_tail: int = MIN_TAIL) -> list[Document]:
    """A book's passages as documents, numbered from 0 in book order."""
    return [Document("gutenberg", book.id, book.title, i, "\n".join(p))
            for i, p in enumerate(split_passages(clean_book(raw), min_chars, min_tail))]


def story_documents(stories: Iterable[str]) -> list[Document]:
    """Stories as documents, numbered from 0 in file order."""
    return [Document("tinystories", i, TINYSTORIES_TITLE, 0, s) for i, s in enumerate(stories)]


def shuffled(docs: list[Document], seed: int = SEED) -> list[Document]:
    """The documents in the staged file's order: stories by index, then passages by ebook number and part,
    shuffled by ``random.Random(seed)`` (this reproduces the staged manifest's order exactly from its own rows,
    so a corpus with the same documents would come out in the same order). Returns a new list."""
    out = sorted(docs, key=lambda d: (d.source != "tinystories", d.id, d.part))
    random.Random(seed).shuffle(out)
    return out


def corpus_files(docs: list[Document]) -> dict[str, bytes]:
    """train.txt.gz (documents joined by one empty line, final newline; gzip mtime 0, so reruns give the same
    bytes) and manifest.jsonl.gz (one row per document in file order: doc, source, id, title, part,
    paragraphs, chars)."""
    if not docs:
        raise NegdiffError("the training corpus came out empty: no document survived the cleaning")
    text = "\n\n".join(d.text for d in docs) + "\n"
    rows = [{"doc": i, "source": d.source, "id": d.id, "title": d.title, "part": d.part,
             "paragraphs": d.text.count("\n") + 1, "chars": len(d.text)} for i, d in enumerate(docs)]
    return {"train.txt.gz": gzip.compress(text.encode(), mtime=0),
            "manifest.jsonl.gz": gzip.compress(jsonl_text(rows).encode(), mtime=0)}


class Getter(Protocol):
    """What :func:`fetch_files` needs of :class:`negdiff.download.Downloader` (mirror, progress, manifest)."""

    def get(self, url: str, sha256: str | None = None) -> bytes: ...


def fetch_files(get: Getter, books: Iterable[Book] | None = None) -> dict[str, bytes]:
    """Download every book (default :data:`BOOKS`) and the TinyStories slice, each sha256-pinned (a book with
    an empty sha256 is not), and build the corpus files. Nothing is returned unless every download succeeded."""
    docs: list[Document] = []
    for book in BOOKS if books is None else books:
        data = get.get(book_url(book), book.sha256 or None)
        try:
            raw = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise NegdiffError(f"{book_url(book)} is not UTF-8 ({exc})") from None
        docs += book_documents(book, raw)
    docs += story_documents(tinystories(get.get(tinystories_url(), TINYSTORIES_SHA256)))
    return corpus_files(shuffled(docs))
