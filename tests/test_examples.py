"""examples/tour.py runs as a user would run it (a fresh process, offline) and prints what it promises.

Part of the default suite: the tour is the API's worked example, and an example that no longer runs is
worse than none. It loads the embedded model (cached after the first load) and takes about a minute.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not os.environ.get("NEGDIFF_DATA"), reason="NEGDIFF_DATA is unset: the tour reads staged data")
def test_tour_runs_and_records_the_intervention():
    env = {**os.environ, "NEGDIFF_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "tour.py")], capture_output=True, text=True,
                         env=env, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"^model: SmolLM2-135M-Instruct .*, 30 layers x 1536 neurons$", out, re.M)
    assert "capture: layer 15 pre-activations (10, 1536)" in out  # the sentence, 10 tokens
    scan = re.search(r"scan-like: 1024 tokens, 46080 neurons, WN (\d+) \(median wd WN ([\d.]+), all ([\d.]+)\)", out)
    assert scan and int(scan[1]) == 30 * 16  # strictly above the 99th percentile of 1536: 16 per layer
    assert float(scan[2]) > float(scan[3])  # the selected neurons are the far-from-normal ones
    assert "active: [('zero_negative', 480)]" in out and "active after the block: []" in out
    rows = dict(re.findall(r"^result: (baseline|wn zero_negative)\s+(.*)$", out, re.M))
    assert set(rows) == {"baseline", "wn zero_negative"}
    assert "condition=None n_neurons=0 n=25 " in rows["baseline"]
    assert "condition=zero_negative n_neurons=480 n=25 " in rows["wn zero_negative"]
    values = {k: {m: float(v) for m, v in re.findall(r"(acc|margin)=([-\d.]+)", row)} for k, row in rows.items()}
    for v in values.values():
        assert 0.0 <= v["acc"] <= 1.0 and math.isfinite(v["margin"])
        assert v["acc"] * 25 == pytest.approx(round(v["acc"] * 25))  # a count of 25 pairs
    assert values["baseline"]["margin"] != values["wn zero_negative"]["margin"]  # the edit reached the model
