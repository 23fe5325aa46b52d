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
