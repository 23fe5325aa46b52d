"""``negdiff models``: the architectures negdiff can hook, one row of the site registry each.

Why a command: whether a model is supported is decided by its ``model_type`` alone (negdiff.sites.REGISTRY),
and where the hook goes (which module's input is the pre-activation, which projection feeds it, gated or
not) is what a reader needs to trust a neuron's name; this prints it without loading any model.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    """Add ``negdiff models``."""
    p = sub.add_parser("models", help="list the supported architectures: layer path, activation, projection, gated",
                       description="The activation-site registry: for each model_type, where the decoder blocks "
                                   "are, which module's input is hooked (the pre-activation) and which projection "
                                   "produces it.")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=command)


def model_rows() -> list[dict[str, Any]]:
    """One row per registered ``model_type``, in registry order."""
    from negdiff.sites import REGISTRY

    return [{"model_type": name, "layers": rule.layers, "activation": rule.act, "projection": rule.proj,
             "projection_layout": rule.proj_layout, "gated": rule.gated} for name, rule in REGISTRY.items()]


def command(args: argparse.Namespace) -> int:
    """Print the registry table (or JSON)."""
    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("model_type", "layers", "activation (hooked input)", "projection", "layout", "gated")
    table = [(r["model_type"], r["layers"], r["activation"], r["projection"], r["projection_layout"],
              "yes" if r["gated"] else "no") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for row in (head, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    print("paths are inside each decoder block, except layers; a neuron is one channel of the activation's input")
    return 0
