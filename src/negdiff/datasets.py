"""``negdiff data fetch``: download the evaluation data from its public sources into the data directory.

Offline users point ``NEGDIFF_DATA`` at a staged copy; online users fetch the same datasets from where
their authors publish them, converted to the same one-record-per-line files (the converters are pure
functions, tested offline on hand-made rows). Each download is written atomically with a SOURCE.md that
names its origin and licence. The training corpus of ``train-mini`` is not fetched: use any local text.
"""

from __future__ import annotations

import gzip
import io
import json
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from negdiff.errors import NegdiffError
from negdiff.results import atomic_write_bytes

GITHUB = "https://raw.githubusercontent.com"
HF = "https://huggingface.co/datasets/{repo}/resolve/refs%2Fconvert%2Fparquet/{config}/{split}/0000.parquet"
BLIMP_UIDS = tuple("adjunct_island anaphor_gender_agreement anaphor_number_agreement animate_subject_passive animate_subject_trans causative complex_NP_island coordinate_structure_constraint_complex_left_branch coordinate_structure_constraint_object_extraction determiner_noun_agreement_1 determiner_noun_agreement_2 determiner_noun_agreement_irregular_1 determiner_noun_agreement_irregular_2 determiner_noun_agreement_with_adj_2 determiner_noun_agreement_with_adj_irregular_1 determiner_noun_agreement_with_adj_irregular_2 determiner_noun_agreement_with_adjective_1 distractor_agreement_relational_noun distractor_agreement_relative_clause drop_argument ellipsis_n_bar_1 ellipsis_n_bar_2 existential_there_object_raising existential_there_quantifiers_1 existential_there_quantifiers_2 existential_there_subject_raising expletive_it_object_raising inchoative intransitive irregular_past_participle_adjectives irregular_past_participle_verbs irregular_plural_subject_verb_agreement_1 irregular_plural_subject_verb_agreement_2 left_branch_island_echo_question left_branch_island_simple_question matrix_question_npi_licensor_present npi_present_1 npi_present_2 only_npi_licensor_present only_npi_scope passive_1 passive_2 principle_A_c_command principle_A_case_1 principle_A_case_2 principle_A_domain_1 principle_A_domain_2 principle_A_domain_3 principle_A_reconstruction regular_plural_subject_verb_agreement_1 regular_plural_subject_verb_agreement_2 sentential_negation_npi_licensor_present sentential_negation_npi_scope sentential_subject_island superlative_quantifiers_1 superlative_quantifiers_2 tough_vs_raising_1 tough_vs_raising_2 transitive wh_island wh_questions_object_gap wh_questions_subject_gap wh_questions_subject_gap_long_distance wh_vs_that_no_gap wh_vs_that_no_gap_long_distance wh_vs_that_with_gap wh_vs_that_with_gap_long_distance ".split())


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


# ---------------------------------------------------------------------------------------------- download
def _get(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except OSError as exc:
        raise NegdiffError(f"download failed: {url} ({exc}); are you online?") from None


def _parquet(repo: str, config: str, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(_get(HF.format(repo=repo, config=config, split=split)))).to_pylist()


def _jsonl(url: str) -> list[dict]:
    return [json.loads(line) for line in _get(url).decode().splitlines() if line.strip()]


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, gzip.compress(text.encode(), mtime=0))


@dataclass(frozen=True)
class Source:
    """One dataset folder: where it comes from, its licence, and how to fetch + convert it."""

    folder: str
    origin: str
    licence: str
    fetch: Callable[[Path], None]


def _fetch_blimp(d: Path) -> None:
    for uid in BLIMP_UIDS:
        _write_jsonl_gz(d / f"{uid}.jsonl.gz", _jsonl(f"{GITHUB}/alexwarstadt/blimp/master/data/{uid}.jsonl"))


def _fetch_ewt(d: Path) -> None:
    for split in ("dev", "test"):
        raw = _get(f"{GITHUB}/UniversalDependencies/UD_English-EWT/master/en_ewt-ud-{split}.conllu")
        atomic_write_bytes(d / f"en_ewt-ud-{split}.conllu.gz", gzip.compress(raw, mtime=0))


def _fetch_wikitext(d: Path) -> None:
    for split, name in (("validation", "wiki.valid.raw.gz"), ("test", "wiki.test.raw.gz")):
        text = wikitext_raw(_parquet("Salesforce/wikitext", "wikitext-2-raw-v1", split))
        atomic_write_bytes(d / name, gzip.compress(text.encode(), mtime=0))


def _fetch_arc(d: Path) -> None:
    for config, name in (("ARC-Easy", "arc_easy_test"), ("ARC-Challenge", "arc_challenge_test")):
        _write_jsonl_gz(d / f"{name}.jsonl.gz", arc_rows(_parquet("allenai/ai2_arc", config, "test")))


def _fetch_piqa(d: Path) -> None:
    base = f"{GITHUB}/ybisk/ybisk.github.io/master/piqa/data"
    labels = _get(f"{base}/valid-labels.lst").decode().split()
    _write_jsonl_gz(d / "piqa_valid.jsonl.gz", piqa_rows(_jsonl(f"{base}/valid.jsonl"), labels))


SOURCES: dict[str, Source] = {s.folder: s for s in (
    Source("blimp", "GitHub alexwarstadt/blimp data/", "CC-BY 4.0", _fetch_blimp),
    Source("ud_ewt", "GitHub UniversalDependencies/UD_English-EWT", "CC BY-SA 4.0", _fetch_ewt),
    Source("wikitext2_raw", "HF Salesforce/wikitext wikitext-2-raw-v1", "CC BY-SA 3.0", _fetch_wikitext),
    Source("arc", "HF allenai/ai2_arc (test)", "CC BY-SA 4.0", _fetch_arc),
    Source("piqa", "GitHub ybisk/ybisk.github.io piqa/data (valid)", "AFL 3.0", _fetch_piqa),
    Source("hellaswag", "GitHub rowanz/hellaswag data/hellaswag_val.jsonl", "MIT", lambda d: _write_jsonl_gz(
        d / "hellaswag_val.jsonl.gz", hellaswag_rows(_jsonl(f"{GITHUB}/rowanz/hellaswag/master/data/hellaswag_val.jsonl")))),
    Source("winogrande", "HF allenai/winogrande winogrande_xl (validation)", "CC-BY", lambda d: _write_jsonl_gz(
        d / "winogrande_dev.jsonl.gz", winogrande_rows(_parquet("allenai/winogrande", "winogrande_xl", "validation")))),
    Source("sciq", "HF allenai/sciq (validation)", "CC BY-NC 3.0", lambda d: _write_jsonl_gz(
        d / "sciq_validation.jsonl.gz", sciq_rows(_parquet("allenai/sciq", "default", "validation")))),
    Source("lambada_openai", "HF EleutherAI/lambada_openai (en, test)", "CC BY 4.0 / MIT", lambda d: _write_jsonl_gz(
        d / "lambada_openai_test.jsonl.gz", lambada_rows(_parquet("EleutherAI/lambada_openai", "en", "test")))),
    Source("boolq", "HF aps/super_glue boolq (validation)", "CC BY-SA 3.0", lambda d: _write_jsonl_gz(
        d / "boolq_dev.jsonl.gz", boolq_rows(_parquet("aps/super_glue", "boolq", "validation")))),
)}
NOT_FETCHED = {
    "tse": "Marvin & Linzen ship pickles (GitHub BeckyMarvin/LM_syneval data/templates); negdiff does not unpickle "
           "downloaded files. Convert them to marvin_linzen_2018.jsonl.gz (task, condition, sentence_good, "
           "sentence_bad[, sentence_bad_2]) or copy a staged folder.",
    "train_corpus": "use any local .txt/.jsonl corpus with --corpus",
}


def fetch(dest: str | Path, only: list[str] | None = None, force: bool = False) -> list[str]:
    """Fetch the named datasets (default: all fetchable) into dest; returns the folders written."""
    dest = Path(dest).expanduser()
    names = only or list(SOURCES)
    for name in names:
        if name not in SOURCES:
            why = NOT_FETCHED.get(name, f"unknown dataset; fetchable: {', '.join(SOURCES)}")
            raise NegdiffError(f"cannot fetch '{name}': {why}")
    done = []
    for name in names:
        src, folder = SOURCES[name], dest / name
        if (folder / "SOURCE.md").is_file() and not force:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        src.fetch(folder)
        atomic_write_bytes(folder / "SOURCE.md", f"# {name}\n- Origin: {src.origin} (fetched by negdiff)\n"
                           f"- License: {src.licence}\n".encode())
        done.append(name)
    return done


def _cmd_data(args) -> int:
    from negdiff.data import FETCH_DIR, data_dir

    if args.action == "fetch":
        dest = Path(args.dest) if args.dest else FETCH_DIR
        done = fetch(dest, args.only.split(",") if args.only else None, args.force)
        print(f"fetched {', '.join(done) or 'nothing new'} into {dest}; export NEGDIFF_DATA={dest}")
        return 0
    root = data_dir(args.dest)
    print(f"data directory: {root}")
    for name in [*SOURCES, *NOT_FETCHED]:
        ok = (root / name / "SOURCE.md").is_file()
        print(f"  {name:<16} {'present' if ok else 'missing'}")
    return 0


def register(sub) -> None:
    """Add negdiff data fetch|list."""
    p = sub.add_parser("data", help="list the data directory, or fetch the datasets from their public sources")
    p.add_argument("action", choices=("list", "fetch"))
    p.add_argument("--dest", help="data directory (default: $NEGDIFF_DATA for list, ~/.cache/negdiff/data for fetch)")
    p.add_argument("--only", help="comma-separated dataset folders, e.g. blimp,arc")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(func=_cmd_data)
