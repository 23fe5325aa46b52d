"""The command line: info output, and user mistakes -> one-line errors, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import transformers as T


def run(*args, env_extra=None):
    env = dict(os.environ, NEGDIFF_PROGRESS="0", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "negdiff", *args], capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_every_command_in_pipeline_order():
    """The commands ``negdiff --help`` lists are the declared steps, in pipeline order, between the others."""
    from negdiff.steps import all_steps

    out = run("--help")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.split("positional arguments:")[1].splitlines()[2:]
              if line.startswith("    ") and not line.startswith("      ")]
    assert listed == ["info", "models", "reproduce", "report", *(s.name for s in all_steps()), "eval", "tasks", "data"]


def test_models_lists_the_site_registry():
    """Each row resolves on a tiny model of its family: the printed paths are the modules negdiff hooks."""
    import json

    from negdiff.sites import REGISTRY, resolve

    from conftest import tiny_model

    out = run("models", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["model_type"]: r for r in json.loads(out.stdout)}
    assert list(rows) == list(REGISTRY)
    for arch in ("gpt2", "llama", "opt"):
        model, row = tiny_model(arch), rows[arch]
        site = resolve(model)[0]
        assert model.get_submodule(f"{row['layers']}.0.{row['activation']}") is site.act_module
        assert model.get_submodule(f"{row['layers']}.0.{row['projection']}") is site.proj_module
    assert rows["llama"]["gated"] and not rows["gpt2"]["gated"] and rows["gpt2"]["projection_layout"] == "conv1d"
    text = run("models").stdout.splitlines()
    assert text[0].split()[:2] == ["model_type", "layers"] and any(line.split()[0] == "phi3" for line in text)


def test_tasks_counts_the_staged_items(tmp_path):
    """Item counts are the lines of the data files; a folder without a task's data says 'not staged'."""
    import gzip
    import json

    from negdiff.tasks import TASKS

    from conftest import DATA

    folder = tmp_path / "data"
    (folder / "tse").mkdir(parents=True)
    rows = [{"task": "simple_agrmt", "condition": "x", "sentence_good": "a b", "sentence_bad": "b a"}] * 3
    with gzip.open(folder / "tse" / "marvin_linzen_2018.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    out = run("tasks", "--json", "--data", str(folder))
    assert out.returncode == 0, out.stderr
    got = {r["name"]: r for r in json.loads(out.stdout)}
    assert list(got) == list(TASKS)
    assert got["tse"]["items"] == 3 and got["tse"]["unit"] == "pairs" and got["blimp"]["items"] is None
    assert got["arc_easy"]["aliases"] == ["nongrammatical"] and got["blimp"]["version"] == TASKS["blimp"].version
    text = run("tasks", "--data", str(folder)).stdout
    assert "3 pairs" in text and "not staged" in text and text.splitlines()[-1].startswith("alias nongrammatical = ")
    if (DATA / "sciq").is_dir():  # the staged data: its own line count as the reference
        with gzip.open(next((DATA / "sciq").glob("*.jsonl.gz")), "rt") as fh:
            lines = sum(1 for line in fh if line.strip())
        staged = {r["name"]: r for r in json.loads(run("tasks", "--json", "--data", str(DATA)).stdout)}
        assert staged["sciq"]["items"] == lines


def test_info_on_local_model(tiny_model_dir):
    out = run("info", str(tiny_model_dir))
    assert out.returncode == 0, out.stderr
    assert "2 x 48 = 96 neurons" in out.stdout and "silu" in out.stdout
    assert "model.layers.{L}.mlp.act_fn" in out.stdout


def test_info_json(tiny_model_dir):
    import json

    out = run("info", str(tiny_model_dir), "--json")
    info = json.loads(out.stdout)
    assert info["sites"]["n_neurons"] == 96 and info["model_type"] == "llama"


def _assert_clean_error(out, pattern):
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert pattern in out.stderr, out.stderr


def test_unknown_model_offline():
    _assert_clean_error(run("info", "nobody/no-such-model"), "cannot load model 'nobody/no-such-model'")


def test_path_not_a_model(tmp_path):
    _assert_clean_error(run("info", str(tmp_path)), "is not a model folder")


def test_unsupported_architecture(tmp_path, real_tokenizer):
    cfg = T.GPTJConfig(n_layer=1, n_embd=16, n_head=2, rotary_dim=4, vocab_size=len(real_tokenizer), n_positions=32)
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    real_tokenizer.save_pretrained(tmp_path)
    _assert_clean_error(run("info", str(tmp_path)), "Supported architectures: ")


def test_bad_dtype(tiny_model_dir):
    _assert_clean_error(run("info", str(tiny_model_dir), "--dtype", "int3"), "unknown dtype 'int3'")
