"""The document-start token: detection on tokenizers built offline, the policies, and what results record."""

from __future__ import annotations

import numpy as np
import pytest
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from negdiff.bos import BOS_POLICIES, context_needs_bos, detect_document_start, document_start, policy_token
from negdiff.errors import NegdiffError
from negdiff.scoring import ScoringConfig, continuation_logliks, encode_pair, encode_text, score_unbatched
from negdiff.tasks import TASKS, EvalConfig

from _evalutil import one_thread, real_tokenizer  # noqa: F401  (one_thread: autouse fixture)
from conftest import tiny_model

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}")
WORDS = "the cat cats runs run a dog sat".split()


def word_tokenizer(specials: list[str], template: str | None = None, **tokens: str) -> T.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer: ``specials`` take ids 0.., then WORDS; the first special is unk."""
    vocab = {t: i for i, t in enumerate([*specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=specials[0], **tokens)
    tok.chat_template = template
    return tok


def smollm_like():
    """SmolLM2-Instruct's layout: <|endoftext|> 0 (the separator), <|im_start|> 1 = BOS, <|im_end|> 2 = EOS."""
    return word_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML,
                          bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>")


def test_chat_role_bos_and_eos_give_the_document_separator():
    found = detect_document_start(smollm_like())
    assert (found.token, found.id) == ("<|endoftext|>", 0)
    assert "chat-role" in found.reason and "<|im_start|>" in found.reason
    old = policy_token(smollm_like(), "bos_token")  # the earlier prefix: literally the turn opener
    assert (old.token, old.id) == ("<|im_start|>", 1)


def test_plain_tokenizers_keep_their_bos_or_eos():
    gpt2 = word_tokenizer(["<|endoftext|>"], None, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert (document_start(gpt2).token, document_start(gpt2).id) == ("<|endoftext|>", 0)
    # a template that inserts BOS through the bos_token variable does not make BOS a role token (Llama 3)
    llama3 = word_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>"], LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert document_start(llama3).token == "<|begin_of_text|>"
    # no BOS: EOS, unless EOS is the turn closer (Qwen base vs Qwen instruct)
    qwen_base = word_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML, eos_token="<|endoftext|>")
    assert document_start(qwen_base).token == "<|endoftext|>" and "EOS" in document_start(qwen_base).reason
    qwen_chat = word_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML, eos_token="<|im_end|>")
    assert (document_start(qwen_chat).token, document_start(qwen_chat).id) == ("<|endoftext|>", 0)


def test_chat_tokenizer_without_a_separator_is_a_one_line_error():
    tok = word_tokenizer(["<unk>", "<|im_start|>", "<|im_end|>"], CHATML, bos_token="<|im_start|>",
                         eos_token="<|im_end|>")
    with pytest.raises(NegdiffError, match="--bos tokenizer_default") as err:
        detect_document_start(tok)
    assert "\n" not in str(err.value)
    assert policy_token(tok, "bos_token").token == "<|im_start|>"  # the explicit policies still work
    assert policy_token(tok, "tokenizer_default").id == 1


def test_detection_follows_a_changed_tokenizer():
    tok = smollm_like()
    assert document_start(tok).id == 0
    tok.chat_template = None  # cached per tokenizer, but keyed on what the detection reads
    assert document_start(tok).id == 1


def test_embedded_tokenizer():
    tok = real_tokenizer()
    found = document_start(tok)
    assert (found.token, found.id) == ("<|endoftext|>", 0)
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token_id) == ("<|im_start|>", 1, 2)
    assert encode_text(tok, "Cats run.").context == (0,)
    assert encode_text(tok, "Cats run.", "bos_token").context == (1,)


def test_prefix_puts_the_token_before_sentences_not_before_contexts():
    tok = smollm_like()
    assert "bos_token" in BOS_POLICIES and ScoringConfig(bos="bos_token").bos == "bos_token"
    the_cat = tuple(tok("the cat", add_special_tokens=False)["input_ids"])
    runs = tuple(tok(" runs", add_special_tokens=False)["input_ids"])
    assert encode_text(tok, "the cat runs").context == (0,)
    assert encode_pair(tok, "the cat", " runs") == encode_pair(tok, "the cat ", "runs")
    pair = encode_pair(tok, "the cat", " runs")
    assert pair.context == the_cat and pair.target == runs  # lm-evaluation-harness: no BOS
    assert encode_pair(tok, "the cat", " runs", context_bos=True).context == (0, *the_cat)  # Gemma
    assert encode_pair(tok, "", "the cat").context == (0,)  # an empty context still gets the document start
    assert encode_pair(tok, "the cat", " runs", bos="bos_token").context == (1, *the_cat)  # the earlier prefix
    assert encode_pair(tok, "the cat", " runs", bos="tokenizer_default").context == the_cat


def test_context_bos_follows_the_harness_model_rule():
    assert not context_needs_bos(tiny_model("llama"))
    gemma = tiny_model("gemma")
    assert context_needs_bos(gemma)
    tok = smollm_like()
    pairs = [("the cat", " runs"), ("the cat", " run"), ("a dog", " sat")]
    ll, _ = continuation_logliks(gemma, tok, pairs)
    for (ctx, cont), got in zip(pairs, ll, strict=True):
        ref = score_unbatched(gemma, encode_pair(tok, ctx, cont, context_bos=True))
        assert got == pytest.approx(ref.total, abs=1e-4)
        assert encode_pair(tok, ctx, cont, context_bos=True).context[0] == 0


def test_results_record_the_token():
    tok, model = smollm_like(), tiny_model("llama")
    blimp = [{"sentence_good": "the cat runs", "sentence_bad": "the cat run", "field": "f", "linguistics_term": "t",
              "UID": "u", "pairID": 0}]
    res = TASKS["blimp"].runner(model, tok, blimp, EvalConfig(n_boot=20))
    assert res.config["scoring"]["bos_id"] == 0 and res.config["scoring"]["bos_token"] == "<|endoftext|>"
    assert "chat-role" in res.config["scoring"]["bos_reason"]
    old = TASKS["blimp"].runner(model, tok, blimp, EvalConfig(scoring=ScoringConfig(bos="bos_token"), n_boot=20))
    assert old.config["scoring"]["bos_id"] == 1 and old.config["scoring"]["bos"] == "bos_token"
    assert not np.isclose(res.items["lp_good"][0], old.items["lp_good"][0])  # the token changes the score
    arc = [{"id": "q1", "question": "the cat", "choices": ["runs", "run"], "label": 0}]
    mc = TASKS["arc_easy"].runner(model, tok, arc, EvalConfig(n_boot=20))
    assert mc.config["scoring"]["bos_id"] == 0 and mc.config["scoring"]["context_bos"].startswith("none")


def test_eval_command_accepts_every_policy_and_refuses_others():
    import argparse

    from negdiff.cli import eval as eval_cli
    from negdiff.options import config_from_args

    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers())
    for policy in BOS_POLICIES:
        args = parser.parse_args(["eval", "default", "--tasks", "blimp", "--out", "x", "--bos", policy])
        assert config_from_args(eval_cli.EvalOptions, args).bos == policy
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["eval", "default", "--tasks", "blimp", "--out", "x", "--bos", "bos_always"])
    assert exc.value.code == 2
