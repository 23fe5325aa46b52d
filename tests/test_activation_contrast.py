"""bench/activation_contrast.py end to end at its --tiny size: four train-mini models, every negdiff step, the summary.

Minutes of CPU (24 negdiff commands), so marked slow. What it checks is the script's contract, not a result: the
four models exist and differ only in the activation, ReLU gets no ablation and its cohort's negative-zeroing deltas
come out exactly 0 (the identity by construction), the smooth activations get an ablation with verdicts, and the
summary table and index page name every model with its compute minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_contrast_runs_every_step_and_summarises(tmp_path):
    if not os.environ.get("NEGDIFF_DATA"):
        pytest.skip("needs the staged training corpus (NEGDIFF_DATA)")
    out = tmp_path / "act"
    cmd = [sys.executable, str(ROOT / "bench" / "activation_contrast.py"), "--out", str(out), "--tiny"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads((out / "summary.json").read_text())
    summary = record["models"]
    assert list(summary) == ["neox-gelu", "neox-relu", "llama-silu", "llama-relu"]
    for name, row in summary.items():
        assert row["n_wn"] >= 1 and 0 <= row["frac_negative_wn"] <= 1
        assert set(row["minutes"]) >= {"train", "scan", "pairs", "dynamics"}
        assert (out / name / "report.html").is_file()
        if name.endswith("relu"):
            assert row["ablation"].startswith("not run: zero_negative is the identity under ReLU")
            assert "largest |delta| over checkpoints: 0" in row["dynamics_note"]
            assert not (out / name / "ablate").exists()
        else:
            assert {"verdict", "ci"} <= set(next(iter(row["ablation"].values())))
            assert "ablate" in row["minutes"]
    md = (out / "summary.md").read_text().splitlines()
    assert all(f"| {name} |" in "\n".join(md[:6]) for name in summary) and md[6] == ""
    # smooth - ReLU on the same items, both pairs, every read-out; Holm over the 6 deciding rows only
    between = record["between_models"]
    assert {r["pair"] for r in between} == {"neox-gelu - neox-relu", "llama-silu - llama-relu"}
    assert len(between) == 10 and sum("p_holm" in r for r in between) == 6
    assert all(r["p_holm"] >= r["p_two_sided"] for r in between if "p_holm" in r)
    assert len(md) == 7 + 2 + 10
    page = (out / "index.html").read_text()
    assert page.count("/report.html") == 8 and "identity by construction" in page  # table and list
    assert "not training-seed variation" in page
    # rerunning reuses every step (resumable) and rewrites the same table
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and (out / "summary.md").read_text().splitlines() == md


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("activation_contrast", ROOT / "bench" / "activation_contrast.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_model(folder: Path, rng, shift: float) -> None:
    """A model folder with only what between_models reads: the final checkpoint's baseline item tables."""
    import numpy as np
    import pandas as pd

    base = folder / "dynamics" / "checkpoints" / "step40" / "ablate" / "conditions" / "baseline"
    base.mkdir(parents=True)
    (folder / "dynamics" / "checkpoints" / "step8").mkdir()  # an earlier checkpoint is not the final one
    pd.DataFrame({"item_id": np.arange(30), "nll": 5 + shift + rng.normal(0, 0.2, 30)}).to_parquet(
        base / "items_perplexity.parquet")
    n = 60
    good = rng.normal(shift, 1, n)
    pd.DataFrame({"item_id": np.arange(n), "paradigm": np.repeat(["a", "b", "c"], n // 3), "lp_good": good,
                  "lp_bad": np.zeros(n), "correct": good > 0}).to_parquet(base / "items_blimp.parquet")


def test_between_models_pairs_items_and_holm_adjusts(tmp_path):
    """Smooth - ReLU on the same items: the perplexity row is scipy's paired t interval on the per-window NLL
    differences, the margin estimate is the plain mean difference, accuracy sits beside (not in the Holm family),
    and a task one model lacks is left out."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    mod = _bench()
    rng = np.random.default_rng(0)
    _fake_model(tmp_path / "x-relu", rng, 0.0)
    _fake_model(tmp_path / "x-gelu", rng, 0.3)
    rows = mod.between_models(tmp_path, [("x-gelu", "x-relu")])
    assert [(r["task"], r["readout"]) for r in rows] == [("perplexity", "nll"), ("blimp", "margin"), ("blimp", "acc")]
    base = "dynamics/checkpoints/step40/ablate/conditions/baseline/items_perplexity.parquet"
    d = pd.read_parquet(tmp_path / "x-gelu" / base).nll.to_numpy() - pd.read_parquet(tmp_path / "x-relu" / base).nll.to_numpy()
    lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    ppl = rows[0]
    assert ppl["estimate"] == pytest.approx(d.mean()) and ppl["ci"] == pytest.approx([lo, hi], rel=1e-9)
    assert ppl["p_two_sided"] == pytest.approx(stats.ttest_rel(d, np.zeros_like(d)).pvalue, rel=1e-6)
    blimp = "dynamics/checkpoints/step40/ablate/conditions/baseline/items_blimp.parquet"
    m = [pd.read_parquet(tmp_path / f / blimp) for f in ("x-relu", "x-gelu")]
    assert rows[1]["estimate"] == pytest.approx(((m[1].lp_good - m[1].lp_bad) - (m[0].lp_good - m[0].lp_bad)).mean())
    holm = sorted((r["p_two_sided"], r["p_holm"]) for r in rows if r["deciding"])
    assert holm[0][1] == pytest.approx(min(1, 2 * holm[0][0])) and "p_holm" not in rows[2]
    lines = mod.between_table(rows)
    assert lines[2].startswith("| x-gelu - x-relu | perplexity ratio | x") and "(beside)" in lines[4]
