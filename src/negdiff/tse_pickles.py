"""Marvin & Linzen (2018) TSE: their published pickles -> negdiff's ``marvin_linzen_2018.jsonl.gz`` lines.

The authors publish the 22 task sets only as pickles (GitHub BeckyMarvin/LM_syneval, data/templates/*.pickle).
Unpickling a downloaded file with :func:`pickle.load` can run arbitrary code, so negdiff reads them with
:class:`DataOnlyUnpickler`: a :class:`pickle.Unpickler` whose ``find_class`` refuses every global. Every
opcode that could call code (GLOBAL / STACK_GLOBAL, INST, OBJ, REDUCE, NEWOBJ, BUILD, EXT*) needs a class from
``find_class`` first, and persistent ids are refused by the base class, so the only objects such an unpickler
can build are dicts, lists, tuples, strings, numbers and the like, which is all these files hold (each is a
dict: template condition -> list of (good, bad) tuples, or (good, bad, bad_2) for the NPI sets). The pickles
are also pinned by sha256 (the files at commit edb7378), and the converted text by the sha256 of the staged
file, so a converted set is byte-for-byte the one the README's numbers were measured on.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

from negdiff.errors import NegdiffError

COMMIT = "edb737877a02092807ac55e165d653108b8e1509"
BASE_URL = f"https://raw.githubusercontent.com/BeckyMarvin/LM_syneval/{COMMIT}/data/templates"
FILE = "marvin_linzen_2018.jsonl.gz"
#: sha256 of every task's pickle at commit edb7378, and its size in bytes (18,854,866 in all).
PICKLES: dict[str, tuple[str, int]] = {
    "long_vp_coord": ("1cb1cfb8c948ff5215a232651bf8e1e9614b551e3bdd54aafaa4602d1a452f55", 74429),
    "npi_across_anim": ("2b7fa7b982203bb6dbebac195dbfa2c1cd85b6513dc7f55cda3190576a2f7880", 999617),
    "npi_across_inanim": ("266c018281917f1724d98e58daafb18f564bfb972c9a1acd59d0e1f43112b68a", 1155761),
    "obj_rel_across_anim": ("7b2de6479f0d7e40b5cc00bf94c040e83b5073623e7469de2e45f81b14cad553", 1252535),
    "obj_rel_across_inanim": ("e1ff3d8ec257877c9e29f6055c599fe77945c6792c36fe141fe742128f2abd96", 1179063),
    "obj_rel_no_comp_across_anim": ("0c25e62c023b8271e7be10cb31dbc6758c012aca15c00734764edbb1856a7061", 1140535),
    "obj_rel_no_comp_across_inanim": ("aed5549987a0e67c6d8fd9d6a54d020ccb487a66773fae544c0f65a1275632ba", 1078263),
    "obj_rel_no_comp_within_anim": ("83df142f7637ecbb002bbdce000f4a60713da56c71e5f6f639abeadbc057097b", 1140535),
    "obj_rel_no_comp_within_inanim": ("b19061a2ea9b0dee802ef0768f18d0b874dec3d29c5dda1bb1f74b6b988c05a3", 1078263),
    "obj_rel_within_anim": ("f22fcdd2bd67d0c3b8b31db51b6c93eb526356e5519494cee5909cebbf53f977", 1252535),
    "obj_rel_within_inanim": ("ada5adf816d090164a18d7e73c3922a490e3028fa3412b00e617fd0ce9f1f30f", 1179063),
    "prep_anim": ("f4e77f02c09476020779c1bf4e783b7acfdca7ff7ef18d3b25044ef6e8bd3bfc", 1839899),
    "prep_inanim": ("bcc2f47d77bcf67e12fffeb1931151121ebf313a53a2bddf673cdcd858032cbc", 518659),
    "reflexive_sent_comp": ("ddc7e41441905f1238bca64f0ee5efabeb7786ff2ff7038d73823d2fbaddc80d", 412679),
    "reflexives_across": ("b750c5c037c1565d34c3703a6b1b6757e47333f99e35d2c0a21ccef9437ee577", 2992091),
    "sent_comp": ("df1b20958ca4cae2201e76d3d6d29463be04e3cafe641e6e4b110605648273ad", 169547),
    "simple_agrmt": ("8fe0028fae901a0a54569bd6614bef6f9aabe05b8f24b6b1486fb07df7dc0739", 8299),
    "simple_npi_anim": ("abd2655c2977692458c3545145eb508f4fb33282413e92b0c1115cb6d9a293f7", 16029),
    "simple_npi_inanim": ("7125d042f12357f5d9c7bddd87f450602afc28fcd86a1c3df3b026e49dcb243c", 18279),
    "simple_reflexives": ("e4cbf81ca6715d40f210242775278b98958f38d2a97fea32a0cf81a586bfcb93", 23385),
    "subj_rel": ("9c4af66ccaf5594bc387d5598cc421f6278c9595679aebe4c3abf01e53f4be9e", 1252535),
    "vp_coord": ("9a2036902d1cad6fe7ec55110204a80aa7a0e71c381fdcd6f091c0fd40f71b65", 72865),
}
TASKS = tuple(sorted(PICKLES))  #: the staged file's order: tasks by name, then each pickle's own order
#: sha256 of the uncompressed staged file (158,084 lines; gzip bytes vary with zlib, so the text is pinned).
JSONL_SHA256 = "3a55a89fd7654a991ac72baf517621a5222f54f8a2e4bff43013978f949b3569"


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build containers and strings but no object of any class (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}: negdiff reads data-only pickles")


def load_data_pickle(data: bytes, where: str) -> Any:
    """Unpickle ``data`` without running code (Python 2 ``str`` decoded as UTF-8); errors name ``where``."""
    try:
        return DataOnlyUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise NegdiffError(f"{where}: not a data-only pickle ({exc})") from None


def task_rows(task: str, conditions: Any, where: str) -> list[dict[str, str]]:
    """One task's pickle (condition -> list of (good, bad[, bad_2])) as the staged file's records, in order."""
    if not isinstance(conditions, Mapping):
        raise NegdiffError(f"{where}: expected a dict of conditions, got {type(conditions).__name__}")
    rows = []
    for condition, items in conditions.items():
        if not isinstance(condition, str) or not isinstance(items, (list, tuple)):
            raise NegdiffError(f"{where}: condition {condition!r} must map a name to a list of sentence tuples")
        for i, item in enumerate(items):
            if not isinstance(item, (list, tuple)) or len(item) not in (2, 3) or not all(isinstance(s, str) for s in item):
                raise NegdiffError(f"{where}: {condition}[{i}] is not a (good, bad) or (good, bad, bad_2) tuple of "
                                   f"strings: {item!r}"[:300])
            row = {"task": task, "condition": condition, "sentence_good": item[0], "sentence_bad": item[1]}
            if len(item) == 3:
                row["sentence_bad_2"] = item[2]
            rows.append(row)
    return rows


def jsonl_text(rows: Iterable[Mapping[str, str]]) -> str:
    """The staged line format: ``json.dumps`` with its default separators, non-ASCII kept, one record a line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def convert(pickles: Mapping[str, bytes]) -> str:
    """Every task's pickle bytes -> the whole ``marvin_linzen_2018.jsonl`` text (tasks sorted by name)."""
    rows: list[dict[str, str]] = []
    for task in sorted(pickles):
        rows += task_rows(task, load_data_pickle(pickles[task], f"{task}.pickle"), f"{task}.pickle")
    return jsonl_text(rows)
