"""A tour of negdiff's Python API on the embedded model, offline, in well under two minutes on 2 cores.

1. load the embedded default model (SmolLM2-135M-Instruct, 4-bit weights dequantized to float32);
2. capture the pre-activations of every layer on 1,024 tokens of WikiText-2 (validation);
3. compute each neuron's exact Wasserstein distance to N(0, 1) on those tokens (the scan's statistic,
   on a sample far smaller than a scan's 65k tokens, so the set is only indicative) and take the top
   1% per layer: the Wasserstein neurons (WN);
4. score a few BLiMP pairs (5 paradigms x 5 pairs: a data folder that links just those paradigm files)
   at baseline and with the WN's negative pre-activations zeroed, and print both: the second result
   records the intervention it ran under, read from the ``intervene`` block.

Run: ``NEGDIFF_DATA=../shared/data python3 examples/tour.py`` (``--tokens``, ``--blimp-limit``,
``--paradigms`` to resize).
tests/test_examples.py runs it and checks what it prints.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import negdiff
from negdiff.data import corpus_documents, data_dir, token_windows
from negdiff.w1 import exact_wd


def neuron_table(lm: negdiff.LoadedModel, windows: torch.Tensor) -> pd.DataFrame:
    """One row per neuron (layer, neuron, wd): the exact W1 distance of its standardized values to N(0, 1).

    The pre-activations of all layers are kept for these few tokens only; a real scan streams them into
    :class:`negdiff.stats.NeuronStats` instead, whose memory does not grow with the corpus.
    """
    seen: dict[int, list[np.ndarray]] = {}
    with negdiff.capture(lm) as trace:  # the LoadedModel itself: its sites are reused
        for row in windows:
            trace.forward(row[None])
            for layer, h in trace.pre.items():
                seen.setdefault(layer, []).append(h[0].float().numpy())
    rows = []
    for layer, parts in sorted(seen.items()):
        wd, _, _ = exact_wd(np.concatenate(parts).astype(np.float64))  # [tokens, width] -> per column
        rows.append(pd.DataFrame({"layer": layer, "neuron": np.arange(len(wd)), "wd": wd}))
    return pd.concat(rows, ignore_index=True)


PARADIGMS = ("anaphor_number_agreement", "regular_plural_subject_verb_agreement_1",
             "distractor_agreement_relational_noun", "npi_present_1", "wh_island")


def few_paradigms(names: list[str], folder: Path) -> Path:
    """A data folder whose ``blimp/`` links only ``names`` from the staged BLiMP: ``evaluate`` scores what
    the folder holds (and records ``n_paradigms``), so a tour need not pay for all 67 paradigms."""
    staged = data_dir(need="blimp") / "blimp"
    (folder / "blimp").mkdir(parents=True)
    for name in names:
        (folder / "blimp" / f"{name}.jsonl.gz").symlink_to(staged / f"{name}.jsonl.gz")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="tokens of WikiText-2 validation to capture")
    parser.add_argument("--blimp-limit", type=int, default=5, help="BLiMP pairs per paradigm")
    parser.add_argument("--paradigms", default=",".join(PARADIGMS), help="BLiMP paradigms to score (comma-separated)")
    args = parser.parse_args()
    t0 = time.perf_counter()

    lm = negdiff.load_model("default")
    print(f"model: {lm.info.name}, {len(lm.sites)} layers x {lm.sites[0].width} neurons")

    ids = lm.tokenizer("The keys to the cabinet are on the table.", return_tensors="pt").input_ids
    with negdiff.capture(lm, layers=[0, 15]) as trace:
        trace.forward(ids)
    h = trace.pre[15][0]
    print(f"capture: layer 15 pre-activations {tuple(h.shape)}, fraction negative {float((h < 0).float().mean()):.3f}")

    docs, _ = corpus_documents("wikitext2-valid")
    windows = token_windows(lm.tokenizer, docs, 512, max_tokens=args.tokens)
    table = neuron_table(lm, windows)
    wn = negdiff.select_wasserstein(table, fraction=0.01)
    top = table.sort_values("wd", ascending=False).iloc[0]
    print(f"scan-like: {windows.numel()} tokens, {len(table)} neurons, WN {wn.size} "
          f"(median wd WN {table.set_index(['layer', 'neuron']).loc[list(wn), 'wd'].median():.3f}, "
          f"all {table.wd.median():.3f}); top L{int(top.layer)}.N{int(top.neuron)} wd {top.wd:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        root = few_paradigms(args.paradigms.split(","), Path(tmp))
        config = negdiff.EvalConfig(limit=args.blimp_limit, n_boot=200, data_root=str(root))
        base = negdiff.evaluate(lm, "blimp", config=config)
        with negdiff.intervene(lm, wn, "zero_negative"):
            print(f"active: {[(iv.mode, iv.neurons.size) for iv in negdiff.active_interventions(lm)]}")
            ablated = negdiff.evaluate(lm, "blimp", config=config)
    print(f"active after the block: {negdiff.active_interventions(lm)}")
    for label, res in (("baseline", base), ("wn zero_negative", ablated)):
        acc = res["tasks"]["blimp"]["metrics"]["acc"]
        margin = float((res["items"]["blimp"].lp_good - res["items"]["blimp"].lp_bad).mean())
        cond = res["condition"]
        print(f"result: {label:<17} condition={cond['intervention']} n_neurons={cond.get('n_neurons', 0)} "
              f"n={acc['n']} acc={acc['value']:.4f} margin={margin:.4f}")
    shift = (ablated["items"]["blimp"].lp_good - base["items"]["blimp"].lp_good).abs().mean()
    assert math.isfinite(shift)
    print(f"mean |change| of log P(good sentence): {shift:.4f} nats; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
