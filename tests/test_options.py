"""Options declared once: every step's flags are generated from its config dataclass (negdiff.options).

What must hold: parsing a command with no size flags gives exactly the dataclass's defaults (the flags
cannot drift from the config); every declared field has a flag whose help shows its default; the shared
sizes have one name on every command; "0 = all" means None; lists, switches and wrong types parse (or
fail) as documented; and building the parser imports no torch (``negdiff --help`` answers at once).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from negdiff.cli import build_parser
from negdiff.cli.eval import EvalOptions
from negdiff.options import config_from_args, flag_of
from negdiff.steps import all_steps

#: the arguments each command needs besides its options
REQUIRED = {"scan": ["m"], "ablate": ["m", "--scan", "s"], "pairs": ["m", "--scan", "s"], "pos": ["m", "--scan", "s"],
            "layers": ["m", "--scan", "s"], "quadrants": ["m", "--scan", "s"], "stability": ["m"], "dynamics": ["--checkpoints", "c"], "train-mini": [], "eval": ["m", "--tasks", "blimp"]}
CONFIGS = {**{s.name: s.config for s in all_steps()}, "eval": EvalOptions}


def _parse(command: str, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *REQUIRED[command], "--out", "o", *extra])


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _flagged(config: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config) if "help" in f.metadata]


def test_every_step_is_a_command_with_a_config():
    assert set(REQUIRED) == set(CONFIGS)
    assert [s.name for s in all_steps()] == ["scan", "ablate", "pairs", "pos", "layers", "quadrants", "stability", "dynamics", "train-mini"]


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_no_flags_give_the_dataclass_defaults(command):
    """The generated defaults are the config's own: a flag cannot carry another default than its field."""
    config = CONFIGS[command]
    assert config_from_args(config, _parse(command)) == config()


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_declared_field_has_a_flag_whose_help_shows_its_default(command):
    config = CONFIGS[command]
    text = " ".join(_subparser(command).format_help().split())
    fields = _flagged(config)
    assert len(fields) >= 8, "a step's sizes are declared with opt()"
    for f in fields:
        default = f.default
        if isinstance(default, bool):
            flag = flag_of(f.name) if not default else "--no-" + flag_of(f.name)[2:]
            assert flag in text, flag
            continue
        assert flag_of(f.name) in text, f.name
        shown = f.metadata["shown"] or (",".join(map(str, default)) if isinstance(default, tuple) else str(default))
        assert f"(default: {' '.join(shown.split())}" in text, (f.name, shown)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_flag_of_a_command_has_help(command):
    for action in _subparser(command)._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 8, action.option_strings


def test_shared_sizes_have_one_name_on_every_command():
    """The drift the issue found: --limit vs --blimp-limit, --max-tokens vs --ppl-tokens, --data on some only."""
    helps = {c: " ".join(_subparser(c).format_help().split()) for c in CONFIGS}
    for c, text in helps.items():
        assert "--limit " not in text and "--max-tokens" not in text, c
        assert "--out" in text and "--data" in text, c
    for name in ("blimp_limit", "tse_limit", "ppl_tokens", "ppl_window", "seed", "n_boot", "batch_tokens", "seeds",
                 "fraction", "criterion", "scope", "bos", "mwt", "corpus", "tokens", "window"):
        users = [c for c, cfg in CONFIGS.items() if name in {f.name for f in _flagged(cfg)}]
        assert users, name
        for c in users:
            assert flag_of(name) in helps[c], (c, name)
    for c in ("scan", "ablate", "pairs", "pos", "layers", "dynamics", "train-mini"):
        assert "--force" in helps[c], c


def test_values_parse_to_the_config_fields():
    cfg = config_from_args(CONFIGS["ablate"], _parse("ablate", "--blimp-limit", "0", "--tse-limit", "7", "--tasks",
                                                     "blimp,tse", "--controls-on-nongram", "--dose-fractions", "0.01,0.02",
                                                     "--fraction", "0.02", "--criterion", "wd_neg_raw"))
    assert (cfg.blimp_limit, cfg.tse_limit, cfg.tasks) == (None, 7, ("blimp", "tse"))  # 0 = all
    assert cfg.controls_on_nongram is True and cfg.dose_fractions == (0.01, 0.02)
    assert (cfg.fraction, cfg.criterion) == (0.02, "wd_neg_raw")
    pairs = config_from_args(CONFIGS["pairs"], _parse("pairs", "--panel-layers", "1, 5,9"))
    assert pairs.panel_layers == (1, 5, 9)
    pos = config_from_args(CONFIGS["pos"], _parse("pos", "--max-words", "0", "--extra", "wn_pos,wn_zero"))
    assert pos.max_words is None and pos.extra == ("wn_pos", "wn_zero")
    ev = config_from_args(EvalOptions, _parse("eval", "--no-share-context", "--nongram-limit", "3"))
    assert ev.share_context is False and ev.limit("arc_easy") == 3 and ev.limit("blimp") is None
    assert ev.limit("perplexity") is None


@pytest.mark.parametrize("argv, named", [
    (["scan", "m", "--out", "o", "--tokens", "lots"], "--tokens"),
    (["ablate", "m", "--scan", "s", "--out", "o", "--fraction", "one"], "--fraction"),
    (["pairs", "m", "--scan", "s", "--out", "o", "--panel-layers", "1,x"], "--panel-layers"),
    (["layers", "m", "--scan", "s", "--out", "o", "--mode", "mean"], "--mode"),  # mean needs values a set lacks
    (["scan", "m", "--out", "o", "--criterion", "wd_pos"], "--criterion"),
])
def test_a_wrong_value_is_a_one_line_error_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("negdiff") and named in err[-1] and "Traceback" not in "".join(err)


def test_zero_means_all_only_where_declared():
    """A count without "0 = all" refuses 0 (the dataclass's check), one with it turns 0 into None."""
    from negdiff.errors import NegdiffError

    with pytest.raises(NegdiffError, match="--seeds must be at least 1"):
        config_from_args(CONFIGS["ablate"], _parse("ablate", "--seeds", "0"))
    with pytest.raises(NegdiffError, match="--control-blimp-limit must be at least 1"):
        config_from_args(CONFIGS["ablate"], _parse("ablate", "--control-blimp-limit", "0"))
    zero_all = {f.name for f in dataclasses.fields(CONFIGS["ablate"]) if f.metadata.get("zero_all")}
    assert zero_all == {"blimp_limit", "tse_limit", "nongram_limit", "ppl_tokens", "dose_blimp_limit", "dose_ppl_tokens"}


def test_help_imports_no_torch():
    """``negdiff --help`` and every ``negdiff STEP --help`` build the parser without importing torch or pandas."""
    code = ("import sys\nfrom negdiff.cli import build_parser\np = build_parser()\n"
            "for c in ['scan','ablate','pairs','pos','layers','dynamics','train-mini','eval','tasks','models','reproduce','report','data']:\n"
            "    try:\n        p.parse_args([c, '--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'pandas', 'scipy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
