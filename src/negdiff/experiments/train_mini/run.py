"""``negdiff train-mini``: train a small causal LM from scratch, saving log-spaced checkpoints for ``dynamics``.

The paper follows Wasserstein neurons through Pythia's public checkpoints; offline users have none, so
this trains a Llama-style (SiLU, gated MLP) or GPT-NeoX-style (GELU) model built from transformers'
own config classes (never a reimplementation) on the staged training corpus, and saves Hugging Face
folders (safetensors + tokenizer) at steps 0, 16, 32, 64, ... and the final step, which
``negdiff.models.load_model`` and ``negdiff dynamics`` read like any local model.

Tokenizer: by default a byte-level BPE of 8,192 tokens trained on the corpus (a few seconds). The
embedded model's 49,152-token vocabulary makes the output softmax 75-90% of the compute of a model
this small (measured: ~5x fewer tokens per second), and on a 15-minute CPU budget tokens seen decide
how much grammar the model learns. ``--tokenizer default`` keeps the embedded one for comparability.

Determinism: weights are initialised under ``torch.manual_seed(seed)`` and the batch of step ``s`` is a
pure function of ``(seed, s)`` (a seeded permutation per epoch), so the same seed gives the same
weights and a resumed run (optimizer and RNG state are saved beside the latest checkpoint) continues
to exactly the weights of an uninterrupted one. Documents are separated by the token negdiff's scorer
puts before every sentence (BOS, else EOS), so evaluation sees sentences the way training did.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from negdiff.data import corpus_documents
from negdiff.errors import NegdiffError
from negdiff.experiments.train_mini.config import TrainConfig, save_steps
from negdiff.experiments.train_mini.data import batch_rows, get_tokenizer, token_windows_with_sep
from negdiff.progress import bar, status
from negdiff.results import config_key, file_sha256, read_json, versions, write_json
from negdiff.runs import write_record
from negdiff.scoring import prefix_id

FORMAT = "negdiff.train_mini/1"
STATE_FILE = "resume_state.pt"


@dataclass
class TrainRun:
    """What :func:`train` leaves in memory: the final model (eval mode), its tokenizer and train.json."""

    model: Any
    tokenizer: Any
    record: dict[str, Any]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then a cosine down to ``min_lr`` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))


def build_model(cfg: TrainConfig, tokenizer):
    """A freshly initialised model from transformers' config class (seeded by the caller)."""
    import transformers as T

    sep = prefix_id(tokenizer)
    common = dict(vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.ffn_width,
                  num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=cfg.seq_len,
                  tie_word_embeddings=True, bos_token_id=sep, eos_token_id=tokenizer.eos_token_id or sep,
                  pad_token_id=tokenizer.pad_token_id, attention_dropout=0.0)
    if cfg.arch == "llama":
        config = T.LlamaConfig(**common, num_key_value_heads=cfg.heads, hidden_act=cfg.act)
        return T.LlamaForCausalLM(config)
    config = T.GPTNeoXConfig(**common, hidden_act=cfg.act, rotary_pct=0.25, use_parallel_residual=True, hidden_dropout=0.0)
    return T.GPTNeoXForCausalLM(config)


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (norm gains and biases are not shrunk)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


@torch.no_grad()
def mean_loss(model, windows: torch.Tensor, batch: int, device: torch.device) -> float:
    """Mean next-token loss over ``windows`` (each window weighted equally)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for lo in range(0, len(windows), batch):
        x = windows[lo:lo + batch].to(device)
        total += float(model(input_ids=x, labels=x).loss) * len(x)
    model.train(was_training)
    return total / max(1, len(windows))


# ---------------------------------------------------------------------------------------------- checkpoints
def write_checkpoint(out: Path, step: int, model, tokenizer, info: dict, state: dict | None) -> Path:
    """``out/step{N}/`` as a Hugging Face folder, written to a temp folder and renamed into place."""
    from transformers.utils import logging as hf_logging

    final = out / f"step{step}"
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".step{step}."))
    os.chmod(tmp, 0o755)
    try:
        hf_logging.disable_progress_bar()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "checkpoint.json", info)
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hf_logging.enable_progress_bar()
    for old in out.glob(f"step*/{STATE_FILE}"):  # only the latest checkpoint carries the resume state
        if old.parent != final:
            old.unlink(missing_ok=True)
    return final


def find_resume(out: Path, key: str) -> Path | None:
    """The latest checkpoint folder whose resume state belongs to this run (same key)."""
    best = None
    for path in out.glob(f"step*/{STATE_FILE}"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("key") == key and (best is None or state["step"] > best[0]):
            best = (state["step"], path.parent)
    return None if best is None else best[1]


def _prepare_out(out: Path, key: str, force: bool) -> dict | None:
    """Check that ``out`` holds nothing but this run (``force`` wipes train-mini's files there first);
    returns the record of a finished identical run, so a rerun reuses it."""
    record_path = out / "train.json"
    steps = [p for p in out.glob("step*") if p.is_dir() and re.fullmatch(r"step\d+", p.name)]
    keys = {read_json(p / "checkpoint.json").get("run_key") for p in steps if (p / "checkpoint.json").is_file()}
    if record_path.is_file():
        keys.add(read_json(record_path).get("key"))
    if force:
        for path in [*steps, out / "tokenizer", record_path]:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif keys - {key} or (steps and not keys):
        raise NegdiffError(f"{out} holds checkpoints of a train-mini run with other settings; "
                           "use another --out, or --force to replace them")
    elif record_path.is_file() and read_json(record_path).get("status") == "done":
        return read_json(record_path)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _tokenizer(cfg: TrainConfig, docs: list[str], out: Path):
    return get_tokenizer(cfg.tokenizer, docs, out / "tokenizer", cfg.vocab, cfg.tokenizer_chars, cfg.corpus)


def _load_weights(folder: Path, dev: torch.device):
    """A saved checkpoint's model in float32 on ``dev`` (transformers' loading bar silenced)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(dev)
    finally:
        hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------- runner
def train(cfg: TrainConfig, out: str | Path, device: str = "cpu", force: bool = False,
          data_root: str | None = None) -> TrainRun:
    """Train (or resume, or reuse a finished run in ``out``); returns the final model and train.json."""
    out = Path(out)
    docs, corpus_file = corpus_documents(cfg.corpus, data_root)
    corpus = {"name": cfg.corpus, "file": None if corpus_file is None else str(corpus_file),
              "sha256": None if corpus_file is None else file_sha256(corpus_file)}
    key = config_key({"config": cfg.key_dict(), "corpus_sha256": corpus["sha256"], "format": FORMAT})
    done = _prepare_out(out, key, force)
    dev = torch.device(device)
    if done is not None:
        status(f"train-mini already finished in {out} (same settings); use --force to retrain")
        model = _load_weights(out / f"step{cfg.steps}", dev).eval()
        return TrainRun(model, _tokenizer(cfg, docs, out), done)
    t_start = time.time()
    tokenizer = _tokenizer(cfg, docs, out)
    need = cfg.steps * cfg.batch + cfg.val_windows
    windows, docs_used = token_windows_with_sep(tokenizer, docs, cfg.seq_len, need)
    if len(windows) <= cfg.val_windows:
        raise NegdiffError(f"--corpus {cfg.corpus}: only {len(windows)} windows of {cfg.seq_len} tokens, "
                           f"not more than --val-windows {cfg.val_windows}")
    val, train_w = windows[:cfg.val_windows], windows[cfg.val_windows:]
    epochs = cfg.steps * cfg.batch / len(train_w)
    if epochs > 1:
        status(f"the corpus gives {len(train_w):,} training windows: each is seen ~{epochs:.1f} times")
    resume = find_resume(out, key)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer)
    losses: list[float] = []
    ckpts: list[dict] = []
    start, seconds_before = 0, 0.0
    opt = make_optimizer(model.to(dev), cfg)
    if resume is not None:
        state = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=False)
        model = _load_weights(resume, dev)
        opt = make_optimizer(model, cfg)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        start, losses, ckpts, seconds_before = state["step"], state["losses"], state["checkpoints"], state["seconds"]
        status(f"resuming train-mini from {resume.name} ({start} of {cfg.steps} steps done)")
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    record: dict[str, Any] = {
        "format": FORMAT, "key": key, "status": "running", "config": cfg.to_dict(),
        "model": {"arch": cfg.arch, "class": type(model).__name__, "model_type": model.config.model_type,
                  "n_params": n_params, "n_params_non_embedding": n_params - n_embed,
                  "activation": f"{cfg.act} (gated MLP)" if cfg.arch == "llama" else cfg.act},
        "tokenizer": {"kind": cfg.tokenizer, "vocab_size": len(tokenizer), "separator_id": prefix_id(tokenizer),
                      "separator": tokenizer.convert_ids_to_tokens(prefix_id(tokenizer))},
        "corpus": {**corpus, "documents_used": docs_used, "train_windows": len(train_w), "val_windows": len(val),
                   "epochs": epochs},
        "tokens_per_step": cfg.batch * cfg.seq_len, "device": str(dev), "threads": torch.get_num_threads(),
        "versions": versions(), "resumed_from": start or None,
    }
    schedule = save_steps(cfg.steps, cfg.save, cfg.first_save)
    t0 = time.perf_counter()

    def checkpoint(step: int) -> None:
        elapsed = seconds_before + time.perf_counter() - t0
        recent = losses[max(0, step - 16):step]
        info = {"step": step, "tokens_seen": step * cfg.batch * cfg.seq_len, "lr": lr_at(step, cfg) if step < cfg.steps else None,
                "train_loss": float(np.mean(recent)) if recent else None,
                "val_loss": mean_loss(model, val, cfg.batch, dev), "seconds": elapsed}
        ckpts.append(info)
        state = {"key": key, "step": step, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                 "losses": list(losses), "checkpoints": list(ckpts), "seconds": elapsed}
        write_checkpoint(out, step, model, tokenizer, {**info, "run_key": key, "config": cfg.to_dict()}, state)
        write_record(out / "train.json", {**record, "checkpoints": ckpts, "losses": losses,
                                          "timing": {"seconds_train": elapsed}}, "train-mini", elapsed)

    model.train()
    if start == 0:
        checkpoint(0)
    progress = bar(total=cfg.steps, initial=start, desc="train-mini", unit="step")
    ema = None
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x = train_w[torch.as_tensor(batch_rows(step, cfg.batch, len(train_w), cfg.seed))].to(dev)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        ema = losses[-1] if ema is None else 0.95 * ema + 0.05 * losses[-1]
        progress.update(1)
        progress.set_postfix(loss=f"{ema:.3f}")
        if step + 1 in schedule:
            checkpoint(step + 1)
    progress.close()
    elapsed = seconds_before + time.perf_counter() - t0
    trained = (cfg.steps - start) * cfg.batch * cfg.seq_len
    record.update(status="done", checkpoints=ckpts, losses=losses, tokens_seen=cfg.steps * cfg.batch * cfg.seq_len,
                  final_loss=ckpts[-1]["train_loss"], final_val_loss=ckpts[-1]["val_loss"],
                  timing={"seconds_train": elapsed, "seconds_this_run": time.time() - t_start,
                          "tokens_per_s": trained / max(1e-9, time.perf_counter() - t0)})
    write_record(out / "train.json", record, "train-mini", elapsed)
    return TrainRun(model.eval(), tokenizer, record)


# ---------------------------------------------------------------------------------------------- CLI
def command(args) -> int:
    """``negdiff train-mini``."""
    from negdiff.models import resolve_device
    from negdiff.options import config_from_args

    cfg = config_from_args(TrainConfig, args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = train(cfg, args.out, device=resolve_device(device), force=args.force)
    r = run.record
    print(f"trained {r['model']['class']} ({r['model']['n_params']:,} parameters, {r['tokenizer']['vocab_size']:,}-token "
          f"vocabulary) for {cfg.steps} steps = {r['tokens_seen']:,} tokens in {r['timing']['seconds_train']:.0f} s")
    print(f"final train loss {r['final_loss']:.3f}, held-out loss {r['final_val_loss']:.3f} "
          f"(step 0: {r['checkpoints'][0]['val_loss']:.3f})")
    print(f"wrote {args.out}/: train.json, tokenizer/, " + ", ".join(f"step{c['step']}/" for c in r["checkpoints"]))
    return 0
