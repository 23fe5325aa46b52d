"""Online data fetch: converters on hand-made rows (offline), and clear errors without a network."""

from __future__ import annotations

import gzip
import json
import urllib.request

import pytest

from negdiff import NegdiffError
from negdiff.datasets import arc_rows, boolq_rows, fetch, hellaswag_rows, piqa_rows, winogrande_rows


def test_converters_match_the_staged_format():
    arc = arc_rows([{"id": "Q1", "question": "Why?", "answerKey": "C",
                     "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}}])
    assert arc == [{"id": "Q1", "question": "Why?", "choices": ["a", "b", "c"], "choice_labels": ["A", "B", "C"], "label": 2}]
    piqa = piqa_rows([{"goal": "g", "sol1": "x", "sol2": "y"}], ["1"])
    assert piqa == [{"id": "piqa-valid-0000", "question": "g", "choices": ["x", "y"], "label": 1}]
    wino = winogrande_rows([{"sentence": "A _ b", "option1": "p", "option2": "q", "answer": "2"}])
    assert wino[0]["label"] == 1 and wino[0]["choices"] == ["p", "q"]
    hs = hellaswag_rows([{"ind": 4, "activity_label": "L", "ctx": "c a", "ctx_a": "c", "ctx_b": "a", "endings": ["e1", "e2"],
                          "label": "1", "source_id": "s", "split_type": "indomain"}])
    assert hs[0]["id"] == "hellaswag-val-00000" and hs[0]["label"] == 1 and hs[0]["context"] == "c a"
    bq = boolq_rows([{"question": "is it", "passage": "Title -- text", "label": 1}])
    assert bq[0]["title"] == "Title" and bq[0]["choices"] == ["no", "yes"]


def test_fetch_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(NegdiffError, match=r"download failed: https://.*ARC-Easy.*are you online\?"):
        fetch(tmp_path, ["arc"])
    assert not (tmp_path / "arc" / "SOURCE.md").exists()
    with pytest.raises(NegdiffError, match="cannot fetch 'nope': unknown dataset"):
        fetch(tmp_path, ["nope"])


def test_fetch_writes_files_and_source(tmp_path, monkeypatch):
    rows = [{"goal": "g", "sol1": "x", "sol2": "y"}]

    class Resp:
        def __init__(self, data):
            self.data = data

        def read(self):
            return self.data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake(url, timeout=60.0):
        return Resp(b"0\n" if url.endswith(".lst") else (json.dumps(rows[0]) + "\n").encode())

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    assert fetch(tmp_path, ["piqa"]) == ["piqa"]
    with gzip.open(tmp_path / "piqa" / "piqa_valid.jsonl.gz", "rt") as fh:
        assert json.loads(fh.readline())["choices"] == ["x", "y"]
    assert "AFL" in (tmp_path / "piqa" / "SOURCE.md").read_text()
    assert fetch(tmp_path, ["piqa"]) == []  # present: not fetched again
