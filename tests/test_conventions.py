"""The repository's conventions agree with each other: the license file is the license pyproject declares,
and CITATION.cff cites this version and the paper it reproduces."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def test_license_file_is_the_declared_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert project["license"]["text"] == "MIT" and text.startswith("MIT License")
    assert "Copyright (c) 2026 negdiff developers" in text


def test_citation_cites_this_version_and_the_paper():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["version"] == project["version"] and cff["license"] == "MIT"
    (paper,) = cff["references"]
    assert paper["title"] == "Negative Pre-activations Differentiate Syntax" and paper["year"] == 2026
    assert [a["family-names"] for a in paper["authors"]] == ["Kong", "Ning", "Adler", "Shavit"]
    assert paper["identifiers"][0]["value"] == "arXiv:2509.24198" and "ICLR 2026" in paper["conference"]["name"]


def _imports(path: Path) -> list[str]:
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.append(node.module or "")
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_no_experiment_imports_another():
    """The layering of DESIGN.md: experiments import core and services, never each other (a step that reuses
    another, as dynamics reuses the scan, goes through the step registry); core and services never import an
    experiment (only the registry, negdiff.steps, names them)."""
    root = ROOT / "src" / "negdiff" / "experiments"
    bad = []
    for path in root.rglob("*.py"):
        own = path.relative_to(root).parts[0]
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] == ["negdiff", "experiments"] and len(parts) > 2 and parts[2] != own:
                bad.append(f"{path.relative_to(root)} imports {name}")
    below = ROOT / "src" / "negdiff"
    for path in [*below.glob("*.py"), *(below / "services").rglob("*.py")]:
        bad += [f"{path.relative_to(below)} imports {n}" for n in _imports(path) if n.startswith("negdiff.experiments")]
    assert bad == []
