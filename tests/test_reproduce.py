"""reproduce: steps resume after an interruption; manifest and self-contained report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import negdiff.experiments.ablate as ablate
import negdiff.experiments.reproduce as reproduce
from negdiff import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not SHARED.is_dir(), reason="staged data not beside the repo")
def test_interrupted_reproduce_resumes_and_reports(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    tiny = {"scan": {"tokens": 1024, "window": 128, "md_pairs": 100, "fraction": 0.05, "check_windows": 0},
            "ablate": {"tasks": ("perplexity", "blimp", "tse"), "fraction": 0.05, "seeds": 2, "blimp_limit": 1,
                       "tse_limit": 1, "ppl_tokens": 512, "calib_tokens": 512, "dose_fractions": (), "n_boot": 100,
                       "match_tol": 0.5},
            "pos": {"max_words": 300, "seeds": 1, "n_boot": 100}}
    monkeypatch.setitem(reproduce.PRESETS, "quick", tiny)
    loaded = load_model(str(tiny_model_dir))
    real = ablate.run_ablate

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate, "run_ablate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce.run_reproduce(loaded, tmp_path, "quick", command="negdiff reproduce test")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["steps"]["scan"]["status"] == "done"
    assert manifest["steps"]["ablate"]["status"] == "interrupted"
    assert not (tmp_path / "report.html").exists()
    scan_timing = json.loads((tmp_path / "scan" / "scan.json").read_text())["timing"]

    monkeypatch.setattr(ablate, "run_ablate", real)
    manifest = reproduce.run_reproduce(loaded, tmp_path, "quick", command="negdiff reproduce test")
    assert manifest["steps"]["ablate"]["status"] == "done"
    assert json.loads((tmp_path / "scan" / "scan.json").read_text())["timing"] == scan_timing  # not redone
    assert "blimp/adjunct_island.jsonl.gz" in manifest["data"] and manifest["model"]["sites"]["n_layers"] == 2
    page = (tmp_path / "report.html").read_text()
    figures = list(tmp_path.glob("*/figures/*.png"))
    assert manifest["steps"]["pos"]["status"] == "done"
    assert len(figures) >= 9 and page.count("data:image/png;base64,") == len(figures)
    assert "<th>condition</th>" in page and "wn_neg" in page and "inconclusive" in page or "holds" in page
    md = (tmp_path / "report.md").read_text()
    assert "## Headline table" in md and "| baseline |" in md
