"""Shared fixtures: tiny randomly initialised models of every supported family, built offline; a local HTTP
server and an empty cache folder for the fetch tests."""

from __future__ import annotations

import os
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("NEGDIFF_PROGRESS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as T  # noqa: E402

#: The staged datasets: the one data location of the tests, ``NEGDIFF_DATA`` as the README's test command sets
#: it (resolved once, so a test that changes directory still finds it). Unset: data tests skip, saying why;
#: set to a folder without the datasets: the run stops at once rather than skipping silently.
_DATA_ENV = os.environ.get("NEGDIFF_DATA")
DATA = Path(_DATA_ENV).resolve() if _DATA_ENV else Path("/nonexistent/NEGDIFF_DATA-is-unset")
if _DATA_ENV and not (DATA / "blimp").is_dir():
    raise pytest.UsageError(f"NEGDIFF_DATA={_DATA_ENV} holds no staged datasets (no blimp/); see README, Data")

VOCAB = 97


def tiny_config(arch: str):
    """A 2-layer config of ``arch`` small enough to run in milliseconds."""
    common = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB)
    if arch == "gpt2":
        return T.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(**common, intermediate_size=80, bos_token_id=0, eos_token_id=0)
    if arch == "llama":
        return T.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=48, bos_token_id=1, eos_token_id=2)
    if arch == "qwen2":
        return T.Qwen2Config(**common, num_key_value_heads=2, intermediate_size=56, bos_token_id=1, eos_token_id=2)
    if arch == "gemma":
        return T.GemmaConfig(**common, num_key_value_heads=2, intermediate_size=40, head_dim=8, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "opt":
        return T.OPTConfig(**common, ffn_dim=72, word_embed_proj_dim=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "phi3":
        return T.Phi3Config(**common, intermediate_size=40, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "mistral":
        return T.MistralConfig(**common, num_key_value_heads=2, intermediate_size=48, bos_token_id=1, eos_token_id=2)
    if arch == "qwen3":
        return T.Qwen3Config(**common, num_key_value_heads=2, intermediate_size=56, head_dim=8, bos_token_id=1,
                             eos_token_id=2)
    if arch == "gemma2":  # alternating sliding (window 16) and full attention, logit soft-capping
        return T.Gemma2Config(**common, num_key_value_heads=2, intermediate_size=40, head_dim=8, sliding_window=16,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "olmo":
        return T.OlmoConfig(**common, intermediate_size=48, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "olmo2":
        return T.Olmo2Config(**common, intermediate_size=48, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "phi":  # phi-2 style: gelu_new, partial rotary, a plain (not gated) MLP
        return T.PhiConfig(**common, intermediate_size=64, partial_rotary_factor=0.5, bos_token_id=1, eos_token_id=2)
    raise ValueError(arch)


ARCHS = ["gpt2", "gpt_neox", "llama", "qwen2", "gemma", "opt"]
#: One tiny config per row of the site registry (tests/test_sites.py checks the two lists agree): the
#: architectures above plus those that share a row's layout but differ in ways that could break a hook or
#: the prefix tree (sliding windows, soft-capping, partial rotary, norms after the block).
REGISTRY_ARCHS = [*ARCHS, "phi3", "mistral", "qwen3", "gemma2", "olmo", "olmo2", "phi"]


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype)
    # Random init of biases is zero in many families; give them values so bias handling is tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(params=ARCHS)
def arch_model(request):
    """(arch, tiny model) for each of the six architectures the registry must cover."""
    return request.param, tiny_model(request.param)


@pytest.fixture
def token_batch():
    """A padded batch of token ids with its attention mask (right padding)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="session")
def real_tokenizer():
    """The embedded model's tokenizer (SmolLM2, 49,152 tokens), read from the GGUF offline."""
    from transformers import AutoTokenizer

    from negdiff.models import default_gguf

    gguf = default_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_tokenizer):
    """A saved 2-layer Llama with the real tokenizer: a local model folder that loads in a second."""
    path = tmp_path_factory.mktemp("tiny-llama")
    cfg = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=len(real_tokenizer), bos_token_id=1, eos_token_id=2,
                        pad_token_id=2, max_position_embeddings=256)
    torch.manual_seed(0)
    T.LlamaForCausalLM(cfg).save_pretrained(path)
    real_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def word_corpus(tmp_path_factory):
    """A small text file of random words from a tiny vocabulary: 30 documents of 60 words."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    rng = np.random.default_rng(0)
    words = "the a of to in cat dog sat ran on mat and was is it quickly house tree".split()
    path.write_text("\n\n".join(" ".join(rng.choice(words, 60)) + "." for _ in range(30)))
    return path


# ---------------------------------------------------------------------------------------------- fetching
class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www, laid out as <host>/<path> (the mirror layout)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(www)))
    httpd.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.hits
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder in use: NEGDIFF_DATA unset, NEGDIFF_CACHE pointing into tmp_path."""
    monkeypatch.delenv("NEGDIFF_DATA", raising=False)
    monkeypatch.delenv("NEGDIFF_DATA_MIRROR", raising=False)
    monkeypatch.setenv("NEGDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"
