"""Tasks: loader counts on the staged data, hand-made sets with known answers, prompts, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from negdiff.errors import NegdiffError
from negdiff.tasks import TASKS, EvalConfig, expand_tasks, run_task, tse_group
from negdiff.tasks.multiple_choice import (
    hellaswag_preprocess,
    lambada_split,
    prompt_hellaswag,
    prompt_winogrande,
)

from _evalutil import (
    DATA,
    bigram_logprob,
    needs_data,
    one_thread,  # noqa: F401  (autouse fixture)
    real_tokenizer,
    tiny_llama,
    toy_bigram,
    write_jsonl_gz,
)

COUNTS = {"blimp": 67_000, "tse": 158_084, "arc_easy": 2_376, "arc_challenge": 1_172, "piqa": 1_838,
          "hellaswag": 10_042, "winogrande": 1_267, "sciq": 1_000, "lambada_openai": 5_153, "boolq": 3_270}


@needs_data
def test_loader_counts_on_the_staged_data():
    cfg = EvalConfig(data_root=str(DATA))
    for name, n in COUNTS.items():
        items = TASKS[name].load(cfg)
        assert len(items) == n, name
    blimp = TASKS["blimp"].load(cfg)
    per = {}
    for it in blimp:
        per[it["UID"]] = per.get(it["UID"], 0) + 1
    assert len(per) == 67 and set(per.values()) == {1000}
    assert len({(it["UID"], it["pairID"]) for it in blimp}) == 67_000  # the item ids are unique
    tse = TASKS["tse"].load(cfg)
    tasks = {it["task"] for it in tse}
    assert len(tasks) == 22
    assert {tse_group(t) for t in tasks} == {"agreement", "reflexives", "npi"}
    assert sum(tse_group(t) == "npi" for t in tasks) == 4 and sum(tse_group(t) == "reflexives" for t in tasks) == 3
    triples = [it for it in tse if "sentence_bad_2" in it]
    assert len(triples) == 10_824 and all(tse_group(it["task"]) == "npi" for it in triples)
    assert all("sentence_bad_2" in it for it in tse if tse_group(it["task"]) == "npi")
    ewt = TASKS["perplexity"].load(EvalConfig(data_root=str(DATA), ppl_corpus="ewt-test"))
    assert len(ewt) > 1 and all(d["_file"].endswith("en_ewt-ud-test.conllu.gz") for d in ewt)


def _blimp_dir(tmp_path, rows):
    write_jsonl_gz(tmp_path / "blimp" / "toy_paradigm.jsonl.gz", [
        {"sentence_good": g, "sentence_bad": b, "field": "morphology", "linguistics_term": "agreement",
         "UID": "toy_paradigm", "pairID": str(i)} for i, (g, b) in enumerate(rows)])
    return EvalConfig(data_root=str(tmp_path))


def test_handmade_three_pairs_with_a_known_answer(tmp_path):
    model, tok, p = toy_bigram()
    cfg = _blimp_dir(tmp_path, [("the cat runs", "the cat run"), ("the cats run", "the cats runs"),
                                ("cats run", "cat runs")])
    res = run_task("blimp", model, tok, cfg)
    # by hand: P(runs|cat)=.6 > P(run|cat)=.1; P(run|cats)=.5 > P(runs|cats)=.2;
    # cats run = .1 x .5 = .05 < cat runs = .3 x .6 = .18: the third pair is wrong
    assert res.items["correct"].tolist() == [True, True, False]
    assert res.metrics["acc"]["value"] == pytest.approx(2 / 3)
    assert res.metrics["acc/paradigm/toy_paradigm"]["n"] == 3
    raw = lambda i: p[0, 2] * p[2, 3] * p[3, 5] if i == 0 else None  # noqa: E731
    assert res.items["lp_good"][0] == pytest.approx(math.log(raw(0)), abs=1e-5)
    assert res.items["lp_bad"][2] == pytest.approx(math.log(p[0, 3] * p[3, 5]), abs=1e-5)
    assert res.items["item_id"].tolist() == ["blimp/toy_paradigm/0", "blimp/toy_paradigm/1", "blimp/toy_paradigm/2"]
    assert res.version == "2" and res.config["reduction"] == "sum"


def test_blimp_ties_count_as_wrong_and_limit_rules(tmp_path):
    model, tok, _ = toy_bigram()
    cfg = _blimp_dir(tmp_path, [("the cat runs", "the cat runs")] + [("the cat runs", "the cat run")] * 9)
    res = run_task("blimp", model, tok, cfg)
    assert res.items["correct"].tolist() == [False] + [True] * 9
    first = run_task("blimp", model, tok, EvalConfig(data_root=cfg.data_root, limit=3))
    assert first.items["item_id"].str.split("/").str[-1].tolist() == ["0", "1", "2"]
    seeded = [run_task("blimp", model, tok, EvalConfig(data_root=cfg.data_root, limit=4, blimp_sample="seeded",
                                                       seed=s)).items["item_id"].tolist() for s in (5, 5, 6)]
    assert seeded[0] == seeded[1] != seeded[2]  # reproducible for one seed, different for another
    assert seeded[0] == sorted(seeded[0], key=lambda x: int(x.split("/")[-1]))  # file order kept


def test_tse_npi_pairs_with_bad_2_and_strict_beats_both(tmp_path):
    model, tok, p = toy_bigram()
    rows = [
        {"task": "simple_npi_anim", "condition": "c", "sentence_good": "the cats run",
         "sentence_bad": "the cat runs", "sentence_bad_2": "the cats runs"},  # beats bad_2, loses to bad
        {"task": "simple_npi_anim", "condition": "c", "sentence_good": "the cat runs",
         "sentence_bad": "the cats runs", "sentence_bad_2": "the cats run"},  # beats both
        {"task": "simple_agrmt", "condition": "c", "sentence_good": "the cats run", "sentence_bad": "the cats runs"},
    ]
    write_jsonl_gz(tmp_path / "tse" / "marvin_linzen_2018.jsonl.gz", rows)
    res = run_task("tse", model, tok, EvalConfig(data_root=str(tmp_path)))
    mean = {r: bigram_logprob(p, tok, r).mean() for r in {v for row in rows for k, v in row.items() if "sent" in k}}
    assert mean["the cat runs"] > mean["the cats run"] > mean["the cats runs"]  # the premise of row 1
    assert res.items["lp_good"][0] == pytest.approx(mean["the cats run"], abs=1e-5)
    assert res.items["correct"].tolist() == [True, True, True]
    assert res.items["correct_strict"].tolist() == [False, True, True]
    assert np.isnan(res.items["lp_bad_2"][2])
    m = res.metrics
    assert m["acc"]["value"] == 1.0 and m["acc_strict"]["value"] == pytest.approx(2 / 3)
    assert m["acc_strict/group/npi"]["value"] == 0.5 and m["acc/group/agreement"]["n"] == 1
    assert m["acc_task_mean"]["value"] == 1.0 and m["acc_task_mean"]["n"] == 2
    summed = run_task("tse", model, tok, EvalConfig(data_root=str(tmp_path), tse_reduction="sum"))
    assert summed.items["lp_good"][0] == pytest.approx(bigram_logprob(p, tok, "the cats run").sum(), abs=1e-5)


def test_prompt_formats_by_hand():
    # worked by hand in the harness's order: strip first, so the space before a final tag survives
    assert hellaswag_preprocess(" How to cook [title] Boil water. [step] Add  salt [header] ") == \
        "How to cook. Boil water. Add salt "
    hs = prompt_hellaswag({"activity_label": "Roof", "ctx_a": "A man is on a roof.", "ctx_b": "he IS",
                           "choices": ["starts [step] pulling.", "b"]})
    assert hs.pairs[0] == ("Roof: A man is on a roof. He is", " starts pulling.")
    assert hs.norm_chars == [len("starts pulling."), 1]
    wg = prompt_winogrande({"sentence": "Sarah beat Maria so _ got the  easy cases. ", "choices": ["Sarah", "Maria"]})
    assert wg.pairs == [("Sarah beat Maria so Sarah", " got the  easy cases."),
                        ("Sarah beat Maria so Maria", " got the  easy cases.")]
    assert lambada_split("He said:\n\nhello world") == ("He said:\n\nhello", " world")


@needs_data
def test_multiple_choice_acc_and_acc_norm_recomputed_by_hand():
    tok, model = real_tokenizer(), tiny_llama(max_len=2048)  # BoolQ passages exceed 256 tokens
    for name, k in (("arc_easy", 3), ("hellaswag", 2), ("winogrande", 2), ("boolq", 1), ("sciq", 2)):
        cfg = EvalConfig(data_root=str(DATA), limit=k)
        res = run_task(name, model, tok, cfg)
        items = TASKS[name].load(cfg)[:k]
        for it, row in zip(items, res.items.itertuples(), strict=True):
            prompted = _by_hand_prompts(name, it)
            lls = []
            for ctx, cont in prompted:
                ids = tok(ctx + cont, add_special_tokens=False)["input_ids"]  # harness: no BOS before a context
                n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
                lls.append(sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids))))
            np.testing.assert_allclose(row.ll, lls, atol=1e-4)
            assert row.pred == int(np.argmax(lls)) and row.correct == (row.pred == it["label"])
            if name in ("arc_easy", "hellaswag", "sciq"):
                chars = [len(c.strip()) for _, c in prompted]
                assert row.pred_norm == int(np.argmax(np.array(lls) / chars))
        assert res.metrics["acc"]["value"] == pytest.approx(res.items["correct"].mean())
        assert ("acc_norm" in res.metrics) == (name in ("arc_easy", "hellaswag", "sciq"))
        assert res.items["item_id"].iloc[0] == f"{name}/{items[0]['id']}"


def _by_hand_prompts(name: str, it: dict) -> list[tuple[str, str]]:
    """The harness's templates, written out again independently of tasks_mc."""
    if name == "arc_easy":
        return [(f"Question: {it['question']}\nAnswer:", f" {c}") for c in it["choices"]]
    if name == "sciq":
        return [(it["support"].lstrip() + f"\nQuestion: {it['question']}\nAnswer:", f" {c}") for c in it["choices"]]
    if name == "boolq":
        return [(f"{it['passage']}\nQuestion: {it['question']}?\nAnswer:", f" {c}") for c in ("no", "yes")]
    if name == "winogrande":
        before, after = it["sentence"].split("_", 1)
        return [(before + o, " " + after.strip()) for o in it["choices"]]
    pr = prompt_hellaswag(it)  # its cleaning has its own hand test above
    return pr.pairs


def test_lambada_acc_and_perplexity_by_hand(tmp_path):
    model, tok, p = toy_bigram()
    write_jsonl_gz(tmp_path / "lambada_openai" / "lambada_openai_test.jsonl.gz", [
        {"id": "l0", "text": "the cat runs"},  # runs is the argmax after cat (.6): correct
        {"id": "l1", "text": "the cats runs"},  # run (.5) beats runs (.2) after cats: wrong
    ])
    res = run_task("lambada_openai", model, tok, EvalConfig(data_root=str(tmp_path)))
    assert res.items["correct"].tolist() == [True, False]
    ll = np.log([p[3, 5], p[4, 5]])
    np.testing.assert_allclose(res.items["ll"], ll, atol=1e-5)
    assert res.metrics["ppl"]["value"] == pytest.approx(math.exp(-ll.mean()), rel=1e-5)
    assert res.metrics["acc"]["value"] == 0.5


def test_perplexity_equals_exp_mean_nll_recomputed(tmp_path):
    tok = real_tokenizer()
    model = tiny_llama(max_len=64)
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog number {i * 7}." for i in range(40))
    path = tmp_path / "local.txt"
    path.write_text(text)
    res = run_task("perplexity", model, tok, EvalConfig(ppl_corpus=str(path)))
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    n = len(ids) // 64
    windows = ids[: n * 64].view(n, 64)  # window = min(2048, the model's 64 positions), remainder dropped
    with torch.no_grad():
        logits = model(windows).logits.double()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert res.config["window"] == 64 and res.config["n_windows"] == n
    assert res.metrics["ppl"]["value"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert n >= 10  # enough windows for an interval
    if n >= 10:  # t-interval on per-window NLL, transformed: exp(mean +- t * sd / sqrt(n))
        from scipy import stats

        w = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), windows[:, 1:], reduction="none").mean(1)
        half = stats.t.ppf(0.975, n - 1) * float(w.std()) / math.sqrt(n)
        assert res.metrics["ppl"]["ci_high"] == pytest.approx(math.exp(float(w.mean()) + half), rel=1e-4)
    assert res.metrics["ppl"]["ci_low"] < res.metrics["ppl"]["value"] < res.metrics["ppl"]["ci_high"]
    sub = run_task("perplexity", model, tok, EvalConfig(ppl_corpus=str(path), max_tokens=130, seed=3))
    assert sub.config["n_windows"] == 2 and sub.items["window"].is_monotonic_increasing
    picked = res.items.set_index("window").loc[sub.items["window"], "nll"]
    assert sub.metrics["ppl"]["value"] == pytest.approx(math.exp(picked.mean()), rel=1e-9)
    assert sub.metrics["ppl"]["ci_low"] is None and sub.metrics["ppl"]["n"] == 2  # 2 windows: no interval


def test_errors_name_the_file_and_line(tmp_path):
    model, tok, _ = toy_bigram()
    write_jsonl_gz(tmp_path / "arc" / "arc_easy_test.jsonl.gz",
                   ['{"id": "a", "question": "q", "choices": ["x", "y"], "label": 0}', '{"id": "b", "question": '])
    with pytest.raises(NegdiffError, match=r"arc_easy_test\.jsonl\.gz:2: malformed JSON"):
        TASKS["arc_easy"].load(EvalConfig(data_root=str(tmp_path)))
    with pytest.raises(NegdiffError, match=r"data file not found: .*arc_challenge_test\.jsonl\.gz"):
        TASKS["arc_challenge"].load(EvalConfig(data_root=str(tmp_path)))
    write_jsonl_gz(tmp_path / "piqa" / "piqa_valid.jsonl.gz", [{"id": "p", "question": "q", "choices": ["x", "y"]}])
    with pytest.raises(NegdiffError, match=r"piqa_valid\.jsonl\.gz:1: record lacks field\(s\) label"):
        TASKS["piqa"].load(EvalConfig(data_root=str(tmp_path)))
    write_jsonl_gz(tmp_path / "sciq" / "sciq_validation.jsonl.gz",
                   [{"id": "s", "question": "q", "support": "", "choices": ["x", "y"], "label": 2}])
    with pytest.raises(NegdiffError, match=r"sciq_validation\.jsonl\.gz:1: label 2 is not an index"):
        TASKS["sciq"].load(EvalConfig(data_root=str(tmp_path)))
    with pytest.raises(NegdiffError, match="unknown task 'blimpp'; known tasks: blimp, tse, perplexity"):
        expand_tasks("blimp,blimpp")
    with pytest.raises(NegdiffError, match="--limit"):
        EvalConfig(limit=0)


def test_alias_expands_to_the_eight_benchmarks():
    names = expand_tasks("blimp, nongrammatical,arc_easy")
    assert names == ["blimp", "arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "sciq",
                     "lambada_openai", "boolq"]
    assert all(TASKS[n].version for n in names)
