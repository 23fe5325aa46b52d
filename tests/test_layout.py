"""The code's layering (../shared/DESIGN.md), checked with import-linter's contracts in pyproject.toml, plus
what the contracts cannot say on their own: every top-level module is classified, no import cycles, and
the declared steps agree with the run folders, the CLI and the presets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "negdiff"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_every_top_level_module_is_in_a_layer_or_in_core():
    """A new module that no contract names would escape the layering silently."""
    contracts = _contracts()
    layered = {m.strip() for c in contracts if c["type"] == "layers" for layer in c["layers"] for m in layer.split("|")}
    core = {m for c in contracts if c["type"] == "forbidden" and "negdiff.cli" in c["forbidden_modules"]
            for m in c["source_modules"]}
    found = {f"negdiff.{p.stem}" for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__")}
    found |= {f"negdiff.{p.parent.name}" for p in SRC.glob("*/__init__.py")}
    assert found - layered - core == set(), "classify these modules in pyproject's import contracts"
    assert (layered | core) - found == set(), "contracts name modules that no longer exist"
    assert not layered & core


def test_no_import_cycles_between_modules():
    import grimp

    graph = grimp.build_graph("negdiff", exclude_type_checking_imports=True)  # annotations only: no runtime cycle
    cycles = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.startswith("negdiff") and graph.find_shortest_chain(importer=imported, imported=importer):
                cycles.add(tuple(sorted((importer, imported))))
    assert cycles == set()


def test_a_deliberate_upward_import_is_caught(tmp_path):
    """The contracts can fail: a copy of the package where a core module imports an experiment breaks them."""
    import shutil
    import subprocess

    shutil.copytree(SRC, tmp_path / "src" / "negdiff", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    engine = tmp_path / "src" / "negdiff" / "scoring" / "engine.py"
    engine.write_text(engine.read_text() + "\nfrom negdiff.experiments.ablate import AblateConfig  # noqa\n")
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "src")})
    assert run.returncode != 0
    assert "negdiff.scoring.engine -> negdiff.experiments.ablate" in run.stdout


def test_steps_are_declared_once_and_drive_the_pipeline():
    from negdiff.reproduce import PRESETS, preset_sizes
    from negdiff.steps import all_steps, pipeline

    names = [s.name for s in all_steps()]
    assert names == ["scan", "ablate", "pairs", "pos", "layers", "quadrants", "stability", "dynamics", "train-mini"]
    assert [s.name for s in pipeline()] == ["scan", "ablate", "pairs", "pos", "layers"]
    for preset in PRESETS:  # every preset's keys are real config fields
        assert set(preset_sizes(preset)) <= set(names)


def test_a_typo_in_a_preset_key_is_one_line_before_anything_runs():
    from negdiff.errors import NegdiffError
    from negdiff.reproduce import preset_sizes

    with pytest.raises(NegdiffError, match=r"step 'ablate' has no setting 'blimp_limt'; its settings are tasks, "):
        preset_sizes("quick", {"ablate": {"blimp_limt": 3}})
    with pytest.raises(NegdiffError, match="--seeds must be at least 1"):
        preset_sizes("quick", {"ablate": {"seeds": 0}})


def test_report_command_refuses_a_folder_without_steps(tmp_path, capsys):
    from negdiff.cli import main

    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no finished step (looked for scan/scan.json, ablate/ablation.json" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_write_record_adds_the_common_fields_and_writes_strict_json(tmp_path):
    import json
    import math

    import numpy as np

    from negdiff.runs import RECORD_FIELDS, git_revision, write_record

    rec = {"model": {"name": "m", "spec": "m", "weights_hash": "abc", "dtype": "float32", "extra": 1},
           "value": float("nan"), "nested": [1.5, float("inf"), np.float32(2.0)], "summary_lines": ["one"]}
    write_record(tmp_path / "r.json", rec, "scan", seconds=3.0)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert set(RECORD_FIELDS) <= set(back) and back["step"] == "scan" and back["timings"] == {"seconds": 3.0}
    assert back["value"] is None and back["nested"] == [1.5, None, 2.0] and not math.isnan(rec["nested"][0])
    assert back["model_key"]["weights_hash"] == "abc" and "extra" not in back["model_key"]
    assert back["git_revision"] == git_revision()
    rev = git_revision()
    assert rev is None or len(rev.removesuffix("+dirty")) == 40
