"""Model loading: the embedded default (dequantized + cached), local folders, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch

import negdiff.models as models
from negdiff import NegdiffError, load_model


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("negdiff-cache")


def _loss(loaded, text):
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[loaded.tokenizer.bos_token_id]]), ids], dim=1)
    with torch.no_grad():
        return loaded.model(input_ids=ids, labels=ids).loss.item(), ids


def test_default_loads_dequantized_then_from_cache(fresh_cache, monkeypatch):
    monkeypatch.setenv("NEGDIFF_CACHE", str(fresh_cache))
    first = load_model("default")
    assert first.info.sites["n_layers"] == 30 and first.info.sites["neurons_per_layer"] == 1536
    assert first.info.sites["activation"] == "silu"
    assert "Q4_1" in first.info.quantization
    assert first.tokenizer.bos_token_id == 1 and first.tokenizer("Hi").input_ids[0] != 1  # BOS never added
    loss, ids = _loss(first, "The keys to the cabinet are on the table.")
    assert math.isfinite(loss) and 1.0 < loss < 8.0
    cached = list((fresh_cache / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()

    def no_dequantize(*a, **k):
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(models, "_dequantize_to", no_dequantize)
    second = load_model("default")
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)


def test_local_folder_and_dtype(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert loaded.info.source == "local" and loaded.info.dtype == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.info.sites["n_layers"] == 2 and loaded.info.sites["neurons_per_layer"] == 48


def test_unknown_hub_id_offline(monkeypatch):
    # No HF_HUB_OFFLINE here: the loader must notice by itself that the hub is unreachable, quickly.
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(NegdiffError, match="cannot load model 'nobody/no-such-model'.*not in the Hugging Face cache"):
        load_model("nobody/no-such-model")
    with pytest.raises(NegdiffError, match="at revision 'step1000'"):
        load_model("EleutherAI/pythia-14m-not-cached", revision="step1000")


def test_path_that_is_not_a_model(tmp_path):
    with pytest.raises(NegdiffError, match="is not a model folder"):
        load_model(str(tmp_path))
    with pytest.raises(NegdiffError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_bad_dtype_and_device(tiny_model_dir):
    with pytest.raises(NegdiffError, match="unknown dtype 'float8'"):
        load_model(str(tiny_model_dir), dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(NegdiffError, match="CUDA is not available"):
            load_model(str(tiny_model_dir), device="cuda")
    with pytest.raises(NegdiffError, match="unknown device 'gpu0'"):
        load_model(str(tiny_model_dir), device="gpu0")


def test_a_second_process_publishing_the_same_dequantized_folder_keeps_the_first(tmp_path):
    """Two processes on an empty cache: the loser's rename meets a non-empty folder and must not fail."""
    out = tmp_path / "model"
    first, second = tmp_path / ".first", tmp_path / ".second"
    for d, tag in ((first, "first"), (second, "second")):
        d.mkdir()
        (d / "weights").write_text(tag)
        (d / "SOURCE").write_text("dequantized from x\n")
    models.publish_folder(first, out)
    models.publish_folder(second, out)  # raised OSError (Directory not empty) before the fix
    assert (out / "weights").read_text() == "first" and not second.exists()
    half = tmp_path / ".half"
    half.mkdir()
    (half / "weights").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "partial").write_text("no SOURCE: not a finished folder")
    with pytest.raises(OSError):
        models.publish_folder(half, broken)
