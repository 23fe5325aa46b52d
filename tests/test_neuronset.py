"""NeuronSet: JSON round trip, names, algebra, validation."""

from __future__ import annotations

import pytest
import torch

from negdiff import NegdiffError, NeuronSet, resolve

from conftest import tiny_model


def test_json_round_trip(tmp_path):
    ns = NeuronSet({3: [1021, 5, 5, 7], 0: torch.tensor([2])}, rule={"rule": "top_fraction", "fraction": 0.01})
    assert ns.layers == [0, 3] and ns.size == 4
    assert ns.names() == ["L0.N2", "L3.N5", "L3.N7", "L3.N1021"]
    path = tmp_path / "wn.json"
    ns.to_json(path)
    back = NeuronSet.from_json(path)
    assert back.names() == ns.names() and back.rule == ns.rule
    assert NeuronSet.from_json(ns.to_json()).names() == ns.names()


def test_names_and_membership():
    ns = NeuronSet.from_names(["L3.N1021", "L0.N2"])
    assert (3, 1021) in ns and (3, 1020) not in ns
    with pytest.raises(NegdiffError, match="bad neuron name 'X3'"):
        NeuronSet.from_names(["X3"])


def test_algebra():
    a = NeuronSet({0: [1, 2, 3], 1: [4]})
    b = NeuronSet({0: [3, 9]})
    assert a.union(b).names() == ["L0.N1", "L0.N2", "L0.N3", "L0.N9", "L1.N4"]
    assert a.difference(b).names() == ["L0.N1", "L0.N2", "L1.N4"]
    assert a.restrict([1]).names() == ["L1.N4"]
    assert NeuronSet({0: []}).size == 0 and NeuronSet({0: []}).layers == []


def test_bad_files(tmp_path):
    with pytest.raises(NegdiffError, match="neuron set file not found"):
        NeuronSet.from_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(NegdiffError, match="bad.json: malformed JSON"):
        NeuronSet.from_json(bad)
    bad.write_text('{"x": 1}')
    with pytest.raises(NegdiffError, match="not a negdiff neuron set"):
        NeuronSet.from_json(bad)


def test_validate_against_model():
    sites = resolve(tiny_model("gpt_neox"))
    NeuronSet({1: [79]}).validate(sites)
    with pytest.raises(NegdiffError, match=r"L1\.N80 is out of range"):
        NeuronSet({1: [80]}).validate(sites)
