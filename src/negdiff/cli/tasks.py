"""``negdiff tasks``: every registered evaluation task, what it measures, and how many items the data holds.

Why a command: ``negdiff eval --tasks`` takes names that only the registry knows, and whether a task's data
is staged (and how much of it) decides what a run can score; this answers both without loading a model.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from negdiff.options import add_data_arg

#: What one loader item is, by task kind (perplexity's loader yields documents, not windows).
UNITS = {"minimal_pairs": "pairs", "perplexity": "documents", "multiple_choice": "questions", "last_word": "passages"}


def register(sub: Any) -> None:
    """Add ``negdiff tasks``."""
    p = sub.add_parser("tasks", help="list the evaluation tasks: version, kind, group, items staged, what each measures",
                       description="Every task `negdiff eval --tasks` accepts, with the items found in the data "
                                   "folder (none: not staged; `negdiff data fetch` downloads them).")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_data_arg(p)
    p.set_defaults(func=command)


def task_rows(data_root: str | None = None) -> list[dict[str, Any]]:
    """One row per registered task; ``items`` is None where the task's data is not staged."""
    from negdiff.errors import NegdiffError
    from negdiff.tasks import ALIASES, TASKS, EvalConfig

    config = EvalConfig(data_root=data_root)
    rows = []
    for name, spec in TASKS.items():
        try:
            items: int | None = len(spec.load(config))
        except NegdiffError:
            items = None
        rows.append({"name": name, "version": spec.version, "kind": spec.kind, "group": spec.group,
                     "items": items, "unit": UNITS.get(spec.kind, "items"), "measures": spec.description,
                     "aliases": [a for a, members in ALIASES.items() if name in members]})
    return rows


def _count(n: int | None, unit: str) -> str:
    """'67,000 pairs', '1 document', or 'not staged'."""
    if n is None:
        return "not staged"
    return f"{n:,} {unit if n != 1 else unit.removesuffix('s')}"


def command(args: argparse.Namespace) -> int:
    """Print the task table (or JSON)."""
    rows = task_rows()  # main() has pointed $NEGDIFF_DATA at --data
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("task", "version", "kind", "group", "items", "measures")
    table = [(r["name"], r["version"], r["kind"], r["group"],
              _count(r["items"], r["unit"]), r["measures"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for row in (head, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(row[:-1], widths[:-1])) + "  " + row[-1])
    from negdiff.tasks import ALIASES

    for alias, members in ALIASES.items():
        print(f"alias {alias} = {', '.join(members)}")
    return 0
