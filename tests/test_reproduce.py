"""reproduce: content-addressed steps, resume after an interruption or a kill, manifest, self-contained report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import negdiff.experiments.ablate.run as ablate
import negdiff.reproduce as reproduce
from negdiff import NegdiffError, load_model
from negdiff.decide import STATES

from conftest import DATA

SHARED = DATA
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="staged data not beside the repo")

TINY = {"scan": {"tokens": 1024, "window": 128, "md_pairs": 100, "fraction": 0.05, "check_windows": 0},
        "ablate": {"tasks": ["perplexity", "blimp", "tse"], "fraction": 0.05, "seeds": 2, "blimp_limit": 1,
                   "tse_limit": 1, "ppl_tokens": 320, "ppl_window": 32, "calib_tokens": 256, "dose_fractions": [], "n_boot": 1000,
                   "match_tol": 0.5},
        "pairs": {"tokens": 512, "window": 128, "md_pairs": 60, "n_boot": 100},
        "pos": {"max_words": 300, "seeds": 1, "n_boot": 100},
        "layers": {"group_size": 1, "blimp_limit": 1, "tse_limit": 1, "ppl_tokens": 256, "n_boot": 100}}


def test_step_keys_change_with_what_decides_the_numbers():
    model = {"spec": "m", "revision": None, "dtype": "float32"}
    sizes = reproduce.preset_sizes("quick", TINY)
    base = reproduce.step_keys(model, sizes, 0)
    assert base == reproduce.step_keys(model, sizes, 0)
    seed = reproduce.step_keys(model, sizes, 1)
    assert all(seed[k] != base[k] for k in base)
    changed = reproduce.step_keys(model, reproduce.preset_sizes("quick", {**TINY, "pos": {"max_words": 301}}), 0)
    assert changed["pos"] != base["pos"] and {k: v for k, v in changed.items() if k != "pos"} == \
        {k: v for k, v in base.items() if k != "pos"}
    # a scan change invalidates everything downstream of it
    rescan = reproduce.step_keys(model, reproduce.preset_sizes("quick", {**TINY, "scan": {"tokens": 2048}}), 0)
    assert all(rescan[k] != base[k] for k in base)
    other = reproduce.step_keys({**model, "revision": "step1"}, sizes, 0)
    assert all(other[k] != base[k] for k in base)


def test_eta_bar_survives_its_last_update_and_an_overrun(monkeypatch, capsys):
    """The pipeline bar once crashed after the last step of a 34-minute run: the steps' rounded estimates
    summed past the rounded total, tqdm dropped the total and the format's ``{total:.0f}`` met None."""
    monkeypatch.setenv("NEGDIFF_PROGRESS", "1")
    progress, rounded = reproduce.eta_progress({"scan": 124.6, "ablate": 1159.6, "layers": 227.6}, "quick")
    assert rounded == {"scan": 125, "ablate": 1160, "layers": 228} and progress.total == 1513
    for step in rounded:
        progress.update(rounded[step])
        progress.refresh()  # draw now (tqdm otherwise skips draws within 0.1 s)
    assert progress.n == progress.total
    progress.update(50)  # an estimate below the truth: past the total, still no error
    progress.refresh()
    progress.close()
    assert "1513/1513 estimated s" in capsys.readouterr().err


def test_sizes_overrides_are_checked():
    assert "layers" not in reproduce.preset_sizes("quick", {"layers": None})
    with pytest.raises(NegdiffError, match="unknown step 'scna'"):
        reproduce.preset_sizes("quick", {"scna": {}})
    with pytest.raises(NegdiffError, match="needs scan"):
        reproduce.preset_sizes("quick", {"scan": None})


def _numeric_ticks(axis) -> bool:
    """Whether an axis shows numbers (then it needs a label saying what and in which unit)."""
    import re

    texts = [re.sub(r"mathdefault|times|[^0-9A-Za-z]", "", t.get_text()) for t in axis.get_ticklabels()]
    texts = [t for t in texts if t]
    return not texts or all(re.fullmatch(r"[0-9e]+", t) for t in texts)


def unlabelled_axes(fig) -> list[str]:
    """Axes drawing data on a numeric axis that has no label (colorbars and blank panels skipped)."""
    bad = []
    for ax in fig.axes:
        if not ax.axison or ax.get_label() == "<colorbar>" or not (ax.lines or ax.patches or ax.collections or ax.images):
            continue
        for name, axis, label in (("x", ax.xaxis, ax.get_xlabel()), ("y", ax.yaxis, ax.get_ylabel())):
            if not label and _numeric_ticks(axis):
                bad.append(f"{ax.get_title() or fig.get_suptitle() or '?'}: no {name} label")
    return bad


def test_interrupted_reproduce_resumes_and_reports(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA", str(SHARED))
    import matplotlib.figure

    missing: list[str] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def checked_savefig(fig, *a, **k):
        fig.canvas.draw()  # tick labels exist only after a draw
        missing.extend(unlabelled_axes(fig))
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", checked_savefig)
    loaded = load_model(str(tiny_model_dir))
    real = ablate.run_ablate

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate, "run_ablate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce.run_reproduce(loaded, tmp_path, "quick", command="negdiff reproduce test", overrides=TINY)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["steps"]["scan"]["status"] == "done"
    assert manifest["steps"]["ablate"]["status"] == "interrupted"
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "ablate" / "ablation.json").exists()
    scan_timing = json.loads((tmp_path / "scan" / "scan.json").read_text())["timing"]

    monkeypatch.setattr(ablate, "run_ablate", real)
    manifest = reproduce.run_reproduce(loaded, tmp_path, "quick", command="negdiff reproduce test", overrides=TINY)
    assert all(manifest["steps"][s]["status"] == "done" for s in ("scan", "ablate", "pairs", "pos", "layers"))
    assert json.loads((tmp_path / "scan" / "scan.json").read_text())["timing"] == scan_timing  # not redone
    assert "blimp/adjunct_island.jsonl.gz" in manifest["data"] and manifest["model"]["sites"]["n_layers"] == 2
    assert manifest["model"]["weights_hash"] and manifest["versions"]["negdiff"] and manifest["seed"] == 0
    assert manifest["command"] == "negdiff reproduce test" and manifest["finished"] >= manifest["started"]
    page = (tmp_path / "report.html").read_text()
    figures = list(tmp_path.glob("*/figures/*.png"))
    assert {p.parent.parent.name for p in figures} >= {"scan", "ablate", "pairs", "pos", "layers"}
    assert sorted(set(missing)) == []  # every numeric axis says what it shows and in which unit
    assert all(p.with_suffix(".svg").is_file() for p in figures)
    assert page.count("data:image/png;base64,") == len(figures)
    assert "<th>condition</th>" in page and "wn_neg" in page
    import html as _html

    from negdiff.report.claims import STATE_STYLE

    claims = json.loads((tmp_path / "ablate" / "ablation.json").read_text())["claims"]
    first_screen = page.split('<nav class="toc">')[0]  # every claim with its verdict badge before the sections
    for c in claims:
        assert c["verdict"] in STATES and _html.escape(c["claim"]) in first_screen
        assert f'b-{STATE_STYLE[c["verdict"]][0]}" title=' in first_screen
    assert first_screen.count('<svg class="forest"') >= 3 and "<pre>" not in page
    md = (tmp_path / "report.md").read_text()
    assert "## Headline table" in md and "| baseline |" in md and "## Layer groups" in md

    # every step's record carries the common fields (docs/records.md) and is strict JSON
    from negdiff.runs import RECORD_FIELDS, RECORD_FORMAT
    from negdiff.steps import pipeline

    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    for s in pipeline():
        rec = json.loads((s.folder(tmp_path) / s.record).read_text(), parse_constant=no_constants)
        assert set(RECORD_FIELDS) <= set(rec), (s.name, set(RECORD_FIELDS) - set(rec))
        assert rec["record_format"] == RECORD_FORMAT and rec["step"] == s.name and rec["summary_lines"]
        assert rec["model_key"]["weights_hash"] == manifest["model"]["weights_hash"] and rec["config"]
        assert rec["date"].endswith("+00:00") and rec["versions"]["torch"]

    # `negdiff report RUN_DIR` rebuilds the same report from the folder alone
    from negdiff.cli import main

    (tmp_path / "report.md").unlink()
    (tmp_path / "report.html").unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == md and (tmp_path / "report.html").read_text() == page

    # a rerun with nothing changed touches no model: every step is a cache hit
    def no_model():
        raise AssertionError("the model was loaded although every step is done")

    ident = reproduce._model_id(loaded.info.spec, loaded.info.revision, loaded.info.dtype)
    again = reproduce.run_reproduce(no_model, tmp_path, "quick", command="x", overrides=TINY, model_id=ident)
    assert again["steps"]["layers"]["seconds"] == manifest["steps"]["layers"]["seconds"]


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "negdiff", "reproduce", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # two whole reproduce runs in subprocesses (~2 min); the in-process resume test stays default
def test_killed_reproduce_resumes_to_the_same_report(tiny_model_dir, tmp_path):
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps(TINY))
    env = {**os.environ, "NEGDIFF_DATA": str(SHARED), "NEGDIFF_PROGRESS": "0"}
    clean = _cli([str(tiny_model_dir), "--out", str(tmp_path / "clean"), "--sizes", str(sizes)], env)
    assert clean.wait(timeout=600) == 0, clean.stderr.read()[-2000:]

    run = tmp_path / "killed"
    proc = _cli([str(tiny_model_dir), "--out", str(run), "--sizes", str(sizes)], env)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill -9 once the scan is done and a later step is running
        m = run / "manifest.json"
        if m.is_file():
            steps = json.loads(m.read_text()).get("steps", {})
            if steps.get("scan", {}).get("status") == "done" and len(steps) >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "report.html").exists()
    for path in run.rglob("*.json"):  # whatever exists is whole (atomic writes): it parses
        if not path.name.startswith("."):
            json.loads(path.read_text())
    again = _cli([str(tiny_model_dir), "--out", str(run), "--sizes", str(sizes)], env)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-2000:]

    def table(path: Path) -> str:
        md = path.read_text()
        body = md[md.index("## Headline table"): md.index("## Figures")]
        return "\n".join(line for line in body.splitlines() if "tok/s" not in line)

    assert table(run / "report.md") == table(tmp_path / "clean" / "report.md")
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["steps"].values())


def test_a_caption_follows_the_step_when_two_steps_share_a_figure_name(tmp_path):
    """dynamics/figures/overlap.png and stability/figures/overlap.png explain different things."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from negdiff.report.page import CAPTIONS, figure

    html = {}
    for step in ("dynamics", "stability", "pairs"):
        path = tmp_path / step / "figures" / "overlap.png"
        path.parent.mkdir(parents=True)
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.plot([0, 1])
        fig.savefig(path)
        plt.close(fig)
        html[step] = figure(path).replace("&#x27;", "'")
    assert f"<figcaption>{CAPTIONS['dynamics/overlap']}</figcaption>" in html["dynamics"]
    assert f"<figcaption>{CAPTIONS['stability/overlap']}</figcaption>" in html["stability"]
    assert "<figcaption>overlap</figcaption>" in html["pairs"]  # no caption declared for pairs: its name


def test_a_qualified_holds_says_so_beside_its_badge():
    """A claim that holds inside the equivalence margin, with its accuracy read-out the other way, reads so."""
    from negdiff.report.claims import human

    claim = {"verdict": "holds", "readout": "blimp: margin change, wn_neg - random_neg", "unit": "nats",
             "estimate": -0.0042, "ci": [-0.0062, -0.0021], "readouts_disagree_in_sign": True,
             "note": "holds, but the estimate is inside the declared equivalence margin (small effect)",
             "also": {"acc": {"estimate": 0.001, "ci": [-0.001, 0.002]}}}
    assert human(claim) == ("-0.004 nats [-0.006, -0.002]; accuracy +0.1 pts [-0.1, +0.2] (the read-outs disagree "
                            "in sign); small: the estimate is inside the declared equivalence margin")
    clean = {**claim, "readouts_disagree_in_sign": False, "note": None}
    assert human(clean) == "-0.004 nats [-0.006, -0.002]; accuracy +0.1 pts [-0.1, +0.2]"
    assert "small" not in human({**claim, "verdict": "does not hold"})
