"""``negdiff info MODEL``: what negdiff sees in a model (architecture, activation sites, neurons per layer)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from negdiff.options import add_model_args


def register(sub: Any) -> None:
    """Add ``negdiff info``."""
    p = sub.add_parser("info", help="architecture, activation sites, neurons per layer, parameter count")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the model info as JSON")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Load the model and print its table (or JSON)."""
    from negdiff.models import load_model

    loaded = load_model(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    info = loaded.info.to_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    s = info["sites"]
    rows = [
        ("model", info["name"]),
        ("source", f"{info['source']}" + (f" ({info['path']})" if info["path"] else "")),
        ("architecture", f"{info['architecture']} (model_type {info['model_type']})"),
        ("parameters", f"{info['n_params']:,}"),
        ("dtype / device", f"{info['dtype']} / {info['device']}"),
        ("weights", info["quantization"] or "as stored"),
        ("layers x neurons", f"{s['n_layers']} x {s['neurons_per_layer']} = {s['n_neurons']:,} neurons"),
        ("activation", f"{s['activation']}" + (" (gated MLP)" if s["gated"] else "")),
        ("hook site", f"input of {s['hook']}"),
        ("max length", str(info["max_length"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if not s["smooth"]:
        print(f"note: activation '{s['activation']}' is not smooth (gelu/silu); negdiff accepts it for contrast runs only")
    return 0
