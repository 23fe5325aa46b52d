"""The neuron scan: per-neuron statistics, Wasserstein distance, mapping difficulty and WN selection.

The step's declaration (torch-free: its subcommand is built from it and its config without importing the
machinery); the work is in :mod:`.run`, whose names this package also answers for, imported on first use.
"""

from __future__ import annotations

from negdiff.experiments.scan.config import ScanConfig
from negdiff.runs import Command, Step, forward_to

__all__ = ["STEP", "ScanConfig"]

STEP = Step("scan", ScanConfig, "scan.json", upstream=(), section="Scan", module="negdiff.experiments.scan.run",
            command=Command(help="per-neuron WD / MD statistics over a corpus; select Wasserstein neurons",
                            force="redo a finished scan"))

#: the experiment's own names (run_scan, Streamer, ...), from :mod:`.run` on first use
__getattr__ = forward_to("negdiff.experiments.scan.run")
