"""Fetching data, offline: converters on hand-made rows, TSE pickles read without running code, and the
download path (announcement, sha256 manifest, refusal of a corrupt file, offline errors) against a local
HTTP server (conftest's ``server``) that the URL table is pointed at through the mirror setting."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import socket
from pathlib import Path

import pytest

from negdiff import NegdiffError, cli, datasets, tse_pickles
from negdiff.datasets import arc_rows, boolq_rows, fetch, hellaswag_rows, piqa_rows, winogrande_rows
from negdiff.datastore import ensure
from negdiff.download import MANIFEST

from conftest import DATA

needs_data = pytest.mark.skipif(not (DATA / "tse").is_dir(), reason=f"staged datasets not found at {DATA}")


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


# ---------------------------------------------------------------------------------------------- TSE pickles
AGR = {"sing_MS_MV": [("the author laughs", "the author laugh"), ("the pilot is tall", "the pilot are tall")],
       "plur_MS_MV": [["the authors laugh", "the authors laughs"]]}  # lists as well as tuples
NPI = {"past": [("no authors have ever been popular", "the authors have ever been popular",
                 "most authors have ever been popular")],
       "future": [("no pilots will ever be tall", "the pilots will ever be tall", "most pilots will ever be tall")]}


@pytest.mark.parametrize("protocol", [0, 2])
def test_tse_pickles_become_the_staged_lines(protocol):
    """Python-2-style pickles (protocol 0 and 2) of condition -> list of pairs/triples: tasks in name order,
    conditions and items in the pickle's order, the NPI triples' third sentence as sentence_bad_2."""
    text = tse_pickles.convert({"simple_npi_anim": pickle.dumps(NPI, protocol=protocol),
                                "simple_agrmt": pickle.dumps(AGR, protocol=protocol)})
    assert text.splitlines() == [
        '{"task": "simple_agrmt", "condition": "sing_MS_MV", "sentence_good": "the author laughs", '
        '"sentence_bad": "the author laugh"}',
        '{"task": "simple_agrmt", "condition": "sing_MS_MV", "sentence_good": "the pilot is tall", '
        '"sentence_bad": "the pilot are tall"}',
        '{"task": "simple_agrmt", "condition": "plur_MS_MV", "sentence_good": "the authors laugh", '
        '"sentence_bad": "the authors laughs"}',
        '{"task": "simple_npi_anim", "condition": "past", "sentence_good": "no authors have ever been popular", '
        '"sentence_bad": "the authors have ever been popular", "sentence_bad_2": "most authors have ever been popular"}',
        '{"task": "simple_npi_anim", "condition": "future", "sentence_good": "no pilots will ever be tall", '
        '"sentence_bad": "the pilots will ever be tall", "sentence_bad_2": "most pilots will ever be tall"}',
    ]
    assert text.endswith("\n")


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # protocol 0: os.system('touch ...')
    with pytest.raises(NegdiffError, match=r"evil\.pickle: not a data-only pickle \(refused global os\.system"):
        tse_pickles.load_data_pickle(evil, "evil.pickle")
    assert not marker.exists()
    with pytest.raises(NegdiffError, match=r"x\.pickle: sing\[0\] is not a \(good, bad\)"):
        tse_pickles.task_rows("x", {"sing": [("only one",)]}, "x.pickle")
    with pytest.raises(NegdiffError, match="expected a dict of conditions, got list"):
        tse_pickles.convert({"x": pickle.dumps([1, 2], protocol=2)})


@needs_data
def test_tse_fixture_conditions_round_trip_to_the_staged_lines():
    """Conditions rebuilt as pickles from real staged sentences convert back to the identical staged lines."""
    keep = {("simple_agrmt", "sing_MS_MV"), ("simple_agrmt", "plur_MS_MV"), ("simple_npi_inanim", "past"),
            ("simple_npi_inanim", "future"), ("long_vp_coord", "plur_MS_LMV_LMV")}
    staged: dict[str, list[str]] = {}
    with gzip.open(DATA / "tse" / tse_pickles.FILE, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if (row["task"], row["condition"]) in keep:
                staged.setdefault(row["task"], []).append(line)
    pickles = {}
    for task, lines in staged.items():
        conds: dict[str, list[tuple[str, ...]]] = {}
        for line in lines:
            r = json.loads(line)
            conds.setdefault(r["condition"], []).append(
                tuple(r[k] for k in ("sentence_good", "sentence_bad", "sentence_bad_2") if k in r))
        pickles[task] = pickle.dumps(conds, protocol=2)
    want = "".join(line for task in sorted(staged) for line in staged[task])
    assert len(want.splitlines()) == 140 + 144 + 200  # simple_agrmt, simple_npi_inanim, one long_vp_coord cell
    assert tse_pickles.convert(pickles) == want


# ---------------------------------------------------------------------------------------------- downloads
def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


PIQA_DIR = "raw.githubusercontent.com/ybisk/ybisk.github.io/master/piqa/data"
PIQA_ITEMS = [{"goal": "open a jar", "sol1": "twist the lid", "sol2": "hit the lid"},
              {"goal": "dry a towel", "sol1": "hang it", "sol2": "fold it wet"}]


def _serve_piqa(www: Path) -> dict[str, bytes]:
    d = www / PIQA_DIR
    d.mkdir(parents=True)
    files = {"valid.jsonl": "".join(json.dumps(r) + "\n" for r in PIQA_ITEMS).encode(), "valid-labels.lst": b"0\n1\n"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


def test_fetch_into_the_cache_announces_records_hashes_and_reuses(server, cache, capsys, monkeypatch):
    www, url, hits = server
    served = _serve_piqa(www)
    monkeypatch.setenv("NEGDIFF_DATA_MIRROR", url)
    monkeypatch.setenv("NEGDIFF_PROGRESS", "1")
    assert ensure(["piqa"]) == cache
    err = capsys.readouterr().err
    assert (f"negdiff: fetching 1 dataset(s) once into {cache}, 600.0 kB in all via the mirror {url}: piqa (PIQA valid; "
            "about 600.0 kB from GitHub ybisk/ybisk.github.io piqa/data (valid))") in err
    assert "valid.jsonl" in err and "B/s" in err  # the download's progress bar
    assert "negdiff: fetched piqa: 1 file(s)" in err
    with gzip.open(cache / "piqa" / "piqa_valid.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    assert rows == [{"id": "piqa-valid-0000", "question": "open a jar", "choices": ["twist the lid", "hit the lid"],
                     "label": 0},
                    {"id": "piqa-valid-0001", "question": "dry a towel", "choices": ["hang it", "fold it wet"], "label": 1}]
    manifest = json.loads((cache / "piqa" / MANIFEST).read_text())
    assert {(d["url"].rsplit("/", 1)[-1], d["sha256"], d["bytes"], d["pinned"]) for d in manifest["downloads"]} == {
        (n, hashlib.sha256(b).hexdigest(), len(b), False) for n, b in served.items()}
    written = (cache / "piqa" / "piqa_valid.jsonl.gz").read_bytes()
    assert manifest["files"] == {"piqa_valid.jsonl.gz": {"bytes": len(written),
                                                         "sha256": hashlib.sha256(written).hexdigest()}}
    assert "AFL 3.0" in (cache / "piqa" / "SOURCE.md").read_text()
    assert len(hits) == 2
    assert ensure(["piqa"]) == cache and len(hits) == 2  # reused: verified, not fetched again
    assert "fetching" not in capsys.readouterr().err


def test_a_corrupt_file_is_refused_on_reuse(server, cache, monkeypatch):
    www, url, hits = server
    _serve_piqa(www)
    fetch(cache, ["piqa"], mirror=url, quiet=True)
    path = cache / "piqa" / "piqa_valid.jsonl.gz"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(NegdiffError) as exc:
        ensure(["piqa"])
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path} is corrupt: sha256 ")
    assert msg.endswith("recorded when it was fetched; fetch it again with `negdiff data fetch --only piqa --force`")
    assert len(hits) == 2  # refused: nothing fetched behind the user's back
    assert fetch(cache, ["piqa"], force=True, mirror=url, quiet=True) == ["piqa"]
    assert ensure(["piqa"]) == cache


def test_a_download_that_differs_from_its_pin_is_refused(server, cache):
    www, url, _hits = server
    d = www / tse_pickles.BASE_URL.split("://", 1)[1]
    d.mkdir(parents=True)
    for task in tse_pickles.PICKLES:
        (d / f"{task}.pickle").write_bytes(pickle.dumps(AGR, protocol=2))
    with pytest.raises(NegdiffError, match=r"long_vp_coord\.pickle: sha256 [0-9a-f]{64} differs from the pinned "
                                           r"1cb1cfb8c948ff52"):
        fetch(cache, ["tse"], mirror=url, quiet=True)
    assert not (cache / "tse").exists()


def test_offline_names_every_missing_dataset(cache, monkeypatch):
    monkeypatch.setenv("NEGDIFF_DATA_MIRROR", _closed_port())
    with pytest.raises(NegdiffError) as exc:
        ensure(["piqa", "tse", "piqa", "arc"])
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("cannot download http://127.0.0.1:")
    assert f"dataset folders 'piqa', 'tse', 'arc' not found in {cache}; online, `negdiff data fetch --only " \
           "piqa,tse,arc` fetches them; offline, set NEGDIFF_DATA" in msg
    assert not (cache / "piqa").exists()


def test_a_user_named_folder_is_never_filled_behind_the_users_back(tmp_path, cache, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "blimp").mkdir(parents=True)
    monkeypatch.setenv("NEGDIFF_DATA", str(mine))
    monkeypatch.setenv("NEGDIFF_DATA_MIRROR", _closed_port())  # a fetch attempt would say "cannot download"
    assert ensure(["blimp"]) == mine  # a staged folder without a manifest is used as it is
    # every dataset negdiff reads is fetchable now; one that is not (a source gone) is named with what to do
    monkeypatch.setitem(datasets.NOT_FETCHED, "gone", "its source was withdrawn; copy a staged gone folder")
    with pytest.raises(NegdiffError) as exc:
        ensure(["blimp", "tse", "train_corpus", "gone"])
    msg = str(exc.value)
    assert msg.startswith(f"dataset folders 'tse', 'train_corpus', 'gone' not found in {mine} (NEGDIFF_DATA / --data); "
                          f"online, `negdiff data fetch --only tse,train_corpus --dest {mine}` fetches them; gone: its "
                          "source was withdrawn; copy a staged gone folder; or copy them from a staged data folder")
    assert "cannot download" not in msg and not (mine / "tse").exists()
    with pytest.raises(NegdiffError, match="cannot fetch 'gone': its source was withdrawn"):
        fetch(mine, ["gone"])


def test_reproduce_checks_every_steps_data_before_any_model(cache, monkeypatch):
    from negdiff.reproduce import check_data, preset_sizes

    monkeypatch.setenv("NEGDIFF_DATA_MIRROR", _closed_port())
    with pytest.raises(NegdiffError) as exc:
        check_data(preset_sizes("quick"), seed=0)
    msg = str(exc.value)
    named = msg.split("dataset folders ", 1)[1].split(" not found", 1)[0]
    assert named == ("'wikitext2_raw', 'blimp', 'tse', 'arc', 'piqa', 'hellaswag', 'winogrande', 'sciq', "
                     "'lambada_openai', 'boolq', 'ud_ewt'")


def test_data_fetch_command(server, cache, capsys, monkeypatch):
    www, url, _hits = server
    _serve_piqa(www)
    monkeypatch.setenv("NEGDIFF_DATA_MIRROR", url)
    assert cli.main(["data", "fetch", "--only", "piqa"]) == 0
    assert f"fetched piqa into {cache}" in capsys.readouterr().out
    monkeypatch.setitem(datasets.NOT_FETCHED, "gone", "its source was withdrawn")
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "piqa             fetched, verified" in out and "tse              missing" in out
    assert "train_corpus     missing" in out and "gone             missing" in out  # listed, though not fetchable
    assert cli.main(["data", "fetch", "--only", "nope"]) == 2
    assert "cannot fetch 'nope': unknown dataset" in capsys.readouterr().err
