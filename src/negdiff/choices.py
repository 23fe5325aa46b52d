"""The closed vocabularies of negdiff's options: selection criteria, edit modes, multi-word-token rules.

Why a module of their own: the command line offers them as ``choices`` and the config dataclasses check
them, and both must work without importing torch or pandas (``negdiff --help`` answers in well under a
second). The modules that act on them (:mod:`negdiff.select`, :mod:`negdiff.hooks`, :mod:`negdiff.align`)
import them from here, so each vocabulary is written once.
"""

from __future__ import annotations

from negdiff.errors import NegdiffError

#: Columns of the neuron table that can rank neurons ("which neurons are WN"). wd_neg_raw: W1 over the raw
#: negative region h < 0; wd_below_mean: W1 below the neuron's mean (see negdiff.stats).
CRITERIA = ("wd", "wd_neg_raw", "wd_below_mean", "md", "kurtosis")
#: Names that split W1 at the mean while calling it the negative side; refused with an explanation.
REMOVED = {"wd_neg": "it split W1 at the neuron's mean, not at h = 0"}
#: argparse choices: the removed names parse, so that the user sees the NegdiffError explaining them.
CLI_CRITERIA = (*CRITERIA, *REMOVED)

#: Edits applied to the activation's *input* h on the selected channels.
PRE_MODES = {
    "zero_negative": "h -> max(h, 0): the paper's sign-specific ablation",
    "zero_positive": "h -> min(h, 0)",
    "zero": "h -> 0: the neuron is removed",
    "mean": "h -> a given per-neuron value (mean ablation)",
}
#: Edits applied to the activation's *output* on the selected channels (sign-vs-magnitude controls).
POST_MODES = {
    "identity_positive": "act(h) -> h where h > 0 (negative inputs keep the original activation)",
    "abs_negative_output": "act(h) -> |act(h)| (negative outputs made positive)",
}
#: Gated MLPs only: zero the contribution act(h) x u of one sign quadrant of gate h and up factor u
#: (negdiff.gate_up; the neuron stays defined at the gate).
QUADRANT_MODES = {
    "zero_gate_neg_up_pos": "act(h) x u -> 0 where h < 0 and u > 0",
    "zero_gate_neg_up_neg": "act(h) x u -> 0 where h < 0 and u < 0",
    "zero_gate_pos_up_pos": "act(h) x u -> 0 where h > 0 and u > 0",
    "zero_gate_pos_up_neg": "act(h) x u -> 0 where h > 0 and u < 0",
}
MODES = {**PRE_MODES, **POST_MODES, **QUADRANT_MODES}
#: Modes a neuron file can drive: ``mean`` needs per-neuron values, which a neuron set does not carry (API only).
SET_MODES = tuple(m for m in MODES if m != "mean")

#: Multi-word-token rules and what each does (recorded in results).
MWT_RULES = {"chars": "multi-word tokens whose words spell them are aligned word by word by character overlap; "
                      "others share their surprisal equally among their words",
             "split": "a multi-word token's surprisal is shared equally among its words",
             "first": "a multi-word token's surprisal goes to its first word"}

#: Where a fraction of neurons is taken: in every layer, or over the whole model.
SCOPES = ("per_layer", "global")


def check_criterion(criterion: str) -> None:
    """Refuse an unknown or removed criterion with a one-line NegdiffError (call before any long work)."""
    if criterion in REMOVED:
        raise NegdiffError(f"criterion '{criterion}' was removed: {REMOVED[criterion]}; use wd_neg_raw (W1 over the "
                           f"raw negative region h < 0) or wd_below_mean (the old values, below the mean)")
    if criterion not in CRITERIA:
        raise NegdiffError(f"unknown selection criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")


def check_scope(scope: str) -> None:
    """Refuse a scope other than per_layer or global, naming the flag."""
    if scope not in SCOPES:
        raise NegdiffError(f"--scope must be per_layer or global, got '{scope}'")
