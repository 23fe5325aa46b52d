"""A finished scan's outputs as the downstream steps read them, checked against the model they are used on.

Why a service: ablate, pairs, pos and layers all start from a scan folder; each must refuse a folder with
no finished scan, or one made on another model (other layers or widths), with the same one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from negdiff.errors import NegdiffError
from negdiff.models import LoadedModel
from negdiff.neuronset import NeuronSet
from negdiff.results import read_json


def wn_path(scan_dir: str | Path) -> Path:
    """The WN set a finished scan wrote (the downstream commands' input), or a clear error if there is none."""
    path = Path(scan_dir) / "wn.json"
    if not path.is_file():
        raise NegdiffError(f"--scan: {scan_dir} holds no wn.json; run `negdiff scan MODEL --out {scan_dir}` first")
    return path


def load_wn(loaded: LoadedModel, scan_dir: str | Path) -> NeuronSet:
    """A scan's WN set, checked against ``loaded``'s layers and widths."""
    path = wn_path(scan_dir)
    wn = NeuronSet.from_json(path)
    wn.check_model(loaded.key(), f"--scan: {path}")
    wn.validate(loaded.sites)
    return wn


def scan_record(scan_dir: str | Path) -> dict[str, Any]:
    """The scan's record (scan.json), or an empty one when the folder holds only a neuron file."""
    path = Path(scan_dir) / "scan.json"
    return read_json(path) if path.is_file() else {}


def check_scan_dir(scan_dir: str | Path) -> Path:
    """A folder holding a finished scan (neurons.parquet and wn.json), or a one-line error (no model needed)."""
    scan_dir = Path(scan_dir)
    if not (scan_dir / "neurons.parquet").is_file():
        raise NegdiffError(f"{scan_dir} holds no finished scan (neurons.parquet); run `negdiff scan MODEL --out {scan_dir}`")
    wn_path(scan_dir)
    return scan_dir


def load_scan(scan_dir: str | Path, loaded: LoadedModel) -> tuple[pd.DataFrame, dict]:
    """The scan's neuron table, checked against the model it is applied to."""
    scan_dir = Path(scan_dir)
    if not (scan_dir / "neurons.parquet").is_file():
        raise NegdiffError(f"{scan_dir} holds no finished scan (neurons.parquet); run `negdiff scan MODEL --out {scan_dir}`")
    record = scan_record(scan_dir)
    if (scan_dir / "wn.json").is_file():
        NeuronSet.from_json(scan_dir / "wn.json").check_model(loaded.key(), f"--scan: {scan_dir}")
    made = record.get("model") or {}
    hashes = made.get("weights_hash"), loaded.info.weights_hash
    if None not in hashes and hashes[0] != hashes[1]:
        raise NegdiffError(f"--scan: {scan_dir} was made on '{made.get('spec')}' (weights {str(hashes[0])[:12]}), not on "
                           f"'{loaded.info.spec}' (weights {str(hashes[1])[:12]}); rerun `negdiff scan` on this model")
    table = pd.read_parquet(scan_dir / "neurons.parquet")
    widths = table.groupby("layer").size().to_dict()
    model_widths = {s.layer: s.width for s in loaded.sites}
    if widths != model_widths:
        raise NegdiffError(f"the scan in {scan_dir} was made on a model with other layers/widths than {loaded.info.spec}")
    return table, record


def scan_corpus_command(args: Any, config: type, run: Any, wrote: str) -> int:
    """The command of a step that reads a finished scan and streams a corpus (pairs, pos): flags -> config,
    the scan's wn.json and the corpus checked before the model loads, then ``run(loaded, scan, cfg, out, force)``."""
    from negdiff.data import check_corpus
    from negdiff.options import config_from_args, run_on_model

    cfg = config_from_args(config, args)

    def preflight() -> None:
        wn_path(args.scan)
        check_corpus(cfg.corpus, cfg.data)

    return run_on_model(args, lambda loaded: run(loaded, args.scan, cfg, args.out, force=args.force), wrote,
                        preflight=preflight)
