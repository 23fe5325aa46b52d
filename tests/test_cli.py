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
    assert listed == ["info", "reproduce", "report", *(s.name for s in all_steps()), "eval", "data"]


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
