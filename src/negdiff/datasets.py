"""Where every dataset comes from, and ``fetch``: download, convert, hash-check and record it.

Why: offline users point ``NEGDIFF_DATA`` at a staged copy, but a user who clones the repository has only the
internet, so every dataset negdiff reads must be obtainable from where its authors publish it, converted to
the staged one-record-per-line files (the converters are pure functions, tested offline on hand-made rows).
:data:`SOURCES` is the table (folder, origin, licence, approximate size, fetcher); :func:`fetch` announces
each dataset (what, from where, how big), downloads it through :class:`negdiff.download.Downloader`
(progress bar, sha256 pinned where known, every URL redirectable to a mirror), writes the files atomically,
then SOURCE.md and the hash manifest last, so a folder with a manifest is complete. The training corpus of
``train-mini`` (50 cleaned Gutenberg books + a TinyStories slice) is rebuilt from its sources by
:mod:`negdiff.train_corpus`: the same text format and cleaning, but not byte-identical to the staged copy.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from negdiff import train_corpus, tse_pickles
from negdiff.download import Downloader, human_bytes, mirror_base, sha256_bytes, write_manifest
from negdiff.errors import NegdiffError

GITHUB = "https://raw.githubusercontent.com"
HF = "https://huggingface.co/datasets/{repo}/resolve/refs%2Fconvert%2Fparquet/{config}/{split}/0000.parquet"
BLIMP_UIDS = tuple("adjunct_island anaphor_gender_agreement anaphor_number_agreement animate_subject_passive animate_subject_trans causative complex_NP_island coordinate_structure_constraint_complex_left_branch coordinate_structure_constraint_object_extraction determiner_noun_agreement_1 determiner_noun_agreement_2 determiner_noun_agreement_irregular_1 determiner_noun_agreement_irregular_2 determiner_noun_agreement_with_adj_2 determiner_noun_agreement_with_adj_irregular_1 determiner_noun_agreement_with_adj_irregular_2 determiner_noun_agreement_with_adjective_1 distractor_agreement_relational_noun distractor_agreement_relative_clause drop_argument ellipsis_n_bar_1 ellipsis_n_bar_2 existential_there_object_raising existential_there_quantifiers_1 existential_there_quantifiers_2 existential_there_subject_raising expletive_it_object_raising inchoative intransitive irregular_past_participle_adjectives irregular_past_participle_verbs irregular_plural_subject_verb_agreement_1 irregular_plural_subject_verb_agreement_2 left_branch_island_echo_question left_branch_island_simple_question matrix_question_npi_licensor_present npi_present_1 npi_present_2 only_npi_licensor_present only_npi_scope passive_1 passive_2 principle_A_c_command principle_A_case_1 principle_A_case_2 principle_A_domain_1 principle_A_domain_2 principle_A_domain_3 principle_A_reconstruction regular_plural_subject_verb_agreement_1 regular_plural_subject_verb_agreement_2 sentential_negation_npi_licensor_present sentential_negation_npi_scope sentential_subject_island superlative_quantifiers_1 superlative_quantifiers_2 tough_vs_raising_1 tough_vs_raising_2 transitive wh_island wh_questions_object_gap wh_questions_subject_gap wh_questions_subject_gap_long_distance wh_vs_that_no_gap wh_vs_that_no_gap_long_distance wh_vs_that_with_gap wh_vs_that_with_gap_long_distance ".split())
#: Published sha256 of WikiText-2 raw (Salesforce's wikitext-2-raw-v1.zip members; see the staged SOURCE.md):
#: the text rebuilt from the Hugging Face rows must equal them.
WIKITEXT_SHA256 = {"wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
                   "wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"}


# ---------------------------------------------------------------------------------------------- converters
def arc_rows(rows: Iterable[dict]) -> list[dict]:
    """HF allenai/ai2_arc rows -> id, question, choices, choice_labels, label (index of answerKey)."""
    out = []
    for r in rows:
        labels = list(r["choices"]["label"])
        out.append({"id": r["id"], "question": r["question"], "choices": list(r["choices"]["text"]),
                    "choice_labels": labels, "label": labels.index(r["answerKey"])})
    return out


def piqa_rows(items: Iterable[dict], labels: Iterable[str]) -> list[dict]:
    """The authors' valid.jsonl + valid-labels.lst -> id, question, choices, label."""
    return [{"id": f"piqa-valid-{i:04d}", "question": r["goal"], "choices": [r["sol1"], r["sol2"]], "label": int(lab)}
            for i, (r, lab) in enumerate(zip(items, labels, strict=True))]


def hellaswag_rows(rows: Iterable[dict]) -> list[dict]:
    """rowanz/hellaswag val rows -> the staged fields (text exactly as released)."""
    return [{"id": f"hellaswag-val-{i:05d}", "ind": r["ind"], "activity_label": r["activity_label"], "context": r["ctx"],
             "ctx_a": r["ctx_a"], "ctx_b": r["ctx_b"], "choices": list(r["endings"]), "label": int(r["label"]),
             "source_id": r["source_id"], "split_type": r["split_type"]} for i, r in enumerate(rows)]


def winogrande_rows(rows: Iterable[dict]) -> list[dict]:
    return [{"id": f"winogrande-dev-{i:04d}", "sentence": r["sentence"], "choices": [r["option1"], r["option2"]],
             "label": int(r["answer"]) - 1} for i, r in enumerate(rows)]


def sciq_rows(rows: Iterable[dict]) -> list[dict]:
    return [{"id": f"sciq-validation-{i:04d}", "question": r["question"], "support": r["support"],
             "choices": [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]], "label": 3}
            for i, r in enumerate(rows)]


def lambada_rows(rows: Iterable[dict]) -> list[dict]:
    return [{"id": f"lambada-openai-test-{i:04d}", "text": r["text"]} for i, r in enumerate(rows)]


def boolq_rows(rows: Iterable[dict]) -> list[dict]:
    """SuperGLUE BoolQ validation (passage = "Title -- text") -> id, question, passage, title, choices, label."""
    return [{"id": f"boolq-dev-{i:04d}", "question": r["question"], "passage": r["passage"],
             "title": r["passage"].split(" -- ", 1)[0], "choices": ["no", "yes"], "label": int(r["label"])}
            for i, r in enumerate(rows)]


def wikitext_raw(rows: Iterable[dict]) -> str:
    """HF wikitext rows (lines; blank lines as "") -> the raw file (blank lines as " \\n")."""
    return "".join(r["text"] if r["text"] else " \n" for r in rows)


# ---------------------------------------------------------------------------------------------- sources
Files = dict[str, bytes]  #: file name in the dataset folder -> its bytes


def _parquet(get: Downloader, repo: str, config: str, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(get.get(HF.format(repo=repo, config=config, split=split)))).to_pylist()


def _jsonl(get: Downloader, url: str) -> list[dict]:
    return [json.loads(line) for line in get.get(url).decode().splitlines() if line.strip()]


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def _jsonl_gz(rows: list[dict]) -> bytes:
    return _gz(tse_pickles.jsonl_text(rows))


def _pinned(name: str, text: str, sha256: str) -> str:
    """Refuse a converted text whose sha256 is not the published one (nothing is written)."""
    got = sha256_bytes(text.encode())
    if got != sha256:
        raise NegdiffError(f"{name} as converted has sha256 {got[:16]}..., not the published {sha256[:16]}...: the "
                           "source changed; nothing was written (report it)")
    return text


def _fetch_blimp(get: Downloader) -> Files:
    return {f"{uid}.jsonl.gz": _jsonl_gz(_jsonl(get, f"{GITHUB}/alexwarstadt/blimp/master/data/{uid}.jsonl"))
            for uid in BLIMP_UIDS}


def _fetch_tse(get: Downloader) -> Files:
    pickles = {task: get.get(f"{tse_pickles.BASE_URL}/{task}.pickle", sha)
               for task, (sha, _size) in tse_pickles.PICKLES.items()}
    text = _pinned(tse_pickles.FILE, tse_pickles.convert(pickles), tse_pickles.JSONL_SHA256)
    return {tse_pickles.FILE: _gz(text)}


def _fetch_ewt(get: Downloader) -> Files:
    return {f"en_ewt-ud-{split}.conllu.gz": gzip.compress(
        get.get(f"{GITHUB}/UniversalDependencies/UD_English-EWT/master/en_ewt-ud-{split}.conllu"), mtime=0)
        for split in ("dev", "test")}


def _fetch_wikitext(get: Downloader) -> Files:
    out = {}
    for split, name in (("validation", "wiki.valid.raw"), ("test", "wiki.test.raw")):
        text = wikitext_raw(_parquet(get, "Salesforce/wikitext", "wikitext-2-raw-v1", split))
        out[f"{name}.gz"] = _gz(_pinned(name, text, WIKITEXT_SHA256[name]))
    return out


def _fetch_arc(get: Downloader) -> Files:
    return {f"{name}.jsonl.gz": _jsonl_gz(arc_rows(_parquet(get, "allenai/ai2_arc", config, "test")))
            for config, name in (("ARC-Easy", "arc_easy_test"), ("ARC-Challenge", "arc_challenge_test"))}


def _fetch_piqa(get: Downloader) -> Files:
    base = f"{GITHUB}/ybisk/ybisk.github.io/master/piqa/data"
    items = _jsonl(get, f"{base}/valid.jsonl")
    labels = get.get(f"{base}/valid-labels.lst").decode().split()
    return {"piqa_valid.jsonl.gz": _jsonl_gz(piqa_rows(items, labels))}


def _one(name: str, rows: Callable[[Downloader], list[dict]]) -> Callable[[Downloader], Files]:
    return lambda get: {name: _jsonl_gz(rows(get))}


@dataclass(frozen=True)
class Source:
    """One dataset folder: what it is, where it comes from, its licence, its download size, its fetcher."""

    folder: str
    title: str
    origin: str  #: where the bytes come from (announced, and written to SOURCE.md)
    licence: str
    size: int  #: download size in bytes: exact where every file is pinned, else estimated from the staged copy
    fetch: Callable[[Downloader], Files]
    exact: bool = False  #: whether ``size`` is exact
    note: str = ""  #: said in SOURCE.md after the origin (what a user of the fetched copy must know)

    def describe_size(self) -> str:
        return human_bytes(self.size) if self.exact else f"about {human_bytes(self.size)}"


SOURCES: dict[str, Source] = {s.folder: s for s in (
    Source("blimp", "BLiMP, 67 paradigms", "GitHub alexwarstadt/blimp data/*.jsonl", "CC BY 4.0", 29_600_000,
           _fetch_blimp),
    Source("tse", "TSE, Marvin & Linzen 2018", f"GitHub BeckyMarvin/LM_syneval data/templates/*.pickle at "
           f"{tse_pickles.COMMIT[:7]} (sha256-pinned, read by a data-only unpickler)", "MIT",
           sum(size for _sha, size in tse_pickles.PICKLES.values()), _fetch_tse, exact=True),
    Source("ud_ewt", "UD English EWT dev/test", "GitHub UniversalDependencies/UD_English-EWT", "CC BY-SA 4.0",
           3_600_000, _fetch_ewt),
    Source("wikitext2_raw", "WikiText-2 raw valid/test", "HF Salesforce/wikitext wikitext-2-raw-v1 (parquet; text "
           "sha256-pinned to the published raw files)", "CC BY-SA 3.0", 1_500_000, _fetch_wikitext),
    Source("arc", "ARC-Easy / ARC-Challenge test", "HF allenai/ai2_arc (test)", "CC BY-SA 4.0", 700_000, _fetch_arc),
    Source("piqa", "PIQA valid", "GitHub ybisk/ybisk.github.io piqa/data (valid)", "AFL 3.0", 600_000, _fetch_piqa),
    Source("hellaswag", "HellaSwag val", "GitHub rowanz/hellaswag data/hellaswag_val.jsonl", "MIT", 12_200_000,
           _one("hellaswag_val.jsonl.gz", lambda get: hellaswag_rows(
               _jsonl(get, f"{GITHUB}/rowanz/hellaswag/master/data/hellaswag_val.jsonl")))),
    Source("winogrande", "WinoGrande 1.1 dev", "HF allenai/winogrande winogrande_xl (validation)", "CC BY", 150_000,
           _one("winogrande_dev.jsonl.gz", lambda get: winogrande_rows(
               _parquet(get, "allenai/winogrande", "winogrande_xl", "validation")))),
    Source("sciq", "SciQ validation", "HF allenai/sciq (validation)", "CC BY-NC 3.0", 400_000,
           _one("sciq_validation.jsonl.gz", lambda get: sciq_rows(_parquet(get, "allenai/sciq", "default",
                                                                              "validation")))),
    Source("lambada_openai", "LAMBADA (OpenAI) test", "HF EleutherAI/lambada_openai (en, test)", "CC BY 4.0 / MIT",
           1_200_000, _one("lambada_openai_test.jsonl.gz", lambda get: lambada_rows(
               _parquet(get, "EleutherAI/lambada_openai", "en", "test")))),
    Source("boolq", "BoolQ dev", "HF aps/super_glue boolq (validation)", "CC BY-SA 3.0", 1_500_000,
           _one("boolq_dev.jsonl.gz", lambda get: boolq_rows(_parquet(get, "aps/super_glue", "boolq", "validation")))),
    Source("train_corpus", "train-mini corpus: 50 Gutenberg books + 2 MiB of TinyStories, rebuilt",
           f"50 Project Gutenberg books (GitHub gutenbergbooks/<id> <id>-0.txt, each at a pinned commit) and the "
           f"first 2 MiB of TinyStories-train.txt (GitHub {train_corpus.TINYSTORIES_REPO} {train_corpus.TINYSTORIES_PATH}"
           f" at {train_corpus.TINYSTORIES_COMMIT[:7]}), every file sha256-pinned",
           "public domain (US) + CDLA-Sharing-1.0 (TinyStories)", train_corpus.download_size(),
           train_corpus.fetch_files, exact=True,
           note="rebuilt from the named sources by negdiff's cleaning (negdiff.train_corpus: Gutenberg header/licence, "
                "illustration and footnote blocks, headings, contents, verse and lists dropped; one paragraph per line, "
                "documents separated by one empty line; Gutenberg passages of at least 5,000 characters; shuffled "
                "with seed 20250601; manifest.jsonl.gz has one row per document: doc, source, id, title, part, "
                "paragraphs, chars). It is NOT byte-identical to a staged train_corpus made by the original staging "
                "script, whose hand-set cuts of front/back matter are not reproduced (about 130 more paragraph lines "
                "here, 7,549 documents against 7,536), so results trained on it can differ slightly. Cite Eldan & "
                "Li 2023 for TinyStories; redistributing it, changed or not, must keep CDLA-Sharing-1.0"),
)}
#: Datasets negdiff reads that cannot be fetched, and what to do instead (none at present; the mechanism stays
#: for a dataset whose source disappears).
NOT_FETCHED: dict[str, str] = {}


def refetch_command(names: Iterable[str], dest: Path | None = None) -> str:
    """The command that fetches ``names`` again (``--dest`` only when not the cache folder)."""
    where = f" --dest {dest}" if dest is not None else ""
    return f"negdiff data fetch --only {','.join(names)}{where} --force"


def announce(names: list[str], dest: Path, mirror: str | None = None) -> str:
    """The line printed before a fetch: what, from where, how big, into which folder."""
    parts = [f"{n} ({SOURCES[n].title}; {SOURCES[n].describe_size()} from {SOURCES[n].origin})" for n in names]
    total = sum(SOURCES[n].size for n in names)
    via = mirror_base(mirror)
    return (f"fetching {len(names)} dataset(s) once into {dest}, {human_bytes(total)} in all"
            f"{f' via the mirror {via}' if via else ''}: {'; '.join(parts)}")


def fetch(dest: str | Path, only: list[str] | None = None, force: bool = False, mirror: str | None = None,
          quiet: bool = False) -> list[str]:
    """Fetch the named datasets (default: all fetchable) into ``dest``; returns the folders written.

    A folder whose manifest exists is complete and is kept (``force``: fetch again). Nothing is written for
    a dataset until all its downloads succeeded and matched their pins.
    """
    from negdiff.progress import status
    from negdiff.results import atomic_write_bytes

    dest = Path(dest).expanduser()
    names = list(only or SOURCES)
    for name in names:
        if name not in SOURCES:
            why = NOT_FETCHED.get(name, f"unknown dataset; fetchable: {', '.join(SOURCES)}")
            raise NegdiffError(f"cannot fetch '{name}': {why}")
    from negdiff.download import MANIFEST

    todo = [n for n in names if force or not (dest / n / MANIFEST).is_file()]
    if todo and not quiet:
        status(announce(todo, dest, mirror))
    for name in todo:
        src, folder = SOURCES[name], dest / name
        get = Downloader(mirror=mirror)
        files = src.fetch(get)
        folder.mkdir(parents=True, exist_ok=True)
        for fname, data in files.items():
            atomic_write_bytes(folder / fname, data)
        note = f"- Note: {src.note}\n" if src.note else ""
        atomic_write_bytes(folder / "SOURCE.md", (
            f"# {src.title}\n- Origin: {src.origin}; fetched by negdiff, every download and written file with its "
            f"sha256 in {MANIFEST}\n- License: {src.licence}\n{note}").encode())
        write_manifest(folder, name, src.origin, get.fetched, files)
        if not quiet:
            status(f"fetched {name}: {len(files)} file(s), {human_bytes(sum(map(len, files.values())))} in {folder}")
    return todo
